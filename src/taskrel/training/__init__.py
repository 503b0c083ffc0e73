"""Training: the trainer, metrics and checkpoints."""

from taskrel.training.metrics import PRIMARY_METRIC, evaluate, summarize
from taskrel.training.trainer import TrainConfig, TrainingInterrupted, TrainResult, fit, train

__all__ = [
    "PRIMARY_METRIC",
    "TrainConfig",
    "TrainResult",
    "TrainingInterrupted",
    "evaluate",
    "fit",
    "summarize",
    "train",
]
