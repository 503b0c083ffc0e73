"""Which tasks to train together from a relatedness matrix, and a check of the proposal
by training each group.

Objective: split the ``T`` tasks into ``n_groups`` non-empty groups maximising the total
within-group relatedness ``sum_g sum_{i != j in g} R[i, j]`` (both directions of every
pair; the diagonal never counts). Negative entries (conflicting tasks) push tasks apart,
positive ones pull them together. This is one objective of the partition search in
:mod:`taskrel.decisions.search` (:func:`~taskrel.decisions.search.pair_weight_cost`); the
other one, the predicted loss of each task in its group, is
:func:`~taskrel.decisions.search.choose_groups`. Up to ``exhaustive_max_tasks`` tasks the
optimum is exact; beyond that a local search finds a local optimum.

Raw matrices of different methods have different scales; the partition depends only on
sums of entries, so any method's matrix can be used as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from taskrel.data.taskset import TaskSet
from taskrel.decisions.search import (
    Grouping,
    Search,
    pair_weight_cost,
    pair_weights,
    search_partition,
)
from taskrel.errors import ConfigError
from taskrel.execution import Job
from taskrel.pipelines.selection import stl_config
from taskrel.relatedness import RelateContext
from taskrel.relatedness.result import Relatedness
from taskrel.training.metrics import PRIMARY_METRIC, evaluate
from taskrel.training.trainer import TrainConfig, fit

SETTINGS = ("groups", "all", "stl")
"""How :func:`evaluate_grouping` trains: each proposed group, all tasks in one model,
every task alone."""

__all__ = [
    "SETTINGS",
    "Grouping",
    "GroupingEvaluation",
    "evaluate_grouping",
    "group_score",
    "pair_weights",
    "propose_groups",
    "train_and_evaluate",
]


def group_score(matrix: np.ndarray, groups: Sequence[Sequence[int]]) -> float:
    """Total within-group relatedness ``sum_g sum_{i != j in g} R[i, j]``."""
    s = pair_weights(matrix)
    return float(sum(s[np.ix_(g, g)].sum() / 2 for g in groups))


def propose_groups(
    relatedness: Relatedness | np.ndarray,
    n_groups: int,
    task_names: Sequence[str] | None = None,
    search: Search = "auto",
    exhaustive_max_tasks: int = 10,
    restarts: int = 20,
    seed: int = 0,
) -> Grouping:
    """Partition the tasks into ``n_groups`` groups that maximise within-group relatedness.

    Args:
        relatedness: a :class:`Relatedness` or a ``(T, T)`` matrix (rows = targets; any
            method's scale); the diagonal is ignored.
        n_groups: the number of groups ``k``, ``1 <= k <= T``.
        task_names: names for a bare matrix (default ``t0, t1, ...``).
        search: ``exhaustive``, ``local`` or ``auto`` (exhaustive up to
            ``exhaustive_max_tasks`` tasks).
        restarts: random restarts of the local search (besides the greedy start).
        seed: seeds the restarts.

    Raises:
        ConfigError: ``n_groups`` out of range, an unknown search, or a bad matrix.
    """
    matrix = relatedness.matrix if isinstance(relatedness, Relatedness) else relatedness
    names = (
        relatedness.task_names
        if isinstance(relatedness, Relatedness)
        else list(task_names)
        if task_names is not None
        else [f"t{i}" for i in range(len(matrix))]
    )
    found = search_partition(
        pair_weight_cost(matrix),
        len(matrix),
        n_groups,
        search=search,
        exhaustive_max_tasks=exhaustive_max_tasks,
        restarts=restarts,
        seed=seed,
    )
    return Grouping(found.groups, list(names), -found.objective, found.search)


# -- evaluation by training ----------------------------------------------------------------
def train_and_evaluate(
    taskset: TaskSet, model: str, model_config: dict[str, Any], train_config: dict[str, Any]
) -> dict[str, dict[str, float]]:
    """Train ``model`` on ``taskset`` and return the test metrics per task (an executor
    job)."""
    trained = fit(taskset, model, model_config, TrainConfig(**train_config)).model
    return evaluate(trained, taskset, "test")


@dataclass
class GroupingEvaluation:
    """Per-task test metrics of three ways to train the same tasks.

    Attributes:
        grouping: the evaluated proposal.
        metrics: setting (``groups``, ``all`` = every task in one model, ``stl`` = each
            task alone) -> task name -> test metrics.
        metric: the primary metric (higher is better), e.g. ``accuracy``.
    """

    grouping: Grouping
    metrics: dict[str, dict[str, dict[str, float]]]
    metric: str

    def table(self, key: str | None = None) -> dict[str, dict[str, float]]:
        """``{task: {setting: value}}`` of metric ``key`` (default: the primary one) plus
        an ``average`` row."""
        key = key or self.metric
        rows = {t: {s: self.metrics[s][t][key] for s in SETTINGS} for t in self.grouping.task_names}
        rows["average"] = {
            s: float(np.mean([rows[t][s] for t in self.grouping.task_names])) for s in SETTINGS
        }
        return rows


def evaluate_grouping(
    taskset: TaskSet,
    grouping: Grouping,
    ctx: RelateContext,
) -> GroupingEvaluation:
    """Train ``ctx.model`` on each group, on all tasks together, and single-task models,
    all with ``ctx.train_config`` (the same seed), as jobs on ``ctx.executor`` (cached
    under ``ctx.cache_dir/grouping``); compare the per-task test metrics."""
    if grouping.task_names != taskset.names:
        raise ConfigError(
            f"the grouping was made for other tasks: {grouping.task_names} vs {taskset.names}"
        )
    train_cfg = ctx.train_config.model_dump()
    model_cfg = dict(ctx.model_config)
    jobs = [
        Job(
            train_and_evaluate,
            {
                "taskset": taskset.select_tasks(g),
                "model": ctx.model,
                "model_config": model_cfg,
                "train_config": train_cfg,
            },
        )
        for g in grouping.groups
    ]
    jobs.append(
        Job(
            train_and_evaluate,
            {
                "taskset": taskset,
                "model": ctx.model,
                "model_config": model_cfg,
                "train_config": train_cfg,
            },
        )
    )
    jobs.append(
        Job(
            train_and_evaluate,
            {
                "taskset": taskset,
                "model": "stl",
                "model_config": stl_config(model_cfg),
                "train_config": train_cfg,
            },
        )
    )
    cache = Path(ctx.cache_dir) / "grouping" if ctx.cache_dir is not None else None
    results = ctx.executor.map(jobs, cache=cache)
    per_group = {task: m for r in results[:-2] for task, m in r.items()}
    metrics = {"groups": per_group, "all": results[-2], "stl": results[-1]}
    return GroupingEvaluation(grouping, metrics, PRIMARY_METRIC[taskset.tasks[0].kind])
