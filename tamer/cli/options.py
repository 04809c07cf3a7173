"""Options several commands share, defined once so their names, defaults and help agree."""

from __future__ import annotations

import argparse
from pathlib import Path

from tamer import guards


def device_option(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when available)")


def precision_option(sub: argparse.ArgumentParser) -> None:
    """``--precision``, auto by default: bf16 where it is fast here, fp32 elsewhere."""
    sub.add_argument("--precision", choices=guards.PRECISIONS, default="auto",
                     help="auto (default): bf16 on GPUs with bf16 and CPUs with AMX or AVX512-BF16, fp32 "
                          "elsewhere; fp32, bf16 or fp16 force one (codes are always chosen in fp32)")


def model_option(sub: argparse.ArgumentParser, help: str = "tamer checkpoint folder, or a CompVis .ckpt") -> None:
    """``--model`` and ``--config`` (a CompVis checkpoint's project.yaml)."""
    sub.add_argument("--model", required=True, help=help)
    sub.add_argument("--config", help="project.yaml of a CompVis .ckpt (found beside it when omitted)")


def max_pixels_option(sub: argparse.ArgumentParser, what: str = "pixels per image a model is given") -> None:
    sub.add_argument("--max-pixels", type=guards.positive_int, metavar="N",
                     help=f"{what} (default at most {guards.MAX_MODEL_PIXELS}, 2048×2048)")


def run_folder_options(sub: argparse.ArgumentParser) -> None:
    """A training run's folder, and what to do when it already holds a run."""
    sub.add_argument("--out", type=Path, required=True, help="run folder: checkpoints, metrics.jsonl, images, model/")
    sub.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    sub.add_argument("--overwrite", action="store_true", help="replace a run already in --out (its checkpoints "
                     "and metrics are deleted)")


def height_by_width(unit: str, example: str):
    """An argparse type for ``HxW`` (or one number for a square) in ``unit``."""
    def parse(text: str) -> tuple[int, int]:
        parts = text.lower().replace("×", "x").split("x")
        try:
            if len(parts) in (1, 2) and all(int(p) > 0 for p in parts):
                return int(parts[0]), int(parts[-1])
        except ValueError:
            pass
        raise argparse.ArgumentTypeError(f"expected HxW in {unit}, e.g. {example}, got {text!r}")
    return parse
