"""``tamer reconstruct | encode | decode | convert``: images and codes through a VQGAN, and CompVis checkpoints
converted to tamer folders (the work is in :mod:`tamer.api` and :mod:`tamer.loading`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tamer import api, guards
from tamer.cli.options import device_option, height_by_width, max_pixels_option, model_option, precision_option
from tamer.loading import load


def add_image_commands(commands: argparse._SubParsersAction) -> None:
    def command(name: str, help: str, run) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(run=run)
        return sub

    def model_options(sub: argparse.ArgumentParser) -> None:
        model_option(sub)
        device_option(sub)
        sub.add_argument("--batch-size", type=guards.positive_int, default=4)
        precision_option(sub)
        max_pixels_option(sub)

    def image_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
        sub.add_argument("--size", type=guards.positive_int, help="resize the shorter side to this many pixels first")
        sub.add_argument("--fit", choices=("crop", "pad", "resize"), default="crop",
                         help="how a side that is not a multiple of the downsampling factor is fixed (default: crop)")

    sub = command("reconstruct", "Encode and decode images; write the reconstructions and print PSNR.", run_reconstruct)
    model_options(sub)
    image_options(sub)
    sub.add_argument("--out", type=Path, required=True, help="output folder")

    sub = command("encode", "Encode images to code indices (an N×h×w .npy).", run_encode)
    model_options(sub)
    image_options(sub)
    sub.add_argument("--out", type=Path, required=True, help="output .npy file")

    sub = command("decode", "Decode code indices (.npy of N×h×w or h×w) to images.", run_decode)
    model_options(sub)
    sub.add_argument("codes", type=Path)
    sub.add_argument("--out", type=Path, required=True, help="output folder")

    sub = command("convert", "Convert a CompVis taming-transformers checkpoint to a tamer folder.", run_convert)
    sub.add_argument("checkpoint", type=Path, help="the original .ckpt")
    sub.add_argument("--config", type=Path, help="its project.yaml (found beside it when omitted)")
    sub.add_argument("--code-shape", type=height_by_width("codes", "16x16"), metavar="HxW",
                     help="a transformer's code grid, which project.yaml does not store (default: the square grid "
                          "that fits block_size, with a warning)")
    sub.add_argument("--out", type=Path, required=True, help="output folder")
    sub.add_argument("--overwrite", action="store_true", help="replace a model already in --out")


def _load_model(args, vqgan: bool = False):
    """The model, with ``args.precision`` resolved for its device (and printed once)."""
    model = api.load_model(args.model, config=args.config, device=args.device)
    model = api.require_vqgan(model, args.model) if vqgan else model
    args.precision = api.announce_precision(args.precision, api.model_device(model))
    return model


def run_reconstruct(args) -> int:
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


def run_encode(args) -> int:
    guards.check_output_file(args.out, args.images, suffix=".npy")
    model = _load_model(args, vqgan=True)
    images, names = api.read_images(args.images, model, size=args.size, fit=args.fit, report=print)
    codes = api.encode_images(model, images, batch_size=args.batch_size, precision=args.precision)
    api.save_codes(codes, args.out)
    print(f"wrote codes {tuple(codes.shape)} for {len(names)} images to {args.out}")
    return 0


def run_decode(args) -> int:
    guards.check_output_folder(args.out, [args.codes])
    model = _load_model(args, vqgan=True)
    codes = api.load_codes(args.codes, model)
    images = api.decode_codes(model, codes, batch_size=args.batch_size, precision=args.precision, progress=True)
    args.out.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        api.save_image(image, args.out / f"{i:04d}.png")
    print(f"wrote {len(images)} images to {args.out}")
    return 0


def run_convert(args) -> int:
    guards.check_new_model_folder(args.out, args.overwrite)
    model = load(args.checkpoint, config=args.config, code_shape=args.code_shape)
    model.save(args.out)
    print(f"converted {args.checkpoint} -> {args.out} ({type(model).__name__}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters)")
    return 0
