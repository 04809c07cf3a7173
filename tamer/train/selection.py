"""Which model a run exports: the best by its validation figure, kept in ``RUN/best`` beside the last.

A task names its figure and direction (``best_metric = ("nll", "min")``). Each validation that beats the best so
far exports the model into ``RUN/best`` (written aside, then swapped in) and records the step in
``RUN/best.json``; at the end ``RUN/model`` is a copy of it, so a run that overfits small data exports the step
before it did. Without validation ``RUN/model`` is the last step's model, as before.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

BEST_FOLDER = "best"
BEST_RECORD = "best.json"


@dataclass
class Best:
    step: int
    metric: str  # the validation figure, e.g. "nll"
    value: float
    mode: str  # "min" or "max"

    def beaten_by(self, value: float) -> bool:
        return value < self.value if self.mode == "min" else value > self.value


def improved(best: Best | None, metrics: dict[str, float], metric: str, mode: str, step: int) -> Best | None:
    """The new best when ``metrics`` beat ``best`` (or there was none yet), else None."""
    value = metrics.get(metric)
    if value is None or value != value:  # not reported, or NaN: never "best"
        return None
    if best is not None and not best.beaten_by(value):
        return None
    return Best(step, metric, float(value), mode)


def replace_folder(write: Callable[[Path], None], target: Path) -> Path:
    """Call ``write(folder)`` on a fresh temporary folder beside ``target``, then swap it in: a crash at any moment
    leaves either the old folder or the new one complete."""
    tmp, old = target.with_name(target.name + ".tmp"), target.with_name(target.name + ".old")
    for leftover in (tmp, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    write(tmp)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def save_best(run: Path, best: Best, export: Callable[[Path], None]) -> None:
    replace_folder(export, run / BEST_FOLDER)
    (run / BEST_RECORD).write_text(json.dumps(asdict(best), indent=2) + "\n")


def read_best(run: Path) -> Best | None:
    """The best step recorded in ``RUN/best.json`` while its model folder exists, else None."""
    try:
        record = json.loads((run / BEST_RECORD).read_text())
        return Best(**record) if (run / BEST_FOLDER).is_dir() else None
    except (OSError, ValueError, TypeError):
        return None


def export_best(run: Path, target: Path) -> None:
    """Copy ``RUN/best`` to ``target`` (``RUN/model``), swapped in as one step."""
    replace_folder(lambda tmp: shutil.copytree(run / BEST_FOLDER, tmp), target)
