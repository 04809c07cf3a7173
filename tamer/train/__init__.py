"""One trainer for both stages: DDP, AMP, EMA, gradient accumulation, atomic checkpoints and exact resume."""

from .config import TrainConfig
from .trainer import Trainer, TrainingDiverged

__all__ = ["TrainConfig", "Trainer", "TrainingDiverged"]
