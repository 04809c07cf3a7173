"""Read PyTorch pickles (``torch.save`` files, Lightning ``.ckpt``) without executing anything from them.

Loading goes through PyTorch's ``weights_only`` unpickler. Lightning checkpoints also reference classes
(a ``callbacks`` dict keyed by ``ModelCheckpoint``, hyper-parameters in OmegaConf containers): those names are
replaced by inert placeholders that only record their arguments. Any other global (``os.system``,
``builtins.eval``, ...) makes the file refused before anything in it runs.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from ..checkpoints import CheckpointError

# Names that only describe training state; a placeholder stands in for each, and none of their code runs.
INERT_PREFIXES = ("pytorch_lightning.", "lightning.", "lightning_fabric.", "omegaconf.", "taming.", "typing.",
                  "pathlib.", "argparse.Namespace", "collections.defaultdict", "__main__.")
INERT_BUILTINS = {f"builtins.{name}" for name in
                  ("dict", "list", "tuple", "set", "frozenset", "int", "float", "str", "bool", "bytes", "object")}


class UnsafeCheckpointError(CheckpointError, pickle.UnpicklingError):
    """The file references code that would run on unpickling; nothing from it was executed."""


class Placeholder:
    """Stands in for a class named in a checkpoint: keeps whatever it is given and does nothing else."""

    _qualified_name = "?"

    def __new__(cls, *args, **kwargs):
        instance = super().__new__(cls)
        instance.args, instance.kwargs, instance.state = args, kwargs, None
        return instance

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<placeholder for {self._qualified_name}>"


def _placeholder(qualified_name: str) -> type:
    return type(qualified_name.rsplit(".", 1)[-1], (Placeholder,), {"_qualified_name": qualified_name})


def _is_inert(name: str) -> bool:
    return name in INERT_BUILTINS or name.startswith(INERT_PREFIXES)


def safe_torch_load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` that never executes code from the file; raises :class:`UnsafeCheckpointError` if it would."""
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        first_error = error
    try:
        names = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except (ValueError, RuntimeError) as error:
        raise UnsafeCheckpointError(f"{path}: cannot be read safely ({error}); original error: {first_error}") from None
    unsafe = [name for name in names if not _is_inert(name)]
    if unsafe:
        raise UnsafeCheckpointError(
            f"{path}: refused, unpickling it would call {', '.join(unsafe)}; nothing from the file was executed")
    placeholders = [(_placeholder(name), name) for name in names]
    try:
        with torch.serialization.safe_globals(placeholders):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(f"{path}: refused: {str(error).splitlines()[0]}") from None
