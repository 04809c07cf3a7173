"""Pre-tokenised datasets: a dataset encoded once by the frozen first stage (and a spatial condition's VQGAN).

Training a transformer reads every image many times, and the frozen VQGAN would encode it again each time. With a
code cache the VQGAN runs once per image: :func:`cached_codes` encodes the dataset into one ``.safetensors`` file
(``codes`` ``N×h×w``, labels, a spatial condition's ``cond_tokens``) and :class:`CodeDataset` serves it.

The file carries a *fingerprint*: a hash of the first stage's and condition stage's weights and configs, of the
data config and of the files themselves (paths, sizes, modification times). A later run or ``--resume`` with the
same fingerprint reads the file; any change re-encodes it. Horizontal flips are cached as a second copy
(``codes_flipped``) encoded from the flipped images, and each item picks one of the two at random (from torch's
generator, which the trainer seeds per item). Random crops cannot be cached (every epoch draws new ones): the
cache holds the centre crop, and :func:`check_cacheable` says so before any work is done.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tamer.atomic import atomic_write
from tamer.data.files import FileDataset
from tamer.progress import progress_bar

#: bump when the layout of the file changes, so old caches are rebuilt
CODES_FORMAT = 1

#: keys of a cached item (what :class:`CodeDataset` returns besides pass-through labels)
CODES_KEY, FLIPPED_KEY = "codes", "codes_flipped"
COND_KEY, COND_FLIPPED_KEY = "cond_tokens", "cond_tokens_flipped"

Encoder = Callable[[torch.Tensor], torch.Tensor]


def module_fingerprint(module: nn.Module | None) -> str:
    """A hash of a module's weights (names, dtypes, shapes and bytes); ``"none"`` for no module."""
    if module is None:
        return "none"
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    config = getattr(module, "config", None)
    if config is not None:
        digest.update(repr(config).encode())
    return digest.hexdigest()


def dataset_fingerprint(dataset: Dataset) -> str:
    """A hash of what a dataset reads: for file datasets the paths with their sizes and modification times."""
    digest = hashlib.sha256(f"{type(dataset).__name__}|{len(dataset)}".encode())
    if isinstance(dataset, FileDataset):
        for record in dataset.records:
            for path in (record.image, record.segmentation):
                if path is None:
                    continue
                try:
                    stat = path.stat()
                    digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}|".encode())
                except OSError:
                    digest.update(f"{path}|missing|".encode())
            digest.update(f"{record.label}|".encode())
    return digest.hexdigest()


def fingerprint(*, first_stage: nn.Module, cond_stage: nn.Module | None, dataset: Dataset, describe: dict) -> str:
    """The cache key: both stages' weights, the dataset's files and ``describe`` (data config, keys, flip, ...)."""
    parts = {"format": CODES_FORMAT, "first_stage": module_fingerprint(first_stage),
             "cond_stage": module_fingerprint(cond_stage), "dataset": dataset_fingerprint(dataset),
             "describe": describe}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def read_fingerprint(path: str | Path) -> str | None:
    """The fingerprint stored in a code file, or None when there is no readable file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("fingerprint")
    except (OSError, ValueError, RuntimeError):
        return None


class CodeDataset(Dataset):
    """Items of a code file: ``codes`` (``h×w`` long), ``cond_tokens`` when cached, and any labels.

    With ``flip`` and a flipped copy in the file, each item is the flipped copy with probability 1/2.
    """

    def __init__(self, tensors: dict[str, torch.Tensor], flip: bool = False):
        if CODES_KEY not in tensors:
            raise ValueError(f"a code file needs {CODES_KEY!r}; it has {sorted(tensors)}")
        if flip and FLIPPED_KEY not in tensors:
            raise ValueError("flip: this code file holds no flipped copy (it was cached with data.flip=false)")
        self.tensors, self.flip = tensors, flip
        self.length = tensors[CODES_KEY].shape[0]

    @classmethod
    def load(cls, path: str | Path, flip: bool = False) -> CodeDataset:
        from safetensors.torch import load_file

        return cls(load_file(str(path)), flip)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        flipped = self.flip and bool(torch.rand(()) < 0.5)
        item = {}
        for key, value in self.tensors.items():
            if key in (FLIPPED_KEY, COND_FLIPPED_KEY):
                continue
            source = key
            if flipped and key == CODES_KEY:
                source = FLIPPED_KEY
            elif flipped and key == COND_KEY:
                source = COND_FLIPPED_KEY
            item[key] = self.tensors[source][index].long()
        return item


def _index_dtype(vocab: int) -> torch.dtype:
    return torch.int16 if vocab <= 2 ** 15 else torch.int32


@torch.no_grad()
def encode_dataset(dataset: Dataset, encode_images: Encoder, *, image_key: str = "image",
                   cond_key: str | None = None, encode_condition: Encoder | None = None, flip: bool = False,
                   vocab_size: int = 2 ** 15, cond_vocab_size: int = 2 ** 15, batch_size: int = 64,
                   num_workers: int = 0, device: torch.device | str = "cpu", progress: bool = True,
                   desc: str = "encoding") -> dict[str, torch.Tensor]:
    """Every item of ``dataset`` through ``encode_images`` (and its condition through ``encode_condition``).

    Returns ``codes`` (``N×h×w``), with ``flip`` also ``codes_flipped``; ``cond_tokens`` (and flipped) when a
    condition encoder is given; and every scalar entry of the items (``label``) stacked as it is.
    """
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    parts: dict[str, list[torch.Tensor]] = {}
    dtype, cond_dtype = _index_dtype(vocab_size), _index_dtype(cond_vocab_size)

    def add(key: str, value: torch.Tensor) -> None:
        parts.setdefault(key, []).append(value.cpu())

    def add_encoded(key: str, flipped_key: str, encode: Encoder, x: torch.Tensor, key_dtype: torch.dtype) -> None:
        add(key, encode(x).to(key_dtype))
        if flip:
            add(flipped_key, encode(x.flip(-1)).to(key_dtype))

    consumed = {image_key} | ({cond_key} if encode_condition is not None else set())
    total = math.ceil(len(dataset) / batch_size)
    for batch in progress_bar(loader, total=total, desc=desc, unit="batch", disable=not progress, dynamic_ncols=True):
        if image_key not in batch:
            raise KeyError(f"image_key: the data items have no {image_key!r} (keys: {sorted(batch)})")
        add_encoded(CODES_KEY, FLIPPED_KEY, encode_images, batch[image_key].to(device), dtype)
        if encode_condition is not None:
            if cond_key not in batch:
                raise KeyError(f"conditioning.key: the data items have no {cond_key!r} (keys: {sorted(batch)})")
            add_encoded(COND_KEY, COND_FLIPPED_KEY, encode_condition, batch[cond_key].to(device), cond_dtype)
        for key, value in batch.items():
            if key not in consumed and isinstance(value, torch.Tensor) and value.dim() == 1:
                add(key, value)  # one number per item: a class label
    return {key: torch.cat(values) for key, values in parts.items()}


def save_codes_file(tensors: dict[str, torch.Tensor], path: str | Path, key: str) -> Path:
    """Write a code file atomically with its fingerprint ``key``."""
    path = Path(path)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    metadata = {"fingerprint": key, "format": str(CODES_FORMAT), "count": str(len(tensors[CODES_KEY]))}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return path


def cached_codes(path: str | Path, key: str, build: Callable[[], dict[str, torch.Tensor]], flip: bool = False,
                 report: Callable[[str], None] | None = print) -> CodeDataset:
    """The code file at ``path`` if its fingerprint is ``key``; else ``build()`` it, write it, and use that."""
    path = Path(path)
    found = read_fingerprint(path)
    if found == key:
        if report:
            report(f"code cache: reusing {path}")
        return CodeDataset.load(path, flip)
    if report:
        why = "none yet" if found is None and not path.exists() else "the first stage or the data changed"
        report(f"code cache: encoding {path} ({why})")
    tensors = build()
    save_codes_file(tensors, path, key)
    return CodeDataset(tensors, flip)
