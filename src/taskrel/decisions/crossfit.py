"""Choosing groups on cross-validated outcomes, and the one-standard-error rule.

A partition chosen as the minimum of one validation split's losses over hundreds of
partitions over-fits that split: with small validation splits the ranking of task subsets
changes from split to split, so the "best" partition is often no better than all-in-one on
new data (docs/bench/grouping.md measures it). Two remedies, both on training and
validation rows only (the test split is never read):

- **Cross-fitting** (:func:`fold_tasksets`, :class:`CrossFitted`): each task's training and
  validation rows are pooled and cut into ``K`` folds (stratified by class for
  classification); in fold ``k`` the predictor is fitted on the other folds and predicts
  the loss on fold ``k``. A subset's predicted loss for a task is the mean over folds,
  weighted by the task's rows in each fold, so every pooled row validates once.
- **The one-standard-error rule** (:func:`one_se_choice`; Breiman et al. 1984, as in
  glmnet's ``lambda.1se``): from the lowest-loss partition ``P*``, groups are merged one
  pair at a time (always the merge that raises the mean loss least) down to all-in-one;
  the rule takes the partition with the *fewest* groups on that path whose mean loss
  exceeds ``P*``'s by at most one standard error of their per-fold difference
  (sample std over folds, ddof=1, / sqrt(K)). A split is kept only when the folds agree
  that it helps.

Costs here are *fold costs* (:data:`FoldCost`): a list of groups -> ``(K, M)`` array,
``[k, m]`` the summed loss of the tasks of group ``m`` on fold ``k``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from taskrel.data.taskset import TaskSet, _stratified_order
from taskrel.decisions.predictors import GroupOutcomePredictor, Subset, make_predictor
from taskrel.decisions.search import Group, GroupCost, MemoCost, canonical, search_partition
from taskrel.errors import ConfigError
from taskrel.relatedness import RelateContext
from taskrel.training.regularization import validation_as_test

Rule = Literal["min", "one-se"]
RULES: tuple[str, ...] = ("min", "one-se")
FoldCost = Callable[[Sequence[Group]], np.ndarray]
"""Per-fold costs ``(K, M)`` of ``M`` groups (sorted tuples of task positions)."""


def fold_tasksets(taskset: TaskSet, folds: int, seed: int = 0) -> list[TaskSet]:
    """``folds`` cross-fitting task sets: in fold ``k`` each task validates on the ``k``-th
    part of its pooled training + validation rows and trains on the other parts (test rows
    untouched). The parts are contiguous cuts of a class-interleaved shuffle
    (``default_rng([seed, task position])``), so each keeps the class proportions.

    Raises:
        ConfigError: ``folds < 2``, or a task with fewer pooled rows than ``folds``.
    """
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ConfigError(f"folds must be an integer >= 2, got {folds!r}")
    parts: list[list[np.ndarray]] = []
    for i, task in enumerate(taskset.tasks):
        pool = np.concatenate([task.train_idx, task.val_idx])
        if len(pool) < folds:
            raise ConfigError(
                f"folds={folds}: task {task.name!r} has only {len(pool)} training + validation "
                f"rows; expected at least {folds} (one per fold)"
            )
        order = _stratified_order(task, np.random.default_rng([seed, i]), rows=pool)
        parts.append(np.array_split(order, folds))
    out = []
    for k in range(folds):
        tasks = []
        for task, cut in zip(taskset.tasks, parts, strict=True):
            rest = np.concatenate([p for j, p in enumerate(cut) if j != k])
            tasks.append(replace(task, train_idx=np.sort(rest), val_idx=np.sort(cut[k])))
        out.append(taskset.with_tasks(tasks))
    return out


def fold_weights(tasksets: Sequence[TaskSet]) -> np.ndarray:
    """``(K, T)``: each task's validation rows in each fold over its total, so a weighted
    sum over folds is the mean loss over every pooled row."""
    sizes = np.array([[len(t.val_idx) for t in ts.tasks] for ts in tasksets], dtype=float)
    return sizes / sizes.sum(axis=0, keepdims=True)


def weighted_fold_cost(
    fold_losses: Callable[[list[list[int]]], np.ndarray], weights: np.ndarray
) -> FoldCost:
    """Per-fold group costs ``(K, M)`` from per-fold losses ``(K, M, T)`` of subsets: the
    summed loss of each group's tasks, weighted by ``weights`` ``(K, T)`` and scaled by K
    (so the mean over folds of a column is the group's cross-validated cost)."""

    def cost(groups: Sequence[Group]) -> np.ndarray:
        table = fold_losses([list(g) for g in groups]) * weights[:, None, :]
        return len(weights) * np.stack(
            [np.nansum(table[:, m, list(g)], axis=1) for m, g in enumerate(groups)], axis=1
        )

    return cost


class CrossFitted(GroupOutcomePredictor):
    """A registered predictor fitted once per fold (see module docstring).

    Unlike the other predictors, :meth:`fit` takes the task set *with* its validation split
    (the folds are cut from training + validation rows), not its validation view.

    Args:
        predictor: registered predictor name.
        folds: ``K >= 2``.
        seed: seeds the fold assignment.
        **options: options of the predictor.
    """

    name = "cross-fitted"

    def __init__(self, predictor: str, folds: int = 3, seed: int = 0, **options: Any) -> None:
        super().__init__()
        self.predictor, self.folds, self.seed, self.options = predictor, folds, seed, options
        self.members: list[GroupOutcomePredictor] = []
        self.weights = np.zeros((0, 0))
        make_predictor(predictor, **options)  # unknown name or option: fail before fitting

    def _fit(self, taskset: TaskSet, ctx: RelateContext) -> None:
        tasksets = fold_tasksets(taskset, self.folds, self.seed)
        self.members = [
            make_predictor(self.predictor, **self.options).fit(validation_as_test(ts), ctx)
            for ts in tasksets
        ]
        self.weights = fold_weights(tasksets)
        self.units = self.members[0].units  # type: ignore[misc]
        self.trainings = sum(m.trainings for m in self.members)
        self.meta.update(
            predictor=self.predictor,
            folds=self.folds,
            members=[{"fit_time_s": m.fit_time_s, "meta": m.meta} for m in self.members],
        )

    def fold_losses(self, subsets: Sequence[Sequence[int]]) -> np.ndarray:
        """``(K, M, T)`` each fold's prediction (NaN outside each subset)."""
        return np.stack([m.subset_losses(subsets) for m in self.members])

    def _subset_losses(self, subsets: list[Subset]) -> np.ndarray:
        return np.einsum("kmt,kt->mt", self.fold_losses(subsets), self.weights)

    def fold_cost(self) -> FoldCost:
        """Per-fold group costs ``(K, M)`` of the predictions (:func:`weighted_fold_cost`)."""
        return weighted_fold_cost(self.fold_losses, self.weights)


def mean_cost(fold_cost: FoldCost) -> GroupCost:
    """The group cost ``(M,)``: the mean over folds of ``fold_cost``."""

    def cost(groups: Sequence[Group]) -> np.ndarray:
        return np.asarray(fold_cost(groups), dtype=float).mean(axis=0)

    return cost


@dataclass
class RuleChoice:
    """What :func:`one_se_choice` chose and why.

    Attributes:
        groups: the chosen partition.
        best: the lowest-mean-loss partition ``P*`` found.
        path: the merge path from ``P*`` to all-in-one: per partition its groups, mean
            loss over folds (summed over tasks), excess over ``P*`` and the standard error
            of that excess (sample std over folds / sqrt(K)).
        search: ``exhaustive`` or ``local`` (of ``P*``).
    """

    groups: list[list[int]]
    best: list[list[int]]
    path: list[dict[str, Any]]
    search: str


def _partition_folds(memo: MemoCost, fold_of: dict[Group, np.ndarray], groups: Any) -> np.ndarray:
    keys = [tuple(g) for g in canonical(groups)]
    memo(keys)  # fills fold_of for new groups
    return np.sum([fold_of[k] for k in keys], axis=0)


def one_se_choice(
    fold_cost: FoldCost, n_tasks: int, seed: int = 0, **search_options: Any
) -> RuleChoice:
    """The one-standard-error choice (module docstring) over ``n_tasks`` tasks.

    Args:
        fold_cost: per-fold group costs (``K >= 2`` folds).
        seed: of :func:`~taskrel.decisions.search.search_partition` for ``P*`` (free
            number of groups, no penalty).
        **search_options: further options of that search.

    Raises:
        ConfigError: fewer than 2 folds.
    """
    fold_of: dict[Group, np.ndarray] = {}

    def cost(groups: Sequence[Group]) -> np.ndarray:
        per_fold = np.asarray(fold_cost(groups), dtype=float)
        if per_fold.ndim != 2 or per_fold.shape[0] < 2:
            raise ConfigError(
                f"the one-standard-error rule needs per-fold costs of >= 2 folds, got shape "
                f"{per_fold.shape}"
            )
        fold_of.update(zip(groups, per_fold.T, strict=True))
        return per_fold.mean(axis=0)

    memo = MemoCost(cost)
    found = search_partition(memo, n_tasks, None, 0.0, seed=seed, **search_options)
    best_folds = _partition_folds(memo, fold_of, found.groups)
    k = best_folds.size
    path: list[dict[str, Any]] = []
    groups = [list(g) for g in found.groups]
    while True:
        per_fold = _partition_folds(memo, fold_of, groups)
        excess = per_fold - best_folds
        se = float(excess.std(ddof=1) / math.sqrt(k))
        path.append(
            {
                "groups": canonical(groups),
                "mean_loss": float(per_fold.mean()),
                "excess": float(excess.mean()),
                "standard_error": se,
            }
        )
        if len(groups) == 1:
            break
        pairs = [(a, b) for a in range(len(groups)) for b in range(a + 1, len(groups))]
        merged = memo([tuple(sorted(groups[a] + groups[b])) for a, b in pairs])
        alone = memo([tuple(g) for g in groups])
        rise = merged - np.array([alone[a] + alone[b] for a, b in pairs])
        a, b = pairs[int(np.argmin(rise))]
        groups = [g for n, g in enumerate(groups) if n not in (a, b)] + [groups[a] + groups[b]]
    within = [p for p in path if p["excess"] <= p["standard_error"] + 1e-12]
    chosen = min(within, key=lambda p: len(p["groups"]))
    return RuleChoice(chosen["groups"], canonical(found.groups), path, found.search)
