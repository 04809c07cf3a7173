"""High-level helpers shared by the command line and notebooks: load, read, encode, decode, reconstruct."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tamer.devices import autocast, resolve_device, resolve_precision
from tamer.guards import InputError, check_count, check_model_pixels
from tamer.imageio import FitMode, fit_to_multiple, read_image, save_image  # noqa: F401  (save_image re-exported)
from tamer.loading import load
from tamer.metrics.image import psnr
from tamer.progress import progress_bar
from tamer.vqgan.model import VQGAN


def load_model(path: str | Path, config: str | Path | None = None, device: str | torch.device = "auto"):
    """A model ready for inference (for a VQGAN: eval mode, channels-last weights)."""
    model = load(path, config=config, map_location=resolve_device(device))
    return model.for_inference() if hasattr(model, "for_inference") else model


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def announce_precision(precision: str, device: str | torch.device, report: Callable[[str], None] = print) -> str:
    """Resolve ``precision`` (``auto``: bf16 where it is fast on ``device``), say it once, return the name."""
    chosen = resolve_precision(precision, device)
    report(f"precision: {chosen}")
    return chosen.name


def _autocast(model: torch.nn.Module, precision: str):
    device = model_device(model)
    return autocast(device, resolve_precision(precision, device))


def read_images(paths: Sequence[str | Path], model: VQGAN, size: int | None = None, fit: FitMode = "crop",
                report: Callable[[str], None] | None = None) -> tuple[list[torch.Tensor], list[str]]:
    """Read images for ``model``: channels converted, shorter side resized to ``size``, sides fitted to the factor.

    Every conversion is reported through ``report`` with the file's name.
    """
    require_vqgan(model)
    if size is not None:
        check_count("--size", size)
    images, names = [], []
    for path in paths:
        image, notes = read_image(path, channels=model.config.autoencoder.in_channels)
        if size is not None:
            h, w = image.shape[-2:]
            check_model_pixels(round(h * size / min(h, w)), round(w * size / min(h, w)), f"{path} at --size {size}")
            image = resize_shorter_side(image, size)
        image, fitted = fit_to_multiple(image, model.downsample_factor, fit)
        if fitted:
            notes.append(f"{path}: {fitted} (sides must be multiples of {model.downsample_factor})")
        check_model_pixels(*image.shape[-2:], str(path))
        for note in notes:
            if report:
                report(note)
        images.append(image)
        names.append(str(path))
    return images, names


def require_vqgan(model, source: str | Path | None = None) -> VQGAN:
    """``model`` itself if it is a VQGAN; a transformer or classifier is refused by name (they do not encode)."""
    if not isinstance(model, VQGAN):
        source = source or getattr(model, "source", None) or "the model"
        hint = " (a transformer's VQGAN is its first_stage_model)" if hasattr(model, "first_stage_model") else ""
        raise InputError(f"{source}: holds a {type(model).__name__}; images are encoded and decoded by a "
                         f"VQGAN{hint}")
    return model


def resize_shorter_side(image: torch.Tensor, size: int) -> torch.Tensor:
    h, w = image.shape[-2:]
    scale = size / min(h, w)
    target = (max(1, round(h * scale)), max(1, round(w * scale)))
    if target == (h, w):
        return image
    return F.interpolate(image[None], size=target, mode="bicubic", antialias=True, align_corners=False)[0].clamp(-1, 1)


def _batches_by_size(images: Sequence[torch.Tensor], batch_size: int):
    """Indices of same-sized images, ``batch_size`` at a time."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, image in enumerate(images):
        groups[tuple(image.shape)].append(i)
    for indices in groups.values():
        for start in range(0, len(indices), batch_size):
            yield indices[start:start + batch_size]


@torch.inference_mode()
def reconstruct_images(model: VQGAN, images: Sequence[torch.Tensor], batch_size: int = 4, precision: str = "fp32"):
    """``[(reconstruction, psnr_db), ...]`` in the order of ``images`` (sizes may differ); ``precision`` as
    :func:`tamer.devices.resolve_precision` takes it (codes are chosen in fp32 whatever it is)."""
    require_vqgan(model)
    check_count("batch_size", batch_size)
    device = model_device(model)
    results: list = [None] * len(images)
    for indices in _batches_by_size(images, batch_size):
        batch = torch.stack([images[i] for i in indices]).to(device)
        with _autocast(model, precision):
            reconstruction = model(batch).reconstruction.float().clamp(-1, 1)
        for i, rec, value in zip(indices, reconstruction.cpu(), psnr(reconstruction, batch).tolist()):
            results[i] = (rec, value)
    return results


@torch.inference_mode()
def encode_images(model: VQGAN, images: Sequence[torch.Tensor], batch_size: int = 4,
                  precision: str = "fp32") -> torch.Tensor:
    """Code indices ``N×h×w`` for images of one size."""
    require_vqgan(model)
    check_count("batch_size", batch_size)
    sizes = {tuple(image.shape[-2:]) for image in images}
    if len(sizes) > 1:
        raise ValueError(f"images have different sizes {sorted(sizes)}; pass --size (and --fit) to make them equal")
    device = model_device(model)
    with _autocast(model, precision):
        codes = [model.encode(torch.stack(list(images[i:i + batch_size])).to(device)).cpu()
                 for i in range(0, len(images), batch_size)]
    return torch.cat(codes)


@torch.inference_mode()
def decode_codes(model: VQGAN, codes: torch.Tensor, batch_size: int = 4, precision: str = "fp32",
                 progress: bool = False) -> torch.Tensor:
    """Images ``N×3×H×W`` in [-1, 1] from code grids ``N×h×w``, ``batch_size`` at a time (``progress``: a bar over
    the batches when there is more than one)."""
    require_vqgan(model)
    check_count("batch_size", batch_size)
    device = model_device(model)
    starts = range(0, len(codes), batch_size)
    with _autocast(model, precision):
        return torch.cat([model.decode(codes[i:i + batch_size].to(device)).float().clamp(-1, 1).cpu()
                          for i in progress_bar(starts, desc="decode", unit="batch",
                                                disable=not progress or len(starts) < 2)])


def save_codes(codes: torch.Tensor, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = np.int16 if int(codes.max()) < 2**15 else np.int32
    np.save(path, codes.numpy().astype(dtype))
    return path


def load_codes(path: str | Path, model: VQGAN) -> torch.Tensor:
    """An ``N×h×w`` (or ``h×w``) integer array checked against the model's vocabulary and the pixel limit."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file" if not path.exists() else f"{path}: is a folder, expected a .npy")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise InputError(f"{path}: not a .npy array of codes ({error or 'empty file'})") from None
    if isinstance(array, np.lib.npyio.NpzFile):
        names = list(array.files)
        array.close()
        raise InputError(f"{path}: a .npz archive (arrays {names[:5]}); expected one .npy array of codes as "
                         "`tamer encode` writes it")
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"{path}: expected integer codes of shape N×h×w, got {array.dtype} {array.shape}")
    if 0 in array.shape:
        raise InputError(f"{path}: holds no codes (shape {array.shape})")
    if array.min() < 0 or array.max() >= model.vocab_size:
        raise InputError(f"{path}: codes must lie in [0, {model.vocab_size}), got [{array.min()}, {array.max()}]")
    factor = model.downsample_factor
    check_model_pixels(array.shape[1] * factor, array.shape[2] * factor, f"{path} ({array.shape[1]}×{array.shape[2]} "
                       "codes)")
    return torch.from_numpy(array.astype(np.int64))
