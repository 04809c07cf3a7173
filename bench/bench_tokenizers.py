"""The tokenizer comparison: every quantizer kind at about 8 bits per position, trained the same way on the same data.

    .venv/bin/python bench/bench_tokenizers.py [--steps 1500] [--kinds vq,fsq,...] [--out runs/tokenizers]
    .venv/bin/python bench/bench_tokenizers.py --data photos ...   # 64×64 crops of scikit-image's photos

Each kind is its shipped preset (``vqgan_tiny_cpu`` for plain VQ, ``vqgan_<kind>_cpu`` for the others): the same
f4 model on the built-in procedural scenes (32×32), the same seed, steps, batch and schedule; only the quantizer
differs. After training, each model encodes the held-out scenes (another seed): PSNR, SSIM, codebook usage and
perplexity, and the perplexity of the whole code of a position (for residual VQ the pair of codes, so that every
kind's is out of about 256). Seconds per step are the trainer's own, from its metrics log (steps 2..N, no
validation). With ``--nll-steps N`` a small class-conditional transformer (``transformer_tiny_class``) trains N steps
over each kind's codes and its held-out NLL is reported in bits per position (a residual position's codes summed).
With ``--data photos`` every kind trains instead on 64×64 crops of six photos bundled with scikit-image (written once
to ``OUT/photo-crops``: 300 training crops per photo, 32 held-out crops drawn with another seed, so other places of
the same photos), 16×16 positions; the transformer's classes are then the photos. Prints a markdown table with the
machine. Keep ``--steps`` small on a shared CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import tamer
from bench_vqgan import machine
from tamer.data.factory import build_dataset
from tamer.devices import resolve_precision
from tamer.metrics.codebook import codebook_statistics
from tamer.metrics.tally import ReconstructionTally
from tamer.train.transformer_run import load_run_config as load_transformer_config
from tamer.train.transformer_run import train_transformer
from tamer.train.vqgan_run import load_run_config, train_vqgan

PRESETS = {"vq": "vqgan_tiny_cpu", "vq-rotation": "vqgan_vq_rotation_cpu", "fsq": "vqgan_fsq_cpu",
           "lfq": "vqgan_lfq_cpu", "bsq": "vqgan_bsq_cpu", "simvq": "vqgan_simvq_cpu", "residual": "vqgan_residual_cpu"}


PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")
CROP = 64


def write_photo_crops(root: Path, per_photo: int = 300, held_out: int = 32) -> dict[str, Path]:
    """Class folders of random 64×64 crops of scikit-image's photos (one class per photo): ``train`` and ``val``."""
    from skimage import data

    folders = {"train": root / "train", "val": root / "val"}
    if all(folder.is_dir() for folder in folders.values()):
        return folders
    for split, count, seed in (("train", per_photo, 0), ("val", held_out, 1)):
        rng = np.random.default_rng(seed)
        for name in PHOTOS:
            photo = getattr(data, name)()
            (folders[split] / name).mkdir(parents=True, exist_ok=True)
            tops = rng.integers(0, photo.shape[0] - CROP, count)
            lefts = rng.integers(0, photo.shape[1] - CROP, count)
            for k, (top, left) in enumerate(zip(tops, lefts)):
                Image.fromarray(photo[top:top + CROP, left:left + CROP]).save(folders[split] / name / f"{k:04d}.png")
    return folders


def photo_overrides(folders: dict[str, Path]) -> list[str]:
    """Both stages on the photo crops instead of the procedural scenes."""
    return ["data.kind=classes", f"data.path={folders['train']}", f"data.size={CROP}", "data.flip=true",
            "val_data.kind=classes", f"val_data.path={folders['val']}", f"val_data.size={CROP}"]


def position_perplexity(indices: torch.Tensor, num_codes: int, depth: int) -> float:
    """Perplexity of a position's whole code: its ``depth`` codes (side by side along the width) as one number."""
    b, h, width = indices.shape
    per_depth = indices.view(b, h, width // depth, depth).long()
    joint = sum(per_depth[..., k] * num_codes ** k for k in range(depth))
    counts = torch.bincount(joint.flatten(), minlength=num_codes ** depth).float()
    return codebook_statistics(counts)["perplexity"]


@torch.no_grad()
def evaluate(model, val_config, batch_size: int = 64) -> dict[str, float]:
    model.eval()
    dataset = build_dataset(val_config)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    tally = ReconstructionTally(model.vocab_size)
    codes = []
    for batch in loader:
        images = batch["image"].float()
        out = model(images)
        tally.add(images, out.reconstruction.float().clamp(-1, 1), out.indices)
        codes.append(out.indices)
    q = model.config.quantizer
    return tally.metrics() | {"position_perplexity": position_perplexity(torch.cat(codes), q.num_codes,
                                                                          q.codes_per_position)}


def seconds_per_step(run: Path) -> float:
    elapsed = {r["step"]: r["elapsed_s"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
               if "elapsed_s" in r and "total_loss" in r}
    first, last = min(elapsed), max(elapsed)
    return (elapsed[last] - elapsed[first]) / max(last - first, 1)


def class_nll_bits_per_position(first_stage: Path, steps: int, batch: int, val_length: int, device: str,
                                 out: Path, data: list[str]) -> float:
    """Held-out NLL of the tiny class-conditional transformer after ``steps`` over the codes of ``first_stage``."""
    overrides = [f"first_stage={first_stage}", f"train.steps={steps}", f"train.batch_size={batch}",
                 f"data.length={max(1000, steps * batch // 2)}",  # with flips, each image twice per pass
                 f"train.device={device}", f"train.warmup_steps={min(100, steps // 10)}", f"train.val_every={steps}",
                 f"train.image_every={steps * 10}", f"train.checkpoint_every={steps * 10}",
                 f"val_data.length={val_length}", f"train.val_batches={max(1, val_length // batch)}", *data]
    config = load_transformer_config(Path(tamer.__file__).parent / "presets" / "transformer_tiny_class.yaml",
                                     overrides)
    train_transformer(config, out)
    nll = [r["val/nll"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "val/nll" in r]
    depth = tamer.load(first_stage).config.quantizer.codes_per_position
    return nll[-1] * depth / math.log(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--kinds", default=",".join(PRESETS), help=f"comma-separated, from {', '.join(PRESETS)}")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--val-length", type=int, default=256,
                        help="held-out scenes to evaluate on (with --data photos: the transformer's held-out crops)")
    parser.add_argument("--nll-steps", type=int, default=0, help="steps of the class-conditional transformer (0: none)")
    parser.add_argument("--out", default="runs/tokenizers")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto", help="training precision (auto: bf16 where it is fast)")
    parser.add_argument("--data", choices=("procedural", "photos"), default="procedural",
                        help="the built-in scenes (32×32) or 64×64 crops of scikit-image's photos")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every kind's VQGAN (repeatable), e.g. train.lr=4e-4")
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    unknown = sorted(set(kinds) - set(PRESETS))
    if unknown:
        parser.error(f"--kinds: unknown {', '.join(unknown)}; expected some of {', '.join(PRESETS)}")

    data = []
    if args.data == "photos":
        data = photo_overrides(write_photo_crops(Path(args.out) / "photo-crops"))
    rows = []
    for kind in kinds:
        overrides = [f"train.steps={args.steps}", f"train.batch_size={args.batch}", f"train.device={args.device}",
                     f"train.warmup_steps={min(50, args.steps // 10)}", "train.log_every=1",
                     f"train.precision={args.precision}", f"train.val_every={args.steps * 10}",
                     f"train.image_every={args.steps * 10}",
                     f"train.checkpoint_every={args.steps * 10}", f"val_data.length={args.val_length}", *data]
        if data:
            overrides.append(f"model.autoencoder.resolution={CROP}")
        overrides += args.set
        config = load_run_config(Path(tamer.__file__).parent / "presets" / f"{PRESETS[kind]}.yaml", overrides)
        run = Path(args.out) / kind
        started = time.perf_counter()
        train_vqgan(config, run)
        wall = time.perf_counter() - started
        model = tamer.load(run / "model")
        q = model.config.quantizer
        metrics = evaluate(model, config.val_data)
        rows.append({"kind": kind, "codes": f"{q.codes_per_position}×{q.vocab_size}" if q.codes_per_position > 1
                     else str(q.vocab_size), "bits": q.codes_per_position * math.log2(q.vocab_size),
                     **metrics, "s_per_step": seconds_per_step(run), "wall_s": wall})
        if args.nll_steps:
            transformer_run = Path(args.out) / f"{kind}-transformer"
            rows[-1]["nll_bits"] = class_nll_bits_per_position(run / "model", args.nll_steps, 32, args.val_length,
                                                               args.device, transformer_run,
                                                               [*data, f"train.precision={args.precision}"])
        print(json.dumps(rows[-1]), flush=True)

    what = (f"64×64 crops of {len(PHOTOS)} scikit-image photos (f4, 16×16 positions), held-out crops"
            if data else f"procedural scenes 32×32 (f4, 8×8 positions), held-out {args.val_length} scenes")
    print(f"\nTokenizers at about 8 bits per position: {args.steps} steps, batch {args.batch}, {what}"
          + (f"; overrides {' '.join(args.set)}" if args.set else "")
          + f"; training precision {resolve_precision(args.precision, args.device).name}"
          + f"; torch {torch.__version__}; {machine()}\n")
    nll = " class NLL (bits/position) |" if args.nll_steps else ""
    print(f"| kind | codes | bits/position | PSNR (dB) | SSIM | usage | perplexity | position perplexity |{nll} "
          "s/step |")
    print("|---|---|---|---|---|---|---|---|" + ("---|" if args.nll_steps else "") + "---|")
    for r in rows:
        nll = f" {r['nll_bits']:.2f} |" if args.nll_steps else ""
        print(f"| {r['kind']} | {r['codes']} | {r['bits']:.1f} | {r['psnr']:.2f} | {r['ssim']:.3f} | "
              f"{r['codebook_usage']:.0%} | {r['perplexity']:.1f} | {r['position_perplexity']:.1f} |{nll} "
              f"{r['s_per_step']:.3f} |")


if __name__ == "__main__":
    main()
