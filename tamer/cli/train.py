"""``tamer train vqgan | transformer``: a preset and overrides become a training run (the work is in
:mod:`tamer.train`)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from tamer.cli.options import run_folder_options
from tamer.presets import preset_path


def add_train_command(commands: argparse._SubParsersAction) -> None:
    help = "Train a model from a preset."
    train = commands.add_parser("train", help=help, description=help)
    stages = train.add_subparsers(dest="stage", metavar="STAGE", required=True)
    sub = stages.add_parser("vqgan", help="Train a VQGAN (stage 1).", description="Train a VQGAN (stage 1). "
                            "Run under `torchrun --nproc_per_node N` for several processes.")
    sub.set_defaults(run=run_train_vqgan)
    sub.add_argument("--config", type=Path, help="a preset name (vqgan_tiny_cpu, vqgan_custom, ...) or YAML file")
    sub.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                     help="e.g. train.steps=2000 model.quantizer.num_codes=512")
    run_folder_options(sub)
    sub = stages.add_parser("transformer", help="Train the transformer over a VQGAN's codes (stage 2).",
                            description="Train the transformer over a trained VQGAN's codes (stage 2): first_stage "
                            "names the VQGAN; code grid, vocab_size and block_size are derived. Run under "
                            "`torchrun --nproc_per_node N` for several processes.")
    sub.set_defaults(run=run_train_transformer)
    sub.add_argument("--config", type=Path,
                     help="a preset name (transformer_tiny_class, transformer_custom_classes, ...) or YAML file")
    sub.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                     help="e.g. first_stage=runs/vqgan-tiny/model train.steps=2000 cache_codes=true")
    run_folder_options(sub)


def run_train_vqgan(args) -> int:
    from tamer.train.vqgan_run import load_run_config, train_vqgan

    return _train(args, load_run_config, train_vqgan)


def run_train_transformer(args) -> int:
    from tamer.train.transformer_run import load_run_config, train_transformer

    return _train(args, load_run_config, train_transformer)


def _train(args, load_run_config, train) -> int:
    """Preset + overrides -> a run; only rank 0 reports, so torchrun prints one line."""
    config = load_run_config(preset_path(args.config) if args.config else None, args.overrides)
    logs = train(config, args.out, resume=args.resume, overwrite=args.overwrite)
    if os.environ.get("RANK", "0") == "0":
        print(f"done: model in {args.out / 'model'}; last step: " + ", ".join(f"{k}={v:.4g}" for k, v in logs.items()))
    return 0
