"""Ground truth by actual retraining: leave-one-out (LOO), leave-one-task-out (LOTO),
pairwise transfer, and random-subset retraining for the linear datamodeling score (LDS).

Every retraining is a :class:`~taskrel.execution.Job` running :func:`retrain`, a
top-level function of JSON-able keyword arguments: the data spec (a built-in dataset's
name, options and standardisation, or a content-addressed snapshot file of an arbitrary
task set), the model and training configs, the precision, and what to leave out. Jobs run
on ``ctx.executor`` and, with ``ctx.cache_dir``, are cached under ``cache_dir/retrain`` so
an interrupted sweep resumes. Retraining uses the same seed and config as the original
model, so for convex models trained with L-BFGS (use ``TrainConfig(dtype="float64")``)
the only difference is the data.

Sign convention (as everywhere): an effect is ``loss(without the data) - loss(with it)``,
positive when the data help.

- LOTO: ``R[i, j] = L_i(trained without task j's data) - L_i(trained on all)``. Task j
  keeps its parameters but its data term leaves the objective (its head then only feels
  the penalty), so the diagonal is defined too.
- Pairwise: ``R[i, j] = L_i(trained on {i} alone) - L_i(trained on {i, j})``; the
  diagonal is 0 by definition.
- Subsets (datamodel): ``R[i, j] = -beta_ij`` of the least-squares fit
  ``L_i(S) ~ alpha_i + sum_j beta_ij [j in S]`` over random task subsets ``S`` holding i;
  the diagonal is 0.

Each of the three takes ``repeats`` (new split and training seed per repeat, see
:mod:`taskrel.relatedness.resample`) and reports the mean matrix, per-entry standard
errors and the reliability of the mean (:func:`resampled_ground_truth`).
- LOO: ``L_i(without example z) - L_i(all)``; dropping renormalises the task's mean over
  its ``n_j - 1`` remaining examples (:meth:`TaskSet.drop_train`).
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch
from torch import Tensor

from taskrel.config import DataConfig
from taskrel.data import load
from taskrel.data.taskset import Task, TaskSet
from taskrel.errors import ConfigError, DataError
from taskrel.execution import Job
from taskrel.models import build_model
from taskrel.models.base import Batch, MTLModel
from taskrel.progress import progress
from taskrel.relatedness import RelateContext
from taskrel.relatedness.agreement import correlate
from taskrel.relatedness.reliability import self_agreement, split_half_reliability
from taskrel.relatedness.resample import Repeat, plan_repeats, repeat_spec, resplit, standard_error
from taskrel.relatedness.result import Relatedness
from taskrel.seeding import seed_everything
from taskrel.training.metrics import evaluate
from taskrel.training.regularization import resolve_regularization, unresolved
from taskrel.training.trainer import TrainConfig, train

DataSpec = dict[str, Any]


# -- data specs --------------------------------------------------------------------------------
def load_data(spec: Mapping[str, Any]) -> TaskSet:
    """Rebuild a task set from a spec: ``{"name", "options", "standardize"}`` (a
    :class:`~taskrel.config.DataConfig`), ``{"snapshot": path, "sha256": hex}``, or
    ``{"resplit": spec, "seed": int, "standardize": scope}`` (that spec's task set
    re-split by :func:`~taskrel.relatedness.resample.resplit`, then standardised)."""
    if "resplit" in spec:
        taskset = resplit(load_data(spec["resplit"]), int(spec["seed"]))
        scope = spec.get("standardize", "none")
        return taskset if scope == "none" else taskset.standardize(scope)
    if "snapshot" in spec:
        return _read_snapshot(Path(spec["snapshot"]))
    cfg = DataConfig(**spec)
    taskset = load(cfg.name, **cfg.options)
    return taskset if cfg.standardize == "none" else taskset.standardize(cfg.standardize)


def snapshot_taskset(taskset: TaskSet, directory: str | Path) -> DataSpec:
    """Write ``taskset`` to ``directory/taskset-<sha>.npz`` (content-addressed) and return
    the spec that rebuilds it. ``meta`` is not stored (training does not use it)."""
    arrays: dict[str, Any] = {}
    header: dict[str, Any] = {
        "name": taskset.name,
        "shared_inputs": taskset.shared_inputs,
        "tasks": [],
    }
    for i, t in enumerate(taskset.tasks):
        header["tasks"].append(
            {
                "name": t.name,
                "kind": t.kind,
                "n_outputs": t.n_outputs,
                "labels": list(t.labels) if t.labels else None,
            }
        )
        for key in ("x", "y", "train_idx", "val_idx", "test_idx"):
            arrays[f"{i}_{key}"] = np.ascontiguousarray(getattr(t, key))
    text = json.dumps(header, sort_keys=True)
    digest = hashlib.sha256(text.encode())
    for key in sorted(arrays):  # before "header" is added: it is hashed as text
        digest.update(key.encode() + str(arrays[key].dtype).encode() + arrays[key].tobytes())
    sha = digest.hexdigest()
    path = Path(directory) / f"taskset-{sha[:24]}.npz"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        arrays["header"] = np.array(text)
        np.savez(tmp, allow_pickle=False, **arrays)
        tmp.replace(path)
    return {"snapshot": str(path), "sha256": sha}


def _read_snapshot(path: Path) -> TaskSet:
    if not path.is_file():
        raise DataError(f"{path}: task set snapshot not found")
    with np.load(path) as z:
        header = json.loads(str(z["header"]))
        tasks = [
            Task(
                name=h["name"],
                kind=h["kind"],
                n_outputs=h["n_outputs"],
                labels=tuple(h["labels"]) if h["labels"] else None,
                **{k: z[f"{i}_{k}"] for k in ("x", "y", "train_idx", "val_idx", "test_idx")},
            )
            for i, h in enumerate(header["tasks"])
        ]
    return TaskSet(header["name"], tuple(tasks), shared_inputs=header["shared_inputs"])


# -- training ----------------------------------------------------------------------------------
def _drop_task_terms(model: MTLModel, tasks: frozenset[int]) -> None:
    """Remove the data terms of ``tasks`` from ``model``'s training objective (their
    parameters then feel only the penalty) and record them in ``model.dropped_tasks``; the
    model instance is changed in place."""
    full = model.objective
    model.dropped_tasks = tasks

    def objective(batches: Sequence[Batch]) -> tuple[Tensor, dict[str, float]]:
        return full([b for b in batches if b.task not in tasks])

    model.objective = objective  # type: ignore[method-assign]


def train_model(
    taskset: TaskSet,
    model: str,
    model_config: Mapping[str, Any],
    train_config: TrainConfig | Mapping[str, Any],
    without_tasks: Collection[int] = (),
    init_state: Mapping[str, Tensor] | None = None,
) -> MTLModel:
    """Seed, build and train ``model`` on ``taskset`` (precision ``train_config.dtype``),
    optionally without the data of ``without_tasks`` (their validation rows are not used
    either). The same seed gives the same initialisation whatever is left out;
    ``init_state`` (a state dict) replaces that initialisation (warm start).

    ``"auto"`` regularisation is chosen on ``taskset``'s validation data first
    (:func:`~taskrel.training.regularization.resolve_regularization`) when training on
    all tasks; a retraining without some tasks needs pinned values (ConfigError)."""
    cfg = train_config if isinstance(train_config, TrainConfig) else TrainConfig(**train_config)
    if without_tasks:
        _require_pinned(model, model_config)
    config, _ = resolve_regularization(taskset, model, model_config, cfg)
    data = taskset
    seed_everything(cfg.seed)
    built = build_model(model, data, config)
    if init_state is not None:
        built.load_state_dict(init_state)
    if without_tasks:
        _drop_task_terms(built, frozenset(without_tasks))
        data = data.with_tasks(
            [
                replace(t, val_idx=np.zeros(0, np.int64)) if i in without_tasks else t
                for i, t in enumerate(data.tasks)
            ]
        )
    train(built, data, cfg, progress=False)
    return built


def _require_pinned(model: str, model_config: Mapping[str, Any]) -> None:
    auto = unresolved(model, model_config)
    if auto:
        raise ConfigError(
            f"retraining {model!r} with {', '.join(auto)}='auto': retrainings use the values "
            "chosen once on the full task set (RelateContext.pinned) and never re-tune"
        )


def retrain(
    data: DataSpec,
    model: str,
    model_config: dict[str, Any],
    train_config: dict[str, Any],
    drop_ids: list[list[int]] | None = None,
    without_tasks: list[int] | None = None,
    tasks: list[int] | None = None,
    init: DataSpec | None = None,
) -> dict[str, Any]:
    """One retraining job (top-level, JSON-able arguments).

    Args:
        data: spec for :func:`load_data`.
        model, model_config, train_config: what to train and how (same seed and
            precision as the original run).
        drop_ids: training examples ``[task, row]`` to remove (positions in the full set).
        without_tasks: task positions whose data term leaves the objective.
        tasks: train on these task positions only (in this order).
        init: ``{"state": path, "sha256": hex}`` of a saved state dict to start from
            (warm start; needs the full task set, i.e. no ``tasks``).

    Returns:
        ``{"task_names", "test_loss" (list, per trained task), "metrics" (per task)}``.

    Raises:
        ConfigError: ``model_config`` still has ``"auto"`` regularisation (a retraining
            never re-tunes; :class:`Retrainer` pins the values first).
    """
    _require_pinned(model, model_config)
    taskset = load_data(data)
    if drop_ids:
        taskset = taskset.drop_train(np.asarray(drop_ids, dtype=np.int64))
    without = set(without_tasks or ())
    if tasks is not None:
        taskset = taskset.select_tasks(list(tasks))
        without = {tasks.index(t) for t in without if t in tasks}
    state = torch.load(init["state"], weights_only=True) if init is not None else None
    trained = train_model(taskset, model, model_config, train_config, without, state)
    metrics = evaluate(trained, taskset, "test")
    return {
        "task_names": taskset.names,
        "test_loss": [metrics[n]["loss"] for n in taskset.names],
        "metrics": metrics,
    }


class Retrainer:
    """Runs :func:`retrain` jobs for one task set, model and training config through
    ``ctx.executor`` (cached under ``ctx.cache_dir/retrain``).

    Args:
        taskset: the task set (used to snapshot it when ``data`` is None).
        ctx: model, configs, executor, cache.
        data: spec of a built-in dataset that rebuilds ``taskset`` (preferred: works on
            remote workers), or any spec of :func:`load_data`; None writes a snapshot
            file (into ``ctx.cache_dir``, else a temporary folder removed on
            :meth:`close`).
        warm_start: a trained model every job starts from instead of the seeded
            initialisation (saved next to the snapshots). For non-convex models this
            retrains to the local optimum near the original one, which is what influence
            functions predict.
    """

    def __init__(
        self,
        taskset: TaskSet,
        ctx: RelateContext,
        data: DataConfig | Mapping[str, Any] | None = None,
        warm_start: MTLModel | None = None,
    ) -> None:
        self.ctx = ctx.pinned(taskset)  # never re-tuned per retraining
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if ctx.cache_dir is not None:
            self.folder = Path(ctx.cache_dir).resolve() / "tasksets"
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="taskrel-")
            self.folder = Path(self._tmp.name)
        if isinstance(data, Mapping) and ("snapshot" in data or "resplit" in data):
            self.spec: DataSpec = dict(data)
        elif data is not None:
            cfg = data if isinstance(data, DataConfig) else DataConfig(**data)
            self.spec = cfg.model_dump()
        else:
            self.spec = snapshot_taskset(taskset, self.folder)
        self.init = _save_state(warm_start, self.folder) if warm_start is not None else None
        self.jobs_run = 0

    def job(self, **variant: Any) -> Job:
        return Job(
            retrain,
            {
                "data": self.spec,
                "model": self.ctx.model,
                "model_config": dict(self.ctx.model_config),
                "train_config": self.ctx.train_config.model_dump(),
                **({"init": self.init} if self.init else {}),
                **variant,
            },
        )

    def repeat_variant(self, repeat: Repeat) -> dict[str, Any]:
        """The ``data`` and ``train_config`` job arguments of ``repeat`` (its split and
        training seed), to merge into a variant."""
        config = self.ctx.train_config.model_copy(update={"seed": repeat.train_seed})
        return {"data": repeat_spec(self.spec, repeat), "train_config": config.model_dump()}

    def run(
        self, variants: Sequence[Mapping[str, Any]], label: str = "retraining"
    ) -> list[dict[str, Any]]:
        """Results of one retraining per variant (keyword arguments of :func:`retrain`);
        the sweep reports its progress under ``label`` with ``ctx.progress`` (or inside
        :func:`taskrel.progress.shown`)."""
        cache = Path(self.ctx.cache_dir) / "retrain" if self.ctx.cache_dir else None
        self.jobs_run += len(variants)
        jobs = [self.job(**v) for v in variants]
        shown = True if self.ctx.progress else None  # None: as the application set it
        with progress(label, "retrainings", len(jobs), enabled=shown) as report:
            return self.ctx.executor.map(jobs, cache=cache, progress=report)

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Retrainer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _save_state(model: MTLModel, directory: Path) -> DataSpec:
    """Save ``model``'s state dict content-addressed; returns ``{"state", "sha256"}``."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode() + state[key].numpy().tobytes())
    sha = digest.hexdigest()
    path = directory / f"state-{sha[:24]}.pt"
    if not path.is_file():
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(state, path)
    return {"state": str(path), "sha256": sha}


# -- ground-truth relatedness ------------------------------------------------------------------
@dataclass(frozen=True)
class Design:
    """One repeat of a ground-truth kind: its retrainings (keyword arguments of
    :func:`retrain`) and how their results, in the same order, become the ``(T, T)``
    matrix plus kind-specific meta entries."""

    variants: list[dict[str, Any]]
    assemble: Callable[[list[dict[str, Any]]], tuple[np.ndarray, dict[str, Any]]]


def resampled_ground_truth(
    taskset: TaskSet,
    ctx: RelateContext,
    label: str,
    units: str,
    design: Callable[[int, np.random.Generator], Design],
    data: DataConfig | Mapping[str, Any] | None = None,
    repeats: int = 1,
    seed: int = 0,
    seed_repeats: int = 0,
    warm_start: bool | MTLModel = False,
) -> Relatedness:
    """Run ``design`` on every repeat of :func:`~taskrel.relatedness.resample.plan_repeats`
    (all retrainings in one executor sweep, cached) and average the resampled repeats.

    ``design(T, rng)`` gets a generator seeded by ``(seed, repeat index)`` (seed-only
    repeats get repeat 0's). The result's
    matrix is the mean over the ``repeats`` resampled repeats; with ``repeats >= 2``,
    ``meta`` adds ``per_repeat`` ``(R, T, T)``, ``stderr`` ``(T, T)``, ``reliability``,
    ``reliability_ci``, ``ceiling`` and ``ceiling_ci`` (see
    :mod:`taskrel.relatedness.reliability`); with ``seed_repeats >= 1``,
    ``seed_only_per_repeat`` (the original split under seeds ``s, s + 1, ...``) and
    ``seed_only_agreement`` (their mean pairwise off-diagonal Spearman).

    Raises:
        ConfigError: bad ``repeats``/``seed_repeats`` (see ``plan_repeats``), or a warm
            start with more than one repeat (each repeat has its own split and seed).
    """
    start = time.perf_counter()
    plan = plan_repeats(taskset, repeats, seed, ctx.train_config.seed, seed_repeats)
    if warm_start is not False and len(plan) > 1:
        raise ConfigError(
            f"warm_start needs repeats=1 and seed_repeats=0 (each repeat has its own split "
            f"and seed), got repeats={repeats}, seed_repeats={seed_repeats}"
        )
    n = len(taskset)
    # a seed-only repeat reuses repeat 0's design (e.g. its subsets): only the seed differs
    designs = [
        design(n, np.random.default_rng([seed, rep.index if rep.role == "resample" else 0]))
        for rep in plan
    ]
    with Retrainer(taskset, ctx, data, _warm(taskset, ctx, warm_start)) as rt:
        runs = rt.run(
            [
                {**v, **rt.repeat_variant(rep)}
                for rep, d in zip(plan, designs, strict=True)
                for v in d.variants
            ],
            label=f"{label} ground truth",
        )
    outcomes, pos = [], 0
    for d in designs:
        outcomes.append(d.assemble(runs[pos : pos + len(d.variants)]))
        pos += len(d.variants)
    main = [o for rep, o in zip(plan, outcomes, strict=True) if rep.role == "resample"]
    stack = np.stack([m for m, _ in main])
    meta: dict[str, Any] = {"units": units}
    for key in main[0][1]:
        meta[key] = np.mean([extra[key] for _, extra in main], axis=0)
    meta.update(
        retrainings=len(runs),
        warm_start=warm_start is not False,
        repeats=repeats,
        resample_seed=seed,
        train_seeds=[rep.train_seed for rep in plan if rep.role == "resample"],
    )
    if repeats >= 2:
        rel = split_half_reliability(stack, seed=seed)
        meta.update(
            per_repeat=stack,
            stderr=standard_error(stack),
            reliability=rel.value,
            reliability_ci=[rel.ci_low, rel.ci_high],
            ceiling=rel.ceiling,
            ceiling_ci=list(rel.ceiling_ci),
        )
    if seed_repeats:
        same_split = np.stack(
            [outcomes[0][0]]
            + [o[0] for rep, o in zip(plan, outcomes, strict=True) if rep.role == "seed"]
        )
        meta.update(seed_only_per_repeat=same_split, seed_only_agreement=self_agreement(same_split))
    meta["retrain_wall_time_s"] = time.perf_counter() - start
    return Relatedness(stack.mean(0), taskset.names, label, meta=meta)


def _loto_design(n: int, rng: np.random.Generator) -> Design:
    def assemble(runs: list[dict[str, Any]]) -> tuple[np.ndarray, dict[str, Any]]:
        base = np.asarray(runs[0]["test_loss"])
        matrix = np.stack([np.asarray(r["test_loss"]) - base for r in runs[1:]], axis=1)
        return matrix, {"base_test_loss": base}

    return Design([{}] + [{"without_tasks": [j]} for j in range(n)], assemble)


def loto_relatedness(
    taskset: TaskSet,
    ctx: RelateContext,
    data: DataConfig | Mapping[str, Any] | None = None,
    warm_start: bool | MTLModel = False,
    repeats: int = 1,
    seed: int = 0,
    seed_repeats: int = 0,
) -> Relatedness:
    """Leave-one-task-out by retraining (registry entry ``ground-truth``): ``T + 1``
    trainings per repeat. ``R[i, j] = L_i(without task j's data) - L_i(all)``, diagonal
    included.

    ``warm_start``: start every retraining from the model trained on all data (True:
    train it first; or pass that model) instead of the seeded initialisation (one repeat
    only). ``repeats``, ``seed``, ``seed_repeats``: see :func:`resampled_ground_truth`."""
    units = (
        "change of the target's mean test loss when the source's training data are removed "
        "(retrained); positive: the source helps"
    )
    return resampled_ground_truth(
        taskset, ctx, "loto", units, _loto_design, data, repeats, seed, seed_repeats, warm_start
    )


def _warm(
    taskset: TaskSet,
    ctx: RelateContext,
    warm_start: bool | MTLModel,
) -> MTLModel | None:
    if isinstance(warm_start, MTLModel):
        return warm_start
    if warm_start:
        return train_model(taskset, ctx.model, ctx.model_config, ctx.train_config)
    return None


def _pairwise_design(n: int, rng: np.random.Generator) -> Design:
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]

    def assemble(runs: list[dict[str, Any]]) -> tuple[np.ndarray, dict[str, Any]]:
        alone = np.array([r["test_loss"][0] for r in runs[:n]])
        matrix = np.zeros((n, n))
        for (i, j), r in zip(pairs, runs[n:], strict=True):
            matrix[i, j] = alone[i] - r["test_loss"][0]
            matrix[j, i] = alone[j] - r["test_loss"][1]
        return matrix, {"alone_test_loss": alone}

    return Design(
        [{"tasks": [i]} for i in range(n)] + [{"tasks": [i, j]} for i, j in pairs], assemble
    )


def pairwise_relatedness(
    taskset: TaskSet,
    ctx: RelateContext,
    data: DataConfig | Mapping[str, Any] | None = None,
    repeats: int = 1,
    seed: int = 0,
    seed_repeats: int = 0,
) -> Relatedness:
    """Pairwise transfer by retraining (registry entry ``pairwise``): ``T + T(T-1)/2``
    trainings per repeat. ``R[i, j] = L_i({i} alone) - L_i({i, j})``; the diagonal is 0.
    ``repeats``, ``seed``, ``seed_repeats``: see :func:`resampled_ground_truth`."""
    units = (
        "test-loss reduction of the target when trained together with the source rather "
        "than alone; positive: the source helps; diagonal 0 by definition"
    )
    return resampled_ground_truth(
        taskset, ctx, "pairwise", units, _pairwise_design, data, repeats, seed, seed_repeats
    )


def balanced_membership(
    n_tasks: int, n_subsets: int, fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """Random task subsets ``(M, T)`` bool in which every task is a member of exactly
    ``round(fraction * n_subsets)`` subsets (independently shuffled per task, so subset
    sizes vary and memberships are not collinear); empty subsets are dropped."""
    count = int(round(fraction * n_subsets))
    member = np.zeros((n_subsets, n_tasks), dtype=bool)
    for t in range(n_tasks):
        member[rng.permutation(n_subsets)[:count], t] = True
    return member[member.any(axis=1)]


def datamodel_matrix(member: np.ndarray, losses: np.ndarray) -> np.ndarray:
    """Per target i, least squares of its test loss over the subsets containing i on an
    intercept and the membership of every other task j: ``R[i, j] = -coefficient_j``
    (positive: j's presence lowers i's loss). ``member`` ``(M, T)`` bool, ``losses``
    ``(M, T)`` (NaN outside the subset); diagonal 0."""
    n = member.shape[1]
    matrix = np.zeros((n, n))
    for i in range(n):
        rows = member[:, i]
        others = np.arange(n) != i
        design = np.column_stack([np.ones(int(rows.sum())), member[rows][:, others]])
        coef = np.linalg.lstsq(design, losses[rows, i], rcond=None)[0]
        matrix[i, others] = -coef[1:]
    return matrix


def _subsets_design(
    n_subsets: int, fraction: float
) -> Callable[[int, np.random.Generator], Design]:
    def design(n: int, rng: np.random.Generator) -> Design:
        member = balanced_membership(n, n_subsets, fraction, rng)
        subsets = [np.flatnonzero(row).tolist() for row in member]

        def assemble(runs: list[dict[str, Any]]) -> tuple[np.ndarray, dict[str, Any]]:
            return datamodel_matrix(member, _subset_table(subsets, runs, n)), {}

        return Design([{"tasks": s} for s in subsets], assemble)

    return design


def subsets_relatedness(
    taskset: TaskSet,
    ctx: RelateContext,
    data: DataConfig | Mapping[str, Any] | None = None,
    n_subsets: int | None = None,
    fraction: float = 0.5,
    repeats: int = 1,
    seed: int = 0,
    seed_repeats: int = 0,
) -> Relatedness:
    """Datamodel (additive) transfer by retraining on random task subsets (registry entry
    ``subsets``): ``n_subsets`` trainings per repeat, each on a random subset of the tasks
    (every task in ``fraction`` of them, see :func:`balanced_membership`); ``R[i, j]`` is
    minus the coefficient of j's membership in a linear model of i's test loss
    (:func:`datamodel_matrix`); diagonal 0. ``n_subsets`` defaults to
    ``ceil(2 (T + 1) / fraction)``. ``repeats``, ``seed``, ``seed_repeats``: see
    :func:`resampled_ground_truth`.

    Raises:
        ConfigError: ``fraction`` outside (0, 1), or too few subsets per target to fit its
            ``T`` coefficients (needs ``round(fraction * n_subsets) >= T + 1``).
    """
    n = len(taskset)
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"subsets: fraction must lie in (0, 1), got {fraction}")
    m = n_subsets if n_subsets is not None else math.ceil(2 * (n + 1) / fraction)
    if round(fraction * m) < n + 1:
        raise ConfigError(
            f"subsets: n_subsets={m} with fraction={fraction} puts each target in "
            f"{round(fraction * m)} subsets; expected at least T + 1 = {n + 1} to fit its "
            f"coefficients (raise n_subsets to >= {math.ceil((n + 1.5) / fraction)})"
        )
    units = (
        "decrease of the target's mean test loss per presence of the source in a random "
        "task subset (linear datamodel, retrained); positive: the source helps; diagonal 0"
    )
    return resampled_ground_truth(
        taskset,
        ctx,
        "subsets",
        units,
        _subsets_design(m, fraction),
        data,
        repeats,
        seed,
        seed_repeats,
    )


def _subset_table(
    subsets: Sequence[Sequence[int]], runs: Sequence[Mapping[str, Any]], n: int
) -> np.ndarray:
    """``(M, T)`` test losses of subset runs, NaN where a task was not trained."""
    out = np.full((len(subsets), n), np.nan)
    for m, (s, r) in enumerate(zip(subsets, runs, strict=True)):
        out[m, list(s)] = r["test_loss"]
    return out


def task_subset_losses(
    taskset: TaskSet,
    ctx: RelateContext,
    subsets: Sequence[Sequence[int]],
    data: DataConfig | Mapping[str, Any] | None = None,
) -> np.ndarray:
    """Train one model on each subset of tasks (task positions) and return the per-task
    test losses ``(M, T)``: entry ``[m, i]`` is task i's mean test loss when trained with
    exactly the tasks of ``subsets[m]``, NaN where i is not in the subset. Jobs run on
    ``ctx.executor`` and are cached like every retraining."""
    n = len(taskset)
    clean = [sorted({int(t) for t in s}) for s in subsets]
    for s in clean:
        if not s or s[0] < 0 or s[-1] >= n:
            raise DataError(f"task subset {s} must be non-empty positions in [0, {n})")
    with Retrainer(taskset, ctx, data) as rt:
        runs = rt.run([{"tasks": s} for s in clean])
    return _subset_table(clean, runs, n)


def sample_train_ids(taskset: TaskSet, n: int, seed: int = 0) -> np.ndarray:
    """``n`` training ids ``(n, 2)`` drawn uniformly without replacement, in id order."""
    ids = taskset.train_ids()
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(ids), size=min(n, len(ids)), replace=False))
    return ids[pick]


def loo_effects(
    taskset: TaskSet,
    ctx: RelateContext,
    ids: np.ndarray,
    data: DataConfig | Mapping[str, Any] | None = None,
    warm_start: bool | MTLModel = False,
) -> np.ndarray:
    """Exact leave-one-out by retraining: ``(len(ids), T)`` effects
    ``L_i(without ids[n]) - L_i(all)`` (positive: the example helps task i).
    ``warm_start`` as in :func:`loto_relatedness`."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1, 2)
    with Retrainer(taskset, ctx, data, _warm(taskset, ctx, warm_start)) as rt:
        runs = rt.run([{}] + [{"drop_ids": [[int(t), int(r)]]} for t, r in ids])
    base = np.asarray(runs[0]["test_loss"])
    return np.stack([np.asarray(r["test_loss"]) - base for r in runs[1:]])


def random_subsets(
    taskset: TaskSet,
    n_subsets: int,
    fraction: float = 0.5,
    seed: int = 0,
) -> list[np.ndarray]:
    """``n_subsets`` random removal sets: each removes ``round(fraction * n_t)`` training
    examples of every task t (at least one kept per task). Returns the removed ids
    ``(r, 2)`` of each subset."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"subset fraction must lie in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_subsets):
        parts = []
        for i, t in enumerate(taskset.tasks):
            k = min(int(round(fraction * len(t.train_idx))), len(t.train_idx) - 1)
            rows = np.sort(rng.choice(t.train_idx, size=k, replace=False))
            parts.append(np.stack([np.full(k, i, dtype=np.int64), rows], axis=1))
        out.append(np.concatenate(parts))
    return out


def subset_losses(
    taskset: TaskSet,
    ctx: RelateContext,
    subsets: Sequence[np.ndarray],
    data: DataConfig | Mapping[str, Any] | None = None,
    warm_start: bool | MTLModel = False,
) -> np.ndarray:
    """Per-task test losses ``(M, T)`` after retraining without each removal set
    (``warm_start`` as in :func:`loto_relatedness`)."""
    with Retrainer(taskset, ctx, data, _warm(taskset, ctx, warm_start)) as rt:
        runs = rt.run([{"drop_ids": np.asarray(s).tolist()} for s in subsets])
    return np.array([r["test_loss"] for r in runs])


def linear_datamodeling_score(
    scores: np.ndarray, ids: np.ndarray, subsets: Sequence[np.ndarray], losses: np.ndarray
) -> np.ndarray:
    """LDS per target task, ``(T,)``: Spearman, over the M subsets, between the predicted
    change of task i's test loss (the sum of the removed examples' scores ``scores[:, i]``)
    and the actual test loss after retraining without them (``losses`` ``(M, T)``)."""
    index = {(int(t), int(r)): n for n, (t, r) in enumerate(np.asarray(ids))}
    predicted = np.stack([scores[[index[(int(t), int(r))] for t, r in s]].sum(0) for s in subsets])
    return np.array([correlate(predicted[:, i], losses[:, i]) for i in range(scores.shape[1])])
