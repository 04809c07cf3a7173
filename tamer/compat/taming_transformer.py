"""Import the original stage-2 checkpoints (``taming.models.cond_transformer.Net2NetTransformer``).

The original keys map onto :class:`tamer.Transformer` as they are (``transformer.*``, ``first_stage_model.*``),
except for a VQGAN condition stage (``cond_stage_model.*`` -> ``cond_stage_model.model.*``). Left out: the GPT's
``attn.mask`` buffers (tamer rebuilds the mask), loss modules, and the permuter's index buffers, which are checked
against the token order tamer computes. Condition ids keep the original's offset 0 (a vocabulary shared with the
image codes), so the weights mean what they meant.

The project.yaml does not store the code grid the model was trained on; it comes from the permuter's ``H, W``
when there is one, else it is inferred from ``block_size`` (with a warning) unless the caller gives it.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from tamer.ar.conditioning import ConditioningConfig
from tamer.ar.model import Transformer, TransformerConfig
from tamer.ar.token_order import order_indices
from tamer.checkpoints import CheckpointError, check_shapes, load_state_dict_strict
from tamer.compat.taming import VQ_TARGETS, check_params, submodule_state, vqgan_config_from_taming
from tamer.config import ConfigError, from_dict
from tamer.nn.gpt import GPTConfig
from tamer.vqgan.model import VQGANConfig

NET2NET_TARGET = "taming.models.cond_transformer.Net2NetTransformer"
GPT_TARGET = "taming.modules.transformer.mingpt.GPT"
# The defaults of the original GPT's __init__ (minGPT's class-level dropout of 0.1 is overridden there).
GPT_DEFAULTS = dict(n_layer=12, n_head=8, n_embd=256, embd_pdrop=0.0, resid_pdrop=0.0, attn_pdrop=0.0, n_unmasked=0)
PERMUTERS = {
    "taming.modules.transformer.permuter.Identity": "raster",
    "taming.modules.transformer.permuter.Subsample": "subsample",
    "taming.modules.transformer.permuter.ZCurve": "zcurve",
    "taming.modules.transformer.permuter.AlternateParsing": "alternate",
}
LABELATOR = "taming.modules.util.Labelator"
SOS_PROVIDER = "taming.modules.util.SOSProvider"
COORD_STAGE = "taming.modules.misc.coord.CoordStage"
# Net2NetTransformer parameters that concern training only (pkeep lives in tamer's training config).
TRAINING_ONLY = {"ckpt_path", "ignore_keys", "first_stage_key", "pkeep"}
KNOWN_PARAMS = {"transformer_config", "first_stage_config", "cond_stage_config", "permuter_config",
                "cond_stage_key", "downsample_cond_size", "sos_token", "unconditional"} | TRAINING_ONLY


def load_net2net(document: dict, state: dict[str, torch.Tensor], source: str, config_path: str,
                 code_shape: tuple[int, int] | None = None) -> Transformer:
    """A :class:`Transformer` from an original project.yaml ``document`` and the checkpoint's ``state``."""
    config = transformer_config_from_taming(document["model"], state, code_shape, where=f"{config_path}: model")
    shared = document["model"]["params"]["cond_stage_config"] == "__is_first_stage__"
    try:  # on the meta device, which allocates nothing: a yaml that disagrees with the file fails before gigabytes
        with torch.device("meta"):
            skeleton = Transformer(config)
    except Exception:  # a constructor that cannot run on meta tensors: the strict load below still compares
        skeleton = None
    if skeleton is not None:
        expected = transformer_weights(state, skeleton, source, shared_first_stage=shared)
        check_shapes({k: tuple(v.shape) for k, v in skeleton.state_dict().items()},
                     {k: tuple(v.shape) for k, v in expected.items()}, source, "Transformer")
        del skeleton
    model = Transformer(config)
    weights = transformer_weights(state, model, source, shared_first_stage=shared)
    load_state_dict_strict(model, weights, source=source)
    return model


# ---- config ----------------------------------------------------------------------------------------------------


def transformer_config_from_taming(model: dict, state: dict[str, torch.Tensor],
                                   code_shape: tuple[int, int] | None = None,
                                   where: str = "model") -> TransformerConfig:
    """Translate a Net2NetTransformer ``{target, params}`` block; ``state`` supplies what the yaml names by file."""
    params = dict(model.get("params") or {})
    check_params(params, KNOWN_PARAMS, ("transformer_config", "first_stage_config", "cond_stage_config"), where,
                 "Net2NetTransformer")
    gpt = gpt_config_from_taming(params["transformer_config"], f"{where}.params.transformer_config")
    first_stage = vqgan_config_from_taming(params["first_stage_config"], state, prefix="first_stage_model.",
                                           where=f"{where}.params.first_stage_config")
    conditioning = conditioning_from_taming(params, first_stage, state, where)
    order, permuter_shape = token_order_from_taming(params.get("permuter_config"),
                                                    f"{where}.params.permuter_config")
    shape = resolve_code_shape(code_shape, permuter_shape, gpt, first_stage, conditioning, where)
    try:
        return TransformerConfig(gpt=gpt, first_stage=first_stage, conditioning=conditioning, code_shape=shape,
                                 token_order=order)
    except ValueError as error:
        raise ConfigError(f"{where}: {error}") from None


def gpt_config_from_taming(block: dict, where: str) -> GPTConfig:
    if block.get("target") != GPT_TARGET:
        raise ConfigError(f"{where}.target: {block.get('target')!r} cannot be imported; supported: {GPT_TARGET}")
    return from_dict(GPTConfig, {**GPT_DEFAULTS, **(block.get("params") or {})}, where=f"{where}.params")


def conditioning_from_taming(params: dict, first_stage: VQGANConfig, state: dict[str, torch.Tensor],
                             where: str) -> ConditioningConfig:
    """The condition stage, decided in the original's order: first stage, unconditional, then the target."""
    fields = condition_fields(params, first_stage, state, where)
    return from_dict(ConditioningConfig, {"token_offset": 0, **fields}, where=f"{where}.params.cond_stage_config")


def condition_fields(params: dict, first_stage: VQGANConfig, state: dict[str, torch.Tensor], where: str) -> dict:
    cond = params["cond_stage_config"]
    key = params.get("cond_stage_key", "depth")  # the original's default
    downsample = params.get("downsample_cond_size", -1)
    if cond == "__is_first_stage__":
        return dict(kind="spatial", key=key, stage=first_stage, downsample_size=downsample)
    if cond == "__is_unconditional__" or params.get("unconditional", False):
        # The original then reads the condition (only its batch size) from the image key.
        return dict(kind="none", key=params.get("first_stage_key", "image"), token_offset=params.get("sos_token", 0))
    block = f"{where}.params.cond_stage_config"
    if not isinstance(cond, dict):
        raise ConfigError(f"{block}: expected a {{target, params}} block, '__is_first_stage__' or "
                          f"'__is_unconditional__', got {cond!r}")
    target, cond_params = cond.get("target"), cond.get("params") or {}
    if target in VQ_TARGETS:
        stage = vqgan_config_from_taming(cond, state, prefix="cond_stage_model.", where=block)
        return dict(kind="spatial", key=key, stage=stage, downsample_size=downsample)
    if target == LABELATOR:
        return dict(kind="class", key=key, num_classes=_param(cond_params, "n_classes", block))
    if target == SOS_PROVIDER:
        return dict(kind="none", key=key, token_offset=_param(cond_params, "sos_token", block))
    if target == COORD_STAGE:
        if downsample > 0:  # the original resized coordinates too; tamer's coord stage pools by its factor only
            raise ConfigError(f"{where}.params.downsample_cond_size: {downsample} with a CoordStage cannot be imported")
        return dict(kind="coord", key=key, coord_levels=_param(cond_params, "n_embed", block),
                    coord_factor=_param(cond_params, "down_factor", block))
    supported = ", ".join([*VQ_TARGETS, LABELATOR, SOS_PROVIDER, COORD_STAGE, "__is_first_stage__",
                           "__is_unconditional__"])
    raise ConfigError(f"{block}.target: {target!r} is not a condition stage tamer can import; supported: {supported}")


def _param(params: dict, name: str, where: str) -> Any:
    if name not in params:
        raise ConfigError(f"{where}.params.{name}: missing")
    return params[name]


def token_order_from_taming(block: dict | None, where: str) -> tuple[str, tuple[int, int] | None]:
    """The token order's name, and the grid the permuter was built for (None for Identity)."""
    if block is None:
        return "raster", None  # the original's default permuter
    target = block.get("target")
    if target not in PERMUTERS:
        raise ConfigError(f"{where}.target: {target!r} is not a token order tamer can import; "
                          f"supported: {', '.join(PERMUTERS)}")
    name = PERMUTERS[target]
    if name == "raster":
        return name, None
    params = block.get("params") or {}
    return name, (_param(params, "H", where), _param(params, "W", where))


# ---- code grid ---------------------------------------------------------------------------------------------------


def condition_length(conditioning: ConditioningConfig, first_stage: VQGANConfig, h: int, w: int) -> int | None:
    """Tokens before the image for an ``h``×``w`` code grid; None if the condition map would not tile.

    Spatial maps are taken at the image's pixel size (or ``downsample_size``), as in the original's data.
    """
    if conditioning.kind in ("none", "class"):
        return 1
    pixels = (h * first_stage.downsample_factor, w * first_stage.downsample_factor)
    if conditioning.kind == "coord":
        factor = conditioning.coord_factor
    elif conditioning.kind == "labels":
        factor = conditioning.label_factor
    else:
        factor = conditioning.stage.downsample_factor
        if conditioning.downsample_size > 0:
            pixels = (conditioning.downsample_size,) * 2
    if any(side % factor for side in pixels):
        return None
    return (pixels[0] // factor) * (pixels[1] // factor)


def infer_code_shape(gpt: GPTConfig, first_stage: VQGANConfig, conditioning: ConditioningConfig) -> tuple[int, int]:
    """The largest square grid whose sequence (condition + image tokens - 1) fits in ``block_size``."""
    for side in range(math.isqrt(gpt.block_size + 1), 0, -1):
        length = condition_length(conditioning, first_stage, side, side)
        if length is not None and length + side * side - 1 <= gpt.block_size:
            return side, side
    raise ConfigError(f"no square code grid fits block_size={gpt.block_size} after the {conditioning.kind} "
                      "condition; pass code_shape=(h, w)")


def resolve_code_shape(given, permuter_shape, gpt: GPTConfig, first_stage: VQGANConfig,
                       conditioning: ConditioningConfig, where: str) -> tuple[int, int]:
    if given is not None:
        given = tuple(int(s) for s in given)
        if len(given) != 2:
            raise ConfigError(f"code_shape: expected (h, w), got {given}")
        if permuter_shape is not None and given != tuple(permuter_shape):
            raise ConfigError(f"code_shape: {given} contradicts {where}.params.permuter_config.params "
                              f"(H, W) = {tuple(permuter_shape)}")
        shape = given
    elif permuter_shape is not None:
        shape = tuple(permuter_shape)
    else:
        shape = infer_code_shape(gpt, first_stage, conditioning)
        warnings.warn(f"{where}: the project.yaml does not store the code grid; inferred {shape[0]}×{shape[1]} as "
                      f"the largest square grid whose tokens fit block_size={gpt.block_size} after the "
                      f"{conditioning.kind} condition (pass code_shape=(h, w) to load if it was trained on "
                      "another grid)", UserWarning, stacklevel=2)
    length = condition_length(conditioning, first_stage, *shape)
    if length is not None and length + shape[0] * shape[1] - 1 > gpt.block_size:
        raise ConfigError(f"code_shape: {shape[0]}×{shape[1]} codes after {length} condition tokens need "
                          f"block_size >= {length + shape[0] * shape[1] - 1}, the model has {gpt.block_size}")
    return shape


# ---- weights -----------------------------------------------------------------------------------------------------


def transformer_weights(state: dict[str, torch.Tensor], model: Transformer, source: str,
                        shared_first_stage: bool = False) -> dict[str, torch.Tensor]:
    """The original's state dict renamed to tamer's keys; the permuter is checked and left out.

    ``shared_first_stage``: the condition stage is the first stage (``__is_first_stage__``).
    """
    check_permuter(state, model.config, source)
    weights = {f"transformer.{k}": v for k, v in submodule_state(state, "transformer.").items()
               if not _is_attention_mask(k)}
    weights.update({f"first_stage_model.{k}": v
                    for k, v in submodule_state(state, "first_stage_model.", drop=("loss.",)).items()})
    cond = submodule_state(state, "cond_stage_model.", drop=("loss.",))
    if model.conditioning.kind == "spatial":
        if not cond and shared_first_stage:
            # The original shares one module, saved under both prefixes; a trimmed file may keep only one.
            cond = submodule_state(state, "first_stage_model.", drop=("loss.",))
        weights.update({f"cond_stage_model.model.{k}": v for k, v in cond.items()})
    else:
        weights.update({f"cond_stage_model.{k}": v for k, v in cond.items()})  # none expected: strict load names them
    weights.update({k: v for k, v in state.items() if k.split(".", 1)[0] not in
                    ("transformer", "first_stage_model", "cond_stage_model", "permuter")})  # strict load names them
    for name, vqgan in (("first_stage_model", model.first_stage_model),
                        ("cond_stage_model.model", getattr(model.cond_stage_model, "model", None))):
        if vqgan is not None and vqgan.config.colorize_nlabels is not None and f"{name}.colorize" not in weights:
            weights[f"{name}.colorize"] = vqgan.colorize  # older files did not save the random projection
    return weights


def _is_attention_mask(key: str) -> bool:
    parts = key.split(".")
    return len(parts) == 4 and parts[0] == "blocks" and parts[2:] == ["attn", "mask"]


def check_permuter(state: dict[str, torch.Tensor], config: TransformerConfig, source: str) -> None:
    """tamer computes token orders; a stored permutation must be the one it computes, or the weights would be
    read in another order than they were trained in."""
    stored = sorted(k for k in state if k.startswith("permuter."))
    if config.token_order == "raster":
        if stored:
            raise CheckpointError(f"{source}: holds {', '.join(stored)}, but the project.yaml names no permuter "
                                  "or Identity (raster order); is it the right project.yaml?")
        return
    key = "permuter.forward_shuffle_idx"
    if key not in state:
        raise CheckpointError(f"{source}: no '{key}' buffer, which the {config.token_order} permuter stores")
    h, w = config.code_shape
    expected = order_indices(config.token_order, h, w)
    found = state[key]
    if found.shape != expected.shape or not torch.equal(found.long().cpu(), expected):
        raise CheckpointError(f"{source}: '{key}' is not the {config.token_order} order of a {h}×{w} code grid "
                              "that tamer computes; this token order cannot be imported")
