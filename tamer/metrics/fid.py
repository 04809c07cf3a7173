"""Distances between feature sets: Fréchet distance, kernel distance, Inception Score, precision/recall.

Each function is a thin, typed wrapper around torch-fidelity's own statistics helpers (the code behind its
``calculate_metrics``), so numbers agree with torch-fidelity run on the same features; the Fréchet distance adds
one exact shortcut for sets smaller than the feature dimension (see :func:`frechet_distance`). Features are taken in
float64 where torch-fidelity computes in whatever dtype it is given (mean, covariance, polynomial kernels), so the
result does not depend on float32 round-off over tens of thousands of images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

#: torch-fidelity's defaults, the values every paper using it reports with
KID_SUBSETS, KID_SUBSET_SIZE, IS_SPLITS, PR_NEIGHBORHOOD, RNG_SEED = 100, 1000, 10, 3, 2020


@dataclass
class GaussianStatistics:
    """Mean ``D`` and covariance ``D×D`` (float64) of a feature set: all FID needs of it."""

    mu: np.ndarray
    sigma: np.ndarray

    def __post_init__(self):
        self.mu = np.asarray(self.mu, dtype=np.float64)
        self.sigma = np.asarray(self.sigma, dtype=np.float64)
        if self.mu.ndim != 1 or self.sigma.shape != (self.mu.shape[0],) * 2:
            raise ValueError(f"statistics: expected mu of shape D and sigma D×D, got {self.mu.shape} and "
                             f"{self.sigma.shape}")


def feature_statistics(features: torch.Tensor) -> GaussianStatistics:
    """Mean and (unbiased, ``N - 1``) covariance of ``N×D`` features, through torch-fidelity."""
    from torch_fidelity.metric_fid import fid_features_to_statistics

    if features.dim() != 2 or features.shape[0] < 2:
        raise ValueError(f"statistics need at least 2 feature vectors (N×D), got shape {tuple(features.shape)}")
    stats = fid_features_to_statistics(features.detach().cpu().double())
    return GaussianStatistics(stats["mu"], stats["sigma"])


def frechet_distance(a: GaussianStatistics, b: GaussianStatistics, features_a: torch.Tensor | None = None) -> float:
    """``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^{1/2})``: FID on Inception features, FD_<name> on others.

    torch-fidelity takes the trace of the matrix square root from the eigenvalues of ``S_a S_b``, which stays
    finite where ``scipy.linalg.sqrtm`` meets singular covariances. That needs a dense non-symmetric eigensolve of
    ``D×D`` (2048² for Inception: seconds to a minute on a small CPU). When ``features_a`` (the ``N×D`` features
    ``a`` was computed from) are given and ``N ≤ D``, the same eigenvalues come exactly from the ``N×N`` symmetric
    matrix ``X S_b Xᵀ / (N - 1)`` (``X`` the centred features), since ``S_a S_b = Xᵀ (X S_b) / (N - 1)``
    and ``PQ`` and ``QP`` share their non-zero eigenvalues.
    """
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    if a.mu.shape != b.mu.shape:
        raise ValueError(f"statistics of {a.mu.shape[0]}-d and {b.mu.shape[0]}-d features cannot be compared; "
                         "were they computed with different feature networks?")
    if features_a is not None and 2 <= len(features_a) <= a.mu.shape[0]:
        centred = features_a.detach().cpu().double().numpy()
        centred = centred - centred.mean(axis=0)
        small = centred @ b.sigma @ centred.T / (len(centred) - 1)
        tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((small + small.T) / 2), 0, None)).sum()
        diff = a.mu - b.mu
        return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * tr_covmean)
    out = fid_statistics_to_metric({"mu": a.mu, "sigma": a.sigma}, {"mu": b.mu, "sigma": b.sigma}, verbose=False)
    return out[KEY_METRIC_FID]


def kid_subset_size(n_a: int, n_b: int, subset_size: int = KID_SUBSET_SIZE) -> int:
    """The subset size KID uses: torch-fidelity's 1000, or fewer when a set is smaller."""
    return min(subset_size, n_a, n_b)


def kernel_distance(a: torch.Tensor, b: torch.Tensor, subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE,
                    seed: int = RNG_SEED) -> tuple[float, float]:
    """Kernel (Inception) distance: mean and std of the unbiased MMD² with the cubic polynomial kernel
    ``(x·y / D + 1)^3`` over ``subsets`` random subsets of ``subset_size`` (clipped to the smaller set)."""
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    size = kid_subset_size(len(a), len(b), subset_size)
    if size < 2:
        raise ValueError(f"KID needs at least 2 images in each set, got {len(a)} and {len(b)}")
    out = kid_features_to_metric(a.detach().cpu().double(), b.detach().cpu().double(), kid_subsets=subsets,
                                 kid_subset_size=size, rng_seed=seed, verbose=False)
    return out[KEY_METRIC_KID_MEAN], out[KEY_METRIC_KID_STD]


def inception_score(logits: torch.Tensor, splits: int = IS_SPLITS, seed: int = RNG_SEED) -> tuple[float, float]:
    """Inception Score ``exp E[KL(p(y|x) || p(y))]``: mean and std over ``splits`` (at most one per image)."""
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric

    out = isc_features_to_metric(logits.detach().cpu(), splits=min(splits, len(logits)), shuffle=True,
                                 rng_seed=seed)
    return out[KEY_METRIC_ISC_MEAN], out[KEY_METRIC_ISC_STD]


def precision_recall(generated: torch.Tensor, real: torch.Tensor,
                     neighborhood: int = PR_NEIGHBORHOOD) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with ``neighborhood``-NN balls, as torch-fidelity.

    Precision: share of generated samples inside some real sample's ball; recall: the reverse.
    """
    from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric

    if min(len(generated), len(real)) <= neighborhood:
        raise ValueError(f"precision/recall need more than {neighborhood} images in each set, "
                         f"got {len(generated)} and {len(real)}")
    out = prc_features_to_metric(generated.detach().cpu().float(), real.detach().cpu().float(),
                                 prc_neighborhood=neighborhood, save_cpu_ram=True, verbose=False)
    return out[KEY_METRIC_PRECISION], out[KEY_METRIC_RECALL]
