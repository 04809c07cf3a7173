"""Residual vector quantization (SoundStream, https://arxiv.org/abs/2107.03312; RQ-VAE,
https://arxiv.org/abs/2203.01941): ``depth`` codes per position, each the nearest code to what the codes before it
left unexplained; the latent is their sum.

Index layout: the ``depth`` codes of a position sit side by side along the width, coarse to fine, so indices are
``B×h×(w·depth)`` and ``indices[b, i, j·depth + k]`` is depth ``k`` at position ``(i, j)``. Read in raster order
(what a transformer sees), each position's codes come together, coarse first. Every depth's codes lie in
``[0, num_codes)``, with one codebook for all depths (``shared_codebook``) or one per depth.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from tamer.nn.quantize.base import Quantized, Quantizer, QuantizerConfig, straight_through
from tamer.nn.quantize.rotation import rotate_to
from tamer.nn.quantize.vq import VectorQuantizer


class ResidualQuantizer(Quantizer):
    """A stack of :class:`VectorQuantizer` on the residuals; the loss is the sum of theirs, and one estimator
    (straight-through or the rotation trick) passes the gradient from the summed codes to the latent."""

    def __init__(self, config: QuantizerConfig):
        super().__init__(config)
        layer = replace(config, kind="vq", rotation_trick=False)
        count = 1 if config.shared_codebook else config.depth
        self.layers = nn.ModuleList(VectorQuantizer(layer) for _ in range(count))

    def layer(self, depth: int) -> VectorQuantizer:
        return self.layers[0 if self.config.shared_codebook else depth]

    def quantize(self, z: torch.Tensor) -> Quantized:
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        residual, total, loss, codes = flat, torch.zeros_like(flat), flat.new_zeros(()), []
        for depth in range(self.config.depth):
            indices, z_q, layer_loss = self.layer(depth).assign(residual)
            residual = residual - z_q.detach()
            total = total + z_q
            loss = loss + layer_loss
            codes.append(indices)
        total = rotate_to(flat, total) if self.config.rotation_trick else straight_through(flat, total)
        latents = total.view(b, h, w, d).permute(0, 3, 1, 2).contiguous()
        indices = torch.stack(codes, -1).view(b, h, w * self.config.depth)
        return Quantized(latents, loss, indices)

    def dequantize(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices ``B×h×(w·depth)`` -> latents ``B×D×h×w``."""
        self.check_indices(indices)
        b, h, width = indices.shape
        if width % self.config.depth:
            raise ValueError(f"indices: a residual quantizer of depth {self.config.depth} needs a width that is a "
                             f"multiple of {self.config.depth} (B×h×(w·depth)), got {tuple(indices.shape)}")
        per_depth = indices.long().view(b, h, width // self.config.depth, self.config.depth)
        latents = sum(self.layer(k).lookup(per_depth[..., k]) for k in range(self.config.depth))
        return latents.permute(0, 3, 1, 2).contiguous()
