"""Image files <-> tensors in [-1, 1], with errors and notes that name the file."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from tamer.errors import ImageError  # noqa: F401 (re-exported)
from tamer.guards import InputError, check_image_pixels

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
FitMode = Literal["crop", "pad", "resize"]



def open_image(path: str | Path) -> Image.Image:
    """Open and fully decode ``path`` with Pillow, turned upright by its EXIF orientation.

    A missing, non-image, corrupt or oversized file (see :data:`tamer.guards.MAX_IMAGE_PIXELS`: the header is
    checked before any pixel is decoded) is an ImageError naming it, so a data folder skips it like any bad file.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            check_image_pixels(*image.size, str(path))
            image.load()
            upright = ImageOps.exif_transpose(image)
            return upright if upright is not image else image.copy()
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a folder, not an image file") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image (or a format Pillow cannot read)") from None
    except InputError as error:
        raise ImageError(str(error)) from None
    except Image.DecompressionBombError as error:  # Pillow's own check, for headers far over ours
        raise ImageError(f"{path}: image over the pixel limit ({error}); pass --max-pixels N (or set "
                         "TAMER_MAX_PIXELS) to read it anyway") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageError(f"{path}: corrupt or truncated image ({error})") from None


#: 16- and 32-bit integer modes, and the value that is white in each (Pillow reads 16-bit PNGs as I;16 or I)
_WIDE_MODES = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "I": 65535}


def _wide_to_unit(image: Image.Image, path: Path) -> np.ndarray:
    """A 16-bit, 32-bit integer or float single-channel image as ``H×W`` float32 in [0, 1]."""
    array = np.asarray(image).astype(np.float32)
    if image.mode == "F":
        if not np.isfinite(array).all():
            raise ImageError(f"{path}: float image holds NaN or infinite values")
        low, high = float(array.min(initial=0)), float(array.max(initial=0))
        if low < 0 or high > 1:
            raise ImageError(f"{path}: float image with values in [{low:g}, {high:g}]; tamer reads float images as "
                             "[0, 1] (scale it, or save it as 8- or 16-bit)")
        return array
    white = _WIDE_MODES[image.mode]
    if array.size and (array.min() < 0 or array.max() > white):
        raise ImageError(f"{path}: {image.mode} image with values in [{array.min():g}, {array.max():g}]; expected "
                         f"a 16-bit image (0..{white})")
    return array / white


def read_image(path: str | Path, channels: int = 3) -> tuple[torch.Tensor, list[str]]:
    """Decode ``path`` to a ``C×H×W`` float tensor in [-1, 1], plus notes on any conversion made.

    Grayscale, palette and RGBA files are converted (alpha is composited on white) and the note says so; 16-bit
    files keep their full range (white is 65535), float files are read as [0, 1].
    """
    path = Path(path)
    image = open_image(path)
    notes: list[str] = []
    mode = image.mode
    try:
        if mode in _WIDE_MODES or mode == "F":
            unit = _wide_to_unit(image, path)[:, :, None]
            array = np.repeat(unit, channels, axis=2) * 255.0
            if channels != 1:
                notes.append(f"{path}: {mode} grayscale image ({'float' if mode == 'F' else '16-bit'}) repeated "
                             f"to {channels} channels")
        else:
            if channels == 1:
                converted = image.convert("L")
            elif mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")
                converted = Image.new("RGB", rgba.size, (255, 255, 255))
                converted.paste(rgba, mask=rgba.getchannel("A"))
                notes.append(f"{path}: {mode} image, alpha composited on white")
            else:
                converted = image.convert("RGB")
                if mode != "RGB":
                    notes.append(f"{path}: {mode} image converted to RGB")
            array = np.asarray(converted, dtype=np.float32)
    except ValueError as error:  # a mode Pillow cannot convert
        raise ImageError(f"{path}: cannot convert its {mode} pixels to RGB ({error})") from None
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1) / 127.5 - 1.0, notes


def fit_to_multiple(image: torch.Tensor, factor: int, mode: FitMode = "crop") -> tuple[torch.Tensor, str | None]:
    """Make both sides of ``C×H×W`` multiples of ``factor``; returns the image and what was done (or None)."""
    _, h, w = image.shape
    if h % factor == 0 and w % factor == 0:
        return image, None
    if mode == "crop":
        nh, nw = max(factor, h // factor * factor), max(factor, w // factor * factor)
        if nh > h or nw > w:  # smaller than one factor: nothing to crop to
            return fit_to_multiple(image, factor, "pad")
        top, left = (h - nh) // 2, (w - nw) // 2
        return image[:, top:top + nh, left:left + nw], f"{h}×{w} centre-cropped to {nh}×{nw}"
    if mode == "pad":
        nh, nw = -(-h // factor) * factor, -(-w // factor) * factor
        padded = F.pad(image[None], (0, nw - w, 0, nh - h), mode="replicate")[0]
        return padded, f"{h}×{w} padded (edge replicated, right and bottom) to {nh}×{nw}"
    if mode == "resize":
        nh, nw = max(factor, round(h / factor) * factor), max(factor, round(w / factor) * factor)
        resized = F.interpolate(image[None], size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)[0]
        return resized.clamp(-1, 1), f"{h}×{w} resized to {nh}×{nw}"
    raise ValueError(f"fit mode: expected 'crop', 'pad' or 'resize', got {mode!r}")


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """``C×H×W`` in [-1, 1] -> ``H×W×C`` uint8 (``H×W`` for one channel)."""
    array = ((image.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return array[:, :, 0] if array.shape[2] == 1 else array


def save_image(image: torch.Tensor, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(image)).save(path)
    return path


def list_images(root: str | Path) -> list[Path]:
    """Image files under ``root`` (recursive), sorted."""
    root = Path(root)
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
