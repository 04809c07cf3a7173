"""Per-image fidelity metrics on tensors in [-1, 1]."""

from __future__ import annotations

import torch


def psnr(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image (``B×C×H×W`` or ``C×H×W``), on the [0, 1] scale after clamping."""
    prediction = (prediction.float().clamp(-1, 1) + 1) / 2
    target = (target.float().clamp(-1, 1) + 1) / 2
    mse = (prediction - target).pow(2).flatten(-3).mean(-1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-12))
