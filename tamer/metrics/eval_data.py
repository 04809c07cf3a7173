"""What ``--data`` names, as a dataset to evaluate a model on: a folder (images, classes or pairs), the built-in
procedural scenes (held out from training by their seed), or a YAML data config; with the checks that make a
figure mean what it says (the model's size, its classes in order, every image a distinct readable file)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from tamer.ar.class_names import class_set_difference
from tamer.config import from_dict, read_yaml
from tamer.data import DataConfig, build_dataset
from tamer.data.files import FileDataset

#: the procedural data's default evaluation seed: held out from training (seed 0), as configs/vqgan_tiny_cpu.yaml
PROCEDURAL_EVAL_SEED = 12345
PROCEDURAL_EVAL_LENGTH = 1000
#: ``--kind`` -> DataConfig.kind of a folder given as ``--data``
FOLDER_KINDS = {"images": "folder", "classes": "classes", "pairs": "pairs"}


def folder_kind(model, kind: str | None) -> str:
    """The DataConfig kind of a ``--data`` folder: ``--kind``, else what the model's condition needs."""
    if kind is not None:
        return FOLDER_KINDS[kind]
    conditioning = getattr(model.config, "conditioning", None)
    if conditioning is not None and conditioning.kind == "class":
        return "classes"
    if conditioning is not None and conditioning.takes_map and conditioning.key == "segmentation":
        return "pairs"
    return "folder"


def data_config(spec: str, size: int | None, default_size: int, limit: int | None, seed: int,
                kind: str = "folder"):
    """``--data`` as a DataConfig: a folder (read as ``kind``), ``procedural``, or a YAML file (its ``data:``
    section or the whole).

    ``size`` (``--size``) wins over a YAML file's own; folders and procedural data default to ``default_size``.
    """
    if spec != "procedural" and Path(spec).suffix in (".yaml", ".yml") and Path(spec).is_file():
        raw = read_yaml(spec)
        config = from_dict(DataConfig, raw.get("data", raw), "data")
        return replace(config, size=size, crop=None) if size is not None else config
    size = size or default_size
    if spec == "procedural":
        return DataConfig(kind="procedural", size=size, length=limit or PROCEDURAL_EVAL_LENGTH, seed=seed)
    path = Path(spec)
    if not path.is_dir():
        raise FileNotFoundError(f"--data: {spec} is neither an image folder, 'procedural', nor a YAML data config")
    return DataConfig(kind=kind, path=str(path), size=size)


def usable_files(dataset, limit: int | None, notes: list[str]):
    """A file dataset cut to its first ``limit`` files with the unreadable ones left out, so every image evaluated
    is a distinct file and the count is true (at run time a bad file would be replaced by its neighbour)."""
    if not isinstance(dataset, FileDataset):
        return dataset
    if limit is not None:
        dataset.records = dataset.records[:limit]
    total = len(dataset.records)
    bad = dataset.scan(drop=True, progress=False)
    if bad:
        first = next(iter(bad.values()))
        notes.append(f"{len(bad)} of {total} files unreadable or too large, left out; {len(dataset)} evaluated "
                     f"(first: {first})")
    return dataset


def check_classes(model, dataset, spec: str) -> None:
    """A class folder must hold the classes the model was trained on, in the same order (labels would shift)."""
    names = getattr(model.config.conditioning, "class_names", None)
    found = getattr(dataset, "classes", None)
    if names and found is not None and getattr(dataset, "root", None) is not None:
        problem = class_set_difference(names, found, f"--data {spec}", "the model's")
        if problem:
            raise ValueError(problem)




def reconstruction_data(model, spec: str, size: int | None, limit: int | None, seed: int, kind: str | None):
    """A VQGAN's evaluation set: ``(config, dataset, notes)``; the side must suit the model's downsampling."""
    config = data_config(spec, size, model.config.autoencoder.resolution, limit, seed, folder_kind(model, kind))
    side = config.crop or config.size
    if side % model.downsample_factor:
        raise ValueError(f"--size: {side} is not a multiple of the model's downsampling factor "
                         f"{model.downsample_factor}")
    notes: list[str] = []
    return config, usable_files(build_dataset(config), limit, notes), notes


def likelihood_data(model, spec: str, size: int | None, limit: int | None, seed: int, kind: str | None):
    """A transformer's evaluation set: ``(config, dataset, notes)`` at its training size, holding its classes."""
    height, width = model.config.image_size
    config = data_config(spec, size, height, limit, seed, folder_kind(model, kind))
    conditioning = model.config.conditioning
    if config.kind == "procedural" and conditioning.kind == "class":
        config = replace(config, num_classes=min(config.num_classes, conditioning.num_classes))
    side = config.crop or config.size
    if (side, side) != (height, width):
        raise ValueError(f"--size: the model was trained on {height}×{width} images; {side}×{side} would need "
                         "sliding-window likelihoods, which are not implemented")
    notes: list[str] = []
    dataset = usable_files(build_dataset(config), limit, notes)
    check_classes(model, dataset, spec)
    return config, dataset, notes
