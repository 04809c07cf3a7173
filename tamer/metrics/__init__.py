"""Evaluation metrics: per-image fidelity, codebook use, and distribution metrics (FID/KID/IS/PR) with protocols.

- :mod:`.image`: PSNR, SSIM; :mod:`.codebook`: usage and perplexity of a VQGAN's codes.
- :mod:`.fid`: Fréchet distance, KID, IS, precision/recall from features (torch-fidelity's own helpers).
- :mod:`.inception`, :mod:`.features`: torch-fidelity's Inception from a checked local file, or a stand-in network.
- :mod:`.reference`: reference statistics ``.npz`` (ADM/MAR keys ``mu``, ``sigma``; tamer adds ``features``).
- :mod:`.sources`: image folders as uint8 batches; :mod:`.distribution`: which distribution metrics apply.
- :mod:`.reconstruction`, :mod:`.samples`: whole-set evaluations returning an :class:`EvalResult` (:mod:`.results`).
- :mod:`.rejection`: classifier rejection sampling (keep the top fraction, report the acceptance rate).
"""

from tamer.metrics.codebook import codebook_statistics, count_codes
from tamer.metrics.features import (
                  FeatureNetwork,
                  StandInFeatures,
                  extract_features,
                  metric_name,
                  to_uint8,
                  torchvision_stand_in,
)
from tamer.metrics.fid import (
                  GaussianStatistics,
                  feature_statistics,
                  frechet_distance,
                  inception_score,
                  kernel_distance,
                  precision_recall,
)
from tamer.metrics.image import psnr, ssim
from tamer.metrics.inception import (
                  InceptionFeatures,
                  MissingWeightsError,
                  default_inception_path,
                  inception_unavailable_reason,
)
from tamer.metrics.reconstruction import evaluate_reconstructions
from tamer.metrics.reference import ReferenceStatistics
from tamer.metrics.rejection import Rejection, classifier_scores, reject
from tamer.metrics.results import EvalResult
from tamer.metrics.samples import compute_reference, evaluate_samples

__all__ = [
    "psnr", "ssim", "codebook_statistics", "count_codes",
    "GaussianStatistics", "feature_statistics", "frechet_distance", "kernel_distance", "inception_score",
    "precision_recall",
    "FeatureNetwork", "StandInFeatures", "torchvision_stand_in", "extract_features", "metric_name", "to_uint8",
    "InceptionFeatures", "MissingWeightsError", "default_inception_path", "inception_unavailable_reason",
    "ReferenceStatistics", "EvalResult", "evaluate_reconstructions", "evaluate_samples", "compute_reference",
    "Rejection", "reject", "classifier_scores",
]
