"""Held-out PSNR of the demo's tiny VQGAN under several recipes, the same steps, data and seed for each.

    .venv/bin/python bench/tiny_vqgan_recipes.py [--steps 600] [--recipes shipped,no-norm-l2] [--threads 1]

Each recipe trains the 32×32, f4, 256-code VQGAN of ``configs/vqgan_tiny_cpu.yaml`` on 6000 plain procedural scenes
(the demo's) with pixel + codebook loss (the demo's VQGAN stops before its GAN term starts), batch 16, warm-up 50
steps then a cosine schedule, and reports held-out PSNR (256 scenes of another seed) and codebook usage at a
quarter, half, three quarters and all of the steps. A quality measurement, not a timing one: two recipes may run
side by side with ``--threads 1``. Prints a markdown table with the machine.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from bench_vqgan import machine
from tamer.data.procedural import ProceduralShapes
from tamer.nn.autoencoder import AutoencoderConfig
from tamer.nn.quantize import QuantizerConfig
from tamer.vqgan.model import VQGAN, VQGANConfig

#: name -> (norm groups, learning rate, Adam betas, pixel loss, codes, EMA codebook)
RECIPES = {
    "shipped": (32, 4e-4, (0.5, 0.9), "l1", 256, False),  # the preset before the demo recipe
    "groupnorm8": (8, 1e-3, (0.9, 0.99), "l1", 256, False),
    "no-norm": (0, 1e-3, (0.9, 0.99), "l1", 256, False),
    "no-norm-lr2e-3": (0, 2e-3, (0.9, 0.99), "l1", 256, False),
    "no-norm-l2": (0, 2e-3, (0.9, 0.99), "l2", 256, False),
    "no-norm-l2-1024": (0, 2e-3, (0.9, 0.99), "l2", 1024, False),
    "no-norm-l2-ema": (0, 2e-3, (0.9, 0.99), "l2", 256, True),  # the demo's recipe now
}


def train(recipe: str, steps: int, images: torch.Tensor, held_out: torch.Tensor) -> list[tuple[int, float, float]]:
    groups, lr, betas, pixel_loss, codes, ema = RECIPES[recipe]
    torch.manual_seed(0)
    model = VQGAN(VQGANConfig(AutoencoderConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(),
                                                z_channels=64, resolution=32, norm_groups=groups),
                              QuantizerConfig(num_codes=codes, embed_dim=16, l2_normalize=True,
                                              dead_code_threshold=100, ema=ema)))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=betas)
    generator = torch.Generator().manual_seed(0)
    warmup, marks, rows = 50, {steps // 4, steps // 2, 3 * steps // 4, steps}, []
    for step in range(steps):
        progress = max(0.0, (step - warmup) / max(1, steps - warmup))
        factor = (step + 1) / warmup if step < warmup else 0.1 + 0.45 * (1 + math.cos(math.pi * progress))
        for group in optimizer.param_groups:
            group["lr"] = lr * factor
        batch = images[torch.randint(len(images), (16,), generator=generator)]
        out = model(batch)
        diff = batch - out.reconstruction
        loss = (diff.abs() if pixel_loss == "l1" else diff.square()).mean() + out.quantizer_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step + 1 in marks:
            rows.append((step + 1, *evaluate(model, held_out)))
    return rows


@torch.no_grad()
def evaluate(model: VQGAN, held_out: torch.Tensor) -> tuple[float, float]:
    model.eval()
    outs = [model(held_out[i:i + 64]) for i in range(0, len(held_out), 64)]
    model.train()
    reconstruction = torch.cat([o.reconstruction for o in outs]).clamp(-1, 1)
    mse = ((reconstruction - held_out) / 2).square().flatten(1).mean(1)
    used = torch.cat([o.indices.flatten() for o in outs]).unique().numel()
    return (10 * torch.log10(1 / mse)).mean().item(), used / model.vocab_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    scene = {"max_distractors": 0, "plain": True}
    train_data = ProceduralShapes(32, 6000, seed=0, **scene)
    held_out_data = ProceduralShapes(32, 256, seed=12345, **scene)
    images = torch.stack([train_data[i]["image"] for i in range(len(train_data))])
    held_out = torch.stack([held_out_data[i]["image"] for i in range(len(held_out_data))])
    print(f"\nTiny VQGAN recipes, {args.steps} steps, batch 16, held-out PSNR (dB) / codebook usage; {machine()}\n")
    print("| recipe | norm groups | lr | betas | pixel loss | codes | EMA | " + " | ".join(
        f"step {s}" for s in sorted({args.steps // 4, args.steps // 2, 3 * args.steps // 4, args.steps})) + " | s |")
    print("|---|---|---|---|---|---|---|" + "---|" * 5)
    for recipe in args.recipes.split(","):
        started = time.perf_counter()
        rows = train(recipe, args.steps, images, held_out)
        groups, lr, betas, pixel_loss, codes, ema = RECIPES[recipe]
        cells = " | ".join(f"{psnr:.2f} / {usage:.0%}" for _, psnr, usage in rows)
        print(f"| {recipe} | {groups} | {lr:g} | {betas} | {pixel_loss} | {codes} | {ema} | {cells} | "
              f"{time.perf_counter() - started:.0f} |", flush=True)


if __name__ == "__main__":
    main()
