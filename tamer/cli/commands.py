"""The ``tamer`` command: parses arguments and calls the library; no logic of its own beyond that."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tamer import guards
from tamer.cli.errors import debug_requested, run_reporting
from tamer.guards import set_max_pixels
from tamer.presets import preset_path
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
    from tamer.cli.app import add_app_command
    from tamer.cli.eval import add_eval_command
    from tamer.cli.plot import add_plot_command
    from tamer.cli.sample import add_sample_command, height_by_width

    add_app_command(commands)
    add_eval_command(commands)
    add_plot_command(commands)
    add_sample_command(commands)

    def command(name: str, help: str, run) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(run=run)
        return sub

    def model_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--model", required=True, help="tamer checkpoint folder, or a CompVis .ckpt")
        sub.add_argument("--config", help="project.yaml of a CompVis .ckpt (found beside it when omitted)")
        sub.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
        sub.add_argument("--batch-size", type=guards.positive_int, default=4)
        guards.precision_option(sub)
        sub.add_argument("--max-pixels", type=guards.positive_int, metavar="N",
                         help=f"pixels per image a model is given (default {guards.MAX_MODEL_PIXELS}, 2048×2048)")

    def image_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
        sub.add_argument("--size", type=guards.positive_int, help="resize the shorter side to this many pixels first")
        sub.add_argument("--fit", choices=("crop", "pad", "resize"), default="crop",
                         help="how a side that is not a multiple of the downsampling factor is fixed (default: crop)")

    sub = command("reconstruct", "Encode and decode images; write the reconstructions and print PSNR.", _reconstruct)
    model_options(sub)
    image_options(sub)
    sub.add_argument("--out", type=Path, required=True, help="output folder")

    sub = command("encode", "Encode images to code indices (an N×h×w .npy).", _encode)
    model_options(sub)
    image_options(sub)
    sub.add_argument("--out", type=Path, required=True, help="output .npy file")

    sub = command("decode", "Decode code indices (.npy of N×h×w or h×w) to images.", _decode)
    model_options(sub)
    sub.add_argument("codes", type=Path)
    sub.add_argument("--out", type=Path, required=True, help="output folder")

    sub = command("convert", "Convert a CompVis taming-transformers checkpoint to a tamer folder.", _convert)
    sub.add_argument("checkpoint", type=Path, help="the original .ckpt")
    sub.add_argument("--config", type=Path, help="its project.yaml (found beside it when omitted)")
    sub.add_argument("--code-shape", type=height_by_width("codes", "16x16"), metavar="HxW",
                     help="a transformer's code grid, which project.yaml does not store (default: the square grid "
                          "that fits block_size, with a warning)")
    sub.add_argument("--out", type=Path, required=True, help="output folder")
    sub.add_argument("--overwrite", action="store_true", help="replace a model already in --out")

    train = commands.add_parser("train", help="Train a model from a preset.",
                                description="Train a model from a preset.")
    stages = train.add_subparsers(dest="stage", metavar="STAGE", required=True)
    sub = stages.add_parser("vqgan", help="Train a VQGAN (stage 1).", description="Train a VQGAN (stage 1). "
                            "Run under `torchrun --nproc_per_node N` for several processes.")
    sub.set_defaults(run=_train_vqgan)
    sub.add_argument("--config", type=Path, help="a preset name (vqgan_tiny_cpu, vqgan_custom, ...) or YAML file")
    sub.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                     help="e.g. train.steps=2000 model.quantizer.num_codes=512")
    sub.add_argument("--out", type=Path, required=True, help="run folder: checkpoints, metrics.jsonl, images, model/")
    sub.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    sub.add_argument("--overwrite", action="store_true", help="replace a run already in --out (its checkpoints "
                     "and metrics are deleted)")
    sub = stages.add_parser("transformer", help="Train the transformer over a VQGAN's codes (stage 2).",
                            description="Train the transformer over a trained VQGAN's codes (stage 2): first_stage "
                            "names the VQGAN; code grid, vocab_size and block_size are derived. Run under "
                            "`torchrun --nproc_per_node N` for several processes.")
    sub.set_defaults(run=_train_transformer)
    sub.add_argument("--config", type=Path,
                     help="a preset name (transformer_tiny_class, transformer_custom_classes, ...) or YAML file")
    sub.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                     help="e.g. first_stage=runs/vqgan-tiny/model train.steps=2000 cache_codes=true")
    sub.add_argument("--out", type=Path, required=True, help="run folder: checkpoints, metrics.jsonl, images, model/")
    sub.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    sub.add_argument("--overwrite", action="store_true", help="replace a run already in --out (its checkpoints "
                     "and metrics are deleted)")

    sub = command("demo", "Train a tiny VQGAN and class- and segmentation-conditional transformers on the built-in "
                  "data (about 13 min on 2 CPU cores), sample, judge, and write an HTML page.", _demo)
    sub.add_argument("--quick", action="store_true", help="a one-minute version (little training: expect noise)")
    sub.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder (default demo-output)")
    sub.add_argument("--device", default="auto")
    sub.add_argument("--photos", action="store_true",
                     help="instead: put the photos bundled with scikit-image through the VQGAN given by --model")
    sub.add_argument("--model", help="with --photos: a tamer VQGAN or CompVis .ckpt (default: untrained)")
    sub.add_argument("--config", help="with --photos: project.yaml of a CompVis .ckpt")
    sub.add_argument("--size", type=guards.positive_int, default=256,
                     help="with --photos: shorter side in pixels (default 256)")
    return parser


def _load_model(args, vqgan: bool = False):
    """The model, with ``args.precision`` resolved for its device (and printed once)."""
    from tamer import api

    model = api.load_model(args.model, config=args.config, device=args.device)
    model = api.require_vqgan(model, args.model) if vqgan else model
    args.precision = api.announce_precision(args.precision, api.model_device(model))
    return model


def _reconstruct(args) -> int:
    from tamer import api

    guards.check_output_folder(args.out, args.images)
    outputs, renamed = guards.output_names(args.images)
    model = _load_model(args, vqgan=True)
    images, names = api.read_images(args.images, model, size=args.size, fit=args.fit, report=print)
    results = api.reconstruct_images(model, images, batch_size=args.batch_size, precision=args.precision)
    args.out.mkdir(parents=True, exist_ok=True)
    for note in renamed:
        print(note)
    print(f"{'image':40s} {'size':>11s} {'PSNR (dB)':>10s}")
    for name, output, (reconstruction, psnr) in zip(names, outputs, results):
        api.save_image(reconstruction, args.out / output)
        print(f"{Path(name).name:40s} {'×'.join(map(str, reconstruction.shape[-2:])):>11s} {psnr:10.2f}")
    print(f"wrote {len(results)} reconstructions to {args.out}")
    return 0


def _encode(args) -> int:
    from tamer import api

    guards.check_output_file(args.out, args.images, suffix=".npy")
    model = _load_model(args, vqgan=True)
    images, names = api.read_images(args.images, model, size=args.size, fit=args.fit, report=print)
    codes = api.encode_images(model, images, batch_size=args.batch_size, precision=args.precision)
    api.save_codes(codes, args.out)
    print(f"wrote codes {tuple(codes.shape)} for {len(names)} images to {args.out}")
    return 0


def _decode(args) -> int:
    from tamer import api

    guards.check_output_folder(args.out, [args.codes])
    model = _load_model(args, vqgan=True)
    codes = api.load_codes(args.codes, model)
    images = api.decode_codes(model, codes, batch_size=args.batch_size, precision=args.precision, progress=True)
    args.out.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        api.save_image(image, args.out / f"{i:04d}.png")
    print(f"wrote {len(images)} images to {args.out}")
    return 0


def _convert(args) -> int:
    from tamer.loading import load

    guards.check_new_model_folder(args.out, args.overwrite)
    model = load(args.checkpoint, config=args.config, code_shape=args.code_shape)
    model.save(args.out)
    print(f"converted {args.checkpoint} -> {args.out} ({type(model).__name__}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters)")
    return 0


def _train_vqgan(args) -> int:
    from tamer.train.vqgan_run import load_run_config, train_vqgan

    return _train(args, load_run_config, train_vqgan)


def _train_transformer(args) -> int:
    from tamer.train.transformer_run import load_run_config, train_transformer

    return _train(args, load_run_config, train_transformer)


def _train(args, load_run_config, train) -> int:
    """Preset + overrides -> a run; only rank 0 reports, so torchrun prints one line."""
    config = load_run_config(preset_path(args.config) if args.config else None, args.overrides)
    logs = train(config, args.out, resume=args.resume, overwrite=args.overwrite)
    if os.environ.get("RANK", "0") == "0":
        print(f"done: model in {args.out / 'model'}; last step: " + ", ".join(f"{k}={v:.4g}" for k, v in logs.items()))
    return 0


def _demo(args) -> int:
    if args.photos:
        from tamer.demo.photos import run_reconstruction_demo

        run_reconstruction_demo(args.out, model=args.model, config=args.config, size=args.size, device=args.device)
        return 0
    if args.model or args.config:
        raise ValueError("--model/--config go with --photos; the full demo trains its own models")
    from tamer.demo import run_demo

    run_demo(args.out, quick=args.quick, device=args.device)
    return 0

