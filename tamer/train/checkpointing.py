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


def load_weights(module: torch.nn.Module, path: Path) -> None:
    module.load_state_dict(load_file(str(path), device=str(next(iter(module.state_dict().values())).device)))


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
    return torch.load(path, map_location="cpu", weights_only=True)
