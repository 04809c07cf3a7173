"""The native checkpoint format: a folder with ``config.json`` and ``model.safetensors`` (the huggingface_hub layout).

Writes are atomic (temporary file, then rename) and loading never unpickles anything. ``config.json`` names its
class by ``model_type``; every :class:`Pretrained` subclass enters itself in :data:`MODEL_CLASSES` when it is
defined, so this module never imports a model. :func:`tamer.loading.load` (above the models) reads any checkpoint.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tamer.atomic import atomic_write
from tamer.config import ConfigError, from_dict, to_dict
from tamer.errors import CheckpointError
from tamer.version import __version__

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"



#: ``model_type`` -> class, filled by :class:`Pretrained` subclasses as they are defined
MODEL_CLASSES: dict[str, type] = {}


class Pretrained:
    """Mixin for models with a dataclass ``config``: ``save``/``from_pretrained``/``push_to_hub``."""

    model_type: str
    config_class: type

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "model_type" in cls.__dict__:  # subclasses of a model (test doubles, say) do not replace it
            MODEL_CLASSES.setdefault(cls.model_type, cls)

    def save(self, directory: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created if needed)."""
        directory = Path(directory)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(state, str(p), metadata={"format": "pt"}))
        document = {"model_type": self.model_type, "tamer_version": __version__, "config": to_dict(self.config)}
        if metadata:
            document["metadata"] = metadata
        atomic_write(directory / CONFIG_NAME, lambda p: p.write_text(json.dumps(document, indent=2) + "\n"))
        return directory

    save_pretrained = save

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, map_location: str | torch.device = "cpu", **hub_kwargs):
        """Load from a local folder, or from a Hugging Face Hub repository id where a network exists."""
        path = Path(name_or_path)
        if not path.exists():
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(str(name_or_path), allow_patterns=[CONFIG_NAME, WEIGHTS_NAME], **hub_kwargs))
        path = native_folder(path)
        if not path.is_dir():
            raise CheckpointError(f"{path}: not a tamer checkpoint folder (tamer.load reads CompVis .ckpt files)")
        return load_native(path, map_location=map_location, expected=cls.model_type)

    def push_to_hub(self, repo_id: str, **upload_kwargs) -> str:
        from huggingface_hub import create_repo, upload_folder

        create_repo(repo_id, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            self.save(tmp)
            return upload_folder(repo_id=repo_id, folder_path=tmp, **upload_kwargs)


def native_folder(path: Path) -> Path:
    """The checkpoint folder ``path`` names: itself, or the folder of the ``model.safetensors`` it points at."""
    return path.parent if path.is_file() and path.name == WEIGHTS_NAME else path


def read_config(directory: Path, expected: str | None = None) -> tuple[type, Any, dict]:
    """The model class, its typed config and the raw document of a native checkpoint folder; with ``expected``
    (a ``model_type``), a folder holding another kind of model is refused by name."""
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise CheckpointError(f"{directory}: no {CONFIG_NAME} (not a tamer checkpoint folder)")
    try:
        document = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{config_path}: not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise CheckpointError(f"{config_path}: expected a JSON object with model_type and config, got a "
                              f"{type(document).__name__}")
    classes = MODEL_CLASSES
    model_type = document.get("model_type")
    if expected is not None and model_type != expected:
        raise CheckpointError(f"{directory}: holds a {model_type}, not a {expected}")
    if not isinstance(model_type, str) or model_type not in classes:
        raise CheckpointError(f"{config_path}: model_type {model_type!r} is not one of {sorted(classes)}")
    cls = classes[model_type]
    try:
        config = from_dict(cls.config_class, document.get("config", {}), where="config")
    except ConfigError as error:
        raise ConfigError(f"{config_path}: {error}") from None
    return cls, config, document


def weight_shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's name and shape in a safetensors file, read from its header (no tensor data is read)."""
    try:
        with safe_open(str(weights), framework="pt") as file:
            return {key: tuple(file.get_slice(key).get_shape()) for key in file.keys()}
    except Exception as error:  # safetensors raises its own SafetensorError (not exported) and OSError
        raise CheckpointError(f"{weights}: not a readable safetensors file ({error}); it may be truncated or "
                              "empty: save or copy the model again") from None


def build_checked(cls: type, config: Any, shapes: dict[str, tuple[int, ...]], source: str) -> torch.nn.Module:
    """Build ``cls(config)`` only once its weight shapes are known to match ``shapes`` (what the file holds).

    The model is first built on the ``meta`` device, which allocates nothing: a config that disagrees with its
    weights (``num_codes: 100000000`` beside a 1024-code file) fails here instead of after building gigabytes.
    """
    try:
        with torch.device("meta"):
            skeleton = cls(config)
    except Exception:  # some constructor cannot run on meta tensors: compare after the real build instead
        skeleton = None
    if skeleton is not None:
        check_shapes({k: tuple(v.shape) for k, v in skeleton.state_dict().items()}, shapes, source, cls.__name__)
        del skeleton
    return cls(config)


def load_native(directory: Path, map_location: str | torch.device = "cpu",
                expected: str | None = None) -> torch.nn.Module:
    cls, config, _ = read_config(directory, expected)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{directory}: no {WEIGHTS_NAME}")
    model = build_checked(cls, config, weight_shapes(weights), source=str(weights))
    try:
        state = load_file(str(weights), device=str(map_location))
    except Exception as error:
        raise CheckpointError(f"{weights}: cannot be read ({error}); it may be truncated") from None
    load_state_dict_strict(model, state, source=str(weights))
    return model.to(map_location).eval()


def check_shapes(own: dict[str, tuple], found: dict[str, tuple], source: str, model_name: str) -> None:
    """Every key of ``own`` in ``found`` with the same shape and nothing more, or a CheckpointError naming them."""
    missing = sorted(set(own) - set(found))
    unexpected = sorted(set(found) - set(own))
    misshapen = [f"{k}: file {tuple(found[k])} vs model {tuple(own[k])}"
                 for k in own.keys() & found.keys() if tuple(own[k]) != tuple(found[k])]
    problems = []
    if missing:
        problems.append(f"missing keys {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_few(unexpected)}")
    if misshapen:
        problems.append(f"wrong shapes {_few(sorted(misshapen))}")
    if problems:
        raise CheckpointError(f"{source}: does not fit {model_name}: " + "; ".join(problems))


def load_state_dict_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load every key with matching shapes, or fail naming what is missing, unexpected or misshapen."""
    check_shapes({k: tuple(v.shape) for k, v in model.state_dict().items()},
                 {k: tuple(v.shape) for k, v in state.items()}, source, type(model).__name__)
    model.load_state_dict(state)


def _few(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
