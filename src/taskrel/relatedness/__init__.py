"""Relatedness methods behind one entry point, :func:`relate`.

Every method is a function ``compute(taskset, ctx, **options) -> Relatedness`` registered
in :data:`METHODS` as ``"module:function"`` (imported only when used). A method may carry a
``check(taskset, ctx, **options)`` attribute: :func:`relate` calls it before anything is
trained (e.g. MTIF's memory budget). ``ctx`` is a
:class:`RelateContext`: which model to train, how, and where to run retrainings.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from taskrel.data.taskset import TaskSet
from taskrel.errors import ConfigError
from taskrel.execution import Executor, LocalExecutor
from taskrel.relatedness.agreement import agreement, correlate, row_agreement
from taskrel.relatedness.result import Relatedness
from taskrel.training.trainer import TrainConfig, as_train_config
from taskrel.validation import check_options

METHODS: dict[str, str] = {
    "mtif": "taskrel.relatedness.ensemble:mtif_ensemble",
    "gradient": "taskrel.relatedness.baselines:gradient_cosine",
    "affinity": "taskrel.relatedness.baselines:lookahead_affinity",
    "ground-truth": "taskrel.relatedness.ground_truth:loto_relatedness",
    "pairwise": "taskrel.relatedness.ground_truth:pairwise_relatedness",
    "subsets": "taskrel.relatedness.ground_truth:subsets_relatedness",
    "param-similarity": "taskrel.relatedness.baselines:parameter_similarity",
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
        regularization: what :meth:`pinned` chose (values and validation curves), None
            until then or when nothing was ``"auto"``.
    """

    model: str = "hard"
    model_config: dict[str, Any] = field(default_factory=dict)
    train_config: TrainConfig = field(default_factory=TrainConfig)
    executor: Executor = field(default_factory=LocalExecutor)
    cache_dir: Path | None = None
    progress: bool = False
    regularization: dict[str, Any] | None = None

    def pinned(self, taskset: TaskSet) -> RelateContext:
        """This context with every ``"auto"`` regularisation field of ``model_config``
        chosen once on ``taskset``'s validation data
        (:func:`~taskrel.training.regularization.resolve_regularization`); retrainings and
        every method then use these numbers. Returns ``self`` when nothing is ``"auto"``."""
        from taskrel.training.regularization import resolve_regularization

        config, report = resolve_regularization(
            taskset, self.model, self.model_config, self.train_config
        )
        if report is None:
            return self
        return replace(self, model_config=config, regularization=report.to_dict())


def method_function(name: str) -> Any:
    if not isinstance(name, str) or name not in METHODS:
        raise ConfigError(f"unknown relatedness method {name!r}; available: {', '.join(METHODS)}")
    module, func = METHODS[name].split(":")
    return getattr(importlib.import_module(module), func)


def relate(
    taskset: TaskSet | str | Path,
    method: str = "mtif",
    context: RelateContext | None = None,
    **options: Any,
) -> Relatedness:
    """Compute a task relatedness matrix with ``method`` (see :data:`METHODS`).

    ``taskset`` may also be a dataset name or path (loaded with default options).
    ``options`` go to the method; their names and value types are checked against its
    signature before anything is trained. The returned :class:`Relatedness` records the
    wall time in ``meta['wall_time_s']``.

    Raises:
        ConfigError: an unknown method, an option it does not take (the accepted ones are
            listed), a value of the wrong type, or a ``context`` that is not a
            :class:`RelateContext`.
        NotApplicableError: the method does not apply to these data or this model.
    """
    from taskrel.data import as_taskset

    taskset = as_taskset(taskset)
    fn = method_function(method)
    if context is not None and not isinstance(context, RelateContext):
        raise ConfigError(f"relate: context must be a RelateContext, got {type(context).__name__}")
    check_options(f"relate(method={method!r})", fn, options, skip=("taskset", "ctx"))
    context = context or RelateContext()
    if not isinstance(context.train_config, TrainConfig):
        context = replace(context, train_config=as_train_config(context.train_config))
    precheck = getattr(fn, "check", None)  # a method's own checks, before any training
    if precheck is not None:
        precheck(taskset, context, **options)
    start = time.perf_counter()
    if options.get("model") is not None:
        ctx = context  # a trained model was given: nothing to choose, nothing to train
    else:
        try:
            ctx = context.pinned(taskset)
        except ConfigError:  # ctx.model does not fit these data: a method that trains it
            ctx = context  # raises the same error; one that does not (e.g. vmtl) needs none
    result: Relatedness = fn(taskset, ctx, **options)
    result.meta.setdefault("wall_time_s", time.perf_counter() - start)
    if ctx.regularization is not None:
        result.meta.setdefault("regularization", ctx.regularization)
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
