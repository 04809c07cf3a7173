"""Import the original CompVis/taming-transformers checkpoints (``.ckpt`` + ``project.yaml``).

No pytorch_lightning is needed and nothing in the pickle runs (see :mod:`tamer.compat.safe_load`). The model
parameter names of tamer are those of the original, so the weights load as they are; ``loss.*`` (LPIPS,
discriminator) is dropped from the model and stays available through :func:`read_taming_checkpoint`.
Stage-2 checkpoints (``Net2NetTransformer``) are translated by :mod:`tamer.compat.taming_transformer`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tamer.checkpoints import CheckpointError, build_checked, load_state_dict_strict
from tamer.compat.safe_load import safe_torch_load
from tamer.config import ConfigError, from_dict
from tamer.nn.autoencoder import AutoencoderConfig
from tamer.nn.quantize import QuantizerConfig
from tamer.vqgan.model import VQGAN, VQGANConfig

VQ_TARGETS = {
    "taming.models.vqgan.VQModel": "vq",
    "taming.models.vqgan.VQSegmentationModel": "vq",
    "taming.models.vqgan.VQNoDiscModel": "vq",
    "taming.models.vqgan.GumbelVQ": "gumbel",
}
# Model parameters of the original that concern training or logging only.
TRAINING_ONLY = {"lossconfig", "ckpt_path", "ignore_keys", "image_key", "monitor", "sane_index_shape",
                 "temperature_scheduler_config", "base_learning_rate", "scheduler_config"}
DDCONFIG_IGNORED = {"give_pre_end", "use_timestep", "use_linear_attn", "attn_type"}


def read_taming_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a CompVis checkpoint (Lightning ``.ckpt`` or a bare state dict), read safely."""
    data = safe_torch_load(path)
    if isinstance(data, dict) and "state_dict" in data:
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{path}: expected a Lightning checkpoint with a 'state_dict' of tensors")
    return data


def find_project_yaml(ckpt: Path) -> Path | None:
    """CompVis runs keep ``configs/*-project.yaml`` beside ``checkpoints/``; released models ship one beside the
    ckpt."""
    for folder in (ckpt.parent, ckpt.parent.parent / "configs", ckpt.parent / "configs"):
        found = sorted(folder.glob("*project.yaml")) if folder.is_dir() else []
        if found:
            return found[-1]
    return None


def check_params(params: dict, known, required, where: str, what: str = "") -> None:
    """Every key of a yaml ``params`` block is one tamer imports, and the required ones are there."""
    for key in params:
        if key not in known:
            raise ConfigError(f"{where}.params.{key}: not a {what + ' ' if what else ''}parameter tamer knows how "
                              "to import")
    for key in required:
        if key not in params:
            raise ConfigError(f"{where}.params.{key}: missing")


def vqgan_config_from_taming(model: dict, state: dict[str, torch.Tensor] | None = None,
                             prefix: str = "", where: str = "model") -> VQGANConfig:
    """Translate a ``{target, params}`` block of an original config into a :class:`VQGANConfig`.

    ``state`` (the checkpoint's weights) supplies what the yaml only names by file, such as a remap's used codes.
    """
    target = model.get("target")
    if target not in VQ_TARGETS:
        raise ConfigError(f"{where}.target: {target!r} is not a VQGAN class of taming ({', '.join(VQ_TARGETS)})")
    params = dict(model.get("params") or {})
    kind = VQ_TARGETS[target]
    known = {"ddconfig", "n_embed", "embed_dim", "colorize_nlabels", "n_labels", "remap", "unknown_index",
             "kl_weight"} | TRAINING_ONLY
    check_params(params, known, ("ddconfig", "n_embed", "embed_dim"), where)

    ddconfig = {k: v for k, v in params["ddconfig"].items() if k not in DDCONFIG_IGNORED}
    autoencoder = from_dict(AutoencoderConfig, ddconfig, where=f"{where}.params.ddconfig")

    quantizer: dict[str, Any] = {"kind": kind, "num_codes": params["n_embed"], "embed_dim": params["embed_dim"]}
    if kind == "vq":
        quantizer.update(beta=0.25, legacy_loss=True)  # what the original VQModel hard-codes
    else:
        quantizer.update(kl_weight=params.get("kl_weight", 1e-8), temperature=1.0)
    if params.get("remap") is not None:
        used = (state or {}).get(f"{prefix}quantize.used")
        if used is None:
            raise ConfigError(f"{where}.params.remap: set, but the checkpoint has no '{prefix}quantize.used' buffer")
        quantizer.update(remap_size=int(used.shape[0]), unknown_index=params.get("unknown_index", "random"))
    nlabels = params.get("n_labels", params.get("colorize_nlabels"))
    return VQGANConfig(autoencoder=autoencoder, quantizer=from_dict(QuantizerConfig, quantizer, f"{where}.params"),
                       colorize_nlabels=nlabels)


def submodule_state(state: dict[str, torch.Tensor], prefix: str, drop: tuple[str, ...] = ()) -> dict:
    """The entries under ``prefix``, renamed without it, leaving out those under ``drop``."""
    return {k[len(prefix):]: v for k, v in state.items()
            if k.startswith(prefix) and not k[len(prefix):].startswith(drop)}


def load_taming_vqgan(document: dict, state: dict[str, torch.Tensor], path: str) -> VQGAN:
    """One of the original's VQGAN classes (``VQ_TARGETS``) as a :class:`VQGAN`, its weights checked key by key."""
    config = vqgan_config_from_taming(document["model"], state)
    weights = submodule_state(state, "", drop=("loss.",))
    shapes = {k: tuple(v.shape) for k, v in weights.items()}
    if config.colorize_nlabels is not None and "colorize" not in weights:
        shapes["colorize"] = (3, config.colorize_nlabels, 1, 1)
    model = build_checked(VQGAN, config, shapes, source=path)  # before a wrong yaml builds gigabytes
    if config.colorize_nlabels is not None and "colorize" not in weights:
        weights["colorize"] = model.colorize  # older files did not save the random projection
    load_state_dict_strict(model, weights, source=path)
    return model
