"""What a training run says before and while it starts: the data's size against the preset's, one summary line
(images, size, code grid, vocabulary, parameters, precision, device), and the time the recipe will take here."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from tamer.data.factory import DataConfig, data_sides, follow_data_size

#: a run estimated to take longer than this gets a warning
SLOW_RUN_S = 24 * 3600


def fit_data_sizes(data: DataConfig, val_data: DataConfig | None,
                   report=print) -> tuple[DataConfig, DataConfig | None]:
    """Resolve ``size: null`` (follow the data) for the training data and give held-out data the same side when it
    is null too; a size that enlarges the training images is reported, never done silently."""
    if data.kind == "procedural":
        return data, val_data
    if data.size is None:
        data = follow_data_size(data)
        report(f"data.size: {data.size} px, following the data (the median shorter side of its images, rounded "
               f"down to a multiple of 16); set data.size to choose another")
    else:
        sides = sorted(data_sides(data))
        median = sides[len(sides) // 2] if sides else None
        if median is not None and data.size > median * 1.05:
            report(f"note: data.size={data.size} enlarges these images {data.size / median:.1f}× (median shorter "
                   f"side {median} px in {data.path}); set data.size=null to follow the data")
    if val_data is not None and val_data.size is None:
        val_data = replace(val_data, size=data.size, crop=data.crop)
    return data, val_data


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def start_line(what: str, images: int, data: DataConfig, code_shape: tuple[int, int], vocabulary: int,
               parameters: int, precision: str, device: torch.device, extra: str = "") -> str:
    """One line naming what the run will do, so a wrong size or a huge model shows before the first step."""
    side = data.crop or data.size
    source = f" in {Path(data.path).name}" if data.path else ""
    h, w = code_shape
    return (f"{what}: {images:,} images{source}, {side}×{side} px -> {h}×{w} codes of {vocabulary:,}, "
            f"{parameters / 1e6:.2f}M parameters{extra}, {precision} on {device}")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def time_estimate(seconds_per_step: float, measured: tuple[int, int], steps_left: int) -> str:
    """The line printed after the first steps: time per 1000 steps and for the rest of the run, with a warning
    when the rest would take more than a day on this machine."""
    first, last = measured
    rest = seconds_per_step * steps_left
    line = (f"timing: {seconds_per_step:.3g} s/step (steps {first}-{last}): {_duration(1000 * seconds_per_step)} "
            f"per 1000 steps, about {_duration(rest)} for the {steps_left:,} steps left")
    if rest > SLOW_RUN_S:
        line = ("warning: " + line + "; on this machine that is days: lower train.steps, the image size or the "
                "model size, or use a GPU")
    return line
