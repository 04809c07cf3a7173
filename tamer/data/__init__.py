"""Training data: image folders and file lists, class folders, image + segmentation pairs, and ``ProceduralShapes``
(drawn scenes with labels, segmentation, depth and edges; no download). Every item is a dict of tensors with
``"image"`` as ``3×H×W`` in [-1, 1]; unreadable files are skipped, counted in ``dataset.skipped`` and logged once."""

from tamer.data.factory import DataConfig, build_dataset
from tamer.data.files import FileDataset, Record, read_label_map
from tamer.data.folders import ClassFolder, ImageFileList, ImageFolder, SegmentationPairs
from tamer.data.procedural import (
                         NUM_SEGMENTATION_LABELS,
                         SHAPES,
                         TEXTURES,
                         ProceduralShapes,
                         Scene,
                         class_folder_name,
                         render_scene,
                         write_procedural_dataset,
)
from tamer.data.transforms import ImageTransform

__all__ = [
    "DataConfig", "build_dataset",
    "FileDataset", "Record", "read_label_map",
    "ClassFolder", "ImageFileList", "ImageFolder", "SegmentationPairs",
    "NUM_SEGMENTATION_LABELS", "SHAPES", "TEXTURES", "ProceduralShapes", "Scene", "class_folder_name",
    "render_scene", "write_procedural_dataset",
    "ImageTransform",
]
