"""The distribution-metric suite shared by reconstruction and sample evaluation: which network, which metrics.

Given the generated set's features and a reference (statistics, and features when kept), it computes the
Fréchet distance always, KID and precision/recall when the reference features are there, IS when the network
gives logits, and says in notes what it left out and why.
"""

from __future__ import annotations

import torch

from tamer.metrics.features import FeatureNetwork, metric_name
from tamer.metrics.fid import (
    IS_SPLITS,
    KID_SUBSETS,
    PR_NEIGHBORHOOD,
    RNG_SEED,
    feature_statistics,
    frechet_distance,
    inception_score,
    kernel_distance,
    kid_subset_size,
    precision_recall,
)
from tamer.metrics.inception import InceptionFeatures, inception_unavailable_reason
from tamer.metrics.reference import ReferenceStatistics

#: below this many images FID-like numbers are noticeably biased upward; published numbers use 50,000
SMALL_SET = 10_000


def resolve_feature_network(features: FeatureNetwork | None = None, inception_path=None,
                            required: bool = True) -> tuple[FeatureNetwork | None, str | None]:
    """The network to use and, when there is none and ``required`` is False, why not (a note for the result).

    A network the caller gives wins; otherwise Inception from ``inception_path`` or the hub cache. A missing
    default file raises :class:`~tamer.metrics.inception.MissingWeightsError` only when ``required``; a path the
    user names must exist either way.
    """
    if features is not None:
        return features, None
    if inception_path is None and not required:
        reason = inception_unavailable_reason()
        if reason is not None:
            return None, reason
    return InceptionFeatures(inception_path), None


def network_protocol(network: FeatureNetwork) -> dict:
    return {"name": network.name, **network.protocol()}


def distribution_metrics(network: FeatureNetwork, generated: dict[str, torch.Tensor], reference: ReferenceStatistics,
                         reconstruction: bool = False) -> tuple[dict[str, float], dict, list[str]]:
    """``(metrics, protocol, notes)`` for ``generated`` (a network's outputs) against ``reference``.

    With ``reconstruction`` only the Fréchet distance is computed (``rFID``): reconstructions against their
    own originals, where KID, IS and precision/recall add little.
    """
    metrics: dict[str, float] = {}
    protocol: dict = {}
    notes: list[str] = []
    features = generated["features"]
    fd = metric_name(network, "FD", reconstruction)
    metrics[fd] = frechet_distance(feature_statistics(features), reference.stats, features_a=features)
    count = min(len(features), reference.num_images or len(features))
    if count < SMALL_SET:
        notes.append(f"{fd} from {count} images is biased upward at this size; published numbers use 50,000 "
                     "(compare only numbers computed with the same number of images)")
    if reconstruction:
        return metrics, protocol, notes

    if reference.features is not None:
        kd = metric_name(network, "KD")
        size = kid_subset_size(len(features), len(reference.features))
        metrics[kd], metrics[f"{kd}_std"] = kernel_distance(features, reference.features, subset_size=size)
        protocol["kid"] = {"subsets": KID_SUBSETS, "subset_size": size, "seed": RNG_SEED,
                           "kernel": "polynomial (x·y/D + 1)^3", "estimator": "unbiased MMD²"}
        if min(len(features), len(reference.features)) > PR_NEIGHBORHOOD:
            precision, recall = precision_recall(features, reference.features)
            metrics[metric_name(network, "precision")], metrics[metric_name(network, "recall")] = precision, recall
            protocol["precision_recall"] = {
                "neighborhood": PR_NEIGHBORHOOD, "method": "Kynkäänniemi et al. 2019 (torch-fidelity's code)",
                "features": "the same pool features as FID (as ADM's evaluator; torch-fidelity's calculate_metrics "
                            "would default to VGG16 features for precision/recall)"}
        else:
            notes.append(f"precision/recall skipped: they need more than {PR_NEIGHBORHOOD} images in each set")
    else:
        notes.append("KID and precision/recall skipped: the reference holds only mu and sigma (no 'features'); "
                     "compute it with `tamer eval reference` to keep them")

    if "logits" in generated:
        name = metric_name(network, "IS")
        splits = min(IS_SPLITS, len(generated["logits"]))
        metrics[name], metrics[f"{name}_std"] = inception_score(generated["logits"], splits=splits)
        protocol["inception_score"] = {"splits": splits, "shuffle_seed": RNG_SEED}
    else:
        notes.append(f"{metric_name(network, 'IS')} skipped: feature network {network.name!r} gives no class logits")
    return metrics, protocol, notes
