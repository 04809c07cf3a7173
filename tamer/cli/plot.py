"""``tamer plot``: argument parsing for drawing training curves (the work is in tamer.train.curves)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tamer import guards


def add_plot_command(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    help = "Draw the training curves of one run or several (from their metrics.jsonl) as a PNG."
    sub = commands.add_parser("plot", help=help, description=help + " Panels: training losses, learning rate, "
                              "validation figures and codebook usage, where the runs have them.")
    sub.set_defaults(run=run_plot)
    sub.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="training run folders (with metrics.jsonl)")
    sub.add_argument("--out", type=Path, help="the PNG to write (default: RUN/curves.png for one run, curves.png "
                                              "here for several)")
    sub.add_argument("--title", help="the picture's title (default: the runs' names)")
    return sub


def run_plot(args) -> int:
    from tamer.train.curves import plot_runs

    out = args.out or (args.runs[0] / "curves.png" if len(args.runs) == 1 else Path("curves.png"))
    guards.check_output_file(out, [run / "metrics.jsonl" for run in args.runs], suffix=".png")
    for run in args.runs:
        if not (run / "metrics.jsonl").is_file():
            raise FileNotFoundError(f"{run}: no metrics.jsonl (not a training run folder)")
    plot_runs(args.runs, out, title=args.title)
    print(f"wrote {out} ({len(args.runs)} run{'s' if len(args.runs) > 1 else ''})")
    return 0
