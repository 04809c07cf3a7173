"""Checks on what a user hands tamer, made before any work starts: numbers, image sizes and output paths.

Each check raises :class:`InputError` (a ``ValueError``) with one line that names the input and what to do, so the
command line prints it as it is and a notebook sees an ordinary exception. Nothing here imports a model.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

from tamer.errors import InputError  # noqa: F401 (re-exported)

#: The most pixels an image file may have to be decoded at all (8192×8192): a header claiming more is refused
#: before its pixels are allocated, and a data folder skips the file like a corrupt one.
MAX_IMAGE_PIXELS = 1 << 26
#: The most pixels of one image that goes into a model (2048×2048): beyond it a VQGAN's activations need tens of GB.
MAX_MODEL_PIXELS = 1 << 22
#: Seeds are int64 counters in the sampler, with room for the row index added to them.
MAX_SEED = (1 << 62) - 1


def _pixels_from_environment() -> None:
    """``TAMER_MAX_PIXELS=N`` sets both limits, as ``--max-pixels N`` does."""
    global MAX_IMAGE_PIXELS, MAX_MODEL_PIXELS
    text = os.environ.get("TAMER_MAX_PIXELS")
    if text:
        try:
            MAX_MODEL_PIXELS = int(text)
        except ValueError:
            raise ValueError(f"TAMER_MAX_PIXELS: expected a number of pixels, got {text!r}") from None
        MAX_IMAGE_PIXELS = max(MAX_IMAGE_PIXELS, MAX_MODEL_PIXELS)
        _allow_in_pillow(MAX_IMAGE_PIXELS)


def _allow_in_pillow(pixels: int) -> None:
    """Pillow's own bomb check would refuse what the user just allowed."""
    from PIL import Image

    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < pixels:
        Image.MAX_IMAGE_PIXELS = pixels


_pixels_from_environment()



# -- numbers ---------------------------------------------------------------------------------------------------
def check_number(name: str, value: float, low: float | None = None, high: float | None = None,
                 low_open: bool = False) -> float:
    """``value`` finite and within ``[low, high]`` (``(low, high]`` with ``low_open``), else an InputError."""
    if not math.isfinite(value):
        raise InputError(f"{name}: must be a finite number, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        raise InputError(f"{name}: must be {'>' if low_open else '>='} {low:g}, got {value:g}")
    if high is not None and value > high:
        raise InputError(f"{name}: must be <= {high:g}, got {value:g}")
    return value


def check_count(name: str, value: int, low: int = 1, high: int | None = None) -> int:
    """An integer count such as ``-n`` or ``--batch-size``: at least ``low`` (and at most ``high``)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{name}: expected an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise InputError(f"{name}: must be {bound}, got {value}")
    return value


def check_seed(name: str, seed: int, rows: int = 1) -> int:
    return check_count(name, seed, 0, MAX_SEED - rows)


def _argparse_type(check, *bounds):
    def parse(text: str):
        try:
            value = float(text) if check is check_number else int(text)
            return check("value", value, *bounds)
        except ValueError as error:  # argparse prints "argument --x: invalid value" plus this
            reason = str(error).removeprefix("value: ")
            raise argparse.ArgumentTypeError(reason if isinstance(error, InputError) else
                                             f"expected a number, got {text!r}") from None
    parse.__name__ = check.__name__
    return parse


#: argparse types: ``positive_int`` (>= 1), ``non_negative_int`` (>= 0), ``seed``, ``finite_float``
positive_int = _argparse_type(check_count, 1)
non_negative_int = _argparse_type(check_count, 0)
seed = _argparse_type(check_seed)
finite_float = _argparse_type(check_number)


positive_float = _argparse_type(check_number, 0.0, None, True)


# -- image sizes -----------------------------------------------------------------------------------------------
#: what every precision setting takes (``--precision``, ``train.precision``); tamer.devices resolves ``auto``
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def set_max_pixels(pixels: int) -> None:
    """``--max-pixels``: the per-image model limit becomes ``pixels`` and the file limit at least that."""
    global MAX_IMAGE_PIXELS, MAX_MODEL_PIXELS
    check_count("--max-pixels", pixels)
    MAX_MODEL_PIXELS = pixels
    MAX_IMAGE_PIXELS = max(pixels, MAX_IMAGE_PIXELS)
    _allow_in_pillow(MAX_IMAGE_PIXELS)


def check_image_pixels(width: int, height: int, source: str) -> None:
    """An image file's header: refuse one too large to decode before its pixels are allocated."""
    if width * height > MAX_IMAGE_PIXELS:
        raise InputError(f"{source}: {width}×{height} image ({width * height / 1e6:.1f}M pixels) is over the pixel "
                         f"limit of {MAX_IMAGE_PIXELS / 1e6:.1f}M pixels; pass --max-pixels {width * height} (or set "
                         "TAMER_MAX_PIXELS) to read it anyway")


def check_model_pixels(height: int, width: int, source: str) -> None:
    """One image of ``height×width`` about to go into a model (or come out of a decoder)."""
    if height * width > MAX_MODEL_PIXELS:
        raise InputError(f"{source}: {height}×{width} pixels ({height * width / 1e6:.1f}M) per image is over the "
                         f"limit of {MAX_MODEL_PIXELS / 1e6:.1f}M pixels a model is given (its activations would "
                         f"need many GB); pass --size to make it smaller, or --max-pixels {height * width} to go on")


# -- output paths ----------------------------------------------------------------------------------------------
def _same(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def check_output_folder(out: Path, inputs: Iterable[Path] = (), flag: str = "--out") -> Path:
    """A folder to write new files into: not an existing file, and not a folder that holds one of ``inputs``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{flag} {out}: is an existing file; expected a folder to write into")
    for path in inputs:
        if _same(Path(path).parent, out):
            raise InputError(f"{flag} {out}: holds the input {path}; writing there could replace the inputs, "
                             "choose another folder")
    return out


def check_output_file(out: Path, inputs: Iterable[Path] = (), flag: str = "--out", suffix: str | None = None) -> Path:
    """A file about to be written: not a folder, not one of ``inputs``, in a folder that can be created."""
    out = Path(out)
    if out.is_dir():
        raise InputError(f"{flag} {out}: is a folder; expected a file name (e.g. {out / ('result' + (suffix or ''))})")
    for path in inputs:
        if Path(path).exists() and out.exists() and _same(Path(path), out):
            raise InputError(f"{flag} {out}: is also an input; choose another file name")
    if suffix is not None and out.suffix != suffix:
        raise InputError(f"{flag} {out}: expected a {suffix} file name")
    parent = next((p for p in (out.absolute(), *out.absolute().parents) if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise InputError(f"{flag} {out}: {parent} is a file, so the folder cannot be created")
    return out


def output_names(inputs: Sequence[Path], suffix: str = ".png") -> tuple[list[str], list[str]]:
    """One distinct output file name per input (``stem + suffix``) and notes on the names that had to change.

    ``a/x.png b/x.png`` or ``x.jpg x.png`` would write one file twice; the later ones get ``-2``, ``-3``, ...
    """
    names, taken, notes = [], set(), []
    for path in inputs:
        stem = Path(path).stem
        name, k = f"{stem}{suffix}", 1
        while name.lower() in taken:  # case-insensitive, as on macOS and Windows file systems
            k += 1
            name = f"{stem}-{k}{suffix}"
        if k > 1:
            notes.append(f"{path}: another input has the same name, written as {name}")
        taken.add(name.lower())
        names.append(name)
    return names, notes


def check_new_model_folder(out: Path, overwrite: bool, flag: str = "--out") -> None:
    """A model folder about to be written: refuse to replace an existing model unless ``overwrite``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{flag} {out}: is an existing file; expected a folder for the model")
    existing = [name for name in ("config.json", "model.safetensors") if (out / name).exists()]
    if existing and not overwrite:
        raise InputError(f"{flag} {out}: already holds a model ({', '.join(existing)}); pass --overwrite to "
                         "replace it, or choose another folder")


def prepare_run_folder(run: str | Path, resume: bool, overwrite: bool, flag: str = "--out") -> None:
    """A training run folder: a new run does not start inside an old one (a later ``--resume`` would mix the two).

    An old run is one with a checkpoint or an exported ``model/``; ``resume`` continues it, ``overwrite`` deletes its
    checkpoints and metrics first, and without either it is an InputError. Leftovers of a run stopped before its
    first checkpoint (``config.json``, ``metrics.jsonl``) cannot be resumed: their metrics are cleared with a note.
    """
    run = Path(run)
    if run.exists() and not run.is_dir():
        raise InputError(f"{flag} {run}: is an existing file; expected a run folder")
    if resume and overwrite:
        raise InputError(f"--resume and --overwrite: choose one (continue the run in {run}, or replace it)")
    if resume or os.environ.get("RANK", "0") != "0":
        return
    checkpoints = run / "checkpoints"
    found = [name for name in ("checkpoints", "model")
             if (run / name).is_dir() and any((run / name).iterdir())]
    if found and not overwrite:
        raise InputError(f"{flag} {run}: already holds a run ({' and '.join(f'{name}/' for name in found)}); pass "
                         "--resume to continue it, --overwrite to replace it, or choose another folder")
    if (run / "metrics.jsonl").exists() and not found:
        print(f"{run}: clearing metrics.jsonl of an earlier run that stopped before its first checkpoint")
    if checkpoints.is_dir():
        shutil.rmtree(checkpoints)
    if (run / "metrics.jsonl").exists():
        (run / "metrics.jsonl").unlink()
