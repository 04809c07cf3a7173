"""Evaluation results with their protocol: metrics, how they were measured, and notes on what was left out.

A number without its protocol (which network, how images were resized, how many, against what) cannot be
compared with another; so every result carries one, is printed as a table and saved as JSON together with it.
"""

from __future__ import annotations

import json
import math
import platform
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

from tamer.atomic import atomic_write
from tamer.version import __version__

_PACKAGES = ("torch", "torchvision", "torch-fidelity", "lpips", "numpy", "scipy")


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape the numbers (an absent optional one is left out)."""
    versions = {"python": platform.python_version(), "tamer": __version__}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


@dataclass
class EvalResult:
    """``metrics`` (name -> number), the ``protocol`` that produced them, and ``notes`` (what was skipped and why)."""

    task: str
    metrics: dict[str, float]
    protocol: dict
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        """Write the result as JSON (atomically)."""
        path = Path(path)
        text = json.dumps(self.to_dict(), indent=2, default=str) + "\n"
        atomic_write(path, lambda tmp: tmp.write_text(text))
        return path

    def table(self) -> str:
        """The metrics as an aligned two-column table, then the notes."""
        width = max([len("metric")] + [len(name) for name in self.metrics])
        lines = [f"{'metric':<{width}}  value", f"{'-' * width}  {'-' * 12}"]
        for name, value in self.metrics.items():
            lines.append(f"{name:<{width}}  {_format(value)}")
        images = self.protocol.get("num_images")
        if images is not None:
            lines.append(f"({self.task}: {_describe_count(images)}; protocol in the JSON output)")
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def _format(value: float) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if value == 0 or (value == value and not math.isinf(value) and 1e-3 <= abs(value) < 1e6):
        return f"{value:.4f}"
    return f"{value:.4g}"


def _describe_count(images: int | dict) -> str:
    if isinstance(images, dict):
        return ", ".join(f"{count} {what} images" for what, count in images.items() if count is not None)
    return f"{images} images"
