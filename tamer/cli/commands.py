"""The ``tamer`` command's parser: every command family registers itself from its own module."""

from __future__ import annotations

import argparse
import sys

from tamer.cli.app import add_app_command
from tamer.cli.demo import add_demo_commands
from tamer.cli.errors import debug_requested, run_reporting
from tamer.cli.eval import add_eval_command
from tamer.cli.images import add_image_commands
from tamer.cli.plot import add_plot_command
from tamer.cli.sample import add_sample_command
from tamer.cli.train import add_train_command
from tamer.guards import set_max_pixels
from tamer.train.curves import CurvesUnavailable
from tamer.train.trainer import TrainingDiverged


def main(argv: list[str] | None = None) -> int:
    debug, argv = debug_requested(sys.argv[1:] if argv is None else list(argv))
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    if getattr(args, "max_pixels", None) is not None:
        set_max_pixels(args.max_pixels)
    return run_reporting(args.command, lambda: args.run(args), debug, also=(TrainingDiverged, CurvesUnavailable))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tamer", description="Taming Transformers: VQGAN tokenizer and image GPT.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (anywhere on the line)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (add_image_commands, add_train_command, add_sample_command, add_eval_command, add_demo_commands,
                add_app_command, add_plot_command):
        add(commands)
    return parser
