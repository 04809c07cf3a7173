"""The FID Inception network: torch-fidelity's InceptionV3, built from a local weights file that is checked first.

FID, KID, IS and precision/recall are only comparable between papers when they use the same network: the
TensorFlow Inception graph of 2015-12-05 that TTUR, ADM and MAR use, which torch-fidelity ships converted as
``weights-inception-2015-12-05-6726825d.pth`` and wraps as ``FeatureExtractorInceptionV3`` (it also resizes
like TensorFlow 1.x did). tamer never downloads it: the file is read from ``torch.hub.get_dir()/checkpoints``,
where torch-fidelity itself caches it, or from a path the user names.

torch-fidelity reads the file with ``torch.load(weights_only=False)``, which would run any code a tampered
pickle carries. So tamer first reads it with the ``weights_only`` unpickler (:func:`safe_torch_load`), refusing a
file that would run code, and then lets torch-fidelity build the network with ``TORCH_FORCE_WEIGHTS_ONLY_LOAD``
set, so its own read cannot run code either, even if the file changed in between.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from tamer.checkpoints import CheckpointError
from tamer.compat.safe_load import safe_torch_load
from tamer.errors import MissingWeightsError  # noqa: F401 (re-exported)
from tamer.metrics.features import FeatureNetwork

INCEPTION_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILENAME}"
#: torch-fidelity's registered name for this network, written into every result
INCEPTION_NAME = "inception-v3-compat"
#: the layers used: 2048-d pool features (FID, KID, precision/recall) and logits without bias (IS)
POOL_LAYER, LOGITS_LAYER = "2048", "logits_unbiased"



def default_inception_path() -> Path:
    """Where torch-fidelity caches the Inception weights: ``$TORCH_HOME/hub/checkpoints/<INCEPTION_FILENAME>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILENAME


def missing_inception_message(path: Path) -> str:
    return (
        f"FID/KID/IS need the Inception weights {INCEPTION_FILENAME}, which are not at {path}. tamer never "
        f"downloads; on a machine online, download {INCEPTION_URL} (or run any torch-fidelity metric once, which "
        f"caches it in torch.hub.get_dir()/checkpoints) and copy it to {default_inception_path()}, or name the file "
        "with --inception PATH. Without it, another network can stand in (--features ARCH[=PATH] for a torchvision "
        "classifier; reported as FD_<ARCH>, not FID)."
    )


def inception_unavailable_reason(path: str | Path | None = None) -> str | None:
    """Why :func:`load_inception` would fail (a message for the user), or ``None`` when it would work."""
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        return "FID/KID/IS need the `torch-fidelity` package (pip install 'tamer-vq[eval]')."
    path = Path(path) if path is not None else default_inception_path()
    return None if path.is_file() else missing_inception_message(path)


def find_inception_weights(path: str | Path | None = None) -> Path:
    """The weights file to use: ``path`` if given (it must exist), else the hub cache; else MissingWeightsError."""
    if path is not None and not Path(path).is_file():
        raise MissingWeightsError(f"--inception: no Inception weights file at {path}")
    reason = inception_unavailable_reason(path)
    if reason is not None:
        raise MissingWeightsError(reason)
    return Path(path) if path is not None else default_inception_path()


def check_inception_weights(path: Path) -> None:
    """Read ``path`` without running code from it and check it is an Inception state dict in torch-fidelity's layout.

    Raises :class:`~tamer.compat.safe_load.UnsafeCheckpointError` for a pickle that would execute anything, and a
    :class:`CheckpointError` for a file that is not the expected state dict.
    """
    state = safe_torch_load(path)
    if not isinstance(state, dict) or "fc.weight" not in state or "Conv2d_1a_3x3.conv.weight" not in state:
        keys = sorted(state)[:4] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: not torch-fidelity's InceptionV3 state dict (found {keys})")


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Make every ``torch.load`` inside the block use the ``weights_only`` unpickler, whatever its caller asks."""
    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"]
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous


def file_digest(path: Path, length: int = 16) -> str:
    """The first ``length`` hex digits of the file's SHA-256, so a result names exactly which weights it used."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


class InceptionFeatures(FeatureNetwork):
    """torch-fidelity's InceptionV3: uint8 images of any size -> 2048-d pool features and 1008 unbiased logits."""

    is_inception = True

    def __init__(self, weights_path: str | Path | None = None):
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        path = find_inception_weights(weights_path)
        check_inception_weights(path)
        with weights_only_loads():
            self.extractor = FeatureExtractorInceptionV3(INCEPTION_NAME, [POOL_LAYER, LOGITS_LAYER],
                                                         feature_extractor_weights_path=str(path))
        self.name = "inception"
        self.weights_path = path
        self._digest = file_digest(path)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features, logits = self.extractor(images)
        return {"features": features, "logits": logits}

    def protocol(self) -> dict:
        import torch_fidelity

        return {
            "network": f"InceptionV3 as torch-fidelity {torch_fidelity.__version__} builds it ({INCEPTION_NAME}: "
                       "the TensorFlow graph of 2015-12-05 used by TTUR, ADM and MAR)",
            "weights": str(self.weights_path),
            "weights_sha256_prefix": self._digest,
            "features": f"'{POOL_LAYER}' (2048-d pool3) for FID, KID and precision/recall; "
                        f"'{LOGITS_LAYER}' (1008 classes) for IS",
            "resize": "uint8 images resized to 299×299 inside the network with torch-fidelity's "
                      "TensorFlow-1.x-compatible bilinear interpolation (no crop, no antialiasing)",
            "internal_dtype": "float32",
        }
