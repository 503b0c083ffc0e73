"""Group-outcome predictors: each task's test loss when it is trained together with
exactly a given group of tasks.

A predictor is fitted once on a task set (``fit``, which may train a model on all tasks,
record gradients, ...) and then answers :meth:`GroupOutcomePredictor.subset_losses` for
any number of task subsets. Layout of the answer, shared with
:func:`taskrel.relatedness.ground_truth.task_subset_losses` (the exact answer, by
retraining): an ``(M, T)`` array whose entry ``[m, i]`` is task i's predicted mean test
loss (the unit of the task's loss: nats for classification, squared error for
regression) when trained with the tasks of ``subsets[m]``, NaN where i is not in that
subset. Predictors that only rank groups (matrix heuristics, TAG) return a score that is
monotone in the loss (lower = better predicted outcome) and say so in
:attr:`GroupOutcomePredictor.units`.

Cost accounting (for comparisons between predictors): ``fit_time_s`` (wall seconds of
:meth:`~GroupOutcomePredictor.fit`), ``predict_time_s`` (wall seconds spent answering
subsets), ``trainings`` (models trained), and predictor-specific counts in ``meta``.
Answers are memoised per subset, so a search that asks for a subset twice pays once.

Registry: :data:`PREDICTORS` maps a name to ``"module:Class"``, imported on first use;
:func:`make_predictor` builds one with keyword options (checked against the class's
constructor).
"""

from __future__ import annotations

import importlib
import inspect
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from taskrel import notices
from taskrel.data.taskset import TaskSet
from taskrel.errors import ConfigError
from taskrel.relatedness import METHODS, RelateContext

Subset = tuple[int, ...]

PREDICTORS: dict[str, str] = {
    "retrain": "taskrel.decisions.predictors:RetrainPredictor",
    "mtif-newton": "taskrel.decisions.mtif_subset:MTIFNewton",
    "mtif-first-order": "taskrel.decisions.mtif_subset:MTIFFirstOrder",
    "tag": "taskrel.decisions.tag:TAG",
    "grad-tag": "taskrel.decisions.gradtag:GradTAG",
    "gradient-cosine": "taskrel.decisions.matrix:GradientCosineSum",
    "affinity-sum": "taskrel.decisions.matrix:AffinitySum",
}
if "param-similarity" in METHODS:
    PREDICTORS["param-similarity"] = "taskrel.decisions.matrix:ParamSimilaritySum"


def partition_errors(groups: Sequence[Sequence[int]], n_tasks: int) -> str | None:
    """Why ``groups`` is not a partition of ``range(n_tasks)`` (None if it is)."""
    seen: set[int] = set()
    for g in groups:
        if len(g) == 0:
            return "a group is empty"
        for t in g:
            if not 0 <= int(t) < n_tasks:
                return f"task {t} is not a task position in [0, {n_tasks})"
            if int(t) in seen:
                return f"task {t} is in more than one group"
            seen.add(int(t))
    missing = sorted(set(range(n_tasks)) - seen)
    return f"tasks {missing} are in no group" if missing else None


def check_subsets(subsets: Sequence[Sequence[int]], n_tasks: int) -> list[Subset]:
    """``subsets`` as sorted tuples of task positions.

    Raises:
        ConfigError: a subset is empty, names a position outside ``[0, n_tasks)`` or
            names a task twice (one line naming the subset)."""
    out = []
    for s in subsets:
        items = list(s)
        if not items:
            raise ConfigError("task subset [] is empty; every subset needs at least one task")
        try:
            clean = tuple(sorted(int(t) for t in items))
        except (TypeError, ValueError):
            raise ConfigError(f"task subset {items} must hold task positions (integers)") from None
        if clean[0] < 0 or clean[-1] >= n_tasks:
            raise ConfigError(f"task subset {items} names a task outside [0, {n_tasks})")
        if len(set(clean)) != len(clean):
            raise ConfigError(f"task subset {items} names a task more than once")
        out.append(clean)
    return out


class GroupOutcomePredictor(ABC):
    """Predicts per-task test losses of training on task subsets (see module docstring).

    Subclasses implement :meth:`_fit` and :meth:`_subset_losses` (validated, distinct,
    not yet memoised subsets).

    Attributes:
        name: registry name.
        units: what :meth:`subset_losses` returns (a loss, or a score monotone in it).
        fit_time_s: wall seconds spent in :meth:`fit`.
        predict_time_s: wall seconds spent computing answers to subsets.
        trainings: number of models trained (fit and predictions together).
        meta: diagnostics and cost counts of the predictor; ``meta['caveats']`` holds the
            notices given while fitting.
    """

    name: ClassVar[str] = "predictor"
    units: ClassVar[str] = "predicted mean test loss of the task"

    def __init__(self) -> None:
        self.fit_time_s = 0.0
        self.predict_time_s = 0.0
        self.trainings = 0
        self.n_tasks = 0
        self.meta: dict[str, Any] = {}
        self._memo: dict[Subset, np.ndarray] = {}

    def fit(self, taskset: TaskSet, ctx: RelateContext) -> GroupOutcomePredictor:
        """Prepare predictions for ``taskset`` (times itself into ``fit_time_s``)."""
        start = time.perf_counter()
        self.n_tasks = len(taskset)
        self._memo = {}
        with notices.collect() as caveats:
            self._fit(taskset, ctx)
        self.meta["caveats"] = list(caveats)
        self.fit_time_s = time.perf_counter() - start
        return self

    @abstractmethod
    def _fit(self, taskset: TaskSet, ctx: RelateContext) -> None:
        """Subclass work of :meth:`fit`."""

    @abstractmethod
    def _subset_losses(self, subsets: list[Subset]) -> np.ndarray:
        """``(M, T)`` answers for distinct, validated ``subsets``; NaN outside each."""

    def subset_losses(self, subsets: Sequence[Sequence[int]]) -> np.ndarray:
        """``(M, T)`` predictions for ``subsets`` (task positions); NaN outside a subset.

        Raises:
            ConfigError: the predictor is not fitted, or a subset is empty, names an
                unknown task position or names a task twice."""
        if self.n_tasks == 0:
            raise ConfigError(f"predictor {self.name!r} is not fitted; call fit(taskset, ctx)")
        clean = check_subsets(subsets, self.n_tasks)
        todo = list(dict.fromkeys(s for s in clean if s not in self._memo))
        if todo:
            start = time.perf_counter()
            rows = np.asarray(self._subset_losses(todo), dtype=np.float64)
            self.predict_time_s += time.perf_counter() - start
            for s, row in zip(todo, rows, strict=True):
                self._memo[s] = row
        out = np.full((len(clean), self.n_tasks), np.nan)
        for m, s in enumerate(clean):
            out[m] = self._memo[s]
        return out

    def predict_group_loss(self, groups: Sequence[Sequence[int]]) -> np.ndarray:
        """Per-task prediction ``(T,)`` when the tasks are trained in ``groups`` (a
        partition of all tasks: each task is trained with exactly its own group).

        Raises:
            ConfigError: ``groups`` is not a partition of the task positions."""
        if self.n_tasks == 0:
            raise ConfigError(f"predictor {self.name!r} is not fitted; call fit(taskset, ctx)")
        problem = partition_errors(groups, self.n_tasks)
        if problem is not None:
            raise ConfigError(f"groups {list(map(list, groups))}: {problem}")
        table = self.subset_losses(groups)
        out = np.full(self.n_tasks, np.nan)
        for m, g in enumerate(groups):
            out[list(g)] = table[m, list(g)]
        return out


class RetrainPredictor(GroupOutcomePredictor):
    """The exact answer: train one model per subset (the reference every predictor is
    scored against; its cost is one training per distinct subset)."""

    name = "retrain"
    units = "actual mean test loss of the task after retraining on the subset"

    def _fit(self, taskset: TaskSet, ctx: RelateContext) -> None:
        self.taskset, self.ctx = taskset, ctx

    def _subset_losses(self, subsets: list[Subset]) -> np.ndarray:
        from taskrel.relatedness.ground_truth import task_subset_losses

        self.trainings += len(subsets)
        return task_subset_losses(self.taskset, self.ctx, subsets)


def make_predictor(name: str, **options: Any) -> GroupOutcomePredictor:
    """A new, unfitted predictor registered as ``name``, built with ``options``.

    Raises:
        ConfigError: unknown name or option (one line listing the accepted ones)."""
    if name not in PREDICTORS:
        raise ConfigError(
            f"unknown group-outcome predictor {name!r}; available: {', '.join(PREDICTORS)}"
        )
    module, cls_name = PREDICTORS[name].split(":")
    cls = getattr(importlib.import_module(module), cls_name)
    accepted = [p for p in inspect.signature(cls).parameters if p != "self"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"predictor {name!r}: unknown option(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(accepted) or 'none'}"
        )
    made: GroupOutcomePredictor = cls(**options)
    return made
