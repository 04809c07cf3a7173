"""Codebook quantizers behind one interface.

Every quantizer maps latents ``B×D×h×w`` to a :class:`Quantized` (straight-through latents, loss, indices ``B×h×w``)
and turns indices back into latents with :meth:`dequantize`. Indices at this interface are always ``B×h×w``
and always in the *public* index space (after remapping, when a remap is configured).

- :class:`VectorQuantizer`: nearest-neighbour codebook (VQ-VAE / VQGAN), with the original's ``legacy`` loss as an
  option, EMA codebook updates, l2-normalised (cosine) codes for low-dimensional codebooks, and index remapping.
- :class:`GumbelQuantizer`: Gumbel-softmax relaxation (the original's ``GumbelQuantize``), deterministic argmax in
  eval unless the original stochastic behaviour is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


@dataclass
class QuantizerConfig:
    """Which quantizer and how it behaves. ``kind`` is ``"vq"`` or ``"gumbel"``."""

    kind: Literal["vq", "gumbel"] = "vq"
    num_codes: int = 1024
    embed_dim: int = 256
    # vq: commitment weight; ``legacy_loss`` reproduces the original's swapped weighting (imports turn it on).
    beta: float = 0.25
    legacy_loss: bool = False
    # vq: codebook learned by exponential moving averages instead of gradients.
    ema: bool = False
    ema_decay: float = 0.99
    ema_eps: float = 1e-5
    # vq: on the first training batch, k-means on the latents sets the codebook (then marked initialised).
    kmeans_init: bool = False
    kmeans_iters: int = 10
    # vq: a code unused for this many training steps is restarted from a recent latent (0: never).
    dead_code_threshold: int = 0
    # vq: l2-normalised codes and latents (cosine distance), for low-dimensional codebooks (ViT-VQGAN, LlamaGen).
    l2_normalize: bool = False
    # gumbel
    kl_weight: float = 5e-4
    temperature: float = 1.0
    straight_through: bool = True
    stochastic_eval: bool = False
    # remapping to a subset of used codes (the original's ``remap``): the ``used`` buffer comes with the weights.
    remap_size: int | None = None
    unknown_index: Union[Literal["random", "extra"], int] = "random"

    def __post_init__(self):
        if self.kind not in ("vq", "gumbel"):
            raise ValueError(f"quantizer.kind: expected 'vq' or 'gumbel', got {self.kind!r}")
        if self.num_codes < 1 or self.embed_dim < 1:
            raise ValueError("quantizer.num_codes and quantizer.embed_dim must be positive")
        if self.kind == "gumbel" and (self.ema or self.l2_normalize):
            raise ValueError("quantizer: ema and l2_normalize apply to kind 'vq' only")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"quantizer.ema_decay: expected a value in (0, 1), got {self.ema_decay}")

    @property
    def vocab_size(self) -> int:
        """Number of distinct indices the quantizer emits (what a transformer over its codes must predict)."""
        if self.remap_size is None:
            return self.num_codes
        return self.remap_size + (1 if self.unknown_index == "extra" else 0)


@dataclass
class Quantized:
    latents: torch.Tensor  # B×D×h×w, straight-through
    loss: torch.Tensor  # scalar codebook + commitment (or KL) loss
    indices: torch.Tensor  # B×h×w, long
    logits: torch.Tensor | None = None  # Gumbel only: B×n×h×w


class _Quantizer(nn.Module):
    def __init__(self, config: QuantizerConfig):
        super().__init__()
        self.config = config
        self.remaps = config.remap_size is not None
        if self.remaps:
            # The codes in use, in public index order; the real values come with the weights.
            self.register_buffer("used", torch.arange(config.remap_size))

    def _public(self, indices: torch.Tensor) -> torch.Tensor:
        """Codebook indices -> public (remapped) indices."""
        if not self.remaps:
            return indices
        match = indices.unsqueeze(-1) == self.used
        remapped = match.long().argmax(-1)
        unknown = ~match.any(-1)
        if unknown.any():
            unknown_index = self.config.unknown_index
            if unknown_index == "random":
                remapped[unknown] = torch.randint(0, self.config.vocab_size, (int(unknown.sum()),), device=indices.device)
            else:
                remapped[unknown] = self.used.shape[0] if unknown_index == "extra" else unknown_index
        return remapped

    def _internal(self, indices: torch.Tensor) -> torch.Tensor:
        """Public indices -> codebook indices."""
        indices = indices.long()
        if not self.remaps:
            return indices
        return self.used[indices.masked_fill(indices >= self.used.shape[0], 0)]  # "extra" decodes as code 0

    def codebook(self) -> torch.Tensor:
        raise NotImplementedError

    def dequantize(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices ``B×h×w`` -> latents ``B×D×h×w``."""
        if indices.dim() != 3:
            raise ValueError(f"indices: expected shape B×h×w, got {tuple(indices.shape)}")
        vocab = self.config.vocab_size
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= vocab):
            raise ValueError(f"indices: values must lie in [0, {vocab}), got [{int(indices.min())}, {int(indices.max())}]")
        codes = F.embedding(self._internal(indices), self.codebook())
        return codes.permute(0, 3, 1, 2).contiguous()


class VectorQuantizer(_Quantizer):
    """Nearest-neighbour vector quantizer with a straight-through gradient.

    Loss (default): ``||sg(z) - e||² + beta·||z - sg(e)||²``; with ``legacy_loss`` the two weights are swapped as in
    the original code. With ``ema`` the codebook follows moving averages of its assigned latents and only the
    commitment term is returned.
    """

    def __init__(self, config: QuantizerConfig):
        super().__init__(config)
        n, d = config.num_codes, config.embed_dim
        self.embedding = nn.Embedding(n, d)
        nn.init.uniform_(self.embedding.weight, -1.0 / n, 1.0 / n)
        if config.ema:
            self.embedding.weight.requires_grad_(False)
            self.register_buffer("ema_cluster_size", torch.zeros(n))
            self.register_buffer("ema_embed_sum", torch.zeros(n, d))
        if config.dead_code_threshold > 0:
            self.register_buffer("steps_unused", torch.zeros(n, dtype=torch.long))
        if config.kmeans_init:
            self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def codebook(self) -> torch.Tensor:
        weight = self.embedding.weight
        return F.normalize(weight, dim=1) if self.config.l2_normalize else weight

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for each row of ``flat`` (N×D)."""
        codebook = self.codebook()
        if self.config.l2_normalize:
            return (flat @ codebook.t()).argmax(dim=1)
        # ||z||² + ||e||² - 2 z·e, in the same order as the original, so that ties break the same way.
        distances = flat.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1) - 2 * flat @ codebook.t()
        return distances.argmin(dim=1)

    def forward(self, z: torch.Tensor) -> Quantized:
        b, d, h, w = z.shape
        if d != self.config.embed_dim:
            raise ValueError(f"latents: expected {self.config.embed_dim} channels, got {d}")
        z = z.permute(0, 2, 3, 1).float()
        if self.config.l2_normalize:
            z = F.normalize(z, dim=-1)
        flat = z.reshape(-1, d)
        if self.config.kmeans_init and self.training and not self.initialized:
            self._kmeans_init(flat.detach())
        with torch.no_grad():
            indices = self.nearest(flat)
        if self.training and (self.config.ema or self.config.dead_code_threshold > 0):
            self._update_codebook(flat.detach(), indices)
        z_q = F.embedding(indices, self.codebook()).view_as(z)

        commitment = F.mse_loss(z, z_q.detach())
        if self.config.ema:
            loss = self.config.beta * commitment
        else:
            codebook_term = F.mse_loss(z_q, z.detach())
            if self.config.legacy_loss:
                loss = commitment + self.config.beta * codebook_term
            else:
                loss = codebook_term + self.config.beta * commitment

        z_q = z + (z_q - z).detach()
        indices = self._public(indices.view(b, h, w))
        return Quantized(z_q.permute(0, 3, 1, 2).contiguous(), loss, indices)

    @torch.no_grad()
    def _update_codebook(self, flat: torch.Tensor, indices: torch.Tensor) -> None:
        """EMA step and dead-code restarts; statistics are summed over DDP ranks so every rank keeps one codebook."""
        n = self.config.num_codes
        counts = torch.bincount(indices, minlength=n).to(flat.dtype)
        distributed = dist.is_available() and dist.is_initialized()
        if self.config.ema:
            sums = torch.zeros(n, flat.shape[1], dtype=flat.dtype, device=flat.device).index_add_(0, indices, flat)
            if distributed:
                dist.all_reduce(sums)
        if distributed:
            dist.all_reduce(counts)
        if self.config.ema:
            decay, eps = self.config.ema_decay, self.config.ema_eps
            self.ema_cluster_size.lerp_(counts, 1 - decay)
            self.ema_embed_sum.lerp_(sums, 1 - decay)
            # Laplace smoothing keeps rarely used codes from dividing by zero; codes never used keep their vector.
            total = self.ema_cluster_size.sum()
            size = (self.ema_cluster_size + eps) / (total + n * eps) * total
            seen = self.ema_cluster_size > eps
            self.embedding.weight[seen] = self.ema_embed_sum[seen] / size[seen].unsqueeze(1)
        if self.config.dead_code_threshold > 0:
            self.steps_unused.add_(1).masked_fill_(counts > 0, 0)
            dead = self.steps_unused >= self.config.dead_code_threshold
            if dead.any():
                self._restart(dead, flat, distributed)

    @torch.no_grad()
    def _kmeans_init(self, flat: torch.Tensor) -> None:
        """Lloyd's k-means on this batch's latents (rank 0's, broadcast) as the starting codebook."""
        n = self.config.num_codes
        centres = flat[torch.randint(0, flat.shape[0], (n,), device=flat.device)].clone()
        for _ in range(self.config.kmeans_iters):
            if self.config.l2_normalize:
                centres = F.normalize(centres, dim=1)
                assignment = (flat @ centres.t()).argmax(1)
            else:
                assignment = torch.cdist(flat, centres).argmin(1)
            counts = torch.bincount(assignment, minlength=n).to(flat.dtype)
            sums = torch.zeros_like(centres).index_add_(0, assignment, flat)
            used = counts > 0  # an empty cluster keeps its centre
            centres[used] = sums[used] / counts[used].unsqueeze(1)
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(centres, src=0)
        self.embedding.weight.copy_(centres)
        if self.config.ema:
            self.ema_embed_sum.copy_(centres)
            self.ema_cluster_size.fill_(1.0)
        self.initialized.fill_(True)

    def _restart(self, dead: torch.Tensor, flat: torch.Tensor, distributed: bool) -> None:
        """Move dead codes onto latents of the current batch (rank 0's choice, broadcast to all ranks)."""
        picks = flat[torch.randint(0, flat.shape[0], (int(dead.sum()),), device=flat.device)]
        if distributed:
            dist.broadcast(picks, src=0)
        self.embedding.weight[dead] = picks
        self.steps_unused[dead] = 0
        if self.config.ema:
            self.ema_cluster_size[dead] = 1.0
            self.ema_embed_sum[dead] = picks


class GumbelQuantizer(_Quantizer):
    """Gumbel-softmax quantizer: a 1×1 projection to code logits, then a (hard) relaxed one-hot over the codebook.

    In eval the code is the argmax of the logits (deterministic) unless ``stochastic_eval`` restores the original's
    sampling. The loss is ``kl_weight · KL(q ‖ uniform)``.
    """

    def __init__(self, config: QuantizerConfig):
        super().__init__(config)
        self.proj = nn.Conv2d(config.embed_dim, config.num_codes, 1)
        self.embed = nn.Embedding(config.num_codes, config.embed_dim)
        self.temperature = config.temperature

    def codebook(self) -> torch.Tensor:
        return self.embed.weight

    def forward(self, z: torch.Tensor, temperature: float | None = None) -> Quantized:
        logits = self.proj(z)
        if self.remaps:  # only the used codes compete
            logits = logits.masked_fill(~self._used_mask(logits), float("-inf"))
        if self.training or self.config.stochastic_eval:
            hard = self.config.straight_through if self.training else True
            tau = self.temperature if temperature is None else temperature
            one_hot = F.gumbel_softmax(logits, tau=tau, dim=1, hard=hard)
        else:
            one_hot = F.one_hot(logits.argmax(1), self.config.num_codes).permute(0, 3, 1, 2).to(logits.dtype)
        z_q = torch.einsum("bnhw,nd->bdhw", one_hot, self.embed.weight)
        probs = F.softmax(logits, dim=1)
        kl = torch.sum(probs * torch.log(probs * self.config.num_codes + 1e-10), dim=1).mean()
        indices = self._public(one_hot.argmax(dim=1))
        return Quantized(z_q, self.config.kl_weight * kl, indices, logits)

    def _used_mask(self, logits: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
        mask[self.used] = True
        return mask.view(1, -1, 1, 1)


def build_quantizer(config: QuantizerConfig) -> _Quantizer:
    return GumbelQuantizer(config) if config.kind == "gumbel" else VectorQuantizer(config)
