"""Where the records come from: a folder tree, a text file list, class-per-folder, or image + segmentation pairs.

Each class only lists files (sorted, so item ``i`` is the same file on every machine); reading, skipping bad
files and the transform live in ``FileDataset``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from tamer.data.files import FileDataset, Record, Sample
from tamer.imageio import IMAGE_SUFFIXES, list_images

log = logging.getLogger(__name__)

Transform = Callable[[Sample], Sample]


def _directory(path: str | Path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: {what} folder not found" if not path.exists() else
                                f"{path}: expected a {what} folder, found a file")
    return path


class ImageFolder(FileDataset):
    """Every image under ``root``, recursively: unconditional training data. Items: ``{"image"}``."""

    def __init__(self, root: str | Path, transform: Transform | None = None):
        self.root = _directory(root, "image")
        super().__init__([Record(path) for path in list_images(self.root)], transform, source=str(self.root))


class ImageFileList(FileDataset):
    """Images named in a text file, one path per line, as in the original taming-transformers ``*.txt`` lists.

    Relative paths are resolved against ``root`` (the folder the list's names are relative to); without ``root``
    they are used as written, relative to the working directory, as the original code did. Blank lines are ignored.
    A listed file that is missing is skipped and counted like a corrupt one; if none of the first hundred exists, the
    list and the root evidently do not belong together, and that is an error at once.
    """

    def __init__(self, list_file: str | Path, root: str | Path | None = None, transform: Transform | None = None):
        self.list_file = Path(list_file).expanduser()
        try:
            lines = self.list_file.read_text().splitlines()
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.list_file}: image list not found") from None
        self.root = _directory(root, "image root") if root is not None else None
        paths = [self._resolve(line.strip()) for line in lines if line.strip()]
        if paths and not any(path.is_file() for path in paths[:100]):
            hint = f" under root {self.root}" if self.root else " (relative paths need root=)"
            raise FileNotFoundError(f"{self.list_file}: none of the first {min(len(paths), 100)} listed files exists"
                                    f"{hint}; first: {paths[0]}")
        super().__init__([Record(path) for path in paths], transform, source=str(self.list_file))

    def _resolve(self, name: str) -> Path:
        path = Path(name).expanduser()
        return path if path.is_absolute() or self.root is None else self.root / path


class ClassFolder(FileDataset):
    """``root/<class name>/**/<image>``: the label is the class's index among the sorted folder names.

    Items: ``{"image", "label"}``. ``classes`` lists the names, ``class_to_idx`` maps them to labels. Hidden folders
    are ignored; an empty class folder keeps its index (labels do not shift) with a warning; images lying directly
    in ``root`` belong to no class and are left out with a warning.
    """

    def __init__(self, root: str | Path, transform: Transform | None = None):
        self.root = _directory(root, "class")
        self.classes = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not self.classes:
            raise FileNotFoundError(f"{self.root}: no class subfolders (expected root/<class name>/<images>)")
        self.class_to_idx = {name: index for index, name in enumerate(self.classes)}
        records = []
        for label, name in enumerate(self.classes):
            files = list_images(self.root / name)
            if not files:
                log.warning("%s: class folder %r holds no images", self.root, name)
            records += [Record(path, label=label) for path in files]
        stray = [p for p in self.root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        if stray:
            log.warning("%s: %d images outside any class folder are left out (first: %s)", self.root, len(stray),
                        stray[0].name)
        super().__init__(records, transform, source=str(self.root))


class SegmentationPairs(FileDataset):
    """Images with integer label maps: ``images/a/x.jpg`` pairs with ``segmentations/a/x.png``.

    Items: ``{"image", "segmentation"}`` (``H×W`` LongTensor), cropped and flipped together. A label map of another
    size but the same aspect ratio is resized to its image (nearest). Every image needs its partner: a missing one is
    an error at construction naming both files, since a silently unpaired image would train the wrong thing.
    """

    def __init__(self, images: str | Path, segmentations: str | Path, transform: Transform | None = None,
                 suffix: str = ".png"):
        self.images = _directory(images, "image")
        self.segmentations = _directory(segmentations, "segmentation")
        records, missing = [], []
        for path in list_images(self.images):
            partner = (self.segmentations / path.relative_to(self.images)).with_suffix(suffix)
            if not partner.is_file():
                missing.append((path, partner))
            records.append(Record(path, segmentation=partner))
        if missing:
            image, partner = missing[0]
            raise FileNotFoundError(f"{len(missing)} of {len(records)} images have no segmentation; "
                                    f"first: {image} needs {partner}")
        super().__init__(records, transform, source=str(self.images))
