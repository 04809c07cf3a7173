"""The trainer's settings (the ``train:`` section of a preset)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 8  # per process; the global batch is batch_size × grad_accum × world size
    grad_accum: int = 1
    lr: float = 4.5e-6  # per optimizer step at the global batch (no implicit scaling)
    betas: tuple[float, float] = (0.5, 0.9)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: Literal["constant", "cosine"] = "constant"
    min_lr_ratio: float = 0.1  # cosine decays to lr × this
    max_grad_norm: float | None = None
    ema_decay: float | None = None  # EMA of the model's weights (e.g. 0.999); exported models use it
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # mixed precision through torch.autocast
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
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"train.ema_decay: expected a value in (0, 1) or null, got {self.ema_decay}")
