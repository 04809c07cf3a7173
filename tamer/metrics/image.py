"""Per-image fidelity metrics on tensors in [-1, 1]."""

from __future__ import annotations

import torch


def psnr(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image (``B×C×H×W`` or ``C×H×W``), on the [0, 1] scale after clamping."""
    prediction = (prediction.float().clamp(-1, 1) + 1) / 2
    target = (target.float().clamp(-1, 1) + 1) / 2
    mse = (prediction - target).pow(2).flatten(-3).mean(-1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-12))


def _gaussian_window(sigma: float = 1.5, truncate: float = 3.5, device=None) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)  # scipy.ndimage's rule, as scikit-image uses
    x = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    window = torch.exp(-0.5 * (x / sigma) ** 2)
    return window / window.sum()


def ssim(prediction: torch.Tensor, target: torch.Tensor, sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity per image (``B×C×H×W`` in [-1, 1]), averaged over channels.

    The definition of scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1)`` on [0, 1] images: Gaussian statistics over the positions where the
    whole window fits (scikit-image crops exactly that border), so the two agree to float precision.
    """
    if prediction.dim() == 3:
        return ssim(prediction[None], target[None], sigma)[0]
    x = (prediction.double().clamp(-1, 1) + 1) / 2
    y = (target.double().clamp(-1, 1) + 1) / 2
    b, c, h, w = x.shape
    window = _gaussian_window(sigma, device=x.device)
    k = window.numel()
    if h < k or w < k:
        raise ValueError(f"ssim: images of {h}×{w} are smaller than the {k}×{k} window")

    def blur(t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(b * c, 1, *t.shape[-2:])
        t = torch.nn.functional.conv2d(t, window.view(1, 1, 1, k))
        return torch.nn.functional.conv2d(t, window.view(1, 1, k, 1))

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return index.reshape(b, c, -1).mean(dim=(1, 2)).float()
