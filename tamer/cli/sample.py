"""``tamer sample``: argument parsing for sampling images from a transformer (the work is in tamer.ar.generation)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tamer import guards
from tamer.cli.options import device_option, height_by_width, max_pixels_option, model_option, precision_option


def add_sample_command(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    help = "Sample images from a stage-2 transformer: PNGs, a grid, codes.npy and sample.json."
    sub = commands.add_parser("sample", help=help, description=help + " Sizes beyond the training size use the "
                              "sliding-window sampler.")
    sub.set_defaults(run=run_sample)
    model_option(sub, help="a tamer transformer folder, or a CompVis Net2NetTransformer .ckpt")
    sub.add_argument("--class", dest="classes", nargs="+", metavar="NAME",
                     help="classes of a class-conditional model, by name (its training folders' names) or label "
                          "number; -n samples of each")
    sub.add_argument("--cond", type=Path, metavar="MAP",
                     help="spatial condition: an 8-bit label-map PNG (segmentation) or an image (depth, edges, ...)")
    sub.add_argument("--size", type=_size, metavar="HxW", help="image size in pixels (default: the training size)")
    sub.add_argument("-n", "--num-samples", type=guards.positive_int, default=4,
                     help="samples (per class) (default 4)")
    sub.add_argument("--temperature", type=guards.finite_float, default=1.0)
    sub.add_argument("--top-k", type=guards.positive_int, help="keep the K most likely tokens (1: greedy)")
    sub.add_argument("--top-p", type=guards.finite_float,
                     help="nucleus sampling: keep tokens up to this probability mass")
    sub.add_argument("--cfg-scale", type=guards.finite_float, default=1.0,
                     help="classifier-free guidance scale (needs a model trained with classifier_free; 1: off)")
    sub.add_argument("--seed", type=guards.seed, default=0, help="sample i uses seed + i, in any batch (default 0)")
    sub.add_argument("--batch-size", type=guards.positive_int, default=8)
    max_pixels_option(sub, "pixels per sample")
    device_option(sub)
    precision_option(sub)
    sub.add_argument("--out", type=Path, required=True, help="output folder")
    return sub


_size = height_by_width("pixels", "256x512")


def run_sample(args) -> int:
    from tamer.api import announce_precision, load_model
    from tamer.ar.generation import SampleRequest, sample_to_folder
    from tamer.ar.model import Transformer
    from tamer.ar.sampling import SamplingSettings

    guards.check_output_folder(args.out)
    if args.size is not None:
        guards.check_model_pixels(*args.size, "--size")
    guards.check_seed("--seed", args.seed, args.num_samples * len(args.classes or [0]))
    model = load_model(args.model, config=args.config, device=args.device)
    if not isinstance(model, Transformer):
        raise ValueError(f"{args.model}: holds a {type(model).__name__}; `tamer sample` needs a transformer")
    settings = SamplingSettings(args.temperature, args.top_k, args.top_p, args.cfg_scale)
    precision = announce_precision(args.precision, next(model.parameters()).device)
    request = SampleRequest(args.num_samples, args.classes, None if args.cond is None else str(args.cond), args.size,
                            args.seed, args.batch_size, precision)
    out = sample_to_folder(model, request, settings, args.out)
    print(f"wrote {out / 'grid.png'}, samples and codes.npy to {out}")
    return 0
