"""``DataConfig`` -> a dataset: the one place a config's ``data:`` section turns into files on disk."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from PIL import Image
from torch.utils.data import Dataset

from tamer.config import checked_keywords, from_dict
from tamer.data.folders import ClassFolder, ImageFileList, ImageFolder, SegmentationPairs
from tamer.data.procedural import SHAPES, ProceduralShapes
from tamer.data.transforms import ImageTransform

DataKind = Literal["folder", "filelist", "classes", "pairs", "procedural"]


@checked_keywords
@dataclass
class DataConfig:
    """Which images, and how they are shaped.

    ``kind``: ``folder`` (every image under ``path``), ``filelist`` (a text file of paths at ``path``, relative ones
    resolved against ``root``), ``classes`` (``path/<class>/<images>``), ``pairs`` (images under ``path``, label
    maps under ``segmentations``; without it ``path/images`` and ``path/segmentations``), ``procedural``
    (``ProceduralShapes``: ``length`` items of ``num_classes`` classes drawn with ``seed``, no files).

    ``size``: shorter side after resizing (for ``procedural``, the drawn size); ``None`` (``null``): follow the data,
    the median shorter side of its files rounded down to a multiple of 16 (:func:`follow_data_size`), so small
    images are not enlarged to a preset's size; ``crop``: side of the square crop
    (default ``size``), random with ``random_crop``, else centred; ``flip``: random left-right flips.
    ``scan``: decode every file when the dataset is built and drop the unreadable ones (slow on big folders).
    """

    kind: DataKind = "procedural"
    path: str | None = None
    root: str | None = None
    segmentations: str | None = None
    size: int | None = 256
    crop: int | None = None
    random_crop: bool = False
    flip: bool = False
    scan: bool = False
    length: int = 10_000
    num_classes: int = len(SHAPES)
    seed: int = 0
    max_distractors: int = 4  # procedural: shapes of other kinds per scene (0: only the labelled kind)
    plain: bool = False  # procedural: solid shapes over smooth gradients instead of textures
    object_centric: bool = False  # procedural: one large shape near the centre

    def __post_init__(self):
        if self.size is None and self.kind == "procedural":
            raise ValueError("size: procedural data has no files to follow; give the side to draw")
        if self.size is not None and self.size < 1:
            raise ValueError(f"size: expected a positive side length, got {self.size}")
        if self.size is not None and self.crop is not None and not 1 <= self.crop <= self.size:
            raise ValueError(f"crop: expected 1 to size ({self.size}), got {self.crop}")
        if self.kind != "procedural" and not self.path:
            raise ValueError(f"path: required for kind {self.kind!r}")
        if self.root is not None and self.kind != "filelist":
            raise ValueError(f"root: only used by kind 'filelist', not {self.kind!r}")
        if self.segmentations is not None and self.kind != "pairs":
            raise ValueError(f"segmentations: only used by kind 'pairs', not {self.kind!r}")
        if self.length < 1:
            raise ValueError(f"length: expected a positive number of items, got {self.length}")
        if not 1 <= self.num_classes <= len(SHAPES):
            raise ValueError(f"num_classes: expected 1 to {len(SHAPES)}, got {self.num_classes}")
        if self.seed < 0:
            raise ValueError(f"seed: expected a non-negative integer, got {self.seed}")


def build_dataset(config: DataConfig | dict) -> Dataset:
    """The dataset a config describes; a dict is validated first (a wrong key or value is a ``ConfigError``)."""
    config = from_dict(DataConfig, config, "data")
    if config.size is None:
        config = follow_data_size(config)
    if config.kind == "procedural":
        reshape = config.crop not in (None, config.size) or config.flip
        transform = ImageTransform(None, config.crop, config.random_crop, config.flip) if reshape else None
        return ProceduralShapes(config.size, config.length, config.num_classes, config.seed, transform,
                                config.max_distractors, config.plain, config.object_centric)
    dataset = _files(config, ImageTransform(config.size, config.crop, config.random_crop, config.flip))
    if config.scan:
        dataset.scan()
    return dataset


def _files(config: DataConfig, transform: ImageTransform | None) -> Dataset:
    path = Path(config.path)
    if config.kind == "folder":
        dataset = ImageFolder(path, transform)
    elif config.kind == "filelist":
        dataset = ImageFileList(path, config.root, transform)
    elif config.kind == "classes":
        dataset = ClassFolder(path, transform)
    else:
        images, segmentations = (path, Path(config.segmentations)) if config.segmentations else \
            (path / "images", path / "segmentations")
        dataset = SegmentationPairs(images, segmentations, transform)
    return dataset


#: files whose headers are read to find the data's size
SIZE_PROBES = 64
#: a followed size is rounded down to a multiple of this (every power-of-two downsampling factor up to 16 fits)
SIZE_MULTIPLE = 16


def data_sides(config: DataConfig) -> list[int]:
    """Shorter sides of up to :data:`SIZE_PROBES` files spread over the data (headers only, nothing decoded);
    unreadable files are left out, as training skips them."""
    records = _files(config, None).records
    step = max(1, len(records) // SIZE_PROBES)
    sides = []
    for record in records[::step][:SIZE_PROBES]:
        try:
            with Image.open(record.image) as image:
                sides.append(min(image.size))
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
    return sides


def follow_data_size(config: DataConfig) -> DataConfig:
    """``config`` with ``size`` set from its files: the median shorter side, rounded down to a multiple of 16."""
    sides = sorted(data_sides(config))
    if not sides:
        raise FileNotFoundError(f"data.path {config.path}: no readable images to take data.size from")
    median = sides[len(sides) // 2]
    size = max(SIZE_MULTIPLE, median // SIZE_MULTIPLE * SIZE_MULTIPLE)
    return replace(config, size=size, crop=min(config.crop, size) if config.crop else None)
