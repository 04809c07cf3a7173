"""Finite scalar quantization (Mentzer et al. 2023, https://arxiv.org/abs/2309.15505): each latent channel is
bounded and rounded to one of ``levels[i]`` values; the code is the mixed-radix number of those digits.

No codebook to learn and no codebook loss: every one of the ``prod(levels)`` codes stays reachable.
"""

from __future__ import annotations

import torch

from tamer.nn.quantize.base import Quantized, Quantizer, QuantizerConfig, straight_through

BOUND_EPS = 1e-3  # keeps tanh's bound just past the outer levels, so they are reached (the paper's appendix A.1)


class FiniteScalarQuantizer(Quantizer):
    """``z -> round(tanh(z + shift)·half_l - offset) / (L // 2)``, straight-through; values in [-1, 1]."""

    def __init__(self, config: QuantizerConfig):
        super().__init__(config)
        levels = torch.tensor(config.levels)
        # Fixed by the config, so not saved with the weights.
        self.register_buffer("levels", levels, persistent=False)
        self.register_buffer("basis", torch.cumprod(torch.cat([torch.ones(1, dtype=torch.long), levels[:-1]]), 0),
                             persistent=False)

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """Latents ``…×D`` -> values in ``(-L/2, L/2)`` per channel whose rounding gives ``L`` integers centred on 0
        (even ``L`` are shifted by a half so that they too have ``L`` integers in range)."""
        half_l = (self.levels - 1) * (1 + BOUND_EPS) / 2
        offset = torch.where(self.levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half_l)
        return torch.tanh(z + shift) * half_l - offset

    def quantize(self, z: torch.Tensor) -> Quantized:
        z = z.permute(0, 2, 3, 1)  # B×h×w×D
        bounded = self.bound(z)
        half_width = self.levels // 2
        z_q = straight_through(bounded, bounded.round()) / half_width
        digits = (bounded.round().detach() + half_width).long()  # 0..L-1 per channel
        indices = (digits * self.basis).sum(-1)
        return Quantized(z_q.permute(0, 3, 1, 2).contiguous(), z.new_zeros(()), indices)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        digits = (indices.unsqueeze(-1) // self.basis) % self.levels
        half_width = self.levels // 2
        return (digits - half_width).float() / half_width

    def codebook(self) -> torch.Tensor:
        """All ``prod(levels)`` codes, ``n×D``, in index order."""
        return self.lookup(torch.arange(self.config.num_codes, device=self.levels.device))
