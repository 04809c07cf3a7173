"""Reconstruction evaluation of a VQGAN over a whole dataset: PSNR, SSIM, LPIPS, codebook use, rFID.

Pixel metrics are means over images of per-image values, computed on the model's float output clamped to
[-1, 1] (as validation during training computes them, so the numbers compare with training logs). rFID compares
the reconstructions with their originals, both quantized to uint8 as PNG files would hold them. Codebook usage
and perplexity count every code of every image, not a recent window as training does.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from tamer.devices import autocast, resolve_precision
from tamer.metrics.distribution import distribution_metrics, network_protocol, resolve_feature_network
from tamer.metrics.features import FeatureNetwork, to_uint8
from tamer.metrics.reference import ReferenceStatistics
from tamer.metrics.results import EvalResult, library_versions
from tamer.metrics.tally import SSIM_MIN_SIDE, ReconstructionTally
from tamer.progress import progress_bar


def _lpips(vgg_path: str | Path | None, channels: int, notes: list[str]):
    """LPIPS when it can be built (a named file must exist), else ``None`` with a note saying why."""
    from tamer.nn.perceptual import VGG16_FILENAME, default_vgg_path, load_lpips

    if channels != 3:
        notes.append(f"LPIPS skipped: it compares RGB images, these have {channels} channels")
        return None
    if vgg_path is None and not default_vgg_path().is_file():
        notes.append(f"LPIPS not computed: the VGG16 weights {VGG16_FILENAME} are not at {default_vgg_path()} "
                     "(tamer never downloads; copy torchvision's file there or name it with --vgg PATH)")
        return None
    try:
        import lpips  # noqa: F401
    except ImportError:
        notes.append("LPIPS not computed: the `lpips` package is not installed (pip install 'tamer-vq[train]')")
        return None
    return load_lpips(vgg_path)


@torch.inference_mode()
def evaluate_reconstructions(model: torch.nn.Module, dataset: Dataset, *, limit: int | None = None,
                             batch_size: int = 8, num_workers: int = 0, features: FeatureNetwork | None = None,
                             inception_path: str | Path | None = None, fid: bool = True,
                             vgg_path: str | Path | None = None, lpips: bool | torch.nn.Module = True,
                             data_protocol: dict | None = None, image_key: str = "image",
                             precision: str = "fp32") -> EvalResult:
    """Reconstruct every image of ``dataset`` (its first ``limit``) with ``model`` (a VQGAN, on its device).

    ``precision`` is the model's autocast (``auto``: bf16 where it is fast; codes are chosen in fp32 whatever it
    is); the metrics themselves run in fp32, and the protocol records the precision resolved.

    rFID uses ``features`` if given, else the Inception network from ``inception_path`` or the hub cache; when
    the default file is missing rFID is skipped with a note (a path the user names must exist). LPIPS likewise
    with ``vgg_path``; ``lpips`` may also be an LPIPS module already built (e.g. by
    :func:`~tamer.nn.perceptual.lpips_from_compvis` from a CompVis checkpoint), or ``False``.
    ``data_protocol`` describes the data for the result (e.g. the DataConfig as a dict).
    """
    if not (hasattr(model, "vocab_size") and hasattr(model.config, "autoencoder")):
        raise ValueError(f"reconstruction evaluation needs a VQGAN, got {type(model).__name__}")
    device = next(model.parameters()).device
    chosen = resolve_precision(precision, device)
    model.eval()
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit: expected a positive number of images, got {limit}")
        dataset = Subset(dataset, range(min(limit, len(dataset))))
    total = len(dataset)
    channels = model.config.autoencoder.in_channels
    notes: list[str] = []

    if isinstance(lpips, torch.nn.Module):
        perceptual = lpips
    else:
        perceptual = _lpips(vgg_path, channels, notes) if lpips else None
    if perceptual is not None:
        perceptual.to(device)
    network = None
    if fid and channels not in (1, 3):
        notes.append(f"rFID skipped: feature networks take RGB or gray images, these have {channels} channels")
    elif fid:
        network, reason = resolve_feature_network(features, inception_path, required=False)
        if reason is not None:
            notes.append(f"rFID not computed: {reason}")
    if network is not None:
        network.to(device).eval()
    real_features: list[torch.Tensor] = []
    fake_features: list[torch.Tensor] = []

    tally = ReconstructionTally(model.vocab_size, perceptual)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    with progress_bar(total=total, desc="reconstruct", unit="img", dynamic_ncols=True) as bar:
        for batch in loader:
            images = batch[image_key].to(device).float()
            with autocast(device, chosen):
                out = model(images)
            reconstruction = out.reconstruction.float().clamp(-1, 1)
            tally.add(images, reconstruction, out.indices)
            if network is not None:  # one pass over originals and reconstructions together
                both = network(torch.cat([to_uint8(images), to_uint8(reconstruction)]))["features"].float().cpu()
                real_features.append(both[:len(images)])
                fake_features.append(both[len(images):])
            bar.update(images.shape[0])

    if not tally.ssim_ok:
        notes.append(f"SSIM skipped: it needs RGB or gray images of at least {SSIM_MIN_SIDE}×{SSIM_MIN_SIDE} pixels")
    metrics = tally.metrics()

    protocol: dict = {
        "num_images": total,
        "data": data_protocol or {"dataset": type(dataset).__name__},
        "pixel_metrics": "mean over images; model output clamped to [-1, 1], float32, compared with the input "
                         "on the [0, 1] scale (PSNR data range 1; SSIM Gaussian σ=1.5, as scikit-image)",
        "codebook": f"counts of all {int(tally.counts.sum())} codes over the whole set; {model.vocab_size} codes",
        "model_dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "precision": chosen.name,
        "device": str(device),
        "versions": library_versions(),
    }
    if perceptual is not None:
        protocol["lpips"] = "LPIPS (lpips package, v0.1 heads on VGG16), mean over images"
    if network is not None:
        if total < 2:
            notes.append("rFID skipped: it needs at least 2 images")
        else:
            reference = ReferenceStatistics.from_features(torch.cat(real_features), keep_features=False)
            fd_metrics, _, fd_notes = distribution_metrics(network, {"features": torch.cat(fake_features)},
                                                           reference, reconstruction=True)
            metrics.update(fd_metrics)
            notes += fd_notes
            protocol["feature_network"] = network_protocol(network)
            protocol["rfid"] = ("reconstructions against their originals, both quantized to uint8 (as PNG) and "
                                "fed to the feature network at their own size")
    return EvalResult("reconstruction", metrics, protocol, notes)
