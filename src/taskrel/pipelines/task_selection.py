"""Task-level selection: drop whole *source tasks* predicted to hurt a target task, retrain,
and compare with dropping nothing, dropping random tasks, training the target alone and
dropping *examples* (MTIF data selection, :mod:`taskrel.pipelines.selection`).

The choice is made on **validation** data only, with a group-outcome predictor
(:mod:`taskrel.decisions.predictors`): by default (``folds=1``) fitted on
:func:`~taskrel.decisions.evaluate.selection_view` (the task set whose test split is the
validation split), or with ``folds=K >= 2`` cross-fitted on K folds of each task's pooled
training + validation rows (:class:`~taskrel.decisions.crossfit.CrossFitted`, as
``taskrel group`` does; the predicted validation loss is the row-weighted mean over folds).
``benchmarks/task_selection.py`` measured both over 5 seeds: the single validation split
chose better here (mean test loss of the targets 0.015 and 0.010 below all tasks, against
0.004 and 0.009 with 3 folds), so it is the default. The test rows are in neither. A task
set without validation rows gets one carved from each task's training rows
(:func:`~taskrel.training.regularization.ensure_validation`, deterministic given ``seed``,
reported as a notice and in ``meta["validation"]``); every setting then trains on the
remaining training rows. ``"auto"`` regularisation is chosen once on that validation split
of all tasks and pinned for every training.

The search, for a target ``i`` (:func:`backward_elimination`): start from all tasks; try
removing each remaining source task ``j != i`` and ask the predictor for ``i``'s validation
loss when trained with what is left; remove the ``j`` with the lowest prediction if it lowers
the current prediction by more than ``min_improvement``; stop otherwise.

Only then is the test split read. Settings, all trained with the same training rows, model,
pinned configuration and training seed (paired), reported as the target's test metrics:

- ``all``: one model on every task;
- ``chosen``: one model on the target and the kept source tasks;
- ``random``: the target with as many *random* source tasks dropped as ``chosen`` dropped
  (``n_random`` draws from ``np.random.default_rng([seed, target position])``; each metric
  is the median over the draws);
- ``single-task``: the same model trained on the target alone (every source dropped);
- ``examples``: every task kept, the training examples MTIF predicts to hurt the target
  removed (scored on validation, as :func:`taskrel.pipelines.selection.select_data` does
  with the same ``threshold`` and ``max_fraction``); optional (``examples=False``).

Task trainings go through :class:`~taskrel.decisions.evaluate.SubsetOutcomes` and example
removals through :class:`~taskrel.relatedness.ground_truth.Retrainer`: both run on
``ctx.executor`` and are cached under ``ctx.cache_dir``, so a rerun reuses them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from taskrel.config import DataConfig
from taskrel.data.taskset import TaskSet
from taskrel.decisions.crossfit import CrossFitted, fold_tasksets
from taskrel.decisions.evaluate import SubsetOutcomes, cross_fitted_losses, selection_view
from taskrel.decisions.predictors import GroupOutcomePredictor, make_predictor
from taskrel.errors import ConfigError
from taskrel.notices import collect
from taskrel.pipelines.selection import (
    cached_scores,
    check_max_fraction,
    choose_fraction,
    harmful_examples,
    target_position,
)
from taskrel.progress import progress
from taskrel.relatedness import RelateContext
from taskrel.relatedness.ground_truth import Retrainer
from taskrel.training.metrics import PRIMARY_METRIC
from taskrel.training.regularization import VAL_FRACTION, ensure_validation

SETTINGS = ("all", "chosen", "random", "single-task", "examples")
"""Settings compared on test, in table order (``examples`` only when it was run)."""


@dataclass
class TargetSelection:
    """The choice for one target task and its test outcomes.

    Attributes:
        target: the target task's name.
        kept: the source tasks trained with the target (names, task-set order).
        dropped: the source tasks dropped, in the order the search removed them.
        path: the search, one entry per step: ``{"dropped": name or None (the start: all
            tasks), "predicted": predicted validation loss of the target after it}``.
        predicted_val: ``{"all", "chosen"}`` -> the predictor's validation loss of the
            target (its units, see ``meta["units"]`` of the result).
        actual_val: ``{"all", "chosen"}`` -> the actual validation loss of the target
            after training, measured as it was predicted: cross-fitted over the folds (or
            on the validation split with ``folds=1``); loss units of the task.
        metrics: setting -> the target's test metrics (``random``: medians over draws).
        random_dropped: the source tasks dropped by each random draw.
        examples_removed: training examples removed by the ``examples`` setting (None when
            it was not run); examples_fraction: its cap per task (``max_fraction``, or the
            value chosen on validation with ``"auto"``).
    """

    target: str
    kept: list[str]
    dropped: list[str]
    path: list[dict[str, Any]]
    predicted_val: dict[str, float]
    actual_val: dict[str, float]
    metrics: dict[str, dict[str, float]]
    random_dropped: list[list[str]]
    examples_removed: int | None = None
    examples_fraction: float | None = None


@dataclass
class TaskSelectionResult:
    """What :func:`select_tasks` returns.

    Attributes:
        targets: target name -> :class:`TargetSelection` (task-set order).
        metric: the primary test metric of the tasks (``accuracy``, ``explained_variance``...).
        meta: options, the predictor (``predictor``, ``units``, ``predictor_meta`` with
            its costs), ``validation`` (how the selection split was obtained),
            ``evaluation`` (how to read the test metrics), ``regularization`` and
            ``caveats`` (the notices given).
    """

    targets: dict[str, TargetSelection]
    metric: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def settings(self) -> list[str]:
        """The settings reported (``examples`` only when it was run)."""
        first = next(iter(self.targets.values()))
        return [s for s in SETTINGS if s in first.metrics]

    def caption(self) -> str:
        """One line saying how the test metrics were obtained."""
        return str(self.meta.get("evaluation", ""))

    def table(self) -> str:
        """Markdown table, one row per target and setting: the target's test loss and
        primary metric, the predicted validation loss (``all``, ``chosen``) and what was
        dropped; with several targets, the mean over targets of each setting follows.
        Preceded by :meth:`caption`."""
        n_random = self.meta.get("n_random", 0)
        head = f"| target | setting | test loss | test {self.metric} | predicted val. | dropped |"
        rows = [self.caption(), "", head, "|---" * 6 + "|"]
        for name, choice in self.targets.items():
            for s in self.settings:
                m = choice.metrics[s]
                pred = choice.predicted_val.get(s)
                rows.append(
                    f"| {name} | {s} | {m['loss']:.4f} | {m.get(self.metric, math.nan):.4f} | "
                    f"{'-' if pred is None else f'{pred:.4f}'} | "
                    f"{self._dropped(choice, s, n_random)} |"
                )
        if len(self.targets) > 1:
            for s in self.settings:
                loss = np.mean([c.metrics[s]["loss"] for c in self.targets.values()])
                metric = np.mean(
                    [c.metrics[s].get(self.metric, math.nan) for c in self.targets.values()]
                )
                rows.append(f"| mean over targets | {s} | {loss:.4f} | {metric:.4f} | - | - |")
        return "\n".join(rows)

    @staticmethod
    def _dropped(choice: TargetSelection, setting: str, n_random: int) -> str:
        if setting == "all":
            return "none"
        if setting == "chosen":
            return ", ".join(choice.dropped) or "none"
        if setting == "random":
            return f"{len(choice.dropped)} random (median of {n_random})"
        if setting == "single-task":
            return "every source"
        return f"{choice.examples_removed} examples"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (``targets``, ``metric``, ``evaluation``, ``meta``)."""
        return {
            "targets": {n: dataclasses.asdict(c) for n, c in self.targets.items()},
            "metric": self.metric,
            "evaluation": self.caption(),
            "meta": self.meta,
        }


def backward_elimination(
    predictor: GroupOutcomePredictor,
    target: int,
    tasks: Sequence[int],
    min_improvement: float = 0.0,
) -> tuple[list[int], list[tuple[int | None, float]]]:
    """Greedy backward elimination of source tasks for ``target`` on ``predictor``'s
    predicted loss of the target (column ``target`` of
    :meth:`~GroupOutcomePredictor.subset_losses`).

    From ``tasks`` (which hold ``target``), each step predicts the target's loss without
    each remaining source task and removes the one with the lowest prediction (ties: the
    lowest position) if that lowers the current prediction by more than
    ``min_improvement`` (units of the predictor); otherwise it stops. Non-finite
    predictions never win. Costs at most ``len(tasks)^2 / 2`` subset predictions.

    Returns:
        ``(kept, path)``: the kept task positions (sorted, with the target) and the steps
        ``[(removed position or None for the start, predicted loss after the step)]``.
    """
    current = sorted(int(t) for t in tasks)
    best = float(predictor.subset_losses([current])[0, target])
    path: list[tuple[int | None, float]] = [(None, best)]
    while len(current) > 1:
        sources = [j for j in current if j != target]
        candidates = [[t for t in current if t != j] for j in sources]
        predicted = predictor.subset_losses(candidates)[:, target]
        predicted = np.where(np.isfinite(predicted), predicted, np.inf)
        k = int(np.argmin(predicted))
        if not best - float(predicted[k]) > min_improvement:
            break
        current, best = candidates[k], float(predicted[k])
        path.append((sources[k], best))
    return current, path


def _check_options(
    min_improvement: float, n_random: int, threshold: float, val_fraction: float, folds: int
) -> None:
    for name, value in (("min_improvement", min_improvement), ("threshold", threshold)):
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise ConfigError(f"{name} must be a number, got {value!r}")
    if min_improvement < 0:
        raise ConfigError(f"min_improvement must be >= 0, got {min_improvement}")
    if isinstance(n_random, bool) or not isinstance(n_random, int) or n_random < 1:
        raise ConfigError(f"n_random must be an integer >= 1, got {n_random!r}")
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 1:
        raise ConfigError(f"folds must be an integer >= 1, got {folds!r}")


def select_tasks(
    taskset: TaskSet,
    ctx: RelateContext,
    target: str | int | None = None,
    predictor: str = "mtif-newton",
    predictor_options: Mapping[str, Any] | None = None,
    min_improvement: float = 0.0,
    n_random: int = 5,
    examples: bool = True,
    threshold: float = 0.0,
    max_fraction: float | Literal["auto"] = 0.5,
    mtif_options: Mapping[str, Any] | None = None,
    seed: int = 0,
    data: DataConfig | Mapping[str, Any] | None = None,
    val_fraction: float = VAL_FRACTION,
    folds: int = 1,
) -> TaskSelectionResult:
    """For each target (or ``target``), drop the source tasks ``predictor`` predicts to
    hurt it on the validation split, then train and compare on test (module docstring).

    Args:
        taskset: the data.
        ctx: model, training config, executor, cache and progress. With ``ctx.cache_dir``
            every training (and the MTIF scoring of ``examples``) is cached there.
        target: task name or position; None: every task in turn.
        predictor: registered group-outcome predictor
            (:data:`~taskrel.decisions.predictors.PREDICTORS`), fitted once per fold.
        predictor_options: its keyword options (:func:`make_predictor`).
        min_improvement: a source task is dropped only if that lowers the target's
            predicted validation loss by more than this (units of the predictor).
        n_random: random draws of the ``random`` setting.
        examples: also run the example-level setting (MTIF data selection).
        threshold: of the example-level setting (as in
            :func:`taskrel.pipelines.selection.select_data`).
        max_fraction: of the example-level setting (as there; ``"auto"`` chooses the
            fraction per target on validation by retraining).
        mtif_options: options of the MTIF instance scoring of ``examples``.
        seed: seed of the random draws and of a carved validation split.
        data: spec rebuilding ``taskset`` in training jobs; ignored when a validation
            split is carved (the carved task set is snapshotted instead).
        val_fraction: fraction of each task's training rows carved into a validation
            split when it has none.
        folds: 1 (default): the predictor is fitted once, with the validation split as
            its test split; ``K >= 2``: cross-fitted on K folds of the training +
            validation rows (seeded by ``seed``).

    Returns:
        A :class:`TaskSelectionResult`.

    Raises:
        ConfigError: an unknown predictor or option, a bad target or option value
            (checked before any training). DataError: an unknown target name.
    """
    _check_options(min_improvement, n_random, threshold, val_fraction, folds)
    fraction = check_max_fraction(max_fraction)
    options = dict(predictor_options or {})
    chosen_predictor: GroupOutcomePredictor = (
        CrossFitted(predictor, folds, seed, **options)
        if folds >= 2
        else make_predictor(predictor, **options)
    )
    pos = target_position(taskset, target)
    positions = list(range(len(taskset))) if pos is None else [pos]
    names = taskset.names
    with collect() as caveats:
        base, validation = ensure_validation(
            taskset, val_fraction, seed, purpose="choose source tasks on"
        )
        ctx = ctx.pinned(base)  # "auto" regularisation: once, on validation, for everything
        with progress(f"select: fitting {predictor}", "fits", enabled=ctx.progress or None):
            fitted = chosen_predictor.fit(base if folds >= 2 else selection_view(base), ctx)
        searched = {}
        with progress(
            "select: dropping source tasks", "targets", len(positions), enabled=ctx.progress or None
        ) as report:
            for n, i in enumerate(positions):
                searched[i] = backward_elimination(fitted, i, range(len(base)), min_improvement)
                report(n + 1)
        # the choices are fixed: only now is the test split read
        spec = None if validation["carved"] else data  # a carved split is snapshotted
        every = list(range(len(base)))
        draws = {
            i: _random_drops(i, len(every) - len(searched[i][0]), every, n_random, seed)
            for i in positions
        }
        fold_sets = fold_tasksets(base, folds, seed) if folds >= 2 else []
        with ExitStack() as stack:
            outcomes = stack.enter_context(SubsetOutcomes(base, ctx, spec))
            fold_outcomes = [stack.enter_context(SubsetOutcomes(ts, ctx)) for ts in fold_sets]
            outcomes.fetch(
                [every]
                + [searched[i][0] for i in positions]
                + [[i] for i in positions]
                + [kept for i in positions for kept in draws[i]]
            )

            def actual_val(subset: list[int], target: int) -> float:
                """The target's actual validation loss, measured as it was predicted:
                cross-fitted over the folds, or on the validation split."""
                if fold_outcomes:
                    return float(cross_fitted_losses(fold_outcomes, [subset])[0, target])
                return float(outcomes.losses([subset], "val")[0, target])

            choices = {}
            for i in positions:
                kept, path = searched[i]
                choices[names[i]] = TargetSelection(
                    target=names[i],
                    kept=[names[t] for t in kept if t != i],
                    dropped=[names[t] for t, _ in path[1:] if t is not None],
                    path=[
                        {"dropped": None if t is None else names[t], "predicted": v}
                        for t, v in path
                    ],
                    predicted_val={"all": path[0][1], "chosen": path[-1][1]},
                    actual_val={"all": actual_val(every, i), "chosen": actual_val(kept, i)},
                    metrics={
                        "all": _metrics(outcomes, every, names[i]),
                        "chosen": _metrics(outcomes, kept, names[i]),
                        "random": _median_metrics(
                            [_metrics(outcomes, d, names[i]) for d in draws[i]]
                        ),
                        "single-task": _metrics(outcomes, [i], names[i]),
                    },
                    random_dropped=[[names[t] for t in every if t not in d] for d in draws[i]],
                )
        if examples:
            _example_setting(base, ctx, spec, positions, choices, threshold, fraction, mtif_options)
    meta = {
        "predictor": predictor,
        "predictor_options": dict(predictor_options or {}),
        "units": fitted.units,
        "predictor_meta": {
            **fitted.meta,
            "fit_time_s": fitted.fit_time_s,
            "predict_time_s": fitted.predict_time_s,
            "trainings": fitted.trainings,
        },
        "folds": folds,
        "min_improvement": min_improvement,
        "n_random": n_random,
        "examples": {"threshold": threshold, "max_fraction": max_fraction} if examples else None,
        "seed": seed,
        "validation": validation,
        "evaluation": _evaluation(validation, folds),
        "regularization": ctx.regularization,
        "caveats": list(caveats),
    }
    metric = PRIMARY_METRIC[base.tasks[0].kind]
    return TaskSelectionResult(choices, metric, meta)


def _random_drops(
    target: int, k: int, tasks: Sequence[int], n_random: int, seed: int
) -> list[list[int]]:
    """``n_random`` subsets of ``tasks``, each without ``k`` random source tasks (the
    target always stays); drawn from ``default_rng([seed, target])``."""
    rng = np.random.default_rng([seed, target])
    sources = [t for t in tasks if t != target]
    out = []
    for _ in range(n_random):
        gone = set(rng.choice(sources, size=k, replace=False).tolist())
        out.append([t for t in tasks if t not in gone])
    return out


def _metrics(outcomes: SubsetOutcomes, subset: Sequence[int], name: str) -> dict[str, float]:
    """Test metrics of task ``name`` in the model trained on ``subset``."""
    metrics: dict[str, float] = outcomes.fetch([subset])[0]["test_metrics"][name]
    return metrics


def _median_metrics(draws: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Each metric's median over ``draws``."""
    return {k: float(np.median([d[k] for d in draws])) for k in draws[0]}


def _example_setting(
    base: TaskSet,
    ctx: RelateContext,
    spec: DataConfig | Mapping[str, Any] | None,
    positions: Sequence[int],
    choices: dict[str, TargetSelection],
    threshold: float,
    fraction: float | Literal["auto"],
    mtif_options: Mapping[str, Any] | None,
) -> None:
    """Add the ``examples`` setting to ``choices``: score the training examples with MTIF
    on the validation split (once, cached), remove those predicted to hurt each target
    (:func:`~taskrel.pipelines.selection.harmful_examples`; ``"auto"``: the fraction chosen on
    validation, :func:`~taskrel.pipelines.selection.choose_fraction`) and retrain all tasks."""
    scored = cached_scores(ctx, base, "val", mtif_options)
    ids, scores = scored["ids"], scored["scores"]
    removed = []
    for i in positions:
        cap = (
            float(choose_fraction(base, ctx, scores[:, i], ids, i, threshold, "val")["chosen"])
            if fraction == "auto"
            else fraction
        )
        removed.append(harmful_examples(scores[:, i], ids, threshold, cap))
        choices[base.names[i]].examples_fraction = cap
    with Retrainer(base, ctx, spec) as rt:
        runs = rt.run(
            [{"drop_ids": r.tolist()} for r in removed],
            label="select: retraining without harmful examples",
        )
    for i, r, run in zip(positions, removed, runs, strict=True):
        choice = choices[base.names[i]]
        choice.metrics["examples"] = run["metrics"][base.names[i]]
        choice.examples_removed = len(r)


def _evaluation(validation: Mapping[str, Any], folds: int) -> str:
    how = (
        f"a validation split carved from {validation['val_fraction']:g} of each task's "
        f"training rows (seed {validation['seed']})"
        if validation["carved"]
        else "the validation split"
    )
    tasks = (
        f"source tasks chosen on {folds} cross-fitted folds of the training rows and {how}"
        if folds >= 2
        else f"source tasks chosen on {how}"
    )
    return (
        f"test metrics of each target; {tasks}, examples on {how}; test read only after the choice"
    )
