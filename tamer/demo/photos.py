"""`tamer demo-photos`: the photos that ship with scikit-image through a VQGAN (a converted CompVis one, say),
written with their PSNR."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from tamer import api
from tamer.imageio import save_image
from tamer.vqgan.model import VQGAN, VQGANConfig

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def skimage_photos(size: int) -> dict[str, torch.Tensor]:
    """The bundled photos as ``3×H×W`` tensors in [-1, 1], shorter side ``size``, centre-cropped to a square."""
    from skimage import data

    photos = {}
    for name in PHOTOS:
        array = np.asarray(getattr(data, name)(), dtype=np.float32)
        image = api.resize_shorter_side(torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1, size)
        h, w = image.shape[-2:]
        top, left = (h - size) // 2, (w - size) // 2
        photos[name] = image[:, top:top + size, left:left + size]
    return photos


def run_reconstruction_demo(out: Path, model: str | None = None, config: str | None = None, size: int = 256,
                            device: str = "auto") -> dict:
    out = Path(out)
    if model is None:
        torch.manual_seed(0)
        vqgan = VQGAN(VQGANConfig()).to(api.resolve_device(device)).for_inference()
        print("using a freshly initialised VQGAN (f16, 1024 codes): reconstructions are noise until it is trained "
              "or converted; pass --model for a trained one")
    else:
        vqgan = api.load_model(model, config=config, device=device)
    photos = skimage_photos(size)
    results = api.reconstruct_images(vqgan, list(photos.values()), batch_size=2)
    codes = api.encode_images(vqgan, list(photos.values()), batch_size=2)
    table = {}
    for (name, photo), (reconstruction, value) in zip(photos.items(), results):
        save_image(photo, out / f"{name}.png")
        save_image(reconstruction, out / f"{name}-reconstruction.png")
        save_image(torch.cat([photo, reconstruction], dim=2), out / f"{name}-side-by-side.png")
        table[name] = round(value, 3)
    api.save_codes(codes, out / "codes.npy")
    summary = {"model": model or "fresh VQGAN (untrained)", "size": size, "psnr_db": table,
               "codes_shape": list(codes.shape), "distinct_codes": int(codes.unique().numel())}
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{'photo':12s} {'PSNR (dB)':>10s}")
    for name, value in table.items():
        print(f"{name:12s} {value:10.2f}")
    print(f"codes {tuple(codes.shape)}, {summary['distinct_codes']} distinct; wrote everything to {out}")
    return summary
