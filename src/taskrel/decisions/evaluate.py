"""Proving a grouping decision by training: actual outcomes of task subsets, group LDS,
and the comparison of a predictor's chosen partition with all-in-one, single-task, random
partitions of the same group sizes and the oracle.

Selection is always on the **validation** split: predictors are fitted on
:func:`selection_view` (the task set whose test split is the validation split) and the
oracle searches on actual validation losses; the **test** split is only read for the final
report. A task set without a validation split gets one carved from each task's training
rows (:func:`~taskrel.training.regularization.ensure_validation`, with a notice); every
setting then trains on the remaining rows. A choice is never made on the test split.

Outcomes (:class:`SubsetOutcomes`): training one model on a subset ``S`` of the tasks
(the context's model, config and seed) gives every task of ``S`` a validation and a test
loss; a partition's outcome for task ``i`` is its loss in the model of its own group.
Jobs run on ``ctx.executor`` and are cached under ``ctx.cache_dir/decisions``, so a
benchmark resumes and every distinct subset is trained once per repeat.

Repeats (:func:`evaluate_decisions`): repeat ``r`` uses its own task set (e.g. a new split)
and training seed ``ctx.train_config.seed + r``; every setting of a repeat is trained on the
same data and seed (paired), with ``"auto"`` regularisation chosen once per repeat on the
validation split of all tasks (:meth:`RelateContext.pinned`) and used by every subset and
predictor. "Single-task" is the partition into singletons with the same
model, so it lies in the search space of the oracle.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np
from scipy import stats
from sklearn.metrics import adjusted_rand_score

from taskrel.config import DataConfig
from taskrel.data.taskset import TaskSet
from taskrel.decisions.crossfit import (
    RULES,
    CrossFitted,
    FoldCost,
    fold_tasksets,
    fold_weights,
    mean_cost,
    one_se_choice,
    weighted_fold_cost,
)
from taskrel.decisions.predictors import GroupOutcomePredictor, make_predictor, partition_errors
from taskrel.decisions.search import (
    Group,
    GroupCost,
    Grouping,
    canonical,
    choose_groups,
    labels_of,
    search_partition,
)
from taskrel.errors import ConfigError
from taskrel.execution import Job
from taskrel.notices import notice
from taskrel.progress import progress
from taskrel.relatedness import RelateContext
from taskrel.relatedness.ground_truth import DataSpec, Retrainer, load_data, train_model
from taskrel.relatedness.reliability import spearman_brown, spearman_rows
from taskrel.training.metrics import PRIMARY_METRIC, evaluate
from taskrel.training.regularization import ensure_validation, validation_as_test

Split = Literal["val", "test"]
LEVEL = 0.95


# -- selection on validation -------------------------------------------------------------------
def has_validation(taskset: TaskSet) -> bool:
    """Whether every task has validation rows."""
    return all(len(t.val_idx) > 0 for t in taskset.tasks)


def selection_view(taskset: TaskSet) -> TaskSet:
    """The task set a decision is made on (:func:`validation_as_test`): its *test* split is
    the validation split, and it has no validation split of its own (splits may not
    overlap), so a predictor trained on it with early stopping (``patience``) would stop
    differently; the default convex training does not stop early.

    Raises:
        ConfigError: ``taskset`` has no validation split (call :func:`ensure_validation`
            first: a choice is never made on the test split).
    """
    if not has_validation(taskset):
        raise ConfigError(
            f"{taskset.name}: no validation split to choose groups on; carve one first "
            "(taskrel.training.regularization.ensure_validation)"
        )
    return validation_as_test(taskset)


# -- actual outcomes of task subsets -------------------------------------------------------------
def subset_outcome(
    data: DataSpec,
    model: str,
    model_config: dict[str, Any],
    train_config: dict[str, Any],
    tasks: list[int],
) -> dict[str, Any]:
    """Train on the tasks ``tasks`` (positions) only (an executor job).

    Returns:
        ``{"val_loss", "test_loss"}`` (lists over ``tasks``; ``val_loss`` None without a
        validation split), ``"test_metrics"`` (task name -> test metrics) and ``"seconds"``
        (wall time of the training).
    """
    taskset = load_data(data).select_tasks(list(tasks))
    start = time.perf_counter()
    trained = train_model(taskset, model, model_config, train_config)
    seconds = time.perf_counter() - start
    test = evaluate(trained, taskset, "test")
    val = evaluate(trained, taskset, "val") if has_validation(taskset) else None
    return {
        "val_loss": [val[n]["loss"] for n in taskset.names] if val is not None else None,
        "test_loss": [test[n]["loss"] for n in taskset.names],
        "test_metrics": test,
        "seconds": seconds,
    }


class SubsetOutcomes:
    """Actual outcomes of training task subsets of one task set (memoised, cached).

    Args:
        taskset: the task set (one repeat).
        ctx: model, configs (with this repeat's seed), executor, cache.
        data: spec of a built-in dataset rebuilding ``taskset`` (else a snapshot is used).
    """

    def __init__(
        self,
        taskset: TaskSet,
        ctx: RelateContext,
        data: DataConfig | Mapping[str, Any] | None = None,
    ) -> None:
        self.taskset = taskset
        self.split: Split = "val" if has_validation(taskset) else "test"
        self._retrainer = Retrainer(taskset, ctx, data)
        self.ctx = self._retrainer.ctx  # "auto" regularisation chosen once, on all tasks
        self.results: dict[Group, dict[str, Any]] = {}

    def fetch(self, subsets: Sequence[Sequence[int]]) -> list[dict[str, Any]]:
        """The :func:`subset_outcome` of each subset (missing ones trained in one batch)."""
        keys = [tuple(sorted(int(t) for t in s)) for s in subsets]
        problem = next((k for k in keys if not k or k[0] < 0 or k[-1] >= len(self.taskset)), None)
        if problem is not None:
            raise ConfigError(
                f"task subset {list(problem)} must be non-empty positions in "
                f"[0, {len(self.taskset)})"
            )
        new = list(dict.fromkeys(k for k in keys if k not in self.results))
        if new:
            base = {
                "data": self._retrainer.spec,
                "model": self.ctx.model,
                "model_config": dict(self.ctx.model_config),
                "train_config": self.ctx.train_config.model_dump(),
            }
            jobs = [Job(subset_outcome, {**base, "tasks": list(k)}) for k in new]
            cache = Path(self.ctx.cache_dir) / "decisions" if self.ctx.cache_dir else None
            self.results.update(zip(new, self.ctx.executor.map(jobs, cache=cache), strict=True))
        return [self.results[k] for k in keys]

    def losses(self, subsets: Sequence[Sequence[int]], split: Split) -> np.ndarray:
        """``(M, T)`` actual losses on ``split``; NaN outside each subset."""
        out = np.full((len(subsets), len(self.taskset)), np.nan)
        for m, (s, r) in enumerate(zip(subsets, self.fetch(subsets), strict=True)):
            if r[f"{split}_loss"] is None:
                raise ConfigError(f"{self.taskset.name}: no {split} split to report losses on")
            out[m, sorted(int(t) for t in s)] = r[f"{split}_loss"]
        return out

    def partition(self, groups: Sequence[Sequence[int]], split: Split) -> np.ndarray:
        """Per-task loss ``(T,)`` on ``split`` when each group of the partition ``groups``
        is trained as its own model."""
        problem = partition_errors(groups, len(self.taskset))
        if problem is not None:
            raise ConfigError(f"groups {[list(g) for g in groups]}: {problem}")
        table = self.losses(groups, split)
        return np.nanmin(np.where(np.isnan(table), np.inf, table), axis=0)

    def partition_metrics(self, groups: Sequence[Sequence[int]]) -> dict[str, dict[str, float]]:
        """Test metrics of every task (name -> metrics) under the partition ``groups``."""
        return {n: m for r in self.fetch(groups) for n, m in r["test_metrics"].items()}

    def seconds(self, subsets: Sequence[Sequence[int]]) -> float:
        """Total training wall time of ``subsets`` (s; from the first, possibly cached, run)."""
        return float(sum(r["seconds"] for r in self.fetch(subsets)))

    def cost(self, split: Split | None = None) -> GroupCost:
        """Group cost ``sum_{i in G}`` (actual loss of i in G) on ``split`` (default: the
        selection split)."""

        def cost(groups: Sequence[Group]) -> np.ndarray:
            table = self.losses(groups, split or self.split)
            return np.nansum(table, axis=1)

        return cost

    def close(self) -> None:
        self._retrainer.close()

    def __enter__(self) -> SubsetOutcomes:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# -- group LDS ----------------------------------------------------------------------------------
def group_lds(predicted: np.ndarray, actual: np.ndarray, min_subsets: int = 3) -> np.ndarray:
    """Per-target Spearman ``(T,)`` between predicted and actual losses ``(M, T)`` over the
    subsets that contain the target (rows where both are finite); NaN with fewer than
    ``min_subsets`` such subsets or a constant column."""
    p, a = np.asarray(predicted, dtype=float), np.asarray(actual, dtype=float)
    if p.shape != a.shape or p.ndim != 2:
        raise ValueError(f"predicted {p.shape} and actual {a.shape} must both be (M, T)")
    out = np.full(p.shape[1], np.nan)
    for i in range(p.shape[1]):
        rows = np.isfinite(p[:, i]) & np.isfinite(a[:, i])
        if rows.sum() >= min_subsets:
            out[i] = spearman_rows(p[rows, i][None], a[rows, i][None])[0]
    return out


def group_lds_reliability(actual: np.ndarray, halvings: int = 100, seed: int = 0) -> np.ndarray:
    """Split-half reliability ``(T,)`` of the repeat-mean of actual subset losses
    ``(R, M, T)`` for each target, over the subsets that contain it: random halvings of the
    repeats, Spearman of the two half-means, averaged, Spearman-Brown corrected to R repeats
    (as :func:`taskrel.relatedness.reliability.split_half_reliability` does for matrices).
    The noise ceiling of a group LDS against the repeat-mean is ``sqrt(max(rel, 0))``.

    Raises:
        ConfigError: fewer than 2 repeats.
    """
    a = np.asarray(actual, dtype=float)
    if a.ndim != 3 or a.shape[0] < 2:
        raise ConfigError(
            f"the group-LDS ceiling needs actual losses (R >= 2, M, T), got shape {a.shape}"
        )
    r_count, h = a.shape[0], a.shape[0] // 2
    rng = np.random.default_rng(seed)
    perms = np.stack([rng.permutation(r_count) for _ in range(halvings)])
    out = np.full(a.shape[2], np.nan)
    for i in range(a.shape[2]):
        rows = np.all(np.isfinite(a[:, :, i]), axis=0)
        if rows.sum() < 3:
            continue
        x = a[:, rows, i]
        halves = x[perms[:, :h]].mean(1), x[perms[:, h : 2 * h]].mean(1)
        half = float(np.nanmean(spearman_rows(*halves)))
        out[i] = spearman_brown(half, r_count / h)
    return out


def random_subsets(n_tasks: int, n_subsets: int, seed: int = 0) -> list[list[int]]:
    """``n_subsets`` distinct random task subsets, each task in with probability 1/2 and at
    least two tasks per subset (fewer when there are not that many distinct ones)."""
    rng = np.random.default_rng(seed)
    found: dict[Group, None] = {}
    possible = 2**n_tasks - n_tasks - 1
    for _ in range(50 * n_subsets):
        if len(found) >= min(n_subsets, possible):
            break
        mask = rng.random(n_tasks) < 0.5
        if mask.sum() >= 2:
            found.setdefault(tuple(np.flatnonzero(mask).tolist()), None)
    return [list(s) for s in found]


# -- the decision workflow -------------------------------------------------------------------------
def random_partitions(
    sizes: Sequence[int], n: int, seed: int | Sequence[int] = 0
) -> list[list[list[int]]]:
    """``n`` uniformly random partitions of ``range(sum(sizes))`` into groups of ``sizes``."""
    rng = np.random.default_rng(seed)
    cuts = np.cumsum(sizes)[:-1]
    return [canonical(np.split(rng.permutation(int(sum(sizes))), cuts)) for _ in range(n)]


@dataclass
class Decision:
    """One predictor's choice in one repeat.

    Attributes:
        grouping: the chosen partition (``predicted``: per-task predicted loss).
        test_loss: actual per-task test loss ``(T,)`` of training that partition.
        random_test_loss: ``(n_random, T)`` of random partitions with the same sizes.
        seconds: the predictor's fit and search time (s).
    """

    grouping: Grouping
    test_loss: np.ndarray
    random_test_loss: np.ndarray
    seconds: float


@dataclass
class Repeat:
    """Everything measured in one repeat (test losses ``(T,)`` per setting).

    Attributes:
        all_in_one, single_task, oracle: test losses of one model on all tasks, one model
            per task, and the oracle partition.
        oracle_groups: the oracle partition (best actual selection-split loss found).
        oracle_search: ``exhaustive`` or ``local`` (budgeted).
        oracle_seconds: training time of every subset the oracle search trained (s).
        hindsight: test losses of the best partition *by test loss* (known only after the
            fact, so not a choice anyone can make; only with an exhaustive oracle): the most
            any grouping could have gained on this split.
        decisions: predictor name -> :class:`Decision`.
        failures: predictor -> error message (with ``skip_failures``: left out).
        lds_predicted, lds_actual: predictor -> ``(M, T)`` predicted / actual
            selection-split losses of the group-LDS subsets (empty without them).
        metrics: setting -> task -> test metrics.
    """

    all_in_one: np.ndarray
    single_task: np.ndarray
    oracle: np.ndarray | None
    oracle_groups: list[list[int]] | None
    oracle_search: str | None
    oracle_seconds: float
    decisions: dict[str, Decision]
    hindsight: np.ndarray | None = None
    failures: dict[str, str] = field(default_factory=dict)
    lds_predicted: dict[str, np.ndarray] = field(default_factory=dict)
    lds_actual: np.ndarray | None = None
    metrics: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)


def _fold_losses(
    fold_outcomes: Sequence[SubsetOutcomes], subsets: Sequence[Sequence[int]]
) -> np.ndarray:
    """``(K, M, T)`` actual validation losses of ``subsets`` in each fold."""
    return np.stack([o.losses(subsets, "val") for o in fold_outcomes])


def folds_cost(fold_outcomes: Sequence[SubsetOutcomes]) -> FoldCost:
    """Per-fold actual validation costs ``(K, M)`` of groups, weighted like
    :meth:`CrossFitted.fold_cost` (the mean over folds is the cross-validated cost)."""
    weights = fold_weights([o.taskset for o in fold_outcomes])
    return weighted_fold_cost(lambda subsets: _fold_losses(fold_outcomes, subsets), weights)


def cross_fitted_losses(
    fold_outcomes: Sequence[SubsetOutcomes], subsets: Sequence[Sequence[int]]
) -> np.ndarray:
    """``(M, T)`` actual validation losses of ``subsets`` averaged over folds (each task's
    folds weighted by its validation rows, :func:`fold_weights`), NaN outside each subset."""
    weights = fold_weights([o.taskset for o in fold_outcomes])
    return np.einsum("kmt,kt->mt", _fold_losses(fold_outcomes, subsets), weights)


def _predictor_losses(p: GroupOutcomePredictor, subsets: Sequence[Sequence[int]]) -> np.ndarray:
    return np.asarray(p.subset_losses(subsets), dtype=float)


def run_repeat(
    taskset: TaskSet,
    ctx: RelateContext,
    predictors: Sequence[str],
    n_groups: int | None = None,
    penalty: float = 0.0,
    n_random: int = 20,
    oracle: bool = True,
    oracle_exhaustive_max_tasks: int = 6,
    oracle_budget: int = 200,
    lds_subsets: Sequence[Sequence[int]] = (),
    data: DataConfig | Mapping[str, Any] | None = None,
    seed: int = 0,
    search_options: Mapping[str, Any] | None = None,
    skip_failures: bool = False,
    folds: int = 1,
    rule: str = "min",
    step_done: Callable[[], None] = lambda: None,
) -> Repeat:
    """One repeat of the decision evaluation (see :func:`evaluate_decisions`);
    ``step_done`` is called after each predictor's choice and after the oracle's."""
    taskset, _ = ensure_validation(taskset, seed=seed, purpose="choose groups on")
    ctx = ctx.pinned(taskset)  # "auto" regularisation: chosen once on validation, then fixed
    names, t = taskset.names, len(taskset)
    view = selection_view(taskset)
    every, singles = [list(range(t))], [[i] for i in range(t)]
    cross = folds >= 2
    fold_sets = fold_tasksets(taskset, folds, seed) if cross else []
    with ExitStack() as stack:
        outcomes = stack.enter_context(SubsetOutcomes(taskset, ctx, data))
        fold_outcomes = [stack.enter_context(SubsetOutcomes(ts, ctx)) for ts in fold_sets]
        decisions: dict[str, Grouping] = {}
        seconds: dict[str, float] = {}
        fitted: dict[str, GroupOutcomePredictor] = {}
        failures: dict[str, str] = {}
        for name in predictors:
            start = time.perf_counter()
            try:
                p = (
                    CrossFitted(name, folds, seed).fit(taskset, ctx)
                    if cross
                    else make_predictor(name).fit(view, ctx)
                )
                decisions[name] = choose_groups(
                    p, names, n_groups, penalty, rule, seed=seed, **dict(search_options or {})
                )
            except Exception as err:  # reported and left out, so the others still count
                if not skip_failures:
                    raise
                failures[name] = f"{type(err).__name__}: {' '.join(str(err).split())}"
                notice(f"predictor {name} failed on {taskset.name}: {failures[name]}; left out")
                continue
            finally:
                step_done()
            seconds[name] = time.perf_counter() - start
            fitted[name] = p
        oracle_groups = oracle_search = hindsight = None
        oracle_seconds = 0.0
        if oracle:
            starts = [every, singles, *(g.groups for g in decisions.values())]
            exhaustive = t <= oracle_exhaustive_max_tasks
            oracle_options: dict[str, Any] = {
                "search": "exhaustive" if exhaustive else "local",
                "exhaustive_max_tasks": oracle_exhaustive_max_tasks,
                "restarts": 0,
                "starts": starts,
                "budget": None if exhaustive else oracle_budget,
                "greedy": False,
                "seed": seed,
            }
            if rule == "one-se":
                chosen = one_se_choice(folds_cost(fold_outcomes), t, **oracle_options)
                oracle_groups, oracle_search = chosen.groups, chosen.search
            else:
                cost = mean_cost(folds_cost(fold_outcomes)) if cross else outcomes.cost()
                found = search_partition(cost, t, n_groups, penalty, **oracle_options)
                oracle_groups, oracle_search = found.groups, found.search
            oracle_seconds = sum(
                o.seconds(list(o.results)) for o in (fold_outcomes if cross else [outcomes])
            )
            if exhaustive:  # every subset is trained: the best partition on test is free
                hindsight = search_partition(outcomes.cost("test"), t, n_groups, penalty).groups
        step_done()
        randoms = {
            name: random_partitions(
                [len(x) for x in g.groups], n_random, [seed, *sorted(len(x) for x in g.groups)]
            )
            for name, g in decisions.items()
        }
        needed = [*every, *singles, *(oracle_groups or [])]
        needed += [x for g in decisions.values() for x in g.groups]
        needed += [x for parts in randoms.values() for part in parts for x in part]
        outcomes.fetch(needed)  # one batch of trainings
        result = Repeat(
            all_in_one=outcomes.partition(every, "test"),
            single_task=outcomes.partition(singles, "test"),
            oracle=outcomes.partition(oracle_groups, "test") if oracle_groups else None,
            hindsight=outcomes.partition(hindsight, "test") if hindsight else None,
            oracle_groups=oracle_groups,
            oracle_search=oracle_search,
            oracle_seconds=oracle_seconds,
            decisions={
                name: Decision(
                    g,
                    outcomes.partition(g.groups, "test"),
                    np.stack([outcomes.partition(part, "test") for part in randoms[name]])
                    if randoms[name]
                    else np.zeros((0, t)),
                    seconds[name],
                )
                for name, g in decisions.items()
            },
            failures=failures,
            metrics={
                "all-in-one": outcomes.partition_metrics(every),
                "single-task": outcomes.partition_metrics(singles),
                **{name: outcomes.partition_metrics(g.groups) for name, g in decisions.items()},
            },
        )
        if lds_subsets:
            result.lds_actual = (
                cross_fitted_losses(fold_outcomes, lds_subsets)
                if cross
                else outcomes.losses(lds_subsets, outcomes.split)
            )
            result.lds_predicted = {
                name: _predictor_losses(p, lds_subsets) for name, p in fitted.items()
            }
    return result


def evaluate_decisions(
    tasksets: Sequence[TaskSet],
    ctx: RelateContext,
    predictors: Sequence[str],
    planted: Sequence[Any] | None = None,
    **options: Any,
) -> DecisionReport:
    """Choose groups with each predictor and prove the choices by training, over repeats.

    Args:
        tasksets: one task set per repeat (the same tasks; e.g. a new split each); repeat
            ``r`` trains with seed ``ctx.train_config.seed + r``.
        ctx: model, training config, executor and cache.
        predictors: registered predictor names (:data:`~taskrel.decisions.predictors.PREDICTORS`).
        planted: a known cluster label per task (e.g. ``meta['groups']``), for the ARI.
        **options: of :func:`run_repeat`: ``n_groups``, ``penalty`` (free number of groups
            with ``penalty`` per extra group when ``n_groups`` is None), ``n_random``
            (random partitions with the chosen sizes), ``oracle`` (search on actual
            selection-split losses: exhaustive up to ``oracle_exhaustive_max_tasks``
            tasks, else a local search from all-in-one, single-task and the predictors'
            choices that trains at most about ``oracle_budget`` subsets), ``lds_subsets``
            (subsets for the group LDS), ``data``, ``seed``, ``search_options``,
            ``skip_failures`` (a predictor that raises is reported in ``failures`` and left
            out of every repeat instead of stopping the evaluation), ``folds`` (``K >= 2``:
            predictors and oracle choose on ``K``-fold cross-fitted validation losses of
            the pooled training + validation rows, :mod:`taskrel.decisions.crossfit`;
            1: on the validation split) and ``rule`` (``min`` or ``one-se``, the
            one-standard-error rule over folds).

    Raises:
        ConfigError: no task set, task sets with different tasks, or bad search options.
    """
    if not tasksets:
        raise ConfigError("evaluate_decisions needs at least one task set (repeat)")
    check_rule(options.get("rule", "min"), options.get("folds", 1))
    names = tasksets[0].names
    for ts in tasksets[1:]:
        if ts.names != names:
            raise ConfigError(f"every repeat must have the tasks {names}, got {ts.names}")
    if planted is not None and len(planted) != len(names):
        raise ConfigError(
            f"planted labels need one label per task ({len(names)}), got {len(planted)}"
        )
    repeats: list[Repeat] = []
    active, failures = list(predictors), {}
    steps = len(tasksets) * (len(predictors) + 1)  # each predictor's choice, then the oracle
    label = "decisions: choices (predictors, then the oracle)"
    with progress(label, "choices", steps, enabled=ctx.progress or None) as report:
        for r, ts in enumerate(tasksets):
            cfg = ctx.train_config.model_copy(update={"seed": ctx.train_config.seed + r})
            ctx_r = dataclasses.replace(ctx, train_config=cfg)
            repeats.append(
                run_repeat(ts, ctx_r, active, **{"seed": r, "step_done": report.advance, **options})
            )
            failures.update(repeats[-1].failures)
            report.advance(len(predictors) - len(active))  # left out after a failure
            active = [p for p in active if p not in failures]
    for rep in repeats:  # a predictor that failed once is left out of every repeat
        rep.decisions = {k: v for k, v in rep.decisions.items() if k in active}
        rep.lds_predicted = {k: v for k, v in rep.lds_predicted.items() if k in active}
    kind = tasksets[0].tasks[0].kind
    return DecisionReport(names, active, repeats, PRIMARY_METRIC[kind], planted, failures)


def check_rule(rule: str, folds: int) -> None:
    """Check a choice rule and fold count before any training.

    Raises:
        ConfigError: an unknown rule, ``folds`` not an integer >= 1, or ``one-se`` with
            fewer than 2 folds.
    """
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 1:
        raise ConfigError(f"folds must be an integer >= 1, got {folds!r}")
    if rule not in RULES:
        raise ConfigError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
    if rule == "one-se" and folds < 2:
        raise ConfigError("rule='one-se' takes its standard error over folds: use folds >= 2")


# -- the report ---------------------------------------------------------------------------------
def t_interval(values: Sequence[float] | np.ndarray, level: float = LEVEL) -> dict[str, float]:
    """Mean, sample std (ddof=1), n and the t confidence interval of the mean."""
    a = np.asarray(values, dtype=float).reshape(-1)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0, "ci_low": math.nan, "ci_high": math.nan}
    mean = float(a.mean())
    if a.size < 2:
        return {"mean": mean, "std": 0.0, "n": 1, "ci_low": math.nan, "ci_high": math.nan}
    std = float(a.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, a.size - 1)) * std / math.sqrt(a.size)
    return {"mean": mean, "std": std, "n": a.size, "ci_low": mean - half, "ci_high": mean + half}


def ratio_ci(
    num: np.ndarray, den: np.ndarray, level: float = LEVEL, n_boot: int = 2000, seed: int = 0
) -> dict[str, float]:
    """``sum(num) / sum(den)`` with a paired percentile bootstrap CI over the entries; NaN
    when ``sum(den) <= 0`` (a fraction of a gain that is not positive means nothing)."""
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    if den.sum() <= 0:
        return {"value": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": int(num.size)}
    value = float(num.sum() / den.sum())
    if num.size < 2:
        return {"value": value, "ci_low": math.nan, "ci_high": math.nan, "n": int(num.size)}
    idx = np.random.default_rng(seed).integers(0, num.size, size=(n_boot, num.size))
    d = den[idx].sum(1)
    boot = num[idx].sum(1)[d > 0] / d[d > 0]
    tail = (1 - level) / 2
    low, high = (
        (float(np.quantile(boot, tail)), float(np.quantile(boot, 1 - tail)))
        if boot.size
        else (math.nan, math.nan)
    )
    return {"value": value, "ci_low": low, "ci_high": high, "n": int(num.size)}


@dataclass
class DecisionReport:
    """Repeats of :func:`run_repeat` and their summaries (losses: mean over tasks of the
    per-task test loss; gains: all-in-one's loss minus a setting's, positive = better).
    ``predictors`` are those that ran in every repeat; ``failures`` the others' errors."""

    task_names: list[str]
    predictors: list[str]
    repeats: list[Repeat]
    metric: str
    planted: Sequence[Any] | None = None
    failures: dict[str, str] = field(default_factory=dict)

    def mean_losses(self) -> dict[str, np.ndarray]:
        """Setting -> ``(R,)`` mean test loss over tasks (``random`` settings: median of the
        random partitions of each predictor's sizes)."""
        out: dict[str, np.ndarray] = {
            "all-in-one": np.array([r.all_in_one.mean() for r in self.repeats]),
            "single-task": np.array([r.single_task.mean() for r in self.repeats]),
        }
        if all(r.oracle is not None for r in self.repeats):
            out["oracle"] = np.array([r.oracle.mean() for r in self.repeats])  # type: ignore[union-attr]
        if all(r.hindsight is not None for r in self.repeats):
            out["best on test (hindsight)"] = np.array(
                [r.hindsight.mean() for r in self.repeats]  # type: ignore[union-attr]
            )
        for name in self.predictors:
            out[name] = np.array([r.decisions[name].test_loss.mean() for r in self.repeats])
            if any(len(r.decisions[name].random_test_loss) == 0 for r in self.repeats):
                continue  # no random partitions drawn
            out[f"random ({name} sizes)"] = np.array(
                [np.median(r.decisions[name].random_test_loss.mean(axis=1)) for r in self.repeats]
            )
        return out

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per predictor: gain over all-in-one, over the median random partition and over
        single-task (t CIs over repeats, paired), the fraction of the oracle's gain
        (ratio of summed gains, bootstrap CI over repeats), cost as a ratio to the oracle's
        training time, ARI with the planted clusters, and the number of groups."""
        losses = self.mean_losses()
        out: dict[str, dict[str, Any]] = {}
        for name in self.predictors:
            mine = losses[name]
            row: dict[str, Any] = {
                "test_loss": t_interval(mine),
                "gain_vs_all_in_one": t_interval(losses["all-in-one"] - mine),
                "gain_vs_single_task": t_interval(losses["single-task"] - mine),
                "n_groups": [len(r.decisions[name].grouping.groups) for r in self.repeats],
                "seconds": t_interval([r.decisions[name].seconds for r in self.repeats]),
            }
            if f"random ({name} sizes)" in losses:
                row["gain_vs_median_random"] = t_interval(losses[f"random ({name} sizes)"] - mine)
            if "oracle" in losses:
                row["oracle_gain_vs_all_in_one"] = t_interval(
                    losses["all-in-one"] - losses["oracle"]
                )
                row["fraction_of_oracle_gain"] = ratio_ci(
                    losses["all-in-one"] - mine, losses["all-in-one"] - losses["oracle"]
                )
                row["cost_vs_oracle"] = t_interval(
                    [r.decisions[name].seconds / r.oracle_seconds for r in self.repeats]
                )
            if self.planted is not None:
                row["ari"] = t_interval(
                    [
                        adjusted_rand_score(self.planted, r.decisions[name].grouping.labels())
                        for r in self.repeats
                    ]
                )
            lds = self.group_lds(name)
            if lds is not None:
                row["group_lds"] = lds
            out[name] = row
        return out

    def oracle_ari(self) -> float:
        """Mean ARI of the oracle partitions with the planted clusters (NaN if unknown)."""
        if self.planted is None or any(r.oracle_groups is None for r in self.repeats):
            return math.nan
        t = len(self.task_names)
        return float(
            np.mean(
                [
                    adjusted_rand_score(self.planted, labels_of(r.oracle_groups or [], t))
                    for r in self.repeats
                ]
            )
        )

    def group_lds(self, name: str) -> dict[str, Any] | None:
        """Group LDS of predictor ``name``: per-repeat LDS (mean over targets, t CI over
        targets of the per-target mean over repeats), the LDS of the repeat-mean
        prediction against the repeat-mean actual, and that comparison's noise ceiling
        (``sqrt`` of the split-half reliability; needs 2+ repeats)."""
        if any(r.lds_actual is None or name not in r.lds_predicted for r in self.repeats):
            return None
        actual = np.stack([r.lds_actual for r in self.repeats])  # type: ignore[misc]
        predicted = np.stack([r.lds_predicted[name] for r in self.repeats])
        per_repeat = np.stack([group_lds(p, a) for p, a in zip(predicted, actual, strict=True)])
        out: dict[str, Any] = {
            "per_target": t_interval(np.nanmean(per_repeat, axis=0)),
            "n_subsets": int(actual.shape[1]),
        }
        if len(self.repeats) >= 2:
            with np.errstate(invalid="ignore"):
                mean_lds = group_lds(predicted.mean(0), actual.mean(0))
            ceiling = np.sqrt(np.clip(group_lds_reliability(actual), 0, None))
            out["of_mean"] = t_interval(mean_lds)
            out["ceiling"] = t_interval(ceiling)
            out["fraction_of_ceiling"] = float(np.nanmean(mean_lds) / np.nanmean(ceiling))
        return out
