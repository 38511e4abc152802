"""The training application: config, optimizer, checkpoints, loop."""

from clipforge.train.config import TrainConfig
from clipforge.train.trainer import load_model, train

__all__ = ["TrainConfig", "load_model", "train"]
