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
- LOO: ``L_i(without example z) - L_i(all)``; dropping renormalises the task's mean over
  its ``n_j - 1`` remaining examples (:meth:`TaskSet.drop_train`).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch
from torch import Tensor

from taskrel.config import DataConfig
from taskrel.data import load
from taskrel.data.taskset import Task, TaskSet
from taskrel.errors import DataError
from taskrel.execution import Job
from taskrel.models import build_model
from taskrel.models.base import Batch, MTLModel
from taskrel.relatedness import RelateContext
from taskrel.relatedness.agreement import correlate
from taskrel.relatedness.result import Relatedness
from taskrel.seeding import seed_everything
from taskrel.training.metrics import evaluate
from taskrel.training.trainer import TrainConfig, train

DataSpec = dict[str, Any]


# -- data specs --------------------------------------------------------------------------------
def load_data(spec: Mapping[str, Any]) -> TaskSet:
    """Rebuild a task set from a spec: ``{"name", "options", "standardize"}`` (a
    :class:`~taskrel.config.DataConfig`) or ``{"snapshot": path, "sha256": hex}``."""
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
    parameters then feel only the penalty); the model instance is changed in place."""
    full = model.objective

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
    ``init_state`` (a state dict) replaces that initialisation (warm start)."""
    cfg = train_config if isinstance(train_config, TrainConfig) else TrainConfig(**train_config)
    data = taskset
    seed_everything(cfg.seed)
    built = build_model(model, data, dict(model_config))
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
    """
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
            remote workers); None writes a snapshot file (into ``ctx.cache_dir``, else a
            temporary folder removed on :meth:`close`).
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
        self.ctx = ctx
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if ctx.cache_dir is not None:
            self.folder = Path(ctx.cache_dir).resolve() / "tasksets"
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="taskrel-")
            self.folder = Path(self._tmp.name)
        if data is not None:
            cfg = data if isinstance(data, DataConfig) else DataConfig(**data)
            self.spec: DataSpec = cfg.model_dump()
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

    def run(self, variants: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Results of one retraining per variant (keyword arguments of :func:`retrain`)."""
        cache = Path(self.ctx.cache_dir) / "retrain" if self.ctx.cache_dir else None
        self.jobs_run += len(variants)
        return self.ctx.executor.map([self.job(**v) for v in variants], cache=cache)

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
def loto_relatedness(
    taskset: TaskSet,
    ctx: RelateContext,
    data: DataConfig | Mapping[str, Any] | None = None,
    warm_start: bool | MTLModel = False,
) -> Relatedness:
    """Leave-one-task-out by retraining (registry entry ``ground-truth``): ``T + 1``
    trainings. ``R[i, j] = L_i(without task j's data) - L_i(all)``, diagonal included.

    ``warm_start``: start every retraining from the model trained on all data (True:
    train it first; or pass that model) instead of the seeded initialisation."""
    start = time.perf_counter()
    n = len(taskset)
    with Retrainer(taskset, ctx, data, _warm(taskset, ctx, warm_start)) as rt:
        runs = rt.run([{}] + [{"without_tasks": [j]} for j in range(n)])
    base = np.asarray(runs[0]["test_loss"])
    matrix = np.stack([np.asarray(r["test_loss"]) - base for r in runs[1:]], axis=1)
    meta = {
        "units": "change of the target's mean test loss when the source's training data "
        "are removed (retrained); positive: the source helps",
        "base_test_loss": base,
        "retrainings": n + 1,
        "warm_start": bool(warm_start),
        "retrain_wall_time_s": time.perf_counter() - start,
    }
    return Relatedness(matrix, taskset.names, "loto", meta=meta)


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


def pairwise_relatedness(
    taskset: TaskSet,
    ctx: RelateContext,
    data: DataConfig | Mapping[str, Any] | None = None,
) -> Relatedness:
    """Pairwise transfer by retraining (registry entry ``pairwise``): ``T + T(T-1)/2``
    trainings. ``R[i, j] = L_i({i} alone) - L_i({i, j})``; the diagonal is 0."""
    start = time.perf_counter()
    n = len(taskset)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    with Retrainer(taskset, ctx, data) as rt:
        runs = rt.run([{"tasks": [i]} for i in range(n)] + [{"tasks": [i, j]} for i, j in pairs])
    alone = np.array([r["test_loss"][0] for r in runs[:n]])
    matrix = np.zeros((n, n))
    for (i, j), r in zip(pairs, runs[n:], strict=True):
        matrix[i, j] = alone[i] - r["test_loss"][0]
        matrix[j, i] = alone[j] - r["test_loss"][1]
    meta = {
        "units": "test-loss reduction of the target when trained together with the source "
        "rather than alone; positive: the source helps; diagonal 0 by definition",
        "alone_test_loss": alone,
        "retrainings": len(runs),
        "retrain_wall_time_s": time.perf_counter() - start,
    }
    return Relatedness(matrix, taskset.names, "pairwise", meta=meta)


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
    out = np.full((len(clean), n), np.nan)
    for m, (s, r) in enumerate(zip(clean, runs, strict=True)):
        out[m, s] = r["test_loss"]
    return out


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
