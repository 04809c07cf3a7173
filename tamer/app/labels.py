"""What the page calls a model's classes and segmentation labels, and the colours it draws labels in.

A class-conditional model trained by tamer stores its class names (``conditioning.class_names``); for older
models the training run does: ``RUN/config.json`` beside ``RUN/model`` names the data. The built-in procedural
data names its shape kinds, a class-folder dataset its sorted folder names (while the folder exists). Anything else
is numbered.
"""

from __future__ import annotations

import colorsys
import json
from pathlib import Path

from tamer.data.procedural import SHAPES

# Distinct colours for the first labels (background first), then evenly spaced hues.
_FIRST_COLOURS = ["#000000", "#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6",
                  "#bcf60c", "#fabebe", "#008080", "#e6beff", "#9a6324", "#fffac8", "#800000", "#aaffc3", "#808000"]


def _run_data(model_path: str | Path) -> dict:
    """The ``data`` section of the training run that wrote ``model_path`` (``{}`` when there is none)."""
    config = Path(model_path).parent / "config.json"
    try:
        data = json.loads(config.read_text()).get("data")
    except (OSError, ValueError, AttributeError):
        return {}
    return data if isinstance(data, dict) else {}


def class_names(model_path: str | Path, num_classes: int, stored: tuple[str, ...] | None = None) -> list[str]:
    """``num_classes`` names in label order: those the model stores, else the run's, where known, else
    ``"class k"``."""
    names = list(stored) if stored else _run_class_names(model_path)
    return [names[k] if k < len(names) else f"class {k}" for k in range(num_classes)]


def _run_class_names(model_path: str | Path) -> list[str]:
    data = _run_data(model_path)
    if data.get("kind") == "procedural":
        return list(SHAPES)
    root = Path(data["path"]) if data.get("kind") == "classes" and data.get("path") else None
    if root is not None and root.is_dir():
        return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    return []


def segmentation_names(model_path: str | Path, num_labels: int) -> list[str]:
    """Names of a segmentation stage's labels: the procedural data's (0 background, k + 1 its shape kinds)."""
    known = ["background", *SHAPES] if _run_data(model_path).get("kind") == "procedural" else []
    return [known[k] if k < len(known) else f"label {k}" for k in range(num_labels)]


def palette(num_labels: int) -> list[tuple[int, int, int]]:
    """One RGB colour per label; the drawing canvas uses these, and a drawing maps back by nearest colour."""
    colours = [tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) for c in _FIRST_COLOURS[:num_labels]]
    extra = num_labels - len(colours)
    for k in range(extra):
        r, g, b = colorsys.hsv_to_rgb((k + 0.5) / extra, 0.65, 0.85)
        colours.append((round(r * 255), round(g * 255), round(b * 255)))
    return colours


def hex_colour(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)
