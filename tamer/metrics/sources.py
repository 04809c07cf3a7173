"""Image folders read as uint8 batches for feature networks: decoded in DataLoader workers, batched by size."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from tamer.imageio import ImageError, list_images, read_image
from tamer.metrics.features import to_uint8


class ImageFiles(Dataset):
    """The images under a folder (recursive, sorted) as uint8 ``3×H×W`` tensors (gray and RGBA made RGB)."""

    def __init__(self, root: str | Path, limit: int | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: image folder not found" if not self.root.exists() else
                                    f"{self.root}: expected an image folder, found a file")
        self.paths = list_images(self.root)
        if limit is not None:
            self.paths = self.paths[:limit]
        if not self.paths:
            raise FileNotFoundError(f"{self.root}: no images (.png, .jpg, ...) in this folder")
        self.skipped: list[str] = []  # reasons, filled as the batches are read

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor | str:
        """The image, or for a file that cannot be read (corrupt, too large) the reason, which names the file."""
        try:
            image, _ = read_image(self.paths[index], channels=3)
        except ImageError as error:
            return str(error)
        return to_uint8(image[None])[0]


def uint8_batches(files: ImageFiles, batch_size: int, num_workers: int = 0) -> Iterator[torch.Tensor]:
    """Batches of up to ``batch_size`` consecutive images of one size (a new batch starts where the size changes).

    Feature networks resize every image themselves, so a folder of mixed sizes is fine; only the batching follows
    the sizes. Unreadable files are left out and their reasons added to ``files.skipped``.
    """
    loader = DataLoader(files, batch_size=None, num_workers=num_workers)
    pending: list[torch.Tensor] = []
    for image in loader:
        if isinstance(image, str):  # an unreadable file: skipped and counted, like in training data
            files.skipped.append(image)
            continue
        if pending and (len(pending) == batch_size or image.shape != pending[0].shape):
            yield torch.stack(pending)
            pending = []
        pending.append(image)
    if pending:
        yield torch.stack(pending)
