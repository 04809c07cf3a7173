"""Running reconstruction metrics over batches, shared by validation during training and ``tamer eval recon``."""

from __future__ import annotations

import torch

from tamer.metrics.codebook import codebook_statistics, count_codes
from tamer.metrics.image import psnr, ssim

#: the smallest side SSIM's 11×11 Gaussian window fits in
SSIM_MIN_SIDE = 11


class ReconstructionTally:
    """Per-image PSNR, L1, SSIM (pictures of at least ``SSIM_MIN_SIDE`` pixels) and LPIPS (with ``perceptual``)
    summed over batches, and code counts; validation during training and ``evaluate_reconstructions`` share it,
    so their numbers compare."""

    def __init__(self, vocab_size: int, perceptual: torch.nn.Module | None = None):
        self.perceptual = perceptual
        self.sums = {"psnr": 0.0, "l1": 0.0, "ssim": 0.0} | ({"lpips": 0.0} if perceptual is not None else {})
        self.counts = torch.zeros(vocab_size)
        self.images = 0
        self.ssim_ok = True

    def add(self, images: torch.Tensor, reconstruction: torch.Tensor, indices: torch.Tensor) -> None:
        """``reconstruction``: the model's float output clamped to [-1, 1]."""
        self.sums["psnr"] += psnr(reconstruction, images).sum().item()
        self.sums["l1"] += (reconstruction - images).abs().flatten(1).mean(1).sum().item()
        self.ssim_ok = self.ssim_ok and images.shape[1] in (1, 3) and min(images.shape[-2:]) >= SSIM_MIN_SIDE
        if self.ssim_ok:
            self.sums["ssim"] += ssim(reconstruction, images).sum().item()
        if self.perceptual is not None:
            self.sums["lpips"] += self.perceptual(images, reconstruction).sum().item()
        self.counts += count_codes(indices, self.counts.numel())
        self.images += images.shape[0]

    def metrics(self) -> dict[str, float]:
        """Means over images (SSIM only where every batch allowed it) and the codebook statistics."""
        metrics = {name: value / max(self.images, 1) for name, value in self.sums.items()
                   if name != "ssim" or self.ssim_ok}
        return metrics | codebook_statistics(self.counts)
