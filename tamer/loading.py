"""``tamer.load``: any model tamer knows, from a native folder or an original CompVis ``.ckpt``.

This module sits above the models and :mod:`tamer.compat`: importing the model modules here enters every model
type in the checkpoint format's registry, which itself imports no model.
"""

from __future__ import annotations

from pathlib import Path

import torch

import tamer.ar.model  # noqa: F401 (registers Transformer)
import tamer.metrics.shape_classifier  # noqa: F401 (registers ShapeClassifier)
import tamer.metrics.shape_segmenter  # noqa: F401 (registers ShapeSegmenter)
import tamer.vqgan.model  # noqa: F401 (registers VQGAN)
from tamer.checkpoints import load_native, native_folder
from tamer.compat.load import load_taming_checkpoint
from tamer.errors import CheckpointError


def load(path: str | Path, config: str | Path | None = None, map_location: str | torch.device = "cpu",
         code_shape: tuple[int, int] | None = None):
    """Load any model tamer knows: a native folder (or its ``model.safetensors``), or a CompVis ``.ckpt``
    with its ``project.yaml`` (``config``; found next to the usual ``checkpoints/`` folder when not given).

    ``code_shape`` ``(h, w)``: the code grid of a CompVis transformer, which its project.yaml does not store
    (inferred from ``block_size`` with a warning when not given). Native folders store their own."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    path = native_folder(path)
    if path.is_dir():
        if code_shape is not None:
            raise CheckpointError(f"{path}: code_shape is for CompVis transformer checkpoints; a folder stores its own")
        return load_native(path, map_location)
    return load_taming_checkpoint(path, config, map_location=map_location, code_shape=code_shape)
