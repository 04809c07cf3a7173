"""Sampling images from a trained transformer, as a library call: conditions read from files, images and codes
written out. ``tamer sample`` is a thin wrapper around :func:`sample_to_folder`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid

from tamer.ar.class_names import class_labels, resolve_classes
from tamer.ar.conditioning import coordinate_map
from tamer.ar.model import Transformer
from tamer.ar.sampling import Callback, SamplingSettings
from tamer.devices import autocast, resolve_precision
from tamer.guards import check_count, check_model_pixels
from tamer.imageio import ImageError, open_image, read_image, save_image
from tamer.nn.gpt import weights_held_in
from tamer.progress import progress_bar
from tamer.report import labelled_grid


def read_condition_map(path: str | Path, model: Transformer) -> torch.Tensor:
    """A map condition file for ``model``: an 8-bit label map (PNG whose pixel values are the labels) for a
    segmentation condition, else an image with the stage's channels in [-1, 1]. Returns ``1×…×H×W``."""
    conditioning = model.conditioning
    if not conditioning.takes_map:
        raise ValueError(f"{path}: this model is conditioned on {conditioning.kind!r}, not on a spatial map")
    labels = conditioning.map_labels
    if labels is not None:
        image = open_image(path)
        if image.mode not in ("L", "P", "I", "I;16"):
            raise ImageError(f"{path}: a segmentation condition must be a single-channel label map "
                             f"(8-bit PNG of label ids), got a {image.mode} image")
        label_map = torch.from_numpy(np.asarray(image).astype(np.int64))
        if int(label_map.max()) >= labels:
            raise ImageError(f"{path}: label {int(label_map.max())} is beyond the model's {labels} labels")
        return label_map[None]
    image, _ = read_image(path, channels=conditioning.stage.autoencoder.in_channels)
    return image[None]


@dataclass
class SampleRequest:
    num_samples: int = 4
    classes: Sequence[int | str] | None = None  # class-conditional: num_samples of each (labels or names)
    condition_map: str | None = None  # spatial: a file
    size: tuple[int, int] | None = None  # pixels; None: the training size
    seed: int = 0
    batch_size: int = 8
    precision: str = "fp32"  # or auto, bf16, fp16 (tamer.devices.resolve_precision); sample.json keeps the resolved


def conditions_for(model: Transformer, request: SampleRequest, size: tuple[int, int]):
    """``[(condition batch or None, count)]`` covering the request, in output order."""
    kind = model.conditioning.kind
    if kind == "class":
        if not request.classes:
            names = model.conditioning.class_names
            raise ValueError(f"this model is class-conditional: give --class (0..{model.conditioning.num_classes - 1}"
                             + (f" or a name: {', '.join(names)})" if names else ")"))
        labels = resolve_classes(model.conditioning, request.classes)
        return [(torch.full((request.num_samples,), c), request.num_samples) for c in labels]
    if request.classes:
        raise ValueError(f"--class: this model is conditioned on {kind!r}, not on classes")
    if model.conditioning.takes_map:
        if request.condition_map is None:
            raise ValueError(f"this model is conditioned on {model.conditioning.key!r} maps: give --cond MAP")
        condition = read_condition_map(request.condition_map, model)
        if tuple(condition.shape[-2:]) != size:
            raise ValueError(f"{request.condition_map}: the map is {condition.shape[-2]}×{condition.shape[-1]} but "
                             f"the samples are {size[0]}×{size[1]}; give --size to match the map")
        return [(condition.expand(request.num_samples, *condition.shape[1:]), request.num_samples)]
    if request.condition_map is not None:
        raise ValueError(f"--cond: this model is conditioned on {kind!r}, not on a spatial map")
    if kind == "coord":
        return [(coordinate_map(*size)[None].expand(request.num_samples, 1, *size), request.num_samples)]
    return [(None, request.num_samples)]


@torch.no_grad()
def sample_images(model: Transformer, request: SampleRequest, settings: SamplingSettings, progress: bool = True,
                  callback: Callback | None = None) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Images ``N×3×H×W``, their codes ``N×h×w`` and seeds; sample ``i`` uses ``seed + i``. ``callback`` is
    :meth:`Transformer.sample_codes`'s, for each batch (the web app's live preview)."""
    size = tuple(request.size) if request.size else model.config.image_size
    check_model_pixels(*size, "size")
    check_count("num_samples", request.num_samples)
    check_count("batch_size", request.batch_size)
    code_shape = model.first_stage_model.code_shape(*size)
    device = next(model.parameters()).device
    precision = resolve_precision(request.precision, device)
    images, codes, seeds = [], [], []
    seed = request.seed
    with weights_held_in(model.transformer, precision.dtype):  # cast (and packed) once for all batches
        for condition, count in conditions_for(model, request, size):
            for start in range(0, count, request.batch_size):
                n = min(request.batch_size, count - start)
                part = None if condition is None else condition[start:start + n]
                bar = _progress(code_shape[0] * code_shape[1], f"samples {seed}..{seed + n - 1}", progress)
                def on_token(k, so_far, bar=bar):
                    if bar:
                        bar.update(1)
                    if callback is not None:
                        callback(k, so_far)

                with autocast(device, precision):
                    grid = model.sample_codes(part, n, settings, seed=seed, code_shape=code_shape, callback=on_token)
                    if bar:
                        bar.close()
                    codes.append(grid.cpu())
                    images.append(model.decode_codes(grid).float().cpu())
                seeds.extend(range(seed, seed + n))
                seed += n
    return torch.cat(images), torch.cat(codes), seeds


def _progress(total: int, description: str, enabled: bool):
    if not enabled:
        return None

    return progress_bar(total=total, desc=description, unit="tok", leave=False)


def sample_to_folder(model: Transformer, request: SampleRequest, settings: SamplingSettings, out: str | Path,
                     progress: bool = True, callback: Callback | None = None) -> Path:
    """Write ``sample-<seed>.png`` per sample, ``grid.png`` (one row per class when class-conditional, and then
    ``grid-labelled.png``, enlarged with each row named by its class), ``codes.npy`` (``N×h×w``) and
    ``sample.json`` (settings, seeds, request with the resolved precision) into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    request = replace(request, precision=resolve_precision(request.precision, next(model.parameters()).device).name)
    images, codes, seeds = sample_images(model, request, settings, progress, callback)
    for image, seed in zip(images, seeds):
        save_image(image, out / f"sample-{seed}.png")
    per_row = request.num_samples if request.classes else min(len(images), 8)
    save_image(make_grid(images, nrow=per_row, padding=2, pad_value=1.0), out / "grid.png")
    if request.classes:  # the same grid enlarged, each row named by its class
        names = class_labels(model.conditioning)
        rows = [names[label] for label in resolve_classes(model.conditioning, request.classes)]
        labelled_grid(images, per_row, rows, scale=max(1, 128 // images.shape[-1])).save(out / "grid-labelled.png")
    np.save(out / "codes.npy", codes.numpy().astype(np.int32))
    record = {"settings": asdict(settings), "seeds": seeds, "request": {**asdict(request), "classes": (
        list(request.classes) if request.classes else None)}, "code_shape": list(codes.shape[1:])}
    if request.classes:
        record["labels"] = resolve_classes(model.conditioning, request.classes)
    (out / "sample.json").write_text(json.dumps(record, indent=2) + "\n")
    return out


def save_condition_preview(model: Transformer, condition: torch.Tensor, path: str | Path) -> Path:
    """What the model sees of a spatial condition: the condition stage's reconstruction, as RGB."""
    tokens = model.condition_tokens(condition, condition.shape[0])
    preview = model.cond_stage_model.decode(tokens).float().cpu()
    return save_image(make_grid(preview, nrow=min(8, len(preview))), path)


def label_map_to_png(labels: torch.Tensor, path: str | Path) -> Path:
    """Write an ``H×W`` label map as an 8-bit PNG of label ids (what :func:`read_condition_map` reads)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(labels.to(torch.uint8).cpu().numpy(), mode="L").save(path)
    return path
