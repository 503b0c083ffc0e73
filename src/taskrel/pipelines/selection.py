"""Data selection with MTIF instance scores: remove the training examples predicted to
*raise* a target task's held-out loss (negative "helps" score), retrain, and compare.

Selection never looks at the test split by default: the examples are scored by their
influence on the **validation** loss (``score_split="val"``), and whatever is chosen
(``"auto"`` regularisation, ``max_fraction="auto"``) is chosen on validation too. A task
set without validation rows gets one carved from each task's training rows
(:func:`taskrel.training.regularization.carve_validation`, deterministic given the seed;
reported as a notice and in ``meta["validation"]``); every setting then trains on the
remaining training rows. Test metrics are computed only after the removal set is fixed.
``score_split="test"`` scores on the test split itself, as in much of the
influence-selection literature: its test metrics are *optimistic (selected on test)* and
are marked so in the result and the CLI output.

Settings compared, all with the same seed, training config and training rows:

- ``all``: the model trained on every training example (the one MTIF scored);
- ``mtif``: retrained without the examples whose score is below ``threshold`` (0: predicted
  harmful), at most ``max_fraction`` of each task's examples, most harmful first;
- ``random``: retrained without as many random examples *of each task* as ``mtif``
  removed (so the comparison is not confounded by which tasks lose data);
- ``stl``: single-task learning on all data (``stl`` model).

The target is one task (its column of the instance scores) or, by default, the average
held-out loss over tasks (the mean of the columns).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from taskrel.config import DataConfig
from taskrel.data.taskset import TaskSet
from taskrel.errors import ConfigError
from taskrel.execution import Job, ResultCache
from taskrel.models.base import MTLModel
from taskrel.models.sharing import SingleTaskConfig
from taskrel.notices import collect, notice
from taskrel.progress import progress
from taskrel.relatedness import RelateContext
from taskrel.relatedness.ground_truth import Retrainer
from taskrel.relatedness.mtif import mtif_relatedness
from taskrel.training.metrics import evaluate, summarize
from taskrel.training.regularization import (
    ensure_validation,
    resolve_regularization,
    unresolved,
    validation_as_test,
)
from taskrel.training.trainer import TrainConfig, fit

SETTINGS = ("all", "mtif", "random", "stl")
ScoreSplit = Literal["val", "test"]
SCORE_SPLITS: tuple[str, ...] = ("val", "test")
OPTIMISTIC = "optimistic (selected on test)"


@dataclass
class SelectionResult:
    """What :func:`select_data` returns.

    Attributes:
        target: the target task's name, or ``"average"``.
        ids: ``(N, 2)`` training ids; scores: ``(N,)`` their score on the target (predicted
            change of the target's mean loss on the scoring split when the example is
            removed; negative: removal helps).
        removed: ``(R, 2)`` ids removed by MTIF; random_removed: ``(R, 2)`` random ones.
        metrics: setting -> task -> test metrics (``all``, ``mtif``, ``random``, ``stl``).
        summary: setting -> metrics averaged over tasks.
        meta: options, the scoring split (``score_split``, ``validation``), ``evaluation``
            (how to read the test metrics), ``caveats`` and MTIF diagnostics.
    """

    target: str
    ids: np.ndarray
    scores: np.ndarray
    removed: np.ndarray
    random_removed: np.ndarray
    metrics: dict[str, dict[str, dict[str, float]]]
    summary: dict[str, dict[str, float]]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def optimistic(self) -> bool:
        """True when the examples were selected on the test split."""
        return bool(self.meta.get("score_split") == "test")

    def caption(self) -> str:
        """One line saying how the test metrics were obtained."""
        return str(self.meta.get("evaluation", ""))

    def table(self, metric: str) -> str:
        """Markdown table of test ``metric`` per task (rows) and setting (columns),
        preceded by :meth:`caption`."""
        head = "| task | " + " | ".join(SETTINGS) + " |"
        rows = [self.caption(), "", head, "|---" * (len(SETTINGS) + 1) + "|"]
        for task in self.metrics["all"]:
            rows.append(
                f"| {task} | "
                + " | ".join(f"{self.metrics[s][task][metric]:.4f}" for s in SETTINGS)
                + " |"
            )
        rows.append(
            "| average | " + " | ".join(f"{self.summary[s][metric]:.4f}" for s in SETTINGS) + " |"
        )
        return "\n".join(rows)


def check_max_fraction(max_fraction: float | str) -> float | Literal["auto"]:
    """``max_fraction`` as a float in [0, 1), or ``"auto"``.

    Raises:
        ConfigError: it is neither a number in [0, 1) nor ``"auto"``."""
    if max_fraction == "auto":
        return "auto"
    if isinstance(max_fraction, bool) or not isinstance(max_fraction, int | float):
        raise ConfigError(
            f"max_fraction must be a number in [0, 1) or 'auto', got {max_fraction!r}"
        )
    if not 0.0 <= max_fraction < 1.0:
        raise ConfigError(f"max_fraction must lie in [0, 1), got {max_fraction}")
    return float(max_fraction)


def harmful_examples(
    scores: np.ndarray, ids: np.ndarray, threshold: float = 0.0, max_fraction: float = 0.5
) -> np.ndarray:
    """Ids ``(R, 2)`` of the examples with ``scores < threshold``, at most
    ``floor(max_fraction * n_t)`` per task (the lowest scores first) and never a task's
    last example."""
    cap_fraction = check_max_fraction(max_fraction)
    if cap_fraction == "auto":
        raise ConfigError("harmful_examples needs a number for max_fraction, not 'auto'")
    picked = []
    for t in np.unique(ids[:, 0]):
        rows = np.flatnonzero(ids[:, 0] == t)
        cap = min(int(cap_fraction * len(rows)), len(rows) - 1)
        order = rows[np.argsort(scores[rows], kind="stable")]
        bad = order[scores[order] < threshold][:cap]
        picked.append(ids[np.sort(bad)])
    return np.concatenate(picked) if picked else np.zeros((0, 2), dtype=np.int64)


def random_like(removed: np.ndarray, taskset: TaskSet, seed: int = 0) -> np.ndarray:
    """As many random training ids of each task as ``removed`` holds, ``(R, 2)``."""
    rng = np.random.default_rng(seed)
    parts = [np.zeros((0, 2), dtype=np.int64)]
    for t, task in enumerate(taskset.tasks):
        k = int((removed[:, 0] == t).sum())
        rows = np.sort(rng.choice(task.train_idx, size=k, replace=False))
        parts.append(np.stack([np.full(k, t, dtype=np.int64), rows], axis=1))
    return np.concatenate(parts)


def stl_config(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """The single-task model matching a sharing model's config: same widths, activation
    and dropout, the head's L2 (``l2_task`` if given, else ``l2``)."""
    keys = set(SingleTaskConfig.model_fields)
    out = {k: v for k, v in model_config.items() if k in keys}
    if model_config.get("l2_task") is not None:
        out["l2"] = model_config["l2_task"]
    return out


# -- the scoring split ---------------------------------------------------------------------
def scoring_view(taskset: TaskSet, split: ScoreSplit) -> TaskSet:
    """The task set whose *test* split MTIF scores against: for ``"val"`` the validation
    rows act as the test split (and the real test rows are left out entirely), for
    ``"test"`` the task set itself."""
    return taskset if split == "test" else validation_as_test(taskset)


def score_examples(
    taskset: TaskSet,
    model: str,
    model_config: Mapping[str, Any],
    train_config: TrainConfig,
    score_split: ScoreSplit = "val",
    mtif_options: Mapping[str, Any] | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Choose the ``"auto"`` regularisation of ``model_config`` on validation data, train
    ``model`` on ``taskset`` with it and score every training example with MTIF against
    each task's mean loss on ``score_split``. With ``"val"`` the test rows are never read.

    Returns:
        ``{"model": the trained model, "model_config": the pinned options,
        "regularization": what was chosen (None: nothing was "auto"), "scores": (N, T),
        "ids": (N, 2), "mtif": diagnostics}``.
    """
    shown = True if show_progress else None
    auto = ", ".join(unresolved(model, model_config))
    with progress(
        f"select: choosing {auto} on validation", "fits", enabled=shown if auto else False
    ):
        pinned, chosen = resolve_regularization(taskset, model, model_config, train_config)
    # L-BFGS ('auto' for convex models) stops at the optimum, usually long before `epochs`
    epochs = train_config.epochs if train_config.optimizer in ("adam", "sgd") else None
    with progress("select: training on all data", "epochs", epochs, enabled=shown) as report:
        trained = fit(
            taskset,
            model,
            pinned,
            train_config,
            progress=False,
            on_epoch=lambda epoch, _: report(epoch),
        ).model
    ctx = RelateContext(model, pinned, train_config, progress=show_progress)
    options = {**(mtif_options or {}), "instance": True}
    rel = mtif_relatedness(scoring_view(taskset, score_split), ctx, model=trained, **options)
    assert rel.instance_scores is not None and rel.instance_ids is not None
    return {
        "model": trained,
        "model_config": pinned,
        "regularization": chosen.to_dict() if chosen is not None else None,
        "scores": rel.instance_scores,
        "ids": rel.instance_ids,
        "mtif": {k: rel.meta[k] for k in ("solver", "structure", "timings_s") if k in rel.meta},
    }


def cached_scores(
    ctx: RelateContext,
    base: TaskSet,
    score_split: ScoreSplit,
    mtif_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """:func:`score_examples` of ``base`` with ``ctx``'s model and configs, cached under
    ``ctx.cache_dir/selection`` (so ``--resume`` reuses it); the key is that of the
    equivalent :class:`Job`."""
    kwargs: dict[str, Any] = {
        "taskset": base,
        "model": ctx.model,
        "model_config": dict(ctx.model_config),
        "train_config": ctx.train_config,
        "score_split": score_split,
        "mtif_options": dict(mtif_options or {}),
    }
    if ctx.cache_dir is None:
        return score_examples(**kwargs, show_progress=ctx.progress)
    store = ResultCache(Path(ctx.cache_dir) / "selection")
    key = Job(score_examples, kwargs).key()
    with suppress(KeyError):  # missing or unreadable: compute it
        cached: dict[str, Any] = store.get(key)
        return cached
    value = score_examples(**kwargs, show_progress=ctx.progress)
    store.put(key, value)
    return value


# -- the selection ---------------------------------------------------------------------------
def target_position(taskset: TaskSet, target: str | int | None) -> int | None:
    """Position of ``target`` (a task name or position; None stays None).

    Raises:
        DataError: no task of that name. ConfigError: a position out of range or
            another type."""
    if target is None or isinstance(target, str):
        return None if target is None else taskset.index(target)
    if isinstance(target, bool) or not isinstance(target, int | np.integer):
        raise ConfigError(f"target must be a task name, a position or None, got {target!r}")
    if not 0 <= int(target) < len(taskset):
        raise ConfigError(f"target position {target} is not in [0, {len(taskset)})")
    return int(target)


def select_data(
    taskset: TaskSet,
    ctx: RelateContext,
    target: str | int | None = None,
    threshold: float = 0.0,
    max_fraction: float | Literal["auto"] = 0.5,
    seed: int = 0,
    data: DataConfig | Mapping[str, Any] | None = None,
    stl: Mapping[str, Any] | None = None,
    mtif_options: Mapping[str, Any] | None = None,
    score_split: ScoreSplit = "val",
    val_fraction: float = 0.2,
) -> SelectionResult:
    """Remove the training examples MTIF predicts to hurt ``target``, retrain, compare.

    Args:
        taskset: the data.
        ctx: model, training config, executor, cache and progress (as for relatedness
            methods). With ``ctx.cache_dir`` the scoring and every retraining are cached
            there, so a rerun (``--resume``) reuses them.
        target: task name or position; None: the average loss over tasks.
        threshold: remove examples whose score is below it (0: predicted harmful).
        max_fraction: at most this fraction of each task's training examples is removed;
            ``"auto"``: the value of :data:`FRACTIONS` whose removal set gives the lowest
            target loss on the scoring split after retraining (see :func:`choose_fraction`).
        seed: seed of the random-removal baseline and of the carved validation split.
        data: spec rebuilding ``taskset`` in retraining jobs (see
            :class:`~taskrel.relatedness.ground_truth.Retrainer`); ignored when a
            validation split is carved (the carved task set is snapshotted instead).
        stl: config of the single-task baseline (default: :func:`stl_config`).
        mtif_options: options of :func:`~taskrel.relatedness.mtif.mtif_relatedness`.
        score_split: ``"val"`` (default) scores on the validation split, carving one if a
            task has none; ``"test"`` scores on the test split: the test metrics are then
            optimistic (selected on test).
        val_fraction: fraction of each task's training rows carved into a validation
            split when it has none.

    Returns:
        A :class:`SelectionResult` with test metrics of every setting.

    Raises:
        ConfigError: an invalid option (checked before any training).
    """
    if score_split not in SCORE_SPLITS:
        raise ConfigError(f"score_split must be 'val' or 'test', got {score_split!r}")
    requested = check_max_fraction(max_fraction)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise ConfigError(f"threshold must be a number, got {threshold!r}")
    if math.isnan(threshold):
        raise ConfigError("threshold must be a number, got nan")
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    pos = target_position(taskset, target)
    with collect() as caveats:
        base, validation = _scoring_split(taskset, score_split, val_fraction, seed)
        scored = cached_scores(ctx, base, score_split, mtif_options)
        ids, all_scores = scored["ids"], scored["scores"]
        name = "average" if pos is None else taskset.names[pos]
        scores = all_scores.mean(axis=1) if pos is None else all_scores[:, pos]
        pinned = dataclasses.replace(ctx, model_config=scored["model_config"])
        search: dict[str, Any] | None = None
        if isinstance(requested, str):  # "auto"
            search = choose_fraction(base, pinned, scores, ids, pos, threshold, score_split)
            fraction = float(search["chosen"])
        else:
            fraction = requested
        removed = harmful_examples(scores, ids, threshold, fraction)
        random_removed = random_like(removed, base, seed)
        # the removal sets are fixed: only now are test metrics computed
        spec = None if validation["carved"] else data  # a carved split is snapshotted
        metrics = _test_metrics(base, pinned, scored["model"], removed, random_removed, stl, spec)
    summary = {s: summarize(m) for s, m in metrics.items()}
    meta = {
        "threshold": threshold,
        "max_fraction": fraction,
        "max_fraction_search": search,
        "seed": seed,
        "score_split": score_split,
        "validation": validation,
        "evaluation": _evaluation(score_split, validation),
        "n_removed": len(removed),
        "n_train": len(ids),
        "removed_per_task": {n: int((removed[:, 0] == t).sum()) for t, n in enumerate(base.names)},
        "regularization": scored["regularization"],
        "mtif": scored["mtif"],
        "caveats": list(caveats),
    }
    return SelectionResult(name, ids, scores, removed, random_removed, metrics, summary, meta)


FRACTIONS: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)
"""Candidates of ``max_fraction="auto"`` (0: remove nothing)."""


def choose_fraction(
    base: TaskSet,
    ctx: RelateContext,
    scores: np.ndarray,
    ids: np.ndarray,
    target: int | None,
    threshold: float,
    score_split: ScoreSplit,
) -> dict[str, Any]:
    """Choose ``max_fraction`` among :data:`FRACTIONS` on the scoring split (never on test
    with ``score_split="val"``): retrain without each candidate's removal set and keep the
    one with the lowest target loss (the target task's, or the mean over tasks) on that
    split; ties go to the smaller fraction. Candidates train on the same rows as every
    setting, without early stopping (the validation rows are what is measured). The
    scoring split chose the scores as well, so the chosen loss is optimistic for that
    split (not for test).

    Returns:
        ``{"candidates", "loss" (per candidate, loss units of the target), "chosen"}``.
    """
    view = scoring_view(base, score_split)  # its "test" rows are the scoring split's
    sets = [harmful_examples(scores, ids, threshold, f) for f in FRACTIONS]
    with Retrainer(view, ctx) as rt:
        runs = rt.run(
            [{"drop_ids": r.tolist()} for r in sets], label="select: choosing max_fraction"
        )
    losses = [
        float(np.mean(r["test_loss"] if target is None else r["test_loss"][target])) for r in runs
    ]
    return {
        "candidates": list(FRACTIONS),
        "loss": losses,
        "split": score_split,
        "chosen": FRACTIONS[int(np.argmin(losses))],
    }


def _scoring_split(
    taskset: TaskSet, score_split: ScoreSplit, val_fraction: float, seed: int
) -> tuple[TaskSet, dict[str, Any]]:
    """The task set every setting trains on and a description of the scoring split."""
    if score_split == "test":
        notice(
            "score_split='test': examples are selected on the TEST split, so the test "
            f"metrics are {OPTIMISTIC}"
        )
        return taskset, {"split": "test", "carved": False}
    return ensure_validation(taskset, val_fraction, seed, purpose="select on")


def _evaluation(score_split: ScoreSplit, validation: Mapping[str, Any]) -> str:
    if score_split == "test":
        return f"test metrics, {OPTIMISTIC}"
    how = (
        f"a validation split carved from {validation['val_fraction']:g} of each task's "
        f"training rows (seed {validation['seed']})"
        if validation["carved"]
        else "the validation split"
    )
    return f"test metrics; examples selected on {how}, test read only after selection"


def _test_metrics(
    base: TaskSet,
    ctx: RelateContext,
    model: MTLModel,
    removed: np.ndarray,
    random_removed: np.ndarray,
    stl: Mapping[str, Any] | None,
    spec: DataConfig | Mapping[str, Any] | None,
) -> dict[str, dict[str, dict[str, float]]]:
    """Test metrics of every setting (retrains ``mtif``, ``random`` and ``stl``)."""
    with Retrainer(base, ctx, spec) as rt:
        pruned, random_run = rt.run(
            [{"drop_ids": removed.tolist()}, {"drop_ids": random_removed.tolist()}],
            label="select: retraining",
        )
    stl_ctx = dataclasses.replace(
        ctx, model="stl", model_config=dict(stl or stl_config(ctx.model_config))
    )
    with Retrainer(base, stl_ctx, spec) as rt:
        (stl_run,) = rt.run([{}], label="select: single-task baseline")
    return {
        "all": evaluate(model, base, "test"),
        "mtif": pruned["metrics"],
        "random": random_run["metrics"],
        "stl": stl_run["metrics"],
    }
