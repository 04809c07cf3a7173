"""``tamer train vqgan``: a preset (YAML) plus ``key=value`` overrides -> a trained, loadable VQGAN in RUN_DIR."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import from_dict, merge, parse_overrides, read_yaml, to_dict
from ..data import DataConfig, build_dataset
from ..losses import VQGANLoss, VQGANLossConfig
from ..vqgan import VQGAN, VQGANConfig
from .config import TrainConfig
from .distributed import setup, teardown
from .trainer import Trainer
from .vqgan_task import VQGANTask


@dataclass
class VQGANRunConfig:
    model: VQGANConfig = field(default_factory=VQGANConfig)
    loss: VQGANLossConfig = field(default_factory=VQGANLossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    val_data: DataConfig | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    image_key: str = "image"  # which entry of a data item is encoded ("image", "depth", ...)
    vgg_path: str | None = None  # VGG16 weights for LPIPS (default: the torch hub cache)


def load_run_config(path: str | Path | None, overrides: list[str] | None = None) -> VQGANRunConfig:
    """A preset file with ``key=value`` overrides on top; every key and value is checked."""
    document = read_yaml(path) if path else {}
    return from_dict(VQGANRunConfig, merge(document, parse_overrides(overrides or [])))


def train_vqgan(config: VQGANRunConfig, run_dir: str | Path, resume: bool = False) -> dict[str, float]:
    context = setup(config.train.device)
    try:
        torch.manual_seed(config.train.seed)  # the same initial weights for any number of processes
        model = VQGAN(config.model)
        loss = VQGANLoss.from_config(config.loss, config.vgg_path).to(context.device)  # LPIPS too, not only the
        # discriminator that the trainer moves
        task = VQGANTask(model, loss, image_key=config.image_key)
        train_data = build_dataset(config.data)
        val_data = build_dataset(config.val_data) if config.val_data is not None else None
        trainer = Trainer(task, config.train, train_data, run_dir, val_data=val_data, run_config=to_dict(config),
                          context=context)
        return trainer.fit(resume=resume)
    finally:
        teardown()
