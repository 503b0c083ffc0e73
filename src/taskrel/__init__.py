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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskrel.data import DATASETS, load
    from taskrel.data.taskset import Task, TaskSet
    from taskrel.errors import (
        ConfigError,
        DataError,
        NotApplicableError,
        RunDirError,
        TaskrelError,
    )
    from taskrel.execution import Executor, LocalExecutor, RayExecutor
    from taskrel.models import MODELS, MTLModel, build_model
    from taskrel.models.feedback import FeedbackMTL
    from taskrel.models.sharing import HardSharing, SingleTask, SoftSharing
    from taskrel.models.vmtl import VMTL
    from taskrel.pipelines.compare import compare
    from taskrel.pipelines.selection import select_data
    from taskrel.relatedness import METHODS, RelateContext, relate
    from taskrel.relatedness.adapter import ModuleAdapter, mtif
    from taskrel.relatedness.agreement import agreement
    from taskrel.relatedness.result import Relatedness
    from taskrel.training import TrainConfig, TrainResult, evaluate, fit, train

__version__ = "0.1.0"

# Every public name is imported on first use, so `import taskrel` (and the command line's
# `--help`) does not pay for torch, scipy and scikit-learn until they are needed.
_LAZY = {
    "DATASETS": "taskrel.data",
    "load": "taskrel.data",
    "Task": "taskrel.data.taskset",
    "TaskSet": "taskrel.data.taskset",
    "ConfigError": "taskrel.errors",
    "DataError": "taskrel.errors",
    "NotApplicableError": "taskrel.errors",
    "RunDirError": "taskrel.errors",
    "TaskrelError": "taskrel.errors",
    "Executor": "taskrel.execution",
    "LocalExecutor": "taskrel.execution",
    "RayExecutor": "taskrel.execution",
    "MODELS": "taskrel.models",
    "MTLModel": "taskrel.models",
    "build_model": "taskrel.models",
    "HardSharing": "taskrel.models.sharing",
    "SingleTask": "taskrel.models.sharing",
    "SoftSharing": "taskrel.models.sharing",
    "METHODS": "taskrel.relatedness",
    "RelateContext": "taskrel.relatedness",
    "agreement": "taskrel.relatedness.agreement",
    "relate": "taskrel.relatedness",
    "Relatedness": "taskrel.relatedness.result",
    "ModuleAdapter": "taskrel.relatedness.adapter",
    "mtif": "taskrel.relatedness.adapter",
    "TrainConfig": "taskrel.training",
    "TrainResult": "taskrel.training",
    "evaluate": "taskrel.training",
    "fit": "taskrel.training",
    "train": "taskrel.training",
    "VMTL": "taskrel.models.vmtl",
    "FeedbackMTL": "taskrel.models.feedback",
    "select_data": "taskrel.pipelines.selection",
    "compare": "taskrel.pipelines.compare",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    try:  # a submodule, e.g. `taskrel.plots` after a bare `import taskrel`
        return importlib.import_module(f"taskrel.{name}")
    except ModuleNotFoundError:
        raise AttributeError(f"module 'taskrel' has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


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
    "ModuleAdapter",
    "NotApplicableError",
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
    "mtif",
    "relate",
    "select_data",
    "train",
]
