"""Sample evaluation: FID, KID, IS and precision/recall of generated images against a reference set.

The reference is an image folder (its features are computed with the same network, and can be saved for reuse)
or a saved ``.npz`` (see :mod:`tamer.metrics.reference`), which must have been made with the same feature network.
Samples are a folder of image files or a tensor of images (floats in [-1, 1], quantized to uint8 like files would
be, or uint8 already).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from tamer.devices import resolve_device
from tamer.metrics.distribution import distribution_metrics, network_protocol, resolve_feature_network
from tamer.metrics.features import FeatureNetwork, extract_features, to_uint8
from tamer.metrics.reference import ReferenceStatistics
from tamer.metrics.results import EvalResult, library_versions
from tamer.metrics.sources import ImageFiles, uint8_batches

ImageSource = str | Path | torch.Tensor

INPUT_POLICY = ("images as uint8 RGB (files decoded with Pillow, gray and alpha converted; tensors in [-1, 1] "
                "rounded to 8 bits), each at its own size")


def _source(images: ImageSource, batch_size: int, limit: int | None,
            num_workers: int) -> tuple[Iterator[torch.Tensor], int, str, ImageFiles | None]:
    """``(uint8 batches, number of images, description, the files or None)`` for a folder or an image tensor."""
    if isinstance(images, torch.Tensor):
        if images.dim() != 4:
            raise ValueError(f"images: expected a B×C×H×W tensor, got shape {tuple(images.shape)}")
        images = images[:limit] if limit is not None else images
        batches = (to_uint8(images[i:i + batch_size]) for i in range(0, len(images), batch_size))
        return batches, len(images), f"tensor of {len(images)} images", None
    files = ImageFiles(images, limit)
    return uint8_batches(files, batch_size, num_workers), len(files), str(Path(images)), files


def _features(network: FeatureNetwork, images: ImageSource, device: torch.device, batch_size: int,
              limit: int | None, num_workers: int, desc: str,
              notes: list[str] | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """Features of every readable image; a note for the files that were not (``notes``)."""
    batches, count, description, files = _source(images, batch_size, limit, num_workers)
    outputs = extract_features(network, batches, device, total=count, desc=desc)
    if files is not None and files.skipped:
        if not len(outputs["features"]):
            raise ValueError(f"{description}: none of its {count} images is readable (first: {files.skipped[0]})")
        if notes is not None:
            notes.append(f"{description}: {len(files.skipped)} of {count} files unreadable or too large, skipped; "
                         f"{count - len(files.skipped)} used (first: {files.skipped[0]})")
    return outputs, description


def compute_reference(images: ImageSource, *, features: FeatureNetwork | None = None,
                      inception_path: str | Path | None = None, batch_size: int = 50,
                      device: str | torch.device = "auto", limit: int | None = None, num_workers: int = 0,
                      keep_features: bool = True) -> ReferenceStatistics:
    """Statistics (and, with ``keep_features``, the features) of a real image set, with their protocol.

    Save them with :meth:`ReferenceStatistics.save` and pass the ``.npz`` to :func:`evaluate_samples` afterwards.
    """
    network, _ = resolve_feature_network(features, inception_path, required=True)
    device = resolve_device(device)
    network.to(device).eval()
    return _reference_from_images(network, images, device, batch_size, limit, num_workers, keep_features)


def _reference_from_images(network: FeatureNetwork, images: ImageSource, device: torch.device, batch_size: int,
                           limit: int | None, num_workers: int, keep_features: bool) -> ReferenceStatistics:
    notes: list[str] = []
    outputs, description = _features(network, images, device, batch_size, limit, num_workers, "reference", notes)
    protocol = {"source": description, "feature_network": network_protocol(network), "input": INPUT_POLICY,
                "versions": library_versions(), **({"skipped": notes[0]} if notes else {})}
    return ReferenceStatistics.from_features(outputs["features"], protocol, keep_features=keep_features)


def _load_reference(reference: str | Path | ReferenceStatistics, network: FeatureNetwork, device: torch.device,
                    batch_size: int, num_workers: int, notes: list[str]) -> tuple[ReferenceStatistics, dict]:
    """The reference statistics and a description of them for the protocol."""
    if isinstance(reference, ReferenceStatistics):
        stats, described = reference, {"kind": "statistics", "source": "given in memory"}
    elif Path(reference).is_dir():
        stats = _reference_from_images(network, reference, device, batch_size, None, num_workers, True)
        if "skipped" in stats.protocol:
            notes.append(stats.protocol["skipped"])
        return stats, {"kind": "folder", "source": str(reference)}
    elif Path(reference).is_file():
        stats, described = ReferenceStatistics.load(reference), {"kind": "statistics", "source": str(reference)}
    else:
        raise FileNotFoundError(f"--ref: {reference} is neither an image folder nor a statistics .npz")
    stats.check_network(network.name, described["source"])
    made_with = stats.protocol.get("feature_network", {})
    digest = made_with.get("weights_sha256_prefix")
    if digest and digest != network.protocol().get("weights_sha256_prefix"):
        notes.append(f"the reference statistics were computed from another weights file "
                     f"({made_with.get('weights')}, sha256 {digest}…) than this run's")
    described["protocol"] = stats.protocol
    return stats, described


def evaluate_samples(samples: ImageSource, reference: str | Path | ReferenceStatistics, *,
                     features: FeatureNetwork | None = None, inception_path: str | Path | None = None,
                     batch_size: int = 50, device: str | torch.device = "auto", limit: int | None = None,
                     num_workers: int = 0, acceptance_rate: float | None = None,
                     save_reference: str | Path | None = None) -> EvalResult:
    """FID/KID/IS/precision/recall of ``samples`` against ``reference`` (folder, ``.npz`` or statistics).

    ``features`` replaces Inception (metrics are then named ``FD_<name>``, ...). ``acceptance_rate``, when the
    samples were kept by classifier rejection (:mod:`tamer.metrics.rejection`), is reported beside the metrics.
    ``save_reference`` writes the statistics of a reference folder to an ``.npz`` for the next run.
    """
    network, _ = resolve_feature_network(features, inception_path, required=True)
    device = resolve_device(device)
    network.to(device).eval()
    notes: list[str] = []
    ref, ref_protocol = _load_reference(reference, network, device, batch_size, num_workers, notes)
    if save_reference is not None:
        ref.save(save_reference)
        notes.append(f"reference statistics saved to {save_reference}")
    outputs, description = _features(network, samples, device, batch_size, limit, num_workers, "samples", notes)
    if len(outputs["features"]) < 2:
        raise ValueError(f"{description}: at least 2 samples are needed")
    metrics, protocol, metric_notes = distribution_metrics(network, outputs, ref)
    if acceptance_rate is not None:
        metrics["acceptance_rate"] = acceptance_rate
    result_protocol = {
        "num_images": {"samples": len(outputs["features"]), "reference": ref.num_images},
        "samples": description,
        "reference": ref_protocol,
        "feature_network": network_protocol(network),
        "input": INPUT_POLICY,
        **protocol,
        "device": str(device),
        "versions": library_versions(),
    }
    if acceptance_rate is not None:
        result_protocol["rejection_sampling"] = (f"samples kept by classifier rejection at acceptance rate "
                                                 f"{acceptance_rate:g}")
    return EvalResult("samples", metrics, result_protocol, notes + metric_notes)
