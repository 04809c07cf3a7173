"""The quantizer interface: its config, its output and the base class every kind derives from.

Every quantizer maps latents ``B×D×h×w`` to a :class:`Quantized` (latents that pass a gradient, loss, indices) and
turns indices back into latents with :meth:`Quantizer.dequantize`. Indices are ``B×h×w`` in the *public* index space
(after remapping, when a remap is configured); a residual quantizer puts its ``depth`` codes per position side by
side along the width, ``B×h×(w·depth)`` (see :mod:`.residual`). Codes are always computed in fp32, outside any
autocast: a bf16 distance or rounding picks other codes (vector-quantize-pytorch #114).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from tamer.config import checked_keywords

KINDS = ("vq", "gumbel", "fsq", "lfq", "simvq", "residual")
# Options of the nearest-neighbour codebook (the kinds built on VectorQuantizer take them).
_VQ_ONLY = ("ema", "kmeans_init", "dead_code_threshold")


@checked_keywords
@dataclass
class QuantizerConfig:
    """Which quantizer and how it behaves; ``kind`` is one of :data:`KINDS`.

    ``num_codes`` is derived for ``fsq`` (the product of ``levels``) and ``lfq`` (``2 ** embed_dim``).
    """

    kind: Literal["vq", "gumbel", "fsq", "lfq", "simvq", "residual"] = "vq"
    num_codes: int = 1024
    embed_dim: int = 256
    # vq, simvq, residual: commitment weight; ``legacy_loss`` reproduces the original's swapped weighting (imports
    # turn it on). lfq: the commitment weight too.
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
    # vq, simvq: l2-normalised codes and latents (cosine distance), for low-dimensional codebooks (ViT-VQGAN,
    # https://arxiv.org/abs/2110.04627; LlamaGen).
    l2_normalize: bool = False
    # vq, simvq, residual: the rotation trick (https://arxiv.org/abs/2410.06424) instead of the straight-through
    # estimator: the gradient reaches the latent through the rotation that takes it onto its code.
    rotation_trick: bool = False
    # gumbel
    kl_weight: float = 5e-4
    temperature: float = 1.0
    straight_through: bool = True
    stochastic_eval: bool = False
    # fsq (https://arxiv.org/abs/2309.15505): levels per latent channel (embed_dim = len(levels)), e.g. [8, 6, 5].
    levels: tuple[int, ...] | None = None
    # lfq (MAGVIT-v2, https://arxiv.org/abs/2310.05737): one bit per latent channel; entropy loss weight, the weight
    # of the batch (codebook) entropy against the per-sample entropy, and the softmax temperature of the entropy.
    # ``spherical``: BSQ (https://arxiv.org/abs/2406.07548), latents and codes on the unit sphere.
    entropy_weight: float = 0.1
    diversity_gamma: float = 1.0
    entropy_temperature: float = 0.01
    spherical: bool = False
    # residual (https://arxiv.org/abs/2107.03312, RQ-VAE https://arxiv.org/abs/2203.01941): codes per position,
    # each quantizing what the previous ones left; one codebook for all depths or one per depth.
    depth: int = 2
    shared_codebook: bool = False
    # remapping to a subset of used codes (the original's ``remap``): the ``used`` buffer comes with the weights.
    remap_size: int | None = None
    unknown_index: Literal["random", "extra"] | int = "random"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"quantizer.kind: expected one of {', '.join(map(repr, KINDS))}, got {self.kind!r}")
        if self.embed_dim < 1:
            raise ValueError("quantizer.embed_dim must be positive")
        if self.kind == "fsq":
            self._check_levels()
            self.num_codes = math.prod(self.levels)
        elif self.kind == "lfq":
            if self.embed_dim > 16:
                raise ValueError(f"quantizer.embed_dim: lfq's entropy covers all 2^embed_dim codes; expected at most "
                                 f"16 bits, got {self.embed_dim}")
            self.num_codes = 2 ** self.embed_dim
        if self.num_codes < 1:
            raise ValueError("quantizer.num_codes must be positive")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"quantizer.ema_decay: expected a value in (0, 1), got {self.ema_decay}")
        self._check_options()

    def _check_levels(self) -> None:
        if not self.levels:
            raise ValueError("quantizer.levels: kind 'fsq' needs levels per channel, e.g. [8, 6, 5]")
        self.levels = tuple(self.levels)
        if len(self.levels) != self.embed_dim:
            raise ValueError(f"quantizer.levels: fsq quantizes each latent channel, so embed_dim must equal "
                             f"len(levels); got embed_dim {self.embed_dim} and {len(self.levels)} levels")
        if min(self.levels) < 3:
            raise ValueError(f"quantizer.levels: each level must be at least 3 (a level of 2 rounds asymmetrically; "
                             f"use kind 'lfq' for bits), got {list(self.levels)}")

    def _check_options(self) -> None:
        kind = self.kind
        if kind not in ("vq", "residual") and any(getattr(self, name) for name in _VQ_ONLY):
            raise ValueError(f"quantizer: {', '.join(_VQ_ONLY)} apply to kinds 'vq' and 'residual', not {kind!r}")
        if self.l2_normalize and kind not in ("vq", "simvq"):
            raise ValueError(f"quantizer.l2_normalize applies to kinds 'vq' and 'simvq', not {kind!r}")
        if self.rotation_trick and kind not in ("vq", "simvq", "residual"):
            raise ValueError(f"quantizer.rotation_trick applies to kinds 'vq', 'simvq' and 'residual', not {kind!r}")
        if self.remap_size is not None and kind not in ("vq", "gumbel"):
            raise ValueError(f"quantizer.remap_size applies to kinds 'vq' and 'gumbel', not {kind!r}")
        if self.levels is not None and kind != "fsq":
            raise ValueError(f"quantizer.levels applies to kind 'fsq' only, not {kind!r}")
        if kind == "residual":
            if self.depth < 1:
                raise ValueError(f"quantizer.depth: expected at least 1 code per position, got {self.depth}")
            if self.shared_codebook and any(getattr(self, name) for name in _VQ_ONLY):
                raise ValueError(f"quantizer.shared_codebook: {', '.join(_VQ_ONLY)} need one codebook per depth")

    @property
    def codes_per_position(self) -> int:
        """How many indices each latent position has (``depth`` for residual, else 1)."""
        return self.depth if self.kind == "residual" else 1

    @property
    def vocab_size(self) -> int:
        """Number of distinct indices the quantizer emits (what a transformer over its codes must predict)."""
        if self.remap_size is None:
            return self.num_codes
        return self.remap_size + (1 if self.unknown_index == "extra" else 0)


@dataclass
class Quantized:
    latents: torch.Tensor  # B×D×h×w, passing a gradient to the input (straight-through or rotation trick)
    loss: torch.Tensor  # scalar codebook + commitment (or KL, or entropy) loss
    indices: torch.Tensor  # B×h×w, long (B×h×(w·depth) for residual)
    logits: torch.Tensor | None = None  # Gumbel only: B×n×h×w


class Quantizer(nn.Module):
    """Base of every kind: fp32 codes outside autocast, index checks and remapping, dequantization by lookup."""

    def __init__(self, config: QuantizerConfig):
        super().__init__()
        self.config = config
        self.remaps = config.remap_size is not None
        if self.remaps:
            # The codes in use, in public index order; the real values come with the weights.
            self.register_buffer("used", torch.arange(config.remap_size))

    def forward(self, z: torch.Tensor, **kwargs) -> Quantized:
        """Latents ``B×D×h×w`` -> :class:`Quantized`, computed in fp32 whatever the surrounding autocast."""
        if z.dim() != 4 or z.shape[1] != self.config.embed_dim:
            raise ValueError(f"latents: expected shape B×{self.config.embed_dim}×h×w, got {tuple(z.shape)}")
        with torch.autocast(z.device.type, enabled=False):
            return self.quantize(z.float(), **kwargs)

    def quantize(self, z: torch.Tensor) -> Quantized:
        raise NotImplementedError

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
                remapped[unknown] = torch.randint(0, self.config.vocab_size, (int(unknown.sum()),),
                                                  device=indices.device)
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

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Codebook indices (any shape) -> their codes, with a trailing channel axis."""
        return F.embedding(indices, self.codebook())

    def check_indices(self, indices: torch.Tensor) -> None:
        if indices.dim() != 3:
            raise ValueError(f"indices: expected shape B×h×w, got {tuple(indices.shape)}")
        vocab = self.config.vocab_size
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= vocab):
            raise ValueError(f"indices: values must lie in [0, {vocab}), got "
                             f"[{int(indices.min())}, {int(indices.max())}]")

    def dequantize(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices ``B×h×w`` -> latents ``B×D×h×w``."""
        self.check_indices(indices)
        return self.lookup(self._internal(indices)).permute(0, 3, 1, 2).contiguous()


def straight_through(z: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
    """The value of ``z_q`` with the gradient of ``z`` (VQ-VAE, https://arxiv.org/abs/1711.00937)."""
    return z + (z_q - z).detach()
