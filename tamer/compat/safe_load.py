"""Read PyTorch pickles (``torch.save`` files, Lightning ``.ckpt``) without executing anything from them.

Loading goes through PyTorch's ``weights_only`` unpickler. Lightning checkpoints also reference classes
(a ``callbacks`` dict keyed by ``ModelCheckpoint``, hyper-parameters in OmegaConf containers): those names are
replaced by inert placeholders that only record their arguments. Any other global (``os.system``,
``builtins.eval``, ...) makes the file refused before anything in it runs.
"""

from __future__ import annotations

import mmap
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from tamer.checkpoints import CheckpointError
from tamer.errors import UnsafeCheckpointError  # noqa: F401 (re-exported)

# Names that only describe training state; a placeholder stands in for each, and none of their code runs.
INERT_PREFIXES = ("pytorch_lightning.", "lightning.", "lightning_fabric.", "omegaconf.", "taming.", "typing.",
                  "pathlib.", "argparse.Namespace", "collections.defaultdict", "__main__.")
INERT_BUILTINS = {f"builtins.{name}" for name in
                  ("dict", "list", "tuple", "set", "frozenset", "int", "float", "str", "bool", "bytes", "object")}



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


def check_archive_sizes(path: Path) -> None:
    """Refuse a ``torch.save`` zip whose records would decompress to more than the file holds.

    ``torch.save`` stores every record uncompressed, so no record of a genuine file is larger than the file itself;
    a deflated record declaring gigabytes is a decompression bomb, and PyTorch would allocate all of it first.
    """
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: not a readable checkpoint archive ({error}); it may be truncated") from None
    for record in records:
        if record.file_size > size:
            raise CheckpointError(
                f"{path}: refused, record {record.filename!r} declares {record.file_size / 2**20:.0f} MiB "
                f"uncompressed in a file of {size / 2**20:.1f} MiB (a decompression bomb?); nothing was loaded")


#: bytes per element of the storage classes a legacy (pre-1.6) ``torch.save`` file names
_STORAGE_ITEM_BYTES = {"DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2,
                       "LongStorage": 8, "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1,
                       "BoolStorage": 1, "ComplexFloatStorage": 8, "ComplexDoubleStorage": 16}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _DeclaredStorageBytes(pickle.Unpickler):
    """Walks the object pickle of a legacy file building nothing: every global becomes a placeholder and every
    storage is only counted (``declared`` bytes), so no storage is allocated."""

    def __init__(self, file):
        super().__init__(file)
        self.declared = 0

    def find_class(self, module: str, name: str) -> type:
        stand_in = _placeholder(f"{module}.{name}")
        stand_in.item_bytes = _STORAGE_ITEM_BYTES.get(name, 1) if module == "torch" else 1
        return stand_in

    def persistent_load(self, saved_id):
        if isinstance(saved_id, tuple) and len(saved_id) >= 5 and saved_id[0] == "storage":
            self.declared += int(saved_id[4]) * getattr(saved_id[1], "item_bytes", 1)
        return None


def check_legacy_sizes(path: Path) -> None:
    """Refuse a legacy (pre-1.6, not zip) ``torch.save`` file whose storages declare more bytes than the file holds.

    The storages' raw bytes follow the pickles in such a file, so a genuine one is larger than their sum; PyTorch
    allocates each storage at its declared size before reading it, so a small file declaring gigabytes would take
    them (and a truncated one some). Files that are not legacy checkpoints are left to ``torch.load`` to name.
    """
    size = path.stat().st_size
    try:
        with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as view:
            if pickle.Unpickler(view).load() != _LEGACY_MAGIC:
                return
            pickle.Unpickler(view).load(), pickle.Unpickler(view).load()  # protocol version, system info
            reader = _DeclaredStorageBytes(view)
            reader.load()
    except Exception:  # noqa: BLE001 - not a legacy checkpoint we can size: torch.load will say what it is
        return
    if reader.declared > size:
        raise CheckpointError(f"{path}: refused, its tensors declare {reader.declared / 2**20:.1f} MiB in a file of "
                              f"{size / 2**20:.1f} MiB (truncated, or a memory bomb); nothing was loaded")


def _torch_load(path: Path, map_location) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise
    except (RuntimeError, EOFError, OSError, KeyError, ValueError, AttributeError, IndexError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({reason}); it may be truncated or "
                              "not a checkpoint at all") from None


def _check_file(path: Path) -> None:
    """A missing, empty or oversized file is a :class:`CheckpointError` before anything large is allocated."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes); it was not written completely")
    if zipfile.is_zipfile(path):
        check_archive_sizes(path)
    else:
        check_legacy_sizes(path)


def load_plain(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """A file of tensors and plain containers that tamer wrote itself (``torch.save``), read with the
    ``weights_only`` unpickler; anything else in it is refused as :class:`UnsafeCheckpointError` (never with the
    advice to set ``weights_only=False``)."""
    path = Path(path)
    _check_file(path)
    try:
        return _torch_load(path, map_location)
    except pickle.UnpicklingError as error:
        names = _globals_named(path)
        what = f"it would call {', '.join(names)}" if names else str(error).splitlines()[0]
        raise UnsafeCheckpointError(f"{path}: refused, not a file of plain tensors as tamer writes them ({what}); "
                                    "nothing from it was executed") from None


def _globals_named(path: Path) -> list[str]:
    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001  (only used to word the refusal)
        return []


def safe_torch_load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` that never executes code from the file; raises :class:`UnsafeCheckpointError` if it would.

    A missing, empty, truncated or oversized file is a :class:`CheckpointError` naming it, raised before anything
    large is allocated (see :func:`check_archive_sizes`).
    """
    path = Path(path)
    _check_file(path)
    try:
        return _torch_load(path, map_location)
    except pickle.UnpicklingError:
        pass  # it names a global: find out whether that one is inert
    try:
        names = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except (ValueError, RuntimeError, KeyError, EOFError, OSError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({reason}); it may be truncated or not a "
                              "checkpoint at all") from None
    unsafe = [name for name in names if not _is_inert(name)]
    if unsafe:
        raise UnsafeCheckpointError(
            f"{path}: refused, unpickling it would call {', '.join(unsafe)}; nothing from the file was executed")
    placeholders = [(_placeholder(name), name) for name in names]
    try:
        with torch.serialization.safe_globals(placeholders):
            return _torch_load(path, map_location)
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(f"{path}: refused: {str(error).splitlines()[0]}") from None
