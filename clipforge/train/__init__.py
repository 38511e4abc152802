"""The training application: config, builders, run folder, step, loop."""

from clipforge.train.config import TrainConfig
from clipforge.train.trainer import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
