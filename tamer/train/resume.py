"""Training checkpoints: one folder per step, written under a temporary name and renamed when complete.

``RUN/checkpoints/step-00001000/`` holds the exported model (``model/``: config.json + model.safetensors, EMA
weights when EMA is on), each trained module's weights (``<name>.safetensors``), the EMA weights, and the training
state (``training_state.pt``: optimizers, schedulers, scaler, step, data position; ``rng-rank<r>.pt`` per process).
The state files hold only tensors and plain containers and are read back with ``weights_only=True``.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tamer.checkpoints import CheckpointError, load_state_dict_strict
from tamer.compat.safe_load import load_plain
from tamer.errors import CheckpointWriteError  # noqa: F401 (re-exported)

STEP_FOLDER = re.compile(r"^step-(\d{8})$")


def step_folder(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step-{step:08d}"


def completed_checkpoints(run: Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first (partial ``.tmp`` folders are ignored)."""
    folder = run / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and STEP_FOLDER.match(p.name) and (p / "DONE").exists()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(run: Path) -> Path | None:
    found = completed_checkpoints(run)
    return found[-1] if found else None


def temporary_path(run: Path, step: int) -> Path:
    """Where a checkpoint is written before it is complete; every process can name it."""
    return step_folder(run, step).with_name(f"step-{step:08d}.tmp")


def temporary_folder(run: Path, step: int) -> Path:
    """A fresh, empty :func:`temporary_path` (leftovers of an interrupted write are removed)."""
    tmp = temporary_path(run, step)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def finish(tmp: Path, keep: int) -> Path:
    """Mark ``tmp`` complete, rename it into place, and delete all but the newest ``keep`` checkpoints."""
    (tmp / "DONE").write_text("")
    final = tmp.with_name(tmp.name[: -len(".tmp")])
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in completed_checkpoints(final.parent.parent)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_weights(module: torch.nn.Module, path: Path) -> None:
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    save_file(state, str(path))


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` file read completely (on the CPU); a missing or damaged one is a CheckpointError."""
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        return load_file(str(path))
    except Exception as error:  # safetensors' own error type is not exported
        raise CheckpointError(f"{path}: cannot be read ({error}); it may be truncated") from None


def load_weights(module: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    load_state_dict_strict(module, state, source=str(source))


def read_checkpoint(folder: Path, modules: list[str], ema: bool, rank: int) -> dict:
    """Every file of a checkpoint, read fully into memory before any of it is applied: a truncated or damaged
    file raises a CheckpointError naming it, and the run is left as it was."""
    names = [*modules, *(["ema"] if ema else [])]
    state = load_state(folder / "training_state.pt")
    if not isinstance(state, dict) or not {"step", "epoch", "position", "optimizers"} <= set(state):
        raise CheckpointError(f"{folder / 'training_state.pt'}: not a training state written by tamer")
    return {"state": state, "rng": load_state(folder / f"rng-rank{rank}.pt"),
            "weights": {name: read_weights(folder / f"{name}.safetensors") for name in names}}


def newest_intact_checkpoint(run: Path, modules: list[str], ema: bool, rank: int,
                             report=print) -> tuple[Path, dict] | None:
    """The newest complete checkpoint whose files all read back, with their contents; each damaged one that is
    passed over is reported by name and reason."""
    for folder in reversed(completed_checkpoints(run)):
        try:
            return folder, read_checkpoint(folder, modules, ema, rank)
        except CheckpointError as error:
            report(f"--resume: skipping {folder.name}, it is damaged: {error}")
    return None



def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def write_failed(tmp: Path, error: OSError, run: Path) -> CheckpointWriteError:
    """Remove the partial ``tmp`` folder and describe the failure: the file, the reason, the space it needs."""
    written = folder_size(tmp)
    shutil.rmtree(tmp, ignore_errors=True)
    previous = latest_checkpoint(run)
    needed = max(written, folder_size(previous) if previous else 0)
    free = shutil.disk_usage(run if run.exists() else run.parent).free
    where = f"{error.filename}: " if getattr(error, "filename", None) else ""
    return CheckpointWriteError(
        f"{where}writing checkpoint {tmp.name[: -len('.tmp')]} failed ({error.strerror or error}); removed the "
        f"partial folder. A checkpoint needs about {needed / 2**20:.1f} MiB, {free / 2**20:.1f} MiB are free "
        f"in {run}; free some space, or lower train.keep_checkpoints, and resume with --resume")


def rng_state(device: torch.device) -> dict:
    numpy_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"keys": torch.from_numpy(numpy_state[1].astype(np.int64)), "pos": int(numpy_state[2]),
                       "has_gauss": int(numpy_state[3]), "gauss": float(numpy_state[4])}}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _tuples(value):
    """``random.setstate`` wants tuples where a round trip may have produced lists."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def save_state(state: dict, path: Path) -> None:
    torch.save(state, path)


def load_state(path: Path) -> dict:
    """A state file written by :func:`save_state`; anything that is not plain tensors is refused, nothing runs."""
    return load_plain(path, map_location="cpu")
