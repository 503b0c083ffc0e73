"""Repeats of a relatedness computation over resampled splits and training seeds.

A single retraining on a single split answers "what happened this time". To estimate
"does task j help task i" and how sure we are, every ground truth (and, in
:func:`taskrel.pipelines.compare.compare`, every method) is computed on ``R`` *repeats*:

- repeat 0 keeps the task set's own split and the context's training seed ``s`` (so
  ``repeats=1`` is the plain, unresampled computation);
- repeat ``r >= 1`` pools each task's train, validation and test rows and re-splits them
  with the same per-task sizes (:func:`resplit`, stratified by class like
  :meth:`TaskSet.split`), with split seed :func:`split_seed` ``(seed, r)``, and trains
  with seed ``s + r``.

Seed-only repeats (``seed_repeats``) keep the original split and train with seeds
``s + 1, s + 2, ...``: they separate initialisation noise from split noise.

The split is redrawn from the rows the task set already holds, so the tasks themselves
never change (a built-in loader whose ``seed`` also generates the data, like
``synthetic``, would otherwise draw new tasks). Feature scaling that a loader fitted on
its original training rows is kept; a :class:`~taskrel.config.DataConfig` standardisation
is refitted on each repeat's training rows (see :func:`repeat_spec`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from taskrel.data.taskset import TaskSet, _stratified_order
from taskrel.errors import ConfigError, DataError
from taskrel.relatedness.result import Relatedness

Role = Literal["resample", "seed"]


@dataclass(frozen=True)
class Repeat:
    """One repeat: which split and which training seed.

    Attributes:
        index: position in the plan.
        role: ``resample`` (new split and seed) or ``seed`` (original split, new seed).
        split_seed: seed of :func:`resplit`; None keeps the task set's own split.
        train_seed: ``TrainConfig.seed`` of every training in this repeat.
    """

    index: int
    role: Role
    split_seed: int | None
    train_seed: int


def split_seed(seed: int, repeat: int) -> int:
    """The split seed of repeat ``repeat`` (>= 1) under resampling seed ``seed``."""
    return int(np.random.SeedSequence([seed, repeat]).generate_state(1)[0])


def plan_repeats(
    taskset: TaskSet,
    repeats: int,
    seed: int = 0,
    train_seed: int = 0,
    seed_repeats: int = 0,
) -> list[Repeat]:
    """The ``repeats`` resampled repeats followed by ``seed_repeats`` seed-only ones.

    Raises:
        ConfigError: ``repeats < 1``, ``seed_repeats < 0``, or more repeats than some
            task has distinct splits.
        DataError: with ``repeats >= 2``, a task without a training or a test row.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ConfigError(f"repeats must be an integer >= 1, got {repeats!r}")
    if isinstance(seed_repeats, bool) or not isinstance(seed_repeats, int) or seed_repeats < 0:
        raise ConfigError(f"seed_repeats must be an integer >= 0, got {seed_repeats!r}")
    if repeats >= 2:
        check_resplittable(taskset, repeats)
    plan = [Repeat(0, "resample", None, train_seed)]
    plan += [Repeat(r, "resample", split_seed(seed, r), train_seed + r) for r in range(1, repeats)]
    plan += [Repeat(repeats + k, "seed", None, train_seed + 1 + k) for k in range(seed_repeats)]
    return plan


def distinct_splits(train: int, val: int, test: int) -> int:
    """Number of ways to split ``train + val + test`` rows into the three splits."""
    n = train + val + test
    return math.comb(n, train) * math.comb(n - train, val)


def check_resplittable(taskset: TaskSet, repeats: int) -> None:
    """Check that every task can be re-split ``repeats`` times (see :func:`plan_repeats`)."""
    for name, s in taskset.sizes().items():
        if s["train"] < 1 or s["test"] < 1:
            raise DataError(
                f"task {name!r} is too small to re-split for repeats: it has "
                f"train/val/test = {s['train']}/{s['val']}/{s['test']} rows, expected at "
                "least 1 training and 1 test row"
            )
        k = distinct_splits(s["train"], s["val"], s["test"])
        if repeats > k:
            raise ConfigError(
                f"repeats={repeats}: task {name!r} has only {k} distinct splits of its "
                f"train/val/test = {s['train']}/{s['val']}/{s['test']} rows; expected "
                f"repeats <= {k}"
            )


def resplit(taskset: TaskSet, seed: int) -> TaskSet:
    """Re-split every task with its current sizes: the rows of its train, validation and
    test splits are pooled, shuffled (stratified by class for classification) with
    ``default_rng([seed, task position])`` and cut into splits of the old sizes. Rows in
    no split stay out; global ids ``(task, row)`` keep referring to the same rows."""
    tasks = []
    for i, task in enumerate(taskset.tasks):
        pool = np.concatenate([task.train_idx, task.val_idx, task.test_idx])
        order = _stratified_order(task, np.random.default_rng([seed, i]))
        order = order[np.isin(order, pool)]
        a, b = len(task.train_idx), len(task.train_idx) + len(task.val_idx)
        tasks.append(
            replace(
                task,
                train_idx=np.sort(order[:a]),
                val_idx=np.sort(order[a:b]),
                test_idx=np.sort(order[b:]),
            )
        )
    return taskset.with_tasks(tasks)


def repeat_spec(base: Mapping[str, Any], repeat: Repeat) -> dict[str, Any]:
    """The data spec (see :func:`taskrel.relatedness.ground_truth.load_data`) of
    ``repeat``: ``base`` itself for the original split, else ``{"resplit": spec, "seed",
    "standardize"}``. A snapshot base is re-split as stored; a built-in dataset's base is
    loaded unstandardised, re-split, then standardised as its config says."""
    if repeat.split_seed is None:
        return dict(base)
    if "snapshot" in base:
        return {"resplit": dict(base), "seed": repeat.split_seed, "standardize": "none"}
    scope = base.get("standardize", "task")
    return {
        "resplit": {**base, "standardize": "none"},
        "seed": repeat.split_seed,
        "standardize": scope,
    }


def repeat_taskset(taskset: TaskSet, repeat: Repeat) -> TaskSet:
    """``taskset`` re-split for ``repeat`` (itself for the original split); ``meta`` kept."""
    return taskset if repeat.split_seed is None else resplit(taskset, repeat.split_seed)


def average(results: Sequence[Relatedness]) -> Relatedness:
    """The mean of one method's results over repeats (in plan order), ``(T, T)``.

    ``meta`` holds ``repeats`` (R), ``per_repeat`` (``(R, T, T)`` matrices), ``stderr``
    (``(T, T)``, sample std ddof=1 over repeats / sqrt(R); zeros when R = 1), the summed
    durations (keys ending in ``_s``), the union of ``caveats``, and the first result's
    other entries. Instance scores are not averaged: each repeat trains on other rows."""
    if not results:
        raise ValueError("average() needs at least one result")
    stack = np.stack([r.matrix for r in results])
    first = results[0]
    meta: dict[str, Any] = {
        k: v for k, v in first.meta.items() if not k.endswith("_s") and k != "caveats"
    }
    for key in {k for r in results for k in r.meta if k.endswith("_s")}:
        meta[key] = _total([r.meta.get(key, 0.0) for r in results])
    caveats = list(dict.fromkeys(c for r in results for c in r.meta.get("caveats", [])))
    if caveats:
        meta["caveats"] = caveats
    meta.update(repeats=len(results), per_repeat=stack, stderr=standard_error(stack))
    return Relatedness(stack.mean(0), first.task_names, first.method, meta=meta)


def _total(values: Sequence[Any]) -> Any:
    """Sum of durations in seconds, key by key for dicts of durations."""
    if any(isinstance(v, Mapping) for v in values):
        keys = dict.fromkeys(k for v in values if isinstance(v, Mapping) for k in v)
        return {k: _total([v.get(k, 0.0) for v in values if isinstance(v, Mapping)]) for k in keys}
    return float(sum(float(v) for v in values))


def standard_error(stack: np.ndarray) -> np.ndarray:
    """Standard error of the mean over the first axis: std (ddof=1) / sqrt(R); zeros for
    R = 1."""
    r = stack.shape[0]
    if r < 2:
        return np.zeros(stack.shape[1:])
    return np.asarray(stack.std(axis=0, ddof=1) / math.sqrt(r))
