"""SimVQ (Zhu et al. 2024, https://arxiv.org/abs/2411.02038): the codebook is a frozen random basis through one
learned linear map, so every step's gradient moves the whole codebook and no code is left behind."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tamer.nn.quantize.vq import VectorQuantizer


class SimVQuantizer(VectorQuantizer):
    """Nearest neighbour in the implicit codebook ``W·C`` (``C`` frozen, ``N(0, 1/D)``; ``W`` learned, ``D×D``);
    the loss and the gradient estimator (straight-through or ``rotation_trick``) are the VQ's."""

    def init_codebook(self, n: int, d: int) -> None:
        self.register_buffer("frozen_codebook", torch.randn(n, d) * d ** -0.5)  # saved: it is the model
        self.code_transform = nn.Linear(d, d, bias=False)

    def codebook(self) -> torch.Tensor:
        codes = self.code_transform(self.frozen_codebook)
        return F.normalize(codes, dim=1) if self.config.l2_normalize else codes
