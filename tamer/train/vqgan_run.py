"""``tamer train vqgan``: a preset (YAML) plus ``key=value`` overrides -> a trained, loadable VQGAN in RUN_DIR."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from tamer.checkpoints import load_state_dict_strict
from tamer.compat.taming import read_taming_checkpoint, submodule_state
from tamer.config import ConfigError, from_dict, merge, parse_overrides, read_yaml, to_dict
from tamer.data import DataConfig, build_dataset
from tamer.guards import prepare_run_folder
from tamer.loading import load
from tamer.nn.perceptual import lpips_from_compvis, lpips_unavailable_reason
from tamer.presets import preset_path
from tamer.train.config import TrainConfig, with_train_defaults
from tamer.train.distributed import setup, teardown
from tamer.train.summary import fit_data_sizes, parameter_count, start_line
from tamer.train.trainer import Trainer
from tamer.train.vqgan_task import VQGANTask
from tamer.vqgan.loss import VQGANLoss, VQGANLossConfig
from tamer.vqgan.model import VQGAN, VQGANConfig


@dataclass
class VQGANRunConfig:
    model: VQGANConfig = field(default_factory=VQGANConfig)
    loss: VQGANLossConfig = field(default_factory=VQGANLossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    val_data: DataConfig | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    image_key: str = "image"  # which entry of a data item is encoded ("image", "depth", ...)
    vgg_path: str | None = None  # VGG16 weights for LPIPS (default: the torch hub cache)
    # Fine-tune: start from a tamer model folder or a CompVis .ckpt (with init_config, its project.yaml when not
    # beside it). Its architecture replaces `model`; a CompVis file also gives the discriminator and, when no VGG16
    # file is found, the LPIPS network it carries (loss.discriminator.*, loss.perceptual_loss.*).
    init_from: str | None = None
    init_config: str | None = None


#: the original VQGAN's optimizer settings (base_learning_rate 4.5e-6, Adam betas 0.5/0.9), where a preset does not
#: set them
VQGAN_TRAIN_DEFAULTS = {"lr": 4.5e-6, "betas": [0.5, 0.9]}


def load_run_config(path: str | Path | None, overrides: list[str] | None = None) -> VQGANRunConfig:
    """A preset (a YAML file, or a shipped preset's name such as ``vqgan_tiny_cpu``) with ``key=value``
    overrides on top; every key and value is checked."""
    document = read_yaml(preset_path(path)) if path else {}
    document = merge(document, parse_overrides(overrides or []))
    document = with_train_defaults(document, VQGAN_TRAIN_DEFAULTS)
    return from_dict(VQGANRunConfig, document)


def build_model_and_loss(config: VQGANRunConfig) -> tuple[VQGAN, VQGANLoss]:
    """A fresh model and loss, or those a checkpoint named by ``init_from`` provides (whose own model config then
    holds: read it from the model, ``config`` is left as it is)."""
    if config.init_from is None:
        return VQGAN(config.model), VQGANLoss.from_config(config.loss, config.vgg_path)
    source = Path(config.init_from)
    model = load(source, config=config.init_config)
    if not isinstance(model, VQGAN):
        raise ConfigError(f"init_from: {source} holds a {type(model).__name__}, not a VQGAN")
    if source.is_dir() or source.name == "model.safetensors":
        return model.train(), VQGANLoss.from_config(config.loss, config.vgg_path)
    state = read_taming_checkpoint(source)
    perceptual = None
    if config.loss.perceptual_weight > 0:
        perceptual = lpips_from_compvis(state) if lpips_unavailable_reason(config.vgg_path) else None
        if perceptual is not None:
            print(f"LPIPS: using the VGG16 and heads carried in {source}")
    loss = VQGANLoss(config.loss, perceptual) if perceptual is not None else \
        VQGANLoss.from_config(config.loss, config.vgg_path)
    discriminator = submodule_state(state, "loss.discriminator.")
    if discriminator:
        load_state_dict_strict(loss.discriminator, discriminator, source=f"{source} (loss.discriminator.*)")
    return model.train(), loss


def train_vqgan(config: VQGANRunConfig, run_dir: str | Path, resume: bool = False,
                overwrite: bool = False) -> dict[str, float]:
    prepare_run_folder(run_dir, resume, overwrite)  # before any work: a new run never lands in an old one
    context = setup(config.train.device)
    try:
        torch.manual_seed(config.train.seed)  # the same initial weights for any number of processes
        data, val_data = fit_data_sizes(config.data, config.val_data,
                                        report=print if context.is_main else lambda _: None)
        model, loss = build_model_and_loss(config)
        config = replace(config, model=model.config, data=data, val_data=val_data)  # what this run really is
        loss = loss.to(context.device)  # LPIPS too, not only the discriminator that the trainer moves
        task = VQGANTask(model, loss, image_key=config.image_key)
        train_data = build_dataset(config.data)
        val_data = build_dataset(config.val_data) if config.val_data is not None else None
        trainer = Trainer(task, config.train, train_data, run_dir, val_data=val_data, run_config=to_dict(config),
                          context=context)
        if context.is_main:
            side = config.data.crop or config.data.size
            print(start_line("vqgan", len(train_data), config.data, model.code_shape(side, side), model.vocab_size,
                             parameter_count(model), str(trainer.precision), trainer.device,
                             f" (+{parameter_count(loss.discriminator) / 1e6:.2f}M discriminator)"))
        return trainer.fit(resume=resume)
    finally:
        teardown()
