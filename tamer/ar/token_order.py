"""The order in which the transformer reads a code grid (the original's permuters).

``raster`` is row by row (the original's ``Identity``, and the only order the sliding-window sampler supports);
``subsample`` visits a coarse-to-fine quad-tree (``Subsample``); ``zcurve`` follows the Morton curve (``ZCurve``);
``alternate`` runs rows left-right then right-left (``AlternateParsing``). Orders are computed, never stored.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

TokenOrderName = Literal["raster", "subsample", "zcurve", "alternate"]


def order_indices(name: str, height: int, width: int) -> torch.Tensor:
    """``order[k]`` is the raster index of the ``k``-th token read."""
    raster = torch.arange(height * width).reshape(height, width)
    if name == "raster":
        return raster.reshape(-1)
    if name == "alternate":
        rows = [row if r % 2 == 0 else row.flip(0) for r, row in enumerate(raster)]
        return torch.cat(rows)
    if name == "subsample":
        # Repeatedly split the grid into 2×2 phases; the phase index becomes the slowest-varying digit.
        if height != width or height & (height - 1):
            raise ValueError(f"token order 'subsample' needs a square power-of-two grid, got {height}×{width}")
        grid = raster[None]
        while grid.shape[-1] > 1:
            c, h, w = grid.shape
            grid = grid.reshape(c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3).reshape(c * 4, h // 2, w // 2)
        return grid.reshape(-1)
    if name == "zcurve":
        codes = [_morton(i, j) for i in range(height) for j in range(width)]
        return torch.tensor(sorted(range(height * width), key=codes.__getitem__))
    raise ValueError(f"token order {name!r}: expected one of raster, subsample, zcurve, alternate")


def _morton(i: int, j: int) -> int:
    """Interleave the bits of row ``i`` (odd positions) and column ``j`` (even positions)."""
    code = 0
    for bit in range(32):
        code |= ((j >> bit) & 1) << (2 * bit) | ((i >> bit) & 1) << (2 * bit + 1)
    return code


class TokenOrder(nn.Module):
    """``forward``: ``B×h×w`` grid -> ``B×N`` sequence in reading order; ``grid``: the inverse."""

    def __init__(self, name: str, height: int, width: int):
        super().__init__()
        self.name, self.height, self.width = name, height, width
        order = order_indices(name, height, width)
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("inverse", torch.argsort(order), persistent=False)

    def _check(self, height: int, width: int) -> None:
        if (height, width) != (self.height, self.width) and self.name != "raster":
            raise ValueError(f"token order {self.name!r} was built for {self.height}×{self.width} codes, "
                             f"not {height}×{width} (only raster order works at other sizes)")

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        B, h, w = grid.shape
        self._check(h, w)
        flat = grid.reshape(B, h * w)
        return flat if self.name == "raster" else flat[:, self.order]

    def grid(self, sequence: torch.Tensor, height: int | None = None, width: int | None = None) -> torch.Tensor:
        height = self.height if height is None else height
        width = self.width if width is None else width
        self._check(height, width)
        if self.name != "raster":
            sequence = sequence[:, self.inverse]
        return sequence.reshape(sequence.shape[0], height, width)
