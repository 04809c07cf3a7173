"""``tamer demo`` (the whole method on built-in data) and ``tamer demo-photos`` (real photos through a VQGAN); the
work is in :mod:`tamer.demo`."""

from __future__ import annotations

import argparse
from pathlib import Path

from tamer import guards
from tamer.cli.options import device_option


def add_demo_commands(commands: argparse._SubParsersAction) -> None:
    help = ("Train a tiny VQGAN and class- and segmentation-conditional transformers on the built-in data (about 10 "
            "min on 2 CPU cores), sample, judge, and write an HTML page.")
    sub = commands.add_parser("demo", help=help, description=help)
    sub.set_defaults(run=run_demo)
    sub.add_argument("--quick", action="store_true", help="a one-minute version (little training: expect noise)")
    sub.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder (default demo-output)")
    device_option(sub)

    help = "Put the photos bundled with scikit-image through a VQGAN and write them beside their reconstructions."
    sub = commands.add_parser("demo-photos", help=help, description=help)
    sub.set_defaults(run=run_photo_demo)
    sub.add_argument("--model", help="a tamer VQGAN folder or CompVis .ckpt (default: an untrained VQGAN)")
    sub.add_argument("--config", help="project.yaml of a CompVis .ckpt (found beside it when omitted)")
    sub.add_argument("--size", type=guards.positive_int, default=256, help="shorter side in pixels (default 256)")
    sub.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder (default demo-output)")
    device_option(sub)


def run_demo(args) -> int:
    from tamer.demo import run_demo

    run_demo(args.out, quick=args.quick, device=args.device)
    return 0


def run_photo_demo(args) -> int:
    from tamer.demo.photos import run_reconstruction_demo

    run_reconstruction_demo(args.out, model=args.model, config=args.config, size=args.size, device=args.device)
    return 0
