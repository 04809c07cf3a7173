"""The stage-2 model: a GPT over image tokens, after the tokens of a condition.

Sequence layout (as the original's ``Net2NetTransformer``): ``[condition tokens, image tokens in reading
order]``; the GPT sees all but the last and its outputs from the last condition position on predict the image
tokens. The first-stage VQGAN and a spatial condition's VQGAN are frozen parts of the model, saved with it, so a
checkpoint samples images on its own. Attribute names follow the original's keys (``transformer.*``,
``first_stage_model.*``, ``cond_stage_model.*``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from tamer.ar.conditioning import ConditioningConfig, ConditionStage, build_condition_stage
from tamer.ar.sampling import Callback, SamplingSettings, sample_tokens, seed_rows
from tamer.ar.sliding_window import sample_sliding_window
from tamer.ar.token_order import TokenOrder, TokenOrderName
from tamer.checkpoints import Pretrained
from tamer.config import checked_keywords
from tamer.nn.gpt import GPT, GPTConfig
from tamer.vqgan.model import VQGAN, VQGANConfig


@checked_keywords
@dataclass
class TransformerConfig:
    gpt: GPTConfig = field(default_factory=GPTConfig)
    first_stage: VQGANConfig = field(default_factory=VQGANConfig)
    conditioning: ConditioningConfig = field(default_factory=ConditioningConfig)
    # The code grid the model is trained on (image size / downsampling factor; a residual first stage's width holds
    # its depth codes per position side by side, so each position's codes come together in raster order).
    code_shape: tuple[int, int] = (16, 16)
    token_order: TokenOrderName = "raster"

    def __post_init__(self):
        h, w = self.code_shape
        if h < 1 or w < 1:
            raise ValueError(f"code_shape: expected positive sides, got {self.code_shape}")
        per_position = self.first_stage.quantizer.codes_per_position
        if w % per_position:
            raise ValueError(f"code_shape: the first stage has {per_position} codes per position, so the width must "
                             f"be a multiple of {per_position}, got {self.code_shape}")
        if per_position > 1 and self.token_order != "raster":
            raise ValueError(f"token_order: a residual first stage keeps each position's codes together, which "
                             f"only 'raster' does, got {self.token_order!r}")
        image_vocab = self.first_stage.vocab_size
        offset, needed = self.conditioning.first_id(image_vocab), self.conditioning.gpt_vocab_size(image_vocab)
        if self.gpt.vocab_size < needed:
            raise ValueError(f"gpt.vocab_size: {self.gpt.vocab_size} is too small; the image codebook "
                             f"({image_vocab}) and the condition ids (from {offset}) need {needed}")

    @property
    def image_size(self) -> tuple[int, int]:
        f = self.first_stage.downsample_factor
        return self.code_shape[0] * f, self.code_shape[1] // self.first_stage.quantizer.codes_per_position * f


class Transformer(nn.Module, Pretrained):
    model_type = "transformer"
    config_class = TransformerConfig

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.first_stage_model = VQGAN(config.first_stage)
        self.first_stage_model.requires_grad_(False)
        self.cond_stage_model: ConditionStage = build_condition_stage(config.conditioning, self.image_vocab_size)
        self.transformer = GPT(config.gpt)
        self.token_order = TokenOrder(config.token_order, *config.code_shape)
        self.train(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.first_stage_model.eval()  # frozen tokenizer: never in training mode
        return self

    def for_inference(self) -> Transformer:
        """Eval mode, with the tokenizer's faster inference layout."""
        self.first_stage_model.for_inference()
        return self.eval()

    # ---- tokens ------------------------------------------------------------------------------------------------

    @property
    def image_vocab_size(self) -> int:
        return self.config.first_stage.vocab_size

    @property
    def conditioning(self) -> ConditioningConfig:
        return self.config.conditioning

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images (on any device) -> code grid ``B×h×w`` on the model's device."""
        weight = self.first_stage_model.quant_conv.weight
        return self.first_stage_model.encode(images.to(device=weight.device, dtype=weight.dtype))

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Code grid ``B×h×w`` -> images in [-1, 1]."""
        return self.first_stage_model.decode(codes).clamp(-1, 1)

    def condition_tokens(self, condition, batch_size: int) -> torch.Tensor:
        """Condition -> ids: ``B×L``, or ``B×h×w`` for spatial stages (the sliding window crops them)."""
        device = self.transformer.pos_emb.device
        if isinstance(condition, torch.Tensor):
            condition = condition.to(device)
        return self.cond_stage_model.tokens(condition, batch_size).to(device)

    def sequence(self, codes: torch.Tensor) -> torch.Tensor:
        """Code grid ``B×h×w`` -> ``B×N`` in the model's reading order."""
        return self.token_order(codes)

    def grid(self, sequence: torch.Tensor, height: int | None = None, width: int | None = None) -> torch.Tensor:
        return self.token_order.grid(sequence, height, width)

    # ---- training ------------------------------------------------------------------------------------------------

    def forward(self, codes: torch.Tensor, cond_tokens: torch.Tensor, corrupted: torch.Tensor | None = None,
                reduction: str = "mean", network: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``B×N×V`` for the image tokens of ``codes`` (``B×h×w``) after ``cond_tokens``, and the
        next-token cross entropy (``reduction`` as in ``F.cross_entropy``; "none" gives ``B×N``).

        ``corrupted`` (``B×h×w``), when given, is what the GPT reads instead of ``codes`` (pkeep noise); the
        targets stay ``codes``. ``network`` runs in place of ``self.transformer`` (training passes its DDP
        wrapper, so the gradients are reduced across processes).
        """
        targets = self.sequence(codes)
        inputs = targets if corrupted is None else self.sequence(corrupted)
        cond = cond_tokens.reshape(cond_tokens.shape[0], -1)
        L = cond.shape[1]
        needed = L + targets.shape[1] - 1
        if needed > self.transformer.block_size:
            raise ValueError(f"{L} condition + {targets.shape[1]} image tokens need block_size >= {needed}, "
                             f"the model has {self.transformer.block_size}")
        logits, _ = (network or self.transformer)(torch.cat((cond, inputs[:, :-1]), dim=1))
        logits = logits[:, L - 1:]
        # Image tokens only: condition ids are never a valid next token, so they get no probability mass.
        image_logits = logits[..., : self.image_vocab_size]
        loss = F.cross_entropy(image_logits.reshape(-1, image_logits.shape[-1]).float(), targets.reshape(-1),
                               reduction=reduction)
        if reduction == "none":
            loss = loss.view(targets.shape)
        return logits, loss

    def corrupt(self, codes: torch.Tensor, pkeep: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """Replace each code with a random one with probability ``1 - pkeep`` (the original's pkeep)."""
        if pkeep >= 1.0:
            return codes
        keep = torch.rand(codes.shape, device=codes.device, generator=generator) < pkeep
        noise = torch.randint(0, self.image_vocab_size, codes.shape, device=codes.device, generator=generator)
        return torch.where(keep, codes, noise)

    def drop_condition(self, cond_tokens: torch.Tensor, probability: float,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """Replace whole conditions by the null condition with ``probability`` (trains classifier-free guidance)."""
        if probability <= 0.0:
            return cond_tokens
        null = self.cond_stage_model.null_like(cond_tokens)
        drop = torch.rand(cond_tokens.shape[0], device=cond_tokens.device, generator=generator) < probability
        return torch.where(drop.view(-1, *[1] * (cond_tokens.dim() - 1)), null, cond_tokens)

    # ---- sampling ------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def sample_codes(self, condition=None, num_samples: int = 1, settings: SamplingSettings | None = None,
                     seed: int | None = None, prefix: torch.Tensor | None = None, code_shape=None,
                     callback: Callback | None = None) -> torch.Tensor:
        """Sample code grids ``B×h×w``.

        ``condition``: None (unconditional), class labels, or a spatial map batch. ``prefix``: image tokens already
        known (``B×k`` in reading order, for completion). ``seed``: row ``i`` uses ``seed + i``. ``code_shape``
        larger than the training grid switches to the sliding-window sampler (raster order only).
        """
        settings = settings or SamplingSettings()
        h, w = self.config.code_shape if code_shape is None else code_shape
        if (h, w) != tuple(self.config.code_shape):
            return sample_sliding_window(self, condition, num_samples, (h, w), settings, seed, callback=callback,
                                         prefix=prefix)
        cond = self.condition_tokens(condition, num_samples)
        cond = cond.reshape(num_samples, -1)
        device = cond.device
        given = 0 if prefix is None else prefix.shape[1]
        if prefix is not None:
            if prefix.shape[0] != num_samples or given > h * w:
                raise ValueError(f"prefix: expected {num_samples}×k with k <= {h * w}, got {tuple(prefix.shape)}")
            cond = torch.cat((cond, prefix.to(device)), dim=1)
        null = None
        if settings.guided:
            null = cond.clone()
            L = null.shape[1] - given
            null[:, :L] = self.cond_stage_model.null_like(null[:, :L])
        seeds = seed_rows(seed, num_samples, device)
        new = sample_tokens(self.transformer, cond, h * w - given, settings, seeds, self.image_vocab_size, null,
                            first_position=given, callback=callback)
        tokens = new if prefix is None else torch.cat((prefix.to(device), new), dim=1)
        return self.grid(tokens)

    @torch.no_grad()
    def sample(self, condition=None, num_samples: int = 1, settings: SamplingSettings | None = None,
               seed: int | None = None, **kwargs) -> torch.Tensor:
        """Sample images ``B×3×H×W`` in [-1, 1] (see :meth:`sample_codes`)."""
        return self.decode_codes(self.sample_codes(condition, num_samples, settings, seed, **kwargs))

    @torch.no_grad()
    def complete_codes(self, images: torch.Tensor, keep_rows: int, condition=None,
                       settings: SamplingSettings | None = None, seed: int | None = None,
                       callback: Callback | None = None) -> torch.Tensor:
        """Image completion: keep the top ``keep_rows`` code rows of ``images``, sample the rest; code grids
        ``B×h×w``."""
        if self.config.token_order != "raster":
            raise ValueError("complete: keeping the top rows needs raster token order")
        codes = self.encode_images(images)
        prefix = self.sequence(codes)[:, : keep_rows * codes.shape[2]]
        return self.sample_codes(condition, images.shape[0], settings, seed, prefix=prefix,
                                 code_shape=codes.shape[1:], callback=callback)

    @torch.no_grad()
    def complete(self, images: torch.Tensor, keep_rows: int, condition=None,
                 settings: SamplingSettings | None = None, seed: int | None = None) -> torch.Tensor:
        """Image completion as images in [-1, 1] (see :meth:`complete_codes`)."""
        return self.decode_codes(self.complete_codes(images, keep_rows, condition, settings, seed))

    # ---- likelihood ----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def token_nll(self, codes: torch.Tensor, condition) -> torch.Tensor:
        """Negative log-likelihood in nats of every image token, ``B×N`` (reading order)."""
        cond = self.condition_tokens(condition, codes.shape[0])
        logits, nll = self(codes.to(cond.device), cond, reduction="none")
        return nll
