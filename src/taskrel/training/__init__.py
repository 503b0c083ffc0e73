"""Training: the trainer, metrics, checkpoints, regularisation chosen on validation data
and the convergence diagnostic."""

from taskrel.training.convergence import Convergence, gradient_check
from taskrel.training.metrics import PRIMARY_METRIC, evaluate, summarize
from taskrel.training.regularization import RegularizationReport, resolve_regularization
from taskrel.training.trainer import TrainConfig, TrainingInterrupted, TrainResult, fit, train

__all__ = [
    "PRIMARY_METRIC",
    "Convergence",
    "RegularizationReport",
    "TrainConfig",
    "TrainResult",
    "TrainingInterrupted",
    "evaluate",
    "fit",
    "gradient_check",
    "resolve_regularization",
    "summarize",
    "train",
]
