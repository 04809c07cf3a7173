"""Feature networks for distribution metrics, and the batched loop that runs them over images.

A :class:`FeatureNetwork` maps uint8 images ``B×3×H×W`` (what a PNG holds: the common input of every FID
protocol) to ``{"features": B×D}`` and, when it is a classifier, ``"logits": B×K``. The Inception network
(:class:`~tamer.metrics.inception.InceptionFeatures`) gives the standard FID/KID/IS. Any other network can stand in
where those weights are missing or do not fit the data (a torchvision classifier, a classifier trained on the
built-in shapes): :class:`StandInFeatures` wraps it, and its results are named after it (``FD_<name>``,
``KD_<name>``, ...) so nobody mistakes them for FID.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from tamer.compat.safe_load import safe_torch_load
from tamer.errors import MissingWeightsError
from tamer.progress import progress_bar

DistributionMetric = Literal["FD", "KD", "IS", "precision", "recall"]
_INCEPTION_NAMES = {"FD": "FID", "KD": "KID", "IS": "IS", "precision": "precision", "recall": "recall"}


class FeatureNetwork(nn.Module):
    """uint8 images ``B×3×H×W`` -> ``{"features": B×D float32, "logits": B×K float32 (classifiers only)}``."""

    name: str = "features"
    is_inception: bool = False

    def protocol(self) -> dict:
        """How features are computed (network, weights, resize, dtype): written into every result."""
        raise NotImplementedError


def metric_name(network: FeatureNetwork, metric: DistributionMetric, reconstruction: bool = False) -> str:
    """``FID``/``KID``/``IS`` for Inception, ``FD_<name>``/``KD_<name>``/``IS_<name>`` for a stand-in.

    Reconstruction FID (reconstructions against their originals) is prefixed ``r``: ``rFID``, ``rFD_<name>``.
    """
    name = _INCEPTION_NAMES[metric] if network.is_inception else f"{metric}_{network.name}"
    return f"r{name}" if reconstruction else name


class StandInFeatures(FeatureNetwork):
    """Any torch module used as the feature network: images in [-1, 1] -> features (and optionally logits).

    ``module`` receives float images ``B×3×H×W`` in [-1, 1], resized first to ``size``×``size`` (bilinear,
    antialiased) when ``size`` is given, and returns a ``B×D`` tensor of features, a ``(features, logits)`` pair,
    or a dict with ``"features"`` (and ``"logits"``). Metrics computed with it are named ``FD_<name>``,
    ``KD_<name>``, ``IS_<name>`` (the latter only when it gives logits).
    """

    def __init__(self, module: nn.Module | Callable[[torch.Tensor], object], name: str, size: int | None = None,
                 description: str | None = None):
        super().__init__()
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise ValueError(f"feature network name {name!r}: use letters, digits, '_', '.' and '-' only")
        if name.lower().startswith("inception"):
            raise ValueError(f"feature network name {name!r}: names starting with 'inception' are kept for the "
                             "torch-fidelity Inception network, whose results are FID/KID/IS")
        self.module = module
        self.name = name
        self.size = size
        self.description = description or type(module).__name__

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = images.float() / 127.5 - 1.0
        if self.size is not None and tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        out = self.module(x)
        if isinstance(out, dict):
            result = {"features": out["features"]}
            if out.get("logits") is not None:
                result["logits"] = out["logits"]
        elif isinstance(out, (tuple, list)):
            result = {"features": out[0], "logits": out[1]}
        else:
            result = {"features": out}
        features = result["features"]
        if features.dim() != 2 or features.shape[0] != images.shape[0]:
            raise ValueError(f"feature network {self.name!r}: expected B×D features for {images.shape[0]} images, "
                             f"got shape {tuple(features.shape)}")
        return {key: value.float() for key, value in result.items()}

    def protocol(self) -> dict:
        return {
            "network": f"stand-in '{self.name}' ({self.description}); results are not comparable to Inception FID",
            "resize": (f"uint8 -> [-1, 1] floats resized to {self.size}×{self.size} (bilinear, antialiased)"
                       if self.size else "uint8 -> [-1, 1] floats at their own size"),
            "internal_dtype": "float32",
        }


class _PenultimateClassifier(nn.Module):
    """A torchvision classifier that returns (input of its last linear layer, logits), ImageNet-normalized."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError(f"{type(model).__name__} has no linear classifier layer to take features before")
        self._captured: list[torch.Tensor] = []
        linears[-1].register_forward_pre_hook(lambda _, inputs: self._captured.append(inputs[0]))
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._captured.clear()
        logits = self.model(((x + 1) / 2 - self.mean) / self.std)
        return self._captured[-1].flatten(1), logits


def torchvision_stand_in(arch: str, weights_path: str | Path | None = None, size: int = 224) -> StandInFeatures:
    """A torchvision ImageNet classifier (``resnet50``, ``vgg16``, ...) as stand-in: penultimate features + logits.

    Weights are read without running code from ``weights_path``, or from torchvision's own cache file for the
    architecture's default weights in ``torch.hub.get_dir()/checkpoints``; nothing downloads.
    """
    import torchvision

    try:
        model = torchvision.models.get_model(arch, weights=None)
    except ValueError as error:
        raise ValueError(f"--features {arch}: not a torchvision classification model ({error})") from None
    if weights_path is None:
        url = torchvision.models.get_model_weights(arch).DEFAULT.url
        weights_path = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
        if not Path(weights_path).is_file():
            raise MissingWeightsError(f"--features {arch}: no weights at {weights_path} (torchvision's cache file); "
                                      f"tamer never downloads: copy {url} there or name a file as {arch}=PATH")
    elif not Path(weights_path).is_file():
        raise MissingWeightsError(f"--features {arch}: no weights file at {weights_path}")
    model.load_state_dict(safe_torch_load(weights_path))
    model.eval().requires_grad_(False)
    return StandInFeatures(_PenultimateClassifier(model), arch, size=size,
                           description=f"torchvision {arch}, weights {weights_path}, ImageNet normalization")


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] ``B×C×H×W`` -> uint8 ``B×3×H×W`` as a PNG would store them (gray repeated to RGB).

    uint8 images are taken as they are (only gray is made RGB).
    """
    if images.dtype != torch.uint8:
        images = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if images.shape[1] != 3:
        raise ValueError(f"feature networks take RGB or gray images, got {images.shape[1]} channels")
    return images


class FeatureAccumulator:
    """Collects a network's outputs batch by batch on the CPU; ``result()`` concatenates them."""

    def __init__(self, network: FeatureNetwork, device: torch.device):
        self.network, self.device = network, device
        self.parts: dict[str, list[torch.Tensor]] = {}

    @torch.inference_mode()
    def add(self, images_uint8: torch.Tensor) -> None:
        out = self.network(images_uint8.to(self.device))
        for key, value in out.items():
            self.parts.setdefault(key, []).append(value.float().cpu())

    def result(self) -> dict[str, torch.Tensor]:
        return {key: torch.cat(values) for key, values in self.parts.items()}


def extract_features(network: FeatureNetwork, batches: Iterable[torch.Tensor], device: torch.device | str = "cpu",
                     total: int | None = None, desc: str = "features") -> dict[str, torch.Tensor]:
    """Run ``network`` over uint8 batches with a progress bar (images/s, ETA); outputs concatenated on the CPU."""
    accumulator = FeatureAccumulator(network, torch.device(device))
    with progress_bar(total=total, desc=desc, unit="img", dynamic_ncols=True) as bar:
        for batch in batches:
            accumulator.add(batch)
            bar.update(batch.shape[0])
    return accumulator.result()
