"""One trainer for both stages: DDP, AMP, EMA, gradient accumulation, atomic checkpoints and exact resume."""

from tamer.train.config import TrainConfig
from tamer.train.trainer import Trainer, TrainingDiverged

__all__ = ["TrainConfig", "Trainer", "TrainingDiverged"]
