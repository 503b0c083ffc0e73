"""Which tasks to train together: partition tasks into groups from a relatedness matrix,
and check a proposal by training each group.

Objective: split the ``T`` tasks into exactly ``n_groups`` non-empty groups maximising
the total within-group relatedness ``sum_g sum_{i != j in g} R[i, j]`` (both directions
of every pair; the diagonal never counts). Negative entries (conflicting tasks) push
tasks apart, positive ones pull them together. Up to ``exhaustive_max_tasks`` tasks every
partition is scored (there are S(T, k) of them, Stirling numbers of the second kind:
42,525 for T = 10, k = 5); beyond that a local search (single-task moves and pairwise
swaps, from a greedy agglomerative start plus random restarts) finds a local optimum.

Raw matrices of different methods have different scales; the partition depends only on
sums of entries, so any method's matrix can be used as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from taskrel.data.taskset import TaskSet
from taskrel.errors import ConfigError
from taskrel.execution import Job
from taskrel.models import model_class
from taskrel.relatedness import RelateContext
from taskrel.relatedness.result import Relatedness
from taskrel.training.metrics import PRIMARY_METRIC, evaluate
from taskrel.training.trainer import TrainConfig, fit

Search = Literal["auto", "exhaustive", "local"]
SETTINGS = ("groups", "all", "stl")
"""How :func:`evaluate_grouping` trains: each proposed group, all tasks in one model,
every task alone."""


@dataclass
class Grouping:
    """A partition of the tasks.

    Attributes:
        groups: task positions per group; each group sorted, groups ordered by their
            first task.
        task_names: all ``T`` task names (positions index into it).
        score: total within-group relatedness (units of the matrix).
        search: ``exhaustive`` (proved optimal) or ``local`` (a local optimum).
    """

    groups: list[list[int]]
    task_names: list[str]
    score: float
    search: str

    def named(self) -> list[list[str]]:
        """The groups as task names."""
        return [[self.task_names[t] for t in g] for g in self.groups]

    def labels(self) -> np.ndarray:
        """Group number of every task, shape ``(T,)``."""
        out = np.empty(len(self.task_names), dtype=np.int64)
        for k, g in enumerate(self.groups):
            out[g] = k
        return out


def pair_weights(matrix: np.ndarray) -> np.ndarray:
    """``S = R + R^T`` with a zero diagonal: the gain of putting i and j in one group.

    Raises:
        ConfigError: the matrix is not square or has NaN/inf off the diagonal.
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ConfigError(f"grouping needs a square task x task matrix, got shape {m.shape}")
    off = ~np.eye(len(m), dtype=bool)
    if not np.all(np.isfinite(m[off])):
        raise ConfigError(
            "grouping: the relatedness matrix has NaN or infinite entries off the diagonal"
        )
    s = np.where(off, m, 0.0)
    return s + s.T


def group_score(matrix: np.ndarray, groups: Sequence[Sequence[int]]) -> float:
    """Total within-group relatedness ``sum_g sum_{i != j in g} R[i, j]``."""
    s = pair_weights(matrix)
    return float(sum(s[np.ix_(g, g)].sum() / 2 for g in groups))


def _canonical_groups(labels: np.ndarray, k: int) -> list[list[int]]:
    groups = [sorted(np.flatnonzero(labels == g).tolist()) for g in range(k)]
    return sorted(groups)


def _exhaustive(s: np.ndarray, k: int) -> np.ndarray:
    """Best labels ``(T,)`` over all partitions into exactly ``k`` non-empty groups
    (depth-first over restricted growth strings; ``acc[g, i]`` = gain of adding task i to
    group g)."""
    t = len(s)
    labels = np.zeros(t, dtype=np.int64)
    acc = np.zeros((k, t))
    best_score, best_labels = -np.inf, labels.copy()

    def place(i: int, used: int, score: float) -> None:
        nonlocal best_score, best_labels
        if i == t:
            if used == k and score > best_score:
                best_score, best_labels = score, labels.copy()
            return
        if used + (t - i) < k:  # not enough tasks left to open the missing groups
            return
        for g in range(min(used + 1, k)):
            gain = acc[g, i]
            labels[i] = g
            acc[g] += s[i]
            place(i + 1, max(used, g + 1), score + gain)
            acc[g] -= s[i]

    place(0, 0, 0.0)
    return best_labels


def _greedy_merge(s: np.ndarray, k: int) -> np.ndarray:
    """Agglomerative start: from singletons, merge the two groups with the largest
    between-group weight until ``k`` remain. Returns labels ``(T,)``."""
    groups = [[i] for i in range(len(s))]
    while len(groups) > k:
        _, a, b = max(
            (s[np.ix_(ga, gb)].sum(), a, b)
            for a, ga in enumerate(groups)
            for b, gb in enumerate(groups)
            if a < b
        )
        groups[a] += groups.pop(b)
    labels = np.empty(len(s), dtype=np.int64)
    for g, members in enumerate(groups):
        labels[members] = g
    return labels


def _improve(s: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Best-improvement local search with single-task moves and pairwise swaps; every
    group stays non-empty. Returns the locally optimal labels."""
    labels = labels.copy()
    t = len(s)
    while True:
        acc = np.stack([s[:, labels == g].sum(axis=1) for g in range(k)])  # (k, T)
        own = acc[labels, np.arange(t)]
        sizes = np.bincount(labels, minlength=k)
        move = acc - own[None, :]  # gain of moving task i to group g
        move[:, sizes[labels] == 1] = -np.inf  # do not empty a group
        move[labels, np.arange(t)] = -np.inf
        g, i = np.unravel_index(np.argmax(move), move.shape)
        best_gain, action = move[g, i], ("move", int(i), int(g))
        # swap i (in a) with j (in b): acc[b,i] - acc[a,i] + acc[a,j] - acc[b,j] - 2 s[i,j]
        swap = (
            acc[labels[None, :], np.arange(t)[:, None]]
            - own[:, None]
            + acc[labels[:, None], np.arange(t)[None, :]]
            - own[None, :]
            - 2 * s
        )
        swap[labels[:, None] == labels[None, :]] = -np.inf
        i2, j2 = np.unravel_index(np.argmax(swap), swap.shape)
        if swap[i2, j2] > best_gain:
            best_gain, action = swap[i2, j2], ("swap", int(i2), int(j2))
        if best_gain <= 1e-12:
            return labels
        if action[0] == "move":
            labels[action[1]] = action[2]
        else:
            a, b = action[1], action[2]
            labels[a], labels[b] = labels[b], labels[a]


def _local_search(s: np.ndarray, k: int, restarts: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    starts = [_greedy_merge(s, k)]
    for _ in range(restarts):
        labels = rng.permutation(np.arange(len(s)) % k)  # every group non-empty
        starts.append(labels)
    finals = [_improve(s, start, k) for start in starts]
    scores = [sum(s[np.ix_(lab == g, lab == g)].sum() / 2 for g in range(k)) for lab in finals]
    return finals[int(np.argmax(scores))]


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
    s = pair_weights(matrix)
    t = len(s)
    if not 1 <= n_groups <= t:
        raise ConfigError(f"n_groups must lie in [1, {t}] for {t} tasks, got {n_groups}")
    if search not in ("auto", "exhaustive", "local"):
        raise ConfigError(f"search must be 'auto', 'exhaustive' or 'local', got {search!r}")
    exhaustive = search == "exhaustive" or (search == "auto" and t <= exhaustive_max_tasks)
    labels = _exhaustive(s, n_groups) if exhaustive else _local_search(s, n_groups, restarts, seed)
    groups = _canonical_groups(labels, n_groups)
    return Grouping(
        groups, list(names), group_score(matrix, groups), "exhaustive" if exhaustive else "local"
    )


# -- evaluation by training ----------------------------------------------------------------
def train_and_evaluate(
    taskset: TaskSet, model: str, model_config: dict[str, Any], train_config: dict[str, Any]
) -> dict[str, dict[str, float]]:
    """Train ``model`` on ``taskset`` and return the test metrics per task (an executor
    job)."""
    trained = fit(taskset, model, model_config, TrainConfig(**train_config)).model
    return evaluate(trained, taskset, "test")


def stl_config(model_config: dict[str, Any]) -> dict[str, Any]:
    """The options of ``model_config`` that single-task learning also takes (e.g. the
    encoder widths), so STL is the same network without sharing."""
    fields = model_class("stl").Config.model_fields
    return {k: v for k, v in model_config.items() if k in fields}


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
