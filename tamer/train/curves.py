"""Training curves as a picture: ``RUN/metrics.jsonl`` of one run or several, drawn with matplotlib.

Panels, where the runs have them: training losses, learning rate, each validation figure (held-out NLL, PSNR,
SSIM, LPIPS), codebook usage and perplexity. Noisy training curves are drawn as running means; a dotted line marks
the step a run exported as its best (``RUN/best.json``). Training calls :func:`write_curves` with every
checkpoint; ``tamer plot`` compares runs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from tamer.atomic import atomic_write
from tamer.errors import CurvesUnavailable  # noqa: F401 (re-exported)

#: validation figures drawn, each in a panel of its own, in this order (others are left out)
VALIDATION_FIGURES = {"nll": "held-out NLL (nats/token)", "psnr": "held-out PSNR (dB)", "ssim": "held-out SSIM",
                      "lpips": "held-out LPIPS", "label_accuracy": "held-out label accuracy"}
#: training losses left out of the loss panel: other scales, or not losses at all
NOT_LOSSES = {"d_weight", "disc_factor", "logits_real", "logits_fake"}
#: at most this many points per training curve before a running mean smooths it
MAX_RAW_POINTS = 200



def read_metrics(run: str | Path) -> tuple[dict[int, dict], dict[int, dict]]:
    """``(training records by step, validation records by step)`` of a run; a resumed run logs replayed steps
    again, and the last record of a step counts. A line cut short by a crash is skipped."""
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (is {run} a training run folder?)")
    train: dict[int, dict] = {}
    validation: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            continue
        target = validation if any(k.startswith("val/") for k in record) else train
        target[record["step"]] = record
    return train, validation


def _panels(runs: list[tuple[dict, dict]]) -> list[tuple[str, str, list[str]]]:
    """``(title, y label, keys)`` for every panel some run has data for."""
    train_keys = {k for train, _ in runs for record in train.values() for k in record
                  if isinstance(record[k], (int, float))}
    val_keys = {k[4:] for _, val in runs for record in val.values() for k in record if k.startswith("val/")}
    losses = sorted(k for k in train_keys if k.endswith("loss") and k not in NOT_LOSSES)
    panels = []
    if losses:
        panels.append(("training losses", "loss", losses))
    if "lr" in train_keys:
        panels.append(("learning rate", "lr", ["lr"]))
    for key, title in VALIDATION_FIGURES.items():
        if key in val_keys:
            panels.append((title, key, [f"val/{key}"]))
    usage = [k for k in ("codebook_usage", "val/codebook_usage") if k in train_keys or k[4:] in val_keys]
    if usage:
        panels.append(("codebook usage (share of codes used)", "usage", usage))
    perplexity = [k for k in ("perplexity", "val/perplexity") if k in train_keys or k[4:] in val_keys]
    if perplexity:
        panels.append(("codebook perplexity", "perplexity", perplexity))
    return panels


def _series(records: dict[int, dict], key: str) -> tuple[list[int], list[float], int]:
    """Steps and values of ``key``, as a running mean of ``window`` points when there are many."""
    points = [(s, float(r[key])) for s, r in sorted(records.items()) if isinstance(r.get(key), (int, float))]
    steps, values = [s for s, _ in points], [v for _, v in points]
    window = max(1, len(values) // MAX_RAW_POINTS) if not key.startswith("val/") and key != "lr" else 1
    if window > 1:
        sums, total = [], 0.0
        for i, value in enumerate(values):
            total += value - (values[i - window] if i >= window else 0.0)
            sums.append(total / min(i + 1, window))
        values = sums
    return steps, values, window


def _best_step(run: Path) -> int | None:
    try:
        return int(json.loads((run / "best.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def plot_runs(runs: Sequence[str | Path], out: str | Path, title: str | None = None) -> Path:
    """Draw the curves of ``runs`` (each a run folder with ``metrics.jsonl``) into the PNG ``out``."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display, no GUI toolkit
        import matplotlib.pyplot as plt
    except ImportError:
        raise CurvesUnavailable("curves need matplotlib: pip install 'tamer-vq[train]'") from None
    runs = [Path(r) for r in runs]
    data = [read_metrics(r) for r in runs]
    panels = _panels(data)
    if not panels:
        raise ValueError(f"{runs[0] / 'metrics.jsonl'}: no numbers to draw yet")
    names = [r.name if r.name else str(r) for r in runs]
    if len(set(names)) < len(names):  # runs of the same name in different places: show more of the path
        names = [str(r) for r in runs]
    columns = 2 if len(panels) > 1 else 1
    rows = (len(panels) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(7 * columns, 3.6 * rows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (panel_title, ylabel, keys) in zip(axes.flat, panels):
        smoothed, lowest = 1, float("inf")
        for r, (run, name, (train, validation)) in enumerate(zip(runs, names, data)):
            for k, key in enumerate(keys):
                records = validation if key.startswith("val/") else train
                steps, values, window = _series(records, key)
                if not steps:
                    continue
                smoothed, lowest = max(smoothed, window), min(lowest, *values)
                label = " ".join(p for p in (name if len(runs) > 1 else "", key if len(keys) > 1 else "") if p)
                colour = colours[(r * len(keys) + k) % len(colours)] if len(runs) > 1 else colours[k % len(colours)]
                ax.plot(steps, values, label=label or None, color=colour, linewidth=1.4,
                        marker="o" if key.startswith("val/") else None, markersize=3)
            best = _best_step(run)
            if best is not None and any(key.startswith("val/") for key in keys):
                ax.axvline(best, color="grey", linestyle=":", linewidth=1)
        ax.set_title(panel_title + (f" (running mean of {smoothed})" if smoothed > 1 else ""), fontsize=11)
        if panel_title == "training losses" and 0 < lowest < float("inf"):
            ax.set_yscale("log")  # early losses are many times the late ones
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[1]:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    figure.suptitle(title or ", ".join(names) + ("  (dotted: the exported best step)" if any(
        _best_step(r) is not None for r in runs) else ""), fontsize=12)
    figure.tight_layout()
    out = Path(out)
    atomic_write(out, lambda p: figure.savefig(p, format="png", dpi=100))
    plt.close(figure)
    return out


def write_curves(run: str | Path) -> Path:
    """``RUN/curves.png`` from the run's own metrics."""
    return plot_runs([run], Path(run) / "curves.png")
