"""What bf16 costs on trained models: the share of VQGAN indices equal to fp32's, the PSNR of both, and a
transformer's held-out NLL in both (weights held in bf16, as when sampling), on the demo's models.

    .venv/bin/python bench/bench_bf16_quality.py demo-output/runs

Uses ``RUNS/vqgan/model`` and ``RUNS/class/model`` (what ``tamer demo`` trains): 256 held-out demo scenes, and
32×32 crops of the photos that ship with scikit-image (each resized to 128 pixels high). Prints a markdown table.
"""

from __future__ import annotations

import argparse

import numpy as np
import skimage.data
import torch
import torch.nn.functional as F

import tamer
from bench_vqgan import machine
from tamer.data.procedural import ProceduralShapes
from tamer.demo.run import HELD_OUT_SEED, SCENE, held_out_scenes
from tamer.metrics.image import psnr
from tamer.metrics.likelihood import evaluate_likelihood

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")


def photo_crops(side: int = 32, height: int = 128) -> torch.Tensor:
    crops = []
    for name in PHOTOS:
        image = torch.from_numpy(np.asarray(getattr(skimage.data, name)())).float()[..., :3].permute(2, 0, 1)[None]
        width = image.shape[-1] * height // image.shape[-2] // side * side
        image = F.interpolate(image / 127.5 - 1, size=(height, width), mode="area")[0]
        crops += [image[:, i:i + side, j:j + side] for i in range(0, height, side) for j in range(0, width, side)]
    return torch.stack(crops)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("runs", help="a demo's runs/ folder")
    args = parser.parse_args()
    vqgan = tamer.load(f"{args.runs}/vqgan/model").for_inference()
    print(f"\nbf16 autocast against fp32 on trained models; torch {torch.__version__}; {machine()}\n")
    print("| data | VQGAN indices equal to fp32's | PSNR fp32 (dB) | PSNR bf16 (dB) | difference |")
    print("|---|---|---|---|---|")
    for name, images in (("held-out demo scenes", held_out_scenes(256)["image"]),
                         ("scikit-image photo crops", photo_crops())):
        with torch.inference_mode():
            fp32 = vqgan.encode(images)
            fp32_psnr = psnr(vqgan.decode(fp32), images).mean().item()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                bf16 = vqgan.encode(images)
                bf16_psnr = psnr(vqgan.decode(bf16).float(), images).mean().item()
        print(f"| {name} ({len(images)}) | {(fp32 == bf16).float().mean().item():.2%} | {fp32_psnr:.2f} | "
              f"{bf16_psnr:.2f} | {bf16_psnr - fp32_psnr:+.3f} |")
    transformer = tamer.load(f"{args.runs}/class/model")
    data = ProceduralShapes(32, length=256, seed=HELD_OUT_SEED, **SCENE)
    nll = {precision: evaluate_likelihood(transformer, data, batch_size=64, progress=False,
                                          precision=precision).metrics["nll"] for precision in ("fp32", "bf16")}
    print(f"\nclass-conditional transformer, held-out NLL (nats/token): fp32 {nll['fp32']:.5f}, bf16 weights "
          f"{nll['bf16']:.5f}, difference {nll['bf16'] - nll['fp32']:+.5f}")


if __name__ == "__main__":
    main()
