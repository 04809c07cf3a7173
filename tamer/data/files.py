"""A dataset of image files that survives bad files: one that cannot be read is skipped, counted and named once.

Long training runs over scraped folders meet truncated downloads and mislabelled files; a crash hours in, or a
silent hole in the data, are both worse than a warning. Every file-backed dataset in ``tamer.data`` is a
``FileDataset`` over a list of ``Record``s; the subclasses in ``folders.py`` only decide which records exist.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from tamer.imageio import ImageError, open_image, read_image
from tamer.progress import progress_bar

log = logging.getLogger(__name__)

Sample = dict[str, torch.Tensor]

#: how far a segmentation map's aspect ratio may differ from its image's before the pair is called broken
ASPECT_TOLERANCE = 0.02


@dataclass(frozen=True)
class Record:
    """One item: an image file, and where the dataset has them its class index and segmentation file."""

    image: Path
    label: int | None = None
    segmentation: Path | None = None


def read_label_map(path: str | Path) -> torch.Tensor:
    """Decode a segmentation file to an ``H×W`` LongTensor of label indices.

    Single-channel files (``L``, palette ``P`` — whose indices are the labels —, ``I``, ``I;16``) are read as they
    are; an RGB file whose three channels agree is read from one channel. A colour-coded map is an ``ImageError``,
    as is a missing or corrupt file, so datasets skip it like an unreadable image.
    """
    path = Path(path)
    image = open_image(path)
    mode = image.mode
    array = np.asarray(image)
    if array.dtype.kind == "f":
        raise ImageError(f"{path}: {mode} image holds floats; a segmentation needs integer labels")
    if array.ndim == 3:
        if not (array[..., :3] == array[..., :1]).all():
            raise ImageError(f"{path}: {mode} colour-coded segmentation; expected a single-channel label map "
                             f"(L, P or I mode, one integer label per pixel)")
        array = array[..., 0]
    return torch.from_numpy(array.astype(np.int64))


def match_label_map(segmentation: torch.Tensor, image: torch.Tensor, record: Record) -> torch.Tensor:
    """Bring a label map to its image's size (nearest neighbour); a different aspect ratio is an ``ImageError``."""
    (sh, sw), (ih, iw) = segmentation.shape[-2:], image.shape[-2:]
    if (sh, sw) == (ih, iw):
        return segmentation
    if abs(sh * iw - ih * sw) > ASPECT_TOLERANCE * ih * sw:
        raise ImageError(f"{record.segmentation}: segmentation is {sh}×{sw} but its image {record.image} is "
                         f"{ih}×{iw} (a different aspect ratio)")
    resized = F.interpolate(segmentation[None, None].double(), size=(ih, iw), mode="nearest-exact")
    return resized[0, 0].long()


class FileDataset(Dataset):
    """Items read from ``records``; an unreadable file is skipped and the next good item returned instead.

    ``skipped`` maps each bad item's image path to the reason (the reason names the file that failed, which for a
    pair may be the segmentation). Each is logged as a warning once. Index ``i`` of a bad item returns the next
    good item in order (wrapping), so the choice is deterministic; if no file is readable, a ``RuntimeError``.
    With DataLoader workers each worker keeps its own ``skipped``; call ``scan()`` first for one complete report.
    """

    def __init__(self, records: Sequence[Record], transform: Callable[[Sample], Sample] | None = None,
                 source: str = "dataset"):
        self.records = list(records)
        if not self.records:
            raise FileNotFoundError(f"{source}: no image files found")
        self.transform = transform
        self.source = source
        self.skipped: dict[Path, str] = {}
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.records)

    def read(self, index: int) -> Sample:
        """Decode item ``index`` without the transform; raises ``ImageError`` for a bad file."""
        record = self.records[index]
        image, notes = read_image(record.image)
        for note in notes:
            log.debug(note)
        sample: Sample = {"image": image}
        if record.label is not None:
            sample["label"] = torch.tensor(record.label, dtype=torch.long)
        if record.segmentation is not None:
            sample["segmentation"] = match_label_map(read_label_map(record.segmentation), image, record)
        return sample

    def __getitem__(self, index: int) -> Sample:
        n = len(self.records)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n}")
        index %= n
        for step in range(n):
            i = (index + step) % n
            if i in self._bad:
                continue
            try:
                sample = self.read(i)
            except ImageError as error:
                self._skip(i, str(error))
                continue
            return self.transform(sample) if self.transform is not None else sample
        raise self._nothing_readable()

    def scan(self, drop: bool = True, progress: bool = True) -> dict[Path, str]:
        """Decode every file now; returns the bad ones (path -> reason), also added to ``skipped``.

        With ``drop`` the bad items leave the dataset, so ``len`` counts only good ones and workers never meet them.
        """
        bad: dict[int, str] = {}
        for i in progress_bar(range(len(self.records)), desc=f"checking {self.source}", unit="file",
                              disable=not progress):
            if i in self._bad:
                bad[i] = self.skipped[self.records[i].image]
                continue
            try:
                self.read(i)
            except ImageError as error:
                bad[i] = str(error)
                self._skip(i, str(error))
        if len(bad) == len(self.records):
            raise self._nothing_readable()
        found = {self.records[i].image: reason for i, reason in bad.items()}
        if bad:
            action = "dropped" if drop else "will be skipped"
            log.warning("%s: %d of %d files unreadable, %s", self.source, len(bad), len(self.records), action)
        if drop and bad:
            self.records = [record for i, record in enumerate(self.records) if i not in bad]
            self._bad.clear()
        return found

    def _skip(self, index: int, reason: str) -> None:
        self._bad.add(index)
        path = self.records[index].image
        if path not in self.skipped:
            self.skipped[path] = reason
            log.warning("skipping unreadable file (%d so far): %s", len(self.skipped), reason)

    def _nothing_readable(self) -> RuntimeError:
        first = "; ".join(list(self.skipped.values())[:3])
        return RuntimeError(f"{self.source}: none of its {len(self.records)} files is readable (first: {first})")
