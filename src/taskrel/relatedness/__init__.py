"""Relatedness methods behind one entry point, :func:`relate`.

Every method is a function ``compute(taskset, ctx, **options) -> Relatedness`` registered
in :data:`METHODS` as ``"module:function"`` (imported only when used). ``ctx`` is a
:class:`RelateContext`: which model to train, how, and where to run retrainings.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taskrel.data.taskset import TaskSet
from taskrel.errors import ConfigError
from taskrel.execution import Executor, LocalExecutor
from taskrel.relatedness.agreement import agreement, correlate, row_agreement
from taskrel.relatedness.result import Relatedness
from taskrel.training.trainer import TrainConfig

METHODS: dict[str, str] = {
    "mtif": "taskrel.relatedness.mtif:mtif_relatedness",
    "gradient": "taskrel.relatedness.baselines:gradient_cosine",
    "affinity": "taskrel.relatedness.baselines:lookahead_affinity",
    "ground-truth": "taskrel.relatedness.ground_truth:loto_relatedness",
    "pairwise": "taskrel.relatedness.ground_truth:pairwise_relatedness",
    "vmtl": "taskrel.models.vmtl:vmtl_relatedness",
    "feedback": "taskrel.models.feedback:feedback_relatedness",
}


@dataclass
class RelateContext:
    """Shared settings of a relatedness computation.

    Attributes:
        model: registered model name the method trains (or retrains), e.g. ``hard``.
        model_config: that model's options.
        train_config: how to train it.
        executor: where independent retrainings run (local in-process by default).
        cache_dir: on-disk cache of retraining results (None: no cache).
        progress: show progress bars.
    """

    model: str = "hard"
    model_config: dict[str, Any] = field(default_factory=dict)
    train_config: TrainConfig = field(default_factory=TrainConfig)
    executor: Executor = field(default_factory=LocalExecutor)
    cache_dir: Path | None = None
    progress: bool = False


def method_function(name: str) -> Any:
    if name not in METHODS:
        raise ConfigError(f"unknown relatedness method {name!r}; available: {', '.join(METHODS)}")
    module, func = METHODS[name].split(":")
    return getattr(importlib.import_module(module), func)


def relate(
    taskset: TaskSet, method: str = "mtif", context: RelateContext | None = None, **options: Any
) -> Relatedness:
    """Compute a task relatedness matrix with ``method`` (see :data:`METHODS`).

    The returned :class:`Relatedness` records the wall time in ``meta['wall_time_s']``."""
    fn = method_function(method)
    start = time.perf_counter()
    result: Relatedness = fn(taskset, context or RelateContext(), **options)
    result.meta.setdefault("wall_time_s", time.perf_counter() - start)
    return result


__all__ = [
    "METHODS",
    "RelateContext",
    "Relatedness",
    "agreement",
    "correlate",
    "relate",
    "row_agreement",
]
