"""``tamer train transformer``: a preset (YAML) plus ``key=value`` overrides -> a trained, loadable Transformer.

The user names a trained first stage (``first_stage``: a tamer VQGAN folder or a CompVis ``.ckpt``) and, for a
spatial condition, the condition's VQGAN (``cond_stage``); everything that follows from them is derived here:
the code grid (image side / downsampling factor), the GPT's ``vocab_size`` (image codebook + condition ids + the
null id of classifier-free guidance) and ``block_size`` (condition tokens + image tokens - 1), and for class
conditions the number of classes (from the dataset). A value given explicitly is checked instead, and a
too-small one is an error that names its key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from tamer.ar.class_names import class_set_difference
from tamer.ar.conditioning import ConditioningConfig
from tamer.ar.model import Transformer, TransformerConfig
from tamer.ar.token_order import TokenOrderName
from tamer.config import ConfigError, from_dict, merge, parse_overrides, read_yaml, to_dict
from tamer.data import ClassFolder, DataConfig, build_dataset
from tamer.data.codes import cached_codes, encode_dataset, fingerprint
from tamer.devices import data_loader_workers
from tamer.guards import prepare_run_folder
from tamer.loading import load
from tamer.nn.gpt import GPTConfig
from tamer.presets import preset_path
from tamer.train.config import TrainConfig, with_train_defaults
from tamer.train.distributed import DistributedContext, barrier, setup, teardown
from tamer.train.summary import fit_data_sizes, start_line
from tamer.train.trainer import Trainer
from tamer.train.transformer_task import TransformerTask
from tamer.vqgan.model import VQGAN, VQGANConfig

#: the original minGPT's optimizer settings, used where a preset does not set them
TRANSFORMER_TRAIN_DEFAULTS = {"betas": [0.9, 0.95], "weight_decay": 0.01, "lr": 3.0e-4}


@dataclass
class TransformerModelConfig:
    """The ``model:`` section. ``gpt`` holds :class:`GPTConfig` keys (``vocab_size`` and ``block_size`` are
    derived when left out); ``conditioning`` holds :class:`ConditioningConfig` keys except ``stage`` (read from
    ``cond_stage``; ``num_classes`` comes from the data when left out)."""

    gpt: dict = field(default_factory=dict)
    conditioning: dict = field(default_factory=dict)
    token_order: TokenOrderName = "raster"

    def __post_init__(self):
        # Check every key now, with stand-ins for what is derived later, so a typo fails before any work.
        gpt = {"vocab_size": 1, "block_size": 1, **self.gpt}
        from_dict(GPTConfig, gpt, "model.gpt")
        if "stage" in self.conditioning:
            raise ConfigError("model.conditioning.stage: set by cond_stage (the path of the condition's VQGAN)")
        self.conditioning_config(num_classes=self.conditioning.get("num_classes") or 1, stage=VQGANConfig())

    def conditioning_config(self, num_classes: int | None = None, stage: VQGANConfig | None = None):
        values = dict(self.conditioning)
        kind = values.get("kind", "none")
        if kind == "class" and num_classes is not None:
            values["num_classes"] = num_classes
        if kind == "spatial":
            values["stage"] = stage
        return from_dict(ConditioningConfig, values, "model.conditioning")


@dataclass
class TransformerRunConfig:
    model: TransformerModelConfig = field(default_factory=TransformerModelConfig)
    # A trained tamer VQGAN folder or a CompVis .ckpt (with first_stage_config, its project.yaml when not beside it).
    first_stage: str | None = None
    first_stage_config: str | None = None
    # The VQGAN of a spatial condition (segmentation, depth, edges, ...); tamer folder or CompVis .ckpt.
    cond_stage: str | None = None
    cond_stage_config: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    val_data: DataConfig | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    pkeep: float = 1.0  # each input token is kept with this probability, else replaced by a random code
    cond_dropout: float = 0.0  # probability of the null condition (needs model.conditioning.classifier_free)
    image_key: str = "image"  # which entry of a data item is the image
    # Encode the data once with the frozen stages into RUN/codes (or cache_dir), reused while they are unchanged.
    cache_codes: bool = False
    cache_dir: str | None = None

    def __post_init__(self):
        if not self.first_stage:
            raise ConfigError("first_stage: required; the path of a trained VQGAN (a tamer model folder such as "
                              "runs/vqgan-tiny/model, or a CompVis .ckpt)")
        if not 0.0 < self.pkeep <= 1.0:
            raise ConfigError(f"pkeep: expected a value in (0, 1], got {self.pkeep}")
        if not 0.0 <= self.cond_dropout < 1.0:
            raise ConfigError(f"cond_dropout: expected a value in [0, 1), got {self.cond_dropout}")
        conditioning = self.model.conditioning_config(num_classes=1, stage=VQGANConfig())
        if self.cond_dropout and not conditioning.classifier_free:
            raise ConfigError("cond_dropout: needs model.conditioning.classifier_free: true (the null condition id)")
        if conditioning.kind == "spatial" and not self.cond_stage:
            raise ConfigError("cond_stage: required for model.conditioning.kind=spatial; the path of the "
                              "condition's VQGAN (e.g. a segmentation VQGAN trained with configs/vqgan_tiny_seg.yaml)")
        if conditioning.kind != "spatial" and self.cond_stage:
            raise ConfigError(f"cond_stage: only a spatial condition has a stage, not model.conditioning.kind="
                              f"{conditioning.kind!r}")
        if self.cache_codes and self.data.random_crop:
            raise ConfigError("cache_codes: data.random_crop draws new crops every epoch, which a code cache cannot "
                              "hold; set data.random_crop=false (the centre crop is cached) or cache_codes=false")


def load_run_config(path: str | Path | None, overrides: list[str] | None = None) -> TransformerRunConfig:
    """A preset (a YAML file, or a shipped preset's name such as ``vqgan_tiny_cpu``) with ``key=value``
    overrides on top; every key and value is checked."""
    document = read_yaml(preset_path(path)) if path else {}
    document = merge(document, parse_overrides(overrides or []))
    document = with_train_defaults(document, TRANSFORMER_TRAIN_DEFAULTS)
    return from_dict(TransformerRunConfig, document)


# ---- building the model ------------------------------------------------------------------------------------------

def load_stage(path: str, config: str | None, key: str) -> VQGAN:
    """A frozen VQGAN from a tamer folder or CompVis checkpoint (the first stage of a Transformer also does)."""
    if not Path(path).exists():
        raise ConfigError(f"{key}: {path} does not exist (train one with `tamer train vqgan`, or convert a CompVis "
                          "checkpoint with `tamer convert`)")
    model = load(path, config=config)
    if isinstance(model, Transformer):
        model = model.first_stage_model
    if not isinstance(model, VQGAN):
        raise ConfigError(f"{key}: {path} holds a {type(model).__name__}, not a VQGAN")
    return model.eval().requires_grad_(False)


def _side(data: DataConfig) -> int:
    return data.crop or data.size


def _grid(side: int, factor: int, key: str, what: str, codes_per_position: int = 1) -> tuple[int, int]:
    """The code grid of a square side; a residual stage's codes per position sit side by side along the width."""
    if side % factor:
        raise ConfigError(f"{key}: {side} pixels is not a multiple of {what}'s downsampling factor {factor}")
    return side // factor, side // factor * codes_per_position


def derive_config(config: TransformerRunConfig, first_stage: VQGANConfig, cond_stage: VQGANConfig | None,
                  classes: list[str] | None) -> TransformerConfig:
    """The :class:`TransformerConfig` a run config means, given its stages and the data's class names (which the
    model keeps, unless the config names its classes itself)."""
    side = _side(config.data)
    size_key = "data.crop" if config.data.crop else "data.size"
    code_shape = _grid(side, first_stage.downsample_factor, size_key, "the first stage",
                       first_stage.quantizer.codes_per_position)
    num_classes = len(classes) if classes is not None else None
    given_classes = config.model.conditioning.get("num_classes")
    conditioning = config.model.conditioning_config(num_classes=given_classes or num_classes, stage=cond_stage)
    if conditioning.kind == "class" and num_classes is not None and conditioning.num_classes < num_classes:
        raise ConfigError(f"model.conditioning.num_classes: {conditioning.num_classes} is too small; the data has "
                          f"{num_classes} classes")
    if conditioning.kind == "class" and conditioning.class_names is None and classes is not None:
        conditioning = replace(conditioning, class_names=tuple(classes))

    if conditioning.kind in ("none", "class"):
        cond_length = 1
    elif conditioning.kind == "spatial":
        cond_side = conditioning.downsample_size if conditioning.downsample_size > 0 else side
        key = "model.conditioning.downsample_size" if conditioning.downsample_size > 0 else size_key
        h, w = _grid(cond_side, cond_stage.downsample_factor, key, "the condition stage",
                     cond_stage.quantizer.codes_per_position)
        cond_length = h * w
    elif conditioning.kind == "labels":
        factor = first_stage.downsample_factor
        if "label_factor" in config.model.conditioning and conditioning.label_factor != factor:
            raise ConfigError(f"model.conditioning.label_factor: {conditioning.label_factor} must equal the first "
                              f"stage's downsampling factor {factor} (leave it out to have it derived)")
        if first_stage.quantizer.codes_per_position > 1:
            raise ConfigError("model.conditioning.kind: a labels condition needs one code per position; this first "
                              f"stage has {first_stage.quantizer.codes_per_position}")
        conditioning = replace(conditioning, label_factor=factor)
        h, w = _grid(side, factor, size_key, "the label grid")
        cond_length = h * w
    else:  # coord
        h, w = _grid(side, conditioning.coord_factor, "model.conditioning.coord_factor", "the coordinate map")
        cond_length = h * w
    image_vocab = first_stage.vocab_size
    offset = conditioning.first_id(image_vocab)
    derived = {"vocab_size": conditioning.gpt_vocab_size(image_vocab),
               "block_size": cond_length + code_shape[0] * code_shape[1] - 1}
    what = {"vocab_size": f"the image codebook ({image_vocab}) and the condition ids (from {offset})",
            "block_size": f"{cond_length} condition + {code_shape[0] * code_shape[1]} image tokens"}
    gpt = dict(config.model.gpt)
    for key, needed in derived.items():
        given = gpt.get(key)
        if given is None:
            gpt[key] = needed
        elif given < needed:
            raise ConfigError(f"model.gpt.{key}: {given} is too small; {what[key]} need {needed} (leave it out "
                              "to have it derived)")
    return TransformerConfig(gpt=from_dict(GPTConfig, gpt, "model.gpt"), first_stage=first_stage,
                             conditioning=conditioning, code_shape=code_shape, token_order=config.model.token_order)


def _classes(dataset) -> list[str] | None:
    classes = getattr(dataset, "classes", None)
    return list(classes) if classes is not None else None


def check_same_classes(train_data, val_data) -> None:
    """A held-out class folder with other classes than the training folder is refused: its labels would shift."""
    if isinstance(train_data, ClassFolder) and isinstance(val_data, ClassFolder):
        problem = class_set_difference(train_data.classes, val_data.classes, f"val_data.path {val_data.root}",
                                       "the training data's")
        if problem:
            raise ConfigError(problem)


def check_items(config: TransformerRunConfig, conditioning: ConditioningConfig, dataset, where: str) -> None:
    """The data items hold the image and the condition this run reads (checked on the first item)."""
    keys = sorted(dataset[0])
    if config.image_key not in keys:
        raise ConfigError(f"image_key: the {where} items have no {config.image_key!r} (keys: {', '.join(keys)})")
    if conditioning.kind != "none" and conditioning.key not in keys:
        hint = " (class labels come with data.kind=classes or procedural)" if conditioning.kind == "class" else \
            " (segmentation maps come with data.kind=pairs or procedural)"
        raise ConfigError(f"model.conditioning.key: the {where} items have no {conditioning.key!r} "
                          f"(keys: {', '.join(keys)}){hint}")


def build_transformer(config: TransformerRunConfig, train_data) -> Transformer:
    """A fresh Transformer (GPT initialised from the current torch seed) around the frozen, loaded stages."""
    first = load_stage(config.first_stage, config.first_stage_config, "first_stage")
    cond = load_stage(config.cond_stage, config.cond_stage_config, "cond_stage") if config.cond_stage else None
    if cond is not None and config.model.conditioning.get("key", "label") == "segmentation" and \
            cond.config.autoencoder.in_channels == 3:
        raise ConfigError(f"cond_stage: {config.cond_stage} reads 3-channel images, not segmentation label maps; "
                          "train one with configs/vqgan_tiny_seg.yaml")
    model_config = derive_config(config, first.config, cond.config if cond is not None else None,
                                 _classes(train_data))
    model = Transformer(model_config)
    model.first_stage_model.load_state_dict(first.state_dict())
    if cond is not None:
        model.cond_stage_model.model.load_state_dict(cond.state_dict())
    return model


# ---- data ----------------------------------------------------------------------------------------------------------

def _cacheable(data: DataConfig) -> DataConfig:
    """The data to encode: no flip (cached as a second copy instead), centre crops."""
    return replace(data, flip=False, random_crop=False)


def coded_dataset(config: TransformerRunConfig, data: DataConfig, model: Transformer, path: Path,
                  context: DistributedContext, where: str = "data", source=None, progress: bool = True):
    """``data`` as cached codes at ``path``: rank 0 encodes (when the fingerprint differs), every rank reads.
    ``source``: the dataset of ``_cacheable(data)`` when already built."""
    source = build_dataset(_cacheable(data)) if source is None else source
    conditioning = model.conditioning
    spatial = model.cond_stage_model.spatial
    cond_stage = model.cond_stage_model if spatial else None
    describe = {"data": {k: v for k, v in to_dict(_cacheable(data)).items() if k != "scan"}, "flip": data.flip,
                "image_key": config.image_key, "conditioning": to_dict(conditioning) if spatial else conditioning.key,
                "token_offset": model.cond_stage_model.token_offset}
    key = fingerprint(first_stage=model.first_stage_model, cond_stage=cond_stage, dataset=source, describe=describe)
    device = context.device

    def build():
        def encode_condition(condition):
            return model.cond_stage_model.tokens(condition, condition.shape[0])

        return encode_dataset(source, model.encode_images, image_key=config.image_key, cond_key=conditioning.key,
                              encode_condition=encode_condition if spatial else None, flip=data.flip,
                              vocab_size=model.image_vocab_size, cond_vocab_size=model.cond_stage_model.vocab_end,
                              batch_size=max(config.train.batch_size, 32),
                              num_workers=data_loader_workers(config.train.num_workers)[0],
                              device=device, progress=progress and context.is_main, desc=f"encoding {path.stem}")

    if context.is_main:
        check_items(config, conditioning, source, where)
        dataset = cached_codes(path, key, build, flip=data.flip)
    barrier()
    if not context.is_main:
        dataset = cached_codes(path, key, build, flip=data.flip, report=None)
    return dataset


def train_transformer(config: TransformerRunConfig, run_dir: str | Path, resume: bool = False,
                      overwrite: bool = False) -> dict[str, float]:
    prepare_run_folder(run_dir, resume, overwrite)  # before any work: a new run never lands in an old one
    run_dir = Path(run_dir)
    context = setup(config.train.device)
    try:
        torch.manual_seed(config.train.seed)  # the same initial GPT on every process
        data, val_data = fit_data_sizes(config.data, config.val_data,
                                        report=print if context.is_main else lambda _: None)
        config = replace(config, data=data, val_data=val_data)  # the caller's config is left as it is
        raw_train = build_dataset(_cacheable(config.data) if config.cache_codes else config.data)
        raw_val = build_dataset(config.val_data) if config.val_data is not None else None  # lists files only
        if raw_val is not None:
            check_same_classes(raw_train, raw_val)  # before any encoding or training
        model = build_transformer(config, raw_train).to(context.device)
        conditioning = model.conditioning
        if config.cache_codes:
            folder = Path(config.cache_dir) if config.cache_dir else run_dir / "codes"
            train_data = coded_dataset(config, config.data, model, folder / "train.safetensors", context,
                                       source=raw_train)
            val_data = coded_dataset(config, config.val_data, model, folder / "val.safetensors", context,
                                     "val_data") if config.val_data is not None else None
        else:
            check_items(config, conditioning, raw_train, "data")
            train_data = raw_train
            val_data = raw_val
            if val_data is not None:
                check_items(config, conditioning, val_data, "val_data")
        task = TransformerTask(model, pkeep=config.pkeep, cond_dropout=config.cond_dropout, image_key=config.image_key)
        resolved = {"code_shape": list(model.config.code_shape), "image_size": list(model.config.image_size),
                    "gpt": to_dict(model.config.gpt), "conditioning": to_dict(conditioning),
                    "gpt_parameters": sum(p.numel() for p in model.transformer.parameters())}
        trainer = Trainer(task, config.train, train_data, run_dir, val_data=val_data,
                          run_config={**to_dict(config), "resolved": resolved}, context=context)
        if context.is_main:
            classes = conditioning.class_names
            extra = (f" in the GPT (block_size {model.config.gpt.block_size}, vocab_size {model.config.gpt.vocab_size}"
                     f"; uniform NLL {math.log(model.image_vocab_size):.3f} nats/token)"
                     + (f", {len(classes)} classes" if classes else ""))
            print(start_line(f"transformer ({conditioning.kind} condition)", len(raw_train), config.data,
                             model.config.code_shape, model.image_vocab_size, resolved["gpt_parameters"],
                             str(trainer.precision), trainer.device, extra))
        return trainer.fit(resume=resume)
    finally:
        teardown()
