"""``tamer eval``: parses the evaluation commands and calls :mod:`tamer.metrics` (what ``--data`` names becomes
a dataset in :mod:`tamer.metrics.eval_data`).

- ``tamer eval recon --model M --data DIR|procedural|data.yaml``: PSNR, SSIM, LPIPS, codebook use, rFID.
- ``tamer eval nll --model M --data DIR|procedural|data.yaml``: held-out NLL/token, bits/token, bits/dim.
  A folder is read as ``--kind`` says (images, classes, pairs); nll defaults to what the model is conditioned on.
- ``tamer eval samples --samples DIR --ref DIR|stats.npz``: FID, KID, IS, precision/recall.
- ``tamer eval reference --images DIR --out stats.npz``: reference statistics, computed once and reused.
- ``tamer eval classes --model M``: class accuracy of a class-conditional model's samples on the built-in shapes.

Results are printed as a table and, with ``--out``, saved as JSON with their protocol.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tamer import guards
from tamer.cli.options import device_option, model_option, precision_option
from tamer.metrics.eval_data import FOLDER_KINDS, PROCEDURAL_EVAL_LENGTH, PROCEDURAL_EVAL_SEED


def add_eval_command(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``eval`` and its subcommands on the ``tamer`` parser's subcommands; returns the ``eval`` parser."""
    evaluate = commands.add_parser("eval", help="Evaluate a VQGAN's reconstructions, a Transformer's likelihood or "
                                                "a set of samples.",
                                   description="Evaluate a VQGAN's reconstructions or a set of samples; results are "
                                               "printed as a table and saved as JSON with their protocol.")
    kinds = evaluate.add_subparsers(dest="evaluation", metavar="WHAT", required=True)

    sub = kinds.add_parser("recon", help="PSNR, SSIM, LPIPS, codebook usage/perplexity and rFID of a VQGAN.",
                           description="Reconstruct a dataset with a VQGAN: PSNR, SSIM, LPIPS, codebook usage and "
                                       "perplexity over the whole set, and rFID (reconstructions vs originals).")
    sub.set_defaults(run=run_recon)
    model_option(sub)
    sub.add_argument("--data", required=True,
                     help="an image folder, 'procedural' (the built-in shapes), or a YAML file holding a data config")
    sub.add_argument("--size", type=guards.positive_int,
                     help="image side: shorter side resized, then centre-cropped square "
                                              "(default: the model's training resolution)")
    sub.add_argument("--limit", type=guards.positive_int,
                     help="evaluate the first N images only (procedural: draw N; default "
                                               f"{PROCEDURAL_EVAL_LENGTH})")
    sub.add_argument("--seed", type=guards.seed, default=PROCEDURAL_EVAL_SEED,
                     help=f"seed of the procedural data (default {PROCEDURAL_EVAL_SEED}, held out from training)")
    _kind_option(sub, "images")
    sub.add_argument("--vgg", type=Path, help="VGG16 weights for LPIPS (default: torchvision's cache file)")
    sub.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    sub.add_argument("--no-fid", action="store_true", help="skip rFID")
    precision_option(sub)
    _common_options(sub, batch_size=8)

    sub = kinds.add_parser("nll", help="Held-out NLL per token, bits per token and bits/dim of a Transformer.",
                           description="Held-out likelihood of a stage-2 Transformer: mean NLL per image token "
                                       "(nats), bits per token, and bits per dimension (a whole image's token bits "
                                       "/ (H*W*3)), over a dataset encoded by the model's own first stage.")
    sub.set_defaults(run=run_nll)
    model_option(sub, help="a tamer Transformer folder (or a CompVis transformer .ckpt)")
    sub.add_argument("--data", required=True,
                     help="a folder (read as --kind says), 'procedural' (the built-in shapes), or a YAML file "
                          "holding a data config")
    sub.add_argument("--size", type=guards.positive_int,
                     help="image side (default and only choice: the model's training size)")
    sub.add_argument("--limit", type=guards.positive_int,
                     help="evaluate the first N images only (procedural: draw N; default "
                                               f"{PROCEDURAL_EVAL_LENGTH})")
    sub.add_argument("--seed", type=guards.seed, default=PROCEDURAL_EVAL_SEED,
                     help=f"seed of the procedural data (default {PROCEDURAL_EVAL_SEED}, held out from training)")
    _kind_option(sub, "what the model is conditioned on: classes for a class-conditional model, pairs for a "
                      "segmentation-conditional one, else images")
    sub.add_argument("--image-key", default="image", help="which entry of a data item is the image (default image)")
    sub.add_argument("--batch-size", type=guards.positive_int, default=16, help="default 16")
    sub.add_argument("--workers", type=guards.non_negative_int,
                     default=0, help="DataLoader workers decoding images (default 0)")
    device_option(sub)
    precision_option(sub)
    sub.add_argument("--out", type=Path, help="save results as JSON here")

    sub = kinds.add_parser("samples", help="FID, KID, IS and precision/recall of generated images.",
                           description="FID, KID, IS and precision/recall of a folder of samples against a reference "
                                       "folder or saved reference statistics (.npz).")
    sub.set_defaults(run=run_samples)
    sub.add_argument("--samples", type=Path, required=True, help="folder of generated images")
    sub.add_argument("--ref", type=Path, required=True, help="folder of real images, or reference statistics .npz")
    sub.add_argument("--limit", type=guards.positive_int, help="use the first N samples only")
    sub.add_argument("--save-ref", type=Path, help="save the reference folder's statistics to this .npz for reuse")
    _common_options(sub, batch_size=50)

    sub = kinds.add_parser("reference", help="Compute reference statistics (.npz) of a folder of real images once.",
                           description="Compute reference statistics of a folder of real images and save them as "
                                       ".npz (keys mu, sigma as ADM/MAR; plus features for KID and precision/recall).")
    sub.set_defaults(run=run_reference)
    sub.add_argument("--images", type=Path, required=True, help="folder of real images")
    sub.add_argument("--limit", type=guards.positive_int, help="use the first N images only")
    sub.add_argument("--no-features", action="store_true",
                     help="store only mu and sigma (smaller; KID and precision/recall then need the folder)")
    _common_options(sub, batch_size=50, out_help="output .npz", out_required=True)

    sub = kinds.add_parser("classes", help="Class accuracy of a class-conditional model's samples (built-in shapes).",
                           description="Train a small shape classifier on real built-in scenes, then let it name the "
                                       "class of samples of every class, at each guidance scale. Also reports its "
                                       "accuracy on real held-out scenes and on their reconstructions through the "
                                       "model's VQGAN (the most a transformer over those codes can reach).")
    sub.set_defaults(run=run_classes)
    sub.add_argument("--model", required=True, help="a class-conditional tamer Transformer trained on procedural data")
    sub.add_argument("--plain", action="store_true", help="the model was trained on plain scenes (data.plain)")
    sub.add_argument("--object-centric", action="store_true",
                     help="the model was trained on object-centric scenes (data.object_centric)")
    sub.add_argument("--max-distractors", type=guards.non_negative_int, default=4,
                     help="data.max_distractors of the model's training data (default 4, the dataset's)")
    sub.add_argument("-n", "--samples-per-class", type=guards.positive_int, default=20, help="default 20")
    sub.add_argument("--cfg-scale", type=guards.finite_float,
                     nargs="+", default=[1.0], help="guidance scales (default 1)")
    sub.add_argument("--top-k", type=guards.positive_int, default=40, help="default 40")
    sub.add_argument("--judge-steps", type=guards.positive_int,
                     default=800, help="classifier training steps (default 800)")
    sub.add_argument("--judge-images", type=guards.positive_int,
                     default=8000, help="real scenes it trains on (default 8000)")
    sub.add_argument("--limit", type=guards.positive_int,
                     default=512, help="held-out scenes for its own accuracy (default 512)")
    device_option(sub)
    precision_option(sub)
    sub.add_argument("--out", type=Path, help="save results as JSON here")
    return evaluate


def _kind_option(sub: argparse.ArgumentParser, default: str) -> None:
    sub.add_argument("--kind", choices=sorted(FOLDER_KINDS), help="how a --data folder is read: images (every image "
                     "under it), classes (FOLDER/<class>/<images>) or pairs (FOLDER/images + FOLDER/segmentations) "
                     f"(default: {default})")


def _common_options(sub: argparse.ArgumentParser, batch_size: int, out_help: str = "save results as JSON here",
                    out_required: bool = False) -> None:
    sub.add_argument("--inception", type=Path,
                     help="torch-fidelity's weights-inception-2015-12-05-6726825d.pth (default: in "
                          "torch.hub.get_dir()/checkpoints)")
    sub.add_argument("--features", metavar="ARCH[=PATH]",
                     help="a torchvision classifier standing in for Inception (e.g. resnet50=/w/resnet50.pth); "
                          "results are then named FD_ARCH, KD_ARCH, ... instead of FID, KID")
    sub.add_argument("--batch-size", type=guards.positive_int, default=batch_size, help=f"default {batch_size}")
    sub.add_argument("--workers", type=guards.non_negative_int,
                     default=0, help="DataLoader workers decoding images (default 0)")
    device_option(sub)
    sub.add_argument("--out", type=Path, required=out_required, help=out_help)


def _stand_in(spec: str | None):
    if spec is None:
        return None
    from tamer.metrics.features import torchvision_stand_in

    arch, _, path = spec.partition("=")
    return torchvision_stand_in(arch, path or None)


def _check_out(args, suffix: str = ".json") -> None:
    """``--out`` is checked before any work: a folder, an input, or a file in a file would lose the result."""
    if getattr(args, "out", None) is not None:
        inputs = [Path(p) for p in (getattr(args, "model", None), getattr(args, "ref", None)) if p]
        guards.check_output_file(args.out, inputs, suffix=suffix)


def _finish(result, out: Path | None) -> int:
    print(result.table())
    if out is not None:
        result.save(out)
        print(f"wrote {out}")
    return 0


def run_recon(args) -> int:
    from tamer.api import announce_precision, load_model, model_device
    from tamer.config import to_dict
    from tamer.metrics import evaluate_reconstructions
    from tamer.metrics.eval_data import reconstruction_data

    _check_out(args)
    model = load_model(args.model, config=args.config, device=args.device)
    if not hasattr(model.config, "autoencoder"):
        raise ValueError(f"{args.model}: `tamer eval recon` needs a VQGAN, this is a {type(model).__name__}")
    config, dataset, notes = reconstruction_data(model, args.data, args.size, args.limit, args.seed, args.kind)
    result = evaluate_reconstructions(
        model, dataset, limit=args.limit, batch_size=args.batch_size, num_workers=args.workers,
        features=_stand_in(args.features), inception_path=args.inception, fid=not args.no_fid, vgg_path=args.vgg,
        lpips=not args.no_lpips, data_protocol={"spec": args.data, "config": to_dict(config)},
        precision=announce_precision(args.precision, model_device(model)))
    result.notes += notes
    return _finish(result, args.out)


def run_nll(args) -> int:
    from tamer.api import announce_precision, load_model, model_device
    from tamer.config import to_dict
    from tamer.metrics.eval_data import likelihood_data
    from tamer.metrics.likelihood import evaluate_likelihood

    _check_out(args)
    model = load_model(args.model, config=args.config, device=args.device)
    if not hasattr(model, "token_nll"):
        raise ValueError(f"{args.model}: `tamer eval nll` needs a Transformer, this is a {type(model).__name__}")
    config, dataset, notes = likelihood_data(model, args.data, args.size, args.limit, args.seed, args.kind)
    result = evaluate_likelihood(model, dataset, limit=args.limit, batch_size=args.batch_size,
                                 num_workers=args.workers, image_key=args.image_key,
                                 data_protocol={"spec": args.data, "config": to_dict(config)},
                                 precision=announce_precision(args.precision, model_device(model)))
    result.protocol["model"] = str(args.model)
    result.notes += notes
    return _finish(result, args.out)


def run_samples(args) -> int:
    from tamer.metrics import evaluate_samples

    _check_out(args)
    if args.save_ref is not None:
        guards.check_output_file(args.save_ref, [args.ref], flag="--save-ref", suffix=".npz")
    result = evaluate_samples(args.samples, args.ref, features=_stand_in(args.features),
                              inception_path=args.inception, batch_size=args.batch_size, device=args.device,
                              limit=args.limit, num_workers=args.workers, save_reference=args.save_ref)
    return _finish(result, args.out)


def run_reference(args) -> int:
    from tamer.metrics import compute_reference

    _check_out(args, suffix=".npz")
    reference = compute_reference(args.images, features=_stand_in(args.features), inception_path=args.inception,
                                  batch_size=args.batch_size, device=args.device, limit=args.limit,
                                  num_workers=args.workers, keep_features=not args.no_features)
    reference.save(args.out)
    print(f"wrote reference statistics of {reference.num_images} images ({reference.stats.mu.shape[0]}-d features) "
          f"to {args.out}")
    return 0


def run_classes(args) -> int:
    import json

    from tamer.api import announce_precision, load_model, model_device
    from tamer.data.procedural import ProceduralShapes
    from tamer.imageio import save_image
    from tamer.metrics.shape_classifier import JUDGE_BLUR, judge_class_samples, train_shape_classifier

    _check_out(args)
    model = load_model(args.model, device=args.device)
    conditioning = getattr(getattr(model, "config", None), "conditioning", None)
    if conditioning is None or conditioning.kind != "class":
        raise ValueError(f"{args.model}: `tamer eval classes` needs a class-conditional Transformer")
    height, width = model.config.image_size
    if height != width:
        raise ValueError(f"{args.model}: trained on {height}×{width} images; the built-in scenes are square")
    scene = {"num_classes": conditioning.num_classes, "max_distractors": args.max_distractors, "plain": args.plain,
             "object_centric": args.object_centric}
    classifier = train_shape_classifier(size=height, steps=args.judge_steps, train_images=args.judge_images,
                                        seed=1, **scene)
    held_out = ProceduralShapes(size=height, length=args.limit, seed=PROCEDURAL_EVAL_SEED, **scene)
    precision = announce_precision(args.precision, model_device(model))
    judged = judge_class_samples(model, classifier, held_out, args.samples_per_class, tuple(args.cfg_scale),
                                 args.top_k, precision=precision)
    m = judged.metrics
    for scale, accuracy in m["accuracy"].items():
        print(f"samples, guidance {scale}: {accuracy:.1%} named correctly")
    print(f"chance {m['chance']:.1%}; the classifier on real held-out scenes {m['classifier_on_real_held_out']:.1%}, "
          f"on their reconstructions {m['classifier_on_reconstructions']:.1%}")
    for name, figures in m["per_class"].items():
        named = ", ".join(f"{share:.0%} at guidance {scale}" for scale, share in figures["accuracy"].items())
        ceiling = figures["on_reconstructions"]
        print(f"  {name}: {named}; reconstructions {'n/a' if ceiling is None else f'{ceiling:.0%}'}")
    if args.out is not None:
        protocol = {"model": str(args.model), "scene": scene, "judge_steps": args.judge_steps,
                    "judge_images": args.judge_images, "judge_blur": JUDGE_BLUR, "held_out_seed": PROCEDURAL_EVAL_SEED,
                    "precision": precision}
        args.out.write_text(json.dumps({"metrics": m, "protocol": protocol}, indent=2) + "\n")
        grids = []
        for scale in judged.samples:  # one row per class, to look at beside the figures
            grids.append(save_image(judged.grid(scale), args.out.with_name(f"{args.out.stem}-cfg{scale:g}.png")).name)
        print(f"wrote {args.out} and {', '.join(grids)}")
    return 0
