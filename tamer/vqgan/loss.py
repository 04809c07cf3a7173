"""The VQGAN (stage-1) training loss: pixel + LPIPS reconstruction, codebook, PatchGAN term with adaptive weight.

The generator minimizes ``w_pix·L_pix + w_p·LPIPS + λ·f·L_GAN + w_cb·L_codebook`` where
``λ = disc_weight · clamp(‖∇_L L_rec‖ / (‖∇_L L_GAN‖ + 1e-4), 0, 1e4)`` on the decoder's last layer ``L`` (so the
adversarial gradient stays on the scale of the reconstruction's) and ``f`` is ``disc_factor`` from ``disc_start``
on and 0 before. Field names follow the original ``VQLPIPSWithDiscriminator`` so a CompVis ``lossconfig.params``
reads as a :class:`VQGANLossConfig`. Two faults of the original are fixed: ``pixelloss_weight`` is honoured, and
the discriminator may start training ``disc_warmup_steps`` before it starts to count, so it does not switch on
untrained.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from tamer.config import checked_keywords
from tamer.errors import NonFiniteLossError  # noqa: F401 (re-exported)
from tamer.nn.discriminator import NLayerDiscriminator
from tamer.nn.perceptual import LPIPS, PerceptualUnavailableWarning, load_lpips

Logs = dict[str, torch.Tensor]


@checked_keywords
@dataclass
class VQGANLossConfig:
    disc_start: int = 0  # first step at which the GAN term counts in the generator loss
    codebook_weight: float = 1.0
    pixelloss_weight: float = 1.0
    # bce: binary cross-entropy of the output as logits against one-hot targets in {0, 1}, the loss of the
    # original's segmentation VQGANs (BCELossWithQuant); their argmax gives the labels back.
    pixel_loss: Literal["l1", "l2", "bce"] = "l1"
    perceptual_weight: float = 1.0
    disc_loss: Literal["hinge", "vanilla"] = "hinge"
    disc_num_layers: int = 3
    disc_in_channels: int = 3
    disc_ndf: int = 64
    use_actnorm: bool = False
    disc_conditional: bool = False  # the discriminator also sees a conditioning map concatenated on channels
    disc_factor: float = 1.0  # f above, once the GAN term is on
    disc_weight: float = 1.0  # multiplies the adaptive weight λ
    disc_warmup_steps: int = 0  # the discriminator trains from disc_start - disc_warmup_steps on

    def __post_init__(self):
        for name in ("disc_start", "disc_warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: expected a step count >= 0, got {getattr(self, name)}")
        for name in ("codebook_weight", "pixelloss_weight", "perceptual_weight", "disc_factor", "disc_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}: expected a finite weight >= 0, got {value}")
        for name in ("disc_num_layers", "disc_in_channels", "disc_ndf"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected at least 1, got {getattr(self, name)}")

    @property
    def discriminator_start(self) -> int:
        """The first step at which the discriminator is trained."""
        return max(0, self.disc_start - self.disc_warmup_steps)


def _pixel_loss(kind: str, inputs: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(reconstructions, inputs)
    diff = inputs - reconstructions
    return (diff.abs() if kind == "l1" else diff.square()).mean()


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """The non-saturating GAN discriminator loss: binary cross-entropy on logits, real = 1, fake = 0."""
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


def adaptive_weight(rec_loss: torch.Tensor, gan_loss: torch.Tensor, last_layer: torch.Tensor,
                    scale: float = 1.0) -> torch.Tensor:
    """``scale · clamp(‖∇ rec_loss‖ / (‖∇ gan_loss‖ + 1e-4), 0, 1e4)``, gradients on ``last_layer``, detached.

    Without a graph (evaluation under ``torch.no_grad``) there is nothing to balance: the weight is 0.
    """
    if not (torch.is_grad_enabled() and rec_loss.requires_grad and gan_loss.requires_grad):
        return torch.zeros((), device=rec_loss.device)
    (rec_grad,) = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)
    (gan_grad,) = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)
    if dist.is_available() and dist.is_initialized():
        # The gradients of the global batch, so that every rank uses the same weight (the one a single process
        # with the whole batch would compute).
        grads = torch.stack([rec_grad, gan_grad])
        dist.all_reduce(grads)
        rec_grad, gan_grad = grads / dist.get_world_size()
    weight = torch.linalg.vector_norm(rec_grad) / (torch.linalg.vector_norm(gan_grad) + 1e-4)
    return weight.clamp(0.0, 1e4).detach() * scale


class VQGANLoss(nn.Module):
    """The stage-1 loss and its discriminator; call :meth:`generator_loss` and :meth:`discriminator_loss` each step.

    ``perceptual`` is a frozen :class:`~tamer.nn.perceptual.LPIPS` (see :meth:`from_config`); without one while
    ``perceptual_weight > 0`` the loss warns and runs without the LPIPS term. The state dict holds only the
    discriminator: LPIPS is frozen and read from its own files, so checkpoints need not carry 58 MB of VGG.
    """

    def __init__(self, config: VQGANLossConfig, perceptual: LPIPS | None = None):
        super().__init__()
        self.config = config
        self.discriminator = NLayerDiscriminator(config.disc_in_channels, config.disc_ndf, config.disc_num_layers,
                                                 config.use_actnorm)
        self.perceptual_loss = perceptual if config.perceptual_weight > 0 else None
        if config.perceptual_weight > 0 and perceptual is None:
            warnings.warn(f"LPIPS perceptual loss is OFF although perceptual_weight={config.perceptual_weight}: "
                          "no LPIPS network was given", PerceptualUnavailableWarning, stacklevel=2)
        self.d_loss_fn = hinge_d_loss if config.disc_loss == "hinge" else vanilla_d_loss
        self.register_state_dict_post_hook(VQGANLoss._drop_perceptual)
        self.register_load_state_dict_pre_hook(VQGANLoss._keep_perceptual)

    @classmethod
    def from_config(cls, config: VQGANLossConfig, vgg_path: str | None = None) -> VQGANLoss:
        """Build with LPIPS loaded from ``vgg_path`` or the torch hub cache (warning once if it is not there)."""
        perceptual = load_lpips(vgg_path) if config.perceptual_weight > 0 else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PerceptualUnavailableWarning)  # load_lpips has already said why
            return cls(config, perceptual)

    @property
    def perceptual_available(self) -> bool:
        return self.perceptual_loss is not None

    def gan_active(self, step: int) -> bool:
        """Whether the GAN term counts in the generator loss at ``step``."""
        return step >= self.config.disc_start and self.config.disc_factor > 0

    def discriminator_active(self, step: int) -> bool:
        """Whether the discriminator learns at ``step``; a trainer may skip its update (and forward) otherwise."""
        return step >= self.config.discriminator_start and self.config.disc_factor > 0

    def generator_loss(self, inputs: torch.Tensor, reconstructions: torch.Tensor, quantizer_loss: torch.Tensor,
                       last_layer: torch.Tensor, step: int, cond: torch.Tensor | None = None,
                       ) -> tuple[torch.Tensor, Logs]:
        """The autoencoder's loss at ``step`` and detached scalar logs.

        ``last_layer`` is the decoder's last weight (``VQGAN.last_layer``) for the adaptive weight. The
        discriminator is run with its parameters frozen, so this loss gives it no gradient.
        """
        c = self.config
        pixel = _pixel_loss(c.pixel_loss, inputs, reconstructions)
        nll = c.pixelloss_weight * pixel
        if self.perceptual_loss is not None:
            perceptual = self.perceptual_loss(inputs, reconstructions).mean()
            nll = nll + c.perceptual_weight * perceptual
        else:
            perceptual = torch.zeros((), device=inputs.device)

        zero = torch.zeros((), device=inputs.device)
        g_loss, d_weight, factor = zero, zero, 0.0
        if self.gan_active(step):
            with _frozen(self.discriminator):
                logits_fake = self.discriminator(self._with_cond(reconstructions, cond))
            g_loss = -logits_fake.mean()
            d_weight = adaptive_weight(nll, g_loss, last_layer, c.disc_weight)
            factor = c.disc_factor
        codebook = quantizer_loss.mean()
        loss = nll + d_weight * factor * g_loss + c.codebook_weight * codebook
        logs = {"total_loss": loss, "quant_loss": codebook, "nll_loss": nll, "pixel_loss": pixel, "p_loss": perceptual,
                "d_weight": d_weight, "disc_factor": torch.tensor(factor, device=inputs.device), "g_loss": g_loss}
        return loss, {k: v.detach() for k, v in logs.items()}

    def discriminator_loss(self, inputs: torch.Tensor, reconstructions: torch.Tensor, step: int,
                           cond: torch.Tensor | None = None, discriminator: nn.Module | None = None,
                           ) -> tuple[torch.Tensor, Logs]:
        """The discriminator's loss at ``step`` and detached scalar logs; the images are detached here.

        ``discriminator`` runs in place of ``self.discriminator`` when given: its ``DistributedDataParallel``
        wrapper, whose gradients must be synchronized (the generator loss needs no wrapper: it takes no
        discriminator gradient). Real and fake images go through separately, as in the original, so BatchNorm
        sees each on its own. Before :meth:`discriminator_active` the loss is multiplied by 0 (as in the
        original), so a trainer that steps anyway changes nothing; skipping the step saves two forward passes.
        """
        run = discriminator if discriminator is not None else self.discriminator
        logits_real = run(self._with_cond(inputs.detach(), cond))
        logits_fake = run(self._with_cond(reconstructions.detach(), cond))
        factor = self.config.disc_factor if self.discriminator_active(step) else 0.0
        loss = factor * self.d_loss_fn(logits_real, logits_fake)
        logs = {"disc_loss": loss, "logits_real": logits_real.mean(), "logits_fake": logits_fake.mean()}
        return loss, {k: v.detach() for k, v in logs.items()}

    def _with_cond(self, images: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        if self.config.disc_conditional != (cond is not None):
            raise ValueError("cond: give a conditioning map exactly when disc_conditional is true "
                             f"(disc_conditional={self.config.disc_conditional})")
        return images if cond is None else torch.cat((images, cond), dim=1)

    @staticmethod
    def _drop_perceptual(module: nn.Module, state: dict, prefix: str, local_metadata) -> None:
        for key in [k for k in state if k.startswith(prefix + "perceptual_loss.")]:
            del state[key]

    @staticmethod
    def _keep_perceptual(module: VQGANLoss, state: dict, prefix: str, *args) -> None:
        """A state without LPIPS (as :meth:`state_dict` writes it) keeps the LPIPS already here."""
        if module.perceptual_loss is not None:
            for key, value in module.perceptual_loss.state_dict(prefix=prefix + "perceptual_loss.").items():
                state.setdefault(key, value)



def check_finite(values: torch.Tensor | Mapping[str, torch.Tensor | float], step: int) -> None:
    """Raise :class:`NonFiniteLossError` if ``values`` (a loss, or a logs dict) holds NaN or Inf.

    All tensors are checked with one device sync; names and values are read only when something is wrong.
    """
    items = {"loss": values} if isinstance(values, torch.Tensor) else dict(values)
    tensors = [torch.as_tensor(v).detach().float().reshape(-1) for v in items.values()]
    if not tensors or bool(torch.cat([t.to(tensors[0].device) for t in tensors]).isfinite().all()):
        return
    bad = {k: torch.as_tensor(v).detach().float() for k, v in items.items()}
    bad = {k: v.tolist() if v.numel() > 1 else v.item() for k, v in bad.items() if not v.isfinite().all()}
    detail = ", ".join(f"{k}={v}" for k, v in bad.items())
    raise NonFiniteLossError(f"step {step}: non-finite loss ({detail}); lower the learning rate, check the data for "
                             "NaNs, or resume from an earlier checkpoint")


@contextlib.contextmanager
def _frozen(module: nn.Module) -> Iterator[None]:
    """Run ``module`` without recording gradients for its parameters (the inputs still get them)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
