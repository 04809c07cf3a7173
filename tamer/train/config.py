"""The trainer's settings (the ``train:`` section of a preset)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

from tamer.config import checked_keywords, merge


@checked_keywords
@dataclass
class TrainConfig:
    steps: int = 1000
    # Passes over the training data; when set, it decides the steps (ceil(epochs × items / global batch), printed
    # at start), so one preset fits a folder of 300 images or of 30,000.
    epochs: float | None = None
    batch_size: int = 8  # per process; the global batch is batch_size × grad_accum × world size
    grad_accum: int = 1
    # Adam's own defaults; each stage's load_run_config puts the original's in front (VQGAN_TRAIN_DEFAULTS,
    # TRANSFORMER_TRAIN_DEFAULTS), so a preset that leaves them out trains as the original did.
    lr: float = 1e-3  # per optimizer step at the global batch (no implicit scaling)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: Literal["constant", "cosine"] = "constant"
    min_lr_ratio: float = 0.1  # cosine decays to lr × this
    max_grad_norm: float | None = None
    ema_decay: float | None = None  # EMA of the model's weights (e.g. 0.999); exported models use it
    # EMA only where it can help: off (with a note) when its horizon 1/(1 - ema_decay) exceeds a quarter of the
    # steps, as the average would still be mostly the first steps' weights; false keeps it on regardless.
    ema_auto: bool = True
    # mixed precision through torch.autocast; auto: bf16 where it is fast (GPUs with bf16, CPUs with AMX or
    # AVX512-BF16), fp32 elsewhere (tamer.devices.resolve_precision)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # the weights' layout; auto: channels-last for convolutional models on a CPU, where oneDNN runs it faster
    # (tamer.devices.resolve_memory_format)
    memory_format: Literal["auto", "channels_last", "contiguous"] = "auto"
    device: str = "auto"
    seed: int = 0
    num_workers: int = 0
    log_every: int = 10
    image_every: int = 1000  # PNG grids at steps 1, 2, 5, 10, 20, 50, ... then every image_every
    val_every: int = 500
    val_batches: int = 8
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    tensorboard: bool = False

    def __post_init__(self):
        for name in ("steps", "batch_size", "grad_accum", "log_every", "image_every", "val_every",
                     "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name}: must be at least 1, got {getattr(self, name)}")
        if self.epochs is not None and not (math.isfinite(self.epochs) and self.epochs > 0):
            raise ValueError(f"train.epochs: expected a positive number or null, got {self.epochs}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"train.ema_decay: expected a value in (0, 1) or null, got {self.ema_decay}")


#: EMA is turned off when its horizon exceeds this share of the run's steps (with ``ema_auto``)
EMA_MAX_HORIZON_SHARE = 0.25


def effective_ema_decay(config: TrainConfig) -> tuple[float | None, str | None]:
    """The EMA decay a run uses, and a note when ``ema_auto`` turned a configured EMA off.

    After ``n`` steps an EMA of decay ``d`` still gives ``d**n`` of its weight to the first step's parameters;
    its horizon ``1 / (1 - d)`` is the number of steps it averages over. A horizon beyond a quarter of the run
    leaves the exported weights mostly those of the early, poor steps (0.9999 over 600 steps keeps 94%).
    """
    decay = config.ema_decay
    if decay is None or not config.ema_auto:
        return decay, None
    horizon = 1.0 / (1.0 - decay)
    if horizon <= EMA_MAX_HORIZON_SHARE * config.steps:
        return decay, None
    fix = f"lower it to {1 - 4 / config.steps:.4g} or less" if config.steps > 8 else "set it to null"
    return None, (f"train.ema_decay: {decay:g} averages over about {horizon:,.0f} steps, more than a quarter of this "
                  f"run's {config.steps:,}; EMA is off (its weights would be mostly the first steps'); {fix}, or "
                  "set train.ema_auto=false to keep it")


def with_train_defaults(document: dict, defaults: dict) -> dict:
    """``document`` with a stage's optimizer ``defaults`` under its ``train:`` section (the section's own values
    win; a section that is not a mapping is left for the config reader to name)."""
    train = document.get("train")
    if train is None or isinstance(train, dict):
        document = {**document, "train": merge(defaults, train or {})}
    return document


def steps_for_data(config: TrainConfig, items: int, world_size: int = 1) -> tuple[TrainConfig, str | None]:
    """``config`` with ``steps`` decided by ``epochs`` over ``items`` training items (``world_size`` processes of
    ``batch_size × grad_accum`` each), and the line that says so; unchanged (and None) without ``epochs``."""
    if config.epochs is None:
        return config, None
    per_step = config.batch_size * config.grad_accum * world_size
    steps = max(1, math.ceil(config.epochs * items / per_step))
    return replace(config, steps=steps), (f"train.epochs: {config.epochs:g} passes over {items:,} items at "
                                          f"{per_step} per step -> {steps:,} steps (train.steps is not used)")
