"""PSNR and SSIM against scikit-image on the photos it ships."""

import numpy as np
import pytest
import torch
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from tamer.metrics.image import psnr, ssim


def as_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array).permute(2, 0, 1) * 2 - 1


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea"])
def test_psnr_and_ssim_match_scikit_image(name):
    clean = getattr(data, name)()[:200, :240].astype(np.float32) / 255
    rng = np.random.default_rng(0)
    for noisy in (np.clip(clean + rng.normal(0, 0.05, clean.shape), 0, 1).astype(np.float32),
                  np.clip(clean[::-1, :] * 0.7 + 0.1, 0, 1).copy().astype(np.float32)):
        expected_ssim = structural_similarity(clean, noisy, channel_axis=2, data_range=1.0, gaussian_weights=True,
                                              sigma=1.5, use_sample_covariance=False)
        assert ssim(as_tensor(noisy), as_tensor(clean)).item() == pytest.approx(expected_ssim, abs=1e-5)
        expected_psnr = peak_signal_noise_ratio(clean, noisy, data_range=1.0)
        assert psnr(as_tensor(noisy), as_tensor(clean)).item() == pytest.approx(expected_psnr, abs=1e-3)


def test_batched_and_identical_images():
    images = torch.rand(3, 3, 32, 40) * 2 - 1
    assert torch.allclose(ssim(images, images), torch.ones(3))
    assert ssim(images, -images).shape == (3,)
    assert torch.all(psnr(images, images) > 100)
