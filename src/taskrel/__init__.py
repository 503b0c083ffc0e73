"""taskrel: measure and exploit task relatedness in multi-task learning.

The public surface::

    import taskrel
    tasks = taskrel.load("office-caltech", train=0.1, seed=0).standardize()
    result = taskrel.fit(tasks, "hard", {"hidden": [64]})        # train a model
    R = taskrel.relate(tasks, "mtif")                              # a Relatedness matrix
    R.plot("mtif.png"); R.save("mtif")

Everything not listed in ``__all__`` is internal and may change.
"""

from __future__ import annotations

import importlib
from typing import Any

from taskrel.data import DATASETS, load
from taskrel.data.taskset import Task, TaskSet
from taskrel.errors import ConfigError, DataError, RunDirError, TaskrelError
from taskrel.execution import Executor, LocalExecutor, RayExecutor
from taskrel.models import MODELS, MTLModel, build_model
from taskrel.models.sharing import HardSharing, SingleTask, SoftSharing
from taskrel.relatedness import METHODS, RelateContext, agreement, relate
from taskrel.relatedness.result import Relatedness
from taskrel.training import TrainConfig, TrainResult, evaluate, fit, train

__version__ = "0.1.0"

# Imported on first use: they pull in larger modules.
_LAZY = {
    "VMTL": "taskrel.models.vmtl",
    "FeedbackMTL": "taskrel.models.feedback",
    "select_data": "taskrel.selection",
    "compare": "taskrel.compare",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'taskrel' has no attribute {name!r}")


__all__ = [
    "DATASETS",
    "METHODS",
    "MODELS",
    "VMTL",
    "ConfigError",
    "DataError",
    "Executor",
    "FeedbackMTL",
    "HardSharing",
    "LocalExecutor",
    "MTLModel",
    "RayExecutor",
    "RelateContext",
    "Relatedness",
    "RunDirError",
    "SingleTask",
    "SoftSharing",
    "Task",
    "TaskSet",
    "TaskrelError",
    "TrainConfig",
    "TrainResult",
    "agreement",
    "build_model",
    "compare",
    "evaluate",
    "fit",
    "load",
    "relate",
    "select_data",
    "train",
]
