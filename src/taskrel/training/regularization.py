"""Regularisation chosen on validation data: the ``"auto"`` value of a model's L2, head L2
and coupling coefficients.

A model declares which config fields accept ``"auto"`` (``MTLModel.auto_fields``, in tuning
order). For a model whose objective is convex in its parameters (``MTLModel.convex``: the
linear ``stl``/``hard``/``soft`` defaults), :func:`resolve_regularization` replaces each by
the value of :data:`GRID` (15
log-spaced values, 1e-5 to 1e2 in half decades) with the lowest validation loss, one field
after the other (coordinate search: a later auto field takes its ``auto_ties`` value, e.g.
``l2_task`` follows ``l2``, while an earlier one is tuned). Every candidate is trained with
the caller's training config and seed; the validation loss is the mean over tasks of each
task's mean per-example loss, the weighting of the training objective. A non-convex model
(an MLP) is regularised by validation-based early stopping instead: its auto fields take
the model's documented values (``auto_fields``, e.g. ``l2=1e-4``) without a search, which
would multiply its training time by 15 per field.

Units: the coefficients multiply the penalty of the objective
``sum_t mean_i loss + penalty``, e.g. ``(l2/2) ||theta||^2``. For one task of ``n`` rows
and squared error this is scikit-learn's ``Ridge(alpha)`` with ``l2 = 2 alpha / n``; for
logistic regression ``LogisticRegression(C)`` has ``l2 = 1 / (C n)``.

Which rows choose: the task set's validation split when it has one (never the test split).
Without one, :func:`carve_validation` holds out a deterministic :data:`VAL_FRACTION` of
each task's training rows for the selection, and the model is then refitted on all
training rows with the chosen values. Callers choose once, on the full task set, and pass
the pinned config on (retrainings for ground truth never re-tune).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from taskrel.data.taskset import TaskSet
from taskrel.errors import ConfigError, DataError, format_validation_error
from taskrel.models import build_model, model_class
from taskrel.models.base import ModelConfig, MTLModel
from taskrel.notices import notice
from taskrel.seeding import seed_everything
from taskrel.training.trainer import TrainConfig, resolve_train_config, train, validation_loss

GRID: tuple[float, ...] = tuple(float(v) for v in np.logspace(-5.0, 2.0, 15))
"""Candidate coefficients: 1e-5 ... 1e2, half a decade apart (15 values)."""

VAL_FRACTION = 0.2
"""Share of each task's training rows held out when the task set has no validation split."""


@dataclass
class RegularizationReport:
    """What :func:`resolve_regularization` chose and why.

    Attributes:
        chosen: each auto field and its chosen value.
        grid: the candidate values.
        curves: for each auto field, the validation loss of each grid value (in grid
            order; loss units, e.g. nats or squared target units); ``inf`` for a failed
            candidate.
        selection: ``"validation split"`` or ``"carved from training rows, then refitted
            on all training rows"``.
        carved_rows: training rows held out per task for the selection (carving only).
        fits: candidate trainings run.
        seconds: wall time of the selection.
        at_edge: auto fields whose chosen value is the smallest or largest of the grid
            (the optimum may lie beyond it).
    """

    chosen: dict[str, float | None]
    grid: list[float]
    curves: dict[str, list[float]]
    selection: str
    carved_rows: list[int] | None = None
    fits: int = 0
    seconds: float = 0.0
    at_edge: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


CANDIDATE_LBFGS = {"lbfgs_max_iter": 50, "epochs": 2, "stop_tol": 1e-6}
"""L-BFGS settings of the candidate fits: validation losses need a few significant digits,
not the optimum to machine precision (the final fit uses the caller's settings; the
directions L-BFGS is slow in are those of tiny penalties, which hardly move predictions)."""


def _candidate_config(cfg: TrainConfig, model: MTLModel) -> TrainConfig:
    """The candidates' training: without the task set, ``'auto'`` resolves to L-BFGS above
    the dense Newton bound (not the sample-space Newton step of the final fit), run with
    :data:`CANDIDATE_LBFGS`: a few significant digits of each validation loss in a few
    iterations, where the sample-space step would need a dozen factorisations per
    candidate."""
    resolved = resolve_train_config(cfg, model)
    return (
        resolved.model_copy(update=CANDIDATE_LBFGS) if resolved.optimizer == "lbfgs" else resolved
    )


def carve_validation(taskset: TaskSet, fraction: float = VAL_FRACTION, seed: int = 0) -> TaskSet:
    """``taskset`` with ``round(fraction * n_t)`` (at least 1) of each task's training rows
    moved to its validation split, drawn with ``seed`` (the same rows for every task when
    inputs are shared).

    Raises:
        DataError: a task has fewer than 2 training rows (nothing left to train on).
    """
    rng = np.random.default_rng(seed)
    shared_order: np.ndarray | None = None
    tasks = []
    for task in taskset.tasks:
        n = len(task.train_idx)
        if n < 2:
            raise DataError(
                f"task {task.name!r} has {n} training row(s); choosing its regularisation "
                "on validation data needs at least 2 (or pin l2/l2_task/coupling to numbers)"
            )
        if taskset.shared_inputs:
            shared_order = rng.permutation(n) if shared_order is None else shared_order
            order = shared_order
        else:
            order = rng.permutation(n)
        k = min(max(1, int(round(fraction * n))), n - 1)
        held = np.sort(task.train_idx[order[:k]])
        kept = np.sort(task.train_idx[order[k:]])
        tasks.append(replace(task, train_idx=kept, val_idx=held))
    return taskset.with_tasks(tasks)


def ensure_validation(
    taskset: TaskSet, fraction: float = VAL_FRACTION, seed: int = 0, purpose: str = "select on"
) -> tuple[TaskSet, dict[str, Any]]:
    """``taskset`` with a validation split to choose on: unchanged when every task has one,
    else with :func:`carve_validation` applied (one notice says so; whatever is then
    trained uses the remaining training rows). Returns the task set and a description
    ``{"split": "val", "carved", "rows_per_task", ["val_fraction", "seed"]}``.

    Raises:
        DataError: some tasks have validation rows and others not, or a task has fewer
            than 2 training rows to carve from.
    """
    lacking = [t.name for t in taskset.tasks if not len(t.val_idx)]
    if 0 < len(lacking) < len(taskset):
        raise DataError(
            f"tasks {lacking} have no validation rows but others do; give every task a "
            "validation split (or none, to carve one from the training rows)"
        )
    small = [t.name for t in taskset.tasks if len(t.train_idx) < 2]
    if lacking and small:
        raise DataError(
            f"tasks {small} have fewer than 2 training rows: no validation split can be "
            f"carved to {purpose}; give the data a validation split (data option val=...)"
        )
    base = carve_validation(taskset, fraction, seed) if lacking else taskset
    info: dict[str, Any] = {
        "split": "val",
        "carved": bool(lacking),
        "rows_per_task": {t.name: len(t.val_idx) for t in base.tasks},
    }
    if lacking:
        info.update(val_fraction=fraction, seed=seed)
        notice(
            f"the data have no validation split: carved {fraction:g} of each task's "
            f"training rows (seed {seed}) to {purpose}; every setting trains on the "
            "remaining rows"
        )
    return base, info


def validation_as_test(taskset: TaskSet) -> TaskSet:
    """The view a choice is made on: each task's *test* split is its validation split (the
    real test rows are left out entirely) and it has no validation split of its own."""
    return taskset.with_tasks(
        [replace(t, test_idx=t.val_idx, val_idx=t.val_idx[:0]) for t in taskset.tasks]
    )


def _parse(model: str, config: ModelConfig | Mapping[str, Any] | None) -> ModelConfig:
    cls = model_class(model)
    if isinstance(config, ModelConfig):
        return config
    try:
        return cls.Config(**dict(config or {}))
    except ValueError as err:
        detail = format_validation_error(err, accepted=cls.Config.model_fields)
        raise ConfigError(f"model {model!r}: invalid config: {detail}") from None


def unresolved(model: str, config: ModelConfig | Mapping[str, Any] | None) -> list[str]:
    """The fields of ``model``'s ``config`` still set to ``"auto"``."""
    parsed = _parse(model, config)
    return [f for f in model_class(model).auto_fields if getattr(parsed, f) == "auto"]


def resolve_regularization(
    taskset: TaskSet,
    model: str,
    model_config: ModelConfig | Mapping[str, Any] | None,
    train_config: TrainConfig | Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], RegularizationReport | None]:
    """Choose every ``"auto"`` regularisation field of ``model_config`` on validation data
    (see the module docstring).

    Args:
        taskset: the full task set (its validation split selects; none: carve one).
        model: registered model name.
        model_config: its options (mapping or config object).
        train_config: how each candidate is trained (default :class:`TrainConfig`).

    Returns:
        ``(pinned, report)``: the model options with numbers in place of ``"auto"`` (the
        explicitly given options otherwise unchanged) and the :class:`RegularizationReport`;
        ``(options, None)`` when nothing was ``"auto"``.
    """
    parsed = _parse(model, model_config)
    given = (
        parsed.model_dump(exclude_unset=True)
        if isinstance(model_config, ModelConfig)
        else dict(model_config or {})
    )
    cls = model_class(model)
    auto = unresolved(model, parsed)
    if not auto:
        return given, None
    cfg = (
        train_config
        if isinstance(train_config, TrainConfig)
        else TrainConfig(**dict(train_config or {}))
    )
    start = time.perf_counter()
    fixed = {f: cls.auto_fields[f] for f in auto}
    if not build_model(model, taskset, {**parsed.model_dump(), **fixed}).convex:
        report = RegularizationReport(
            chosen=fixed,
            grid=[],
            curves={},
            selection="not convex: fixed values; validation-based early stopping regularises",
        )
        return {**given, **fixed}, report
    has_val = any(len(t.val_idx) for t in taskset.tasks)
    data = taskset if has_val else carve_validation(taskset, VAL_FRACTION, cfg.seed)
    values = {**parsed.model_dump(), **{f: cls.auto_ties.get(f, GRID[-1]) for f in auto}}
    curves: dict[str, list[float]] = {}
    for name in auto:
        losses = [math.inf] * len(GRID)
        previous: dict[str, Any] | None = None
        for i in reversed(range(len(GRID))):  # strongest first: warm starts move little
            seed_everything(cfg.seed)
            candidate = build_model(model, data, {**values, name: GRID[i]})
            if candidate.convex and previous is not None:  # same optimum, fewer iterations
                candidate.load_state_dict(previous)
            train(candidate, data, _candidate_config(cfg, candidate), progress=False, notify=False)
            loss = validation_loss(candidate, data)
            losses[i] = loss if loss is not None and math.isfinite(loss) else math.inf
            previous = candidate.state_dict()
        curves[name] = losses
        values[name] = GRID[int(np.argmin(losses))]
    chosen: dict[str, float | None] = {f: float(values[f]) for f in auto}
    report = RegularizationReport(
        chosen=chosen,
        grid=list(GRID),
        curves=curves,
        selection="validation split"
        if has_val
        else "carved from training rows, then refitted on all training rows",
        carved_rows=None if has_val else [len(t.val_idx) for t in data.tasks],
        fits=len(auto) * len(GRID),
        seconds=time.perf_counter() - start,
        at_edge=[f for f, v in chosen.items() if v in (GRID[0], GRID[-1])],
    )
    return {**given, **chosen}, report
