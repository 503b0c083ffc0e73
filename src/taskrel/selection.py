"""Data selection with MTIF instance scores: remove the training examples predicted to
*raise* a target task's test loss (negative "helps" score), retrain, and compare.

Settings compared, all with the same seed and training config:

- ``all``: the model trained on every training example (the one MTIF scored);
- ``mtif``: retrained without the examples whose score is below ``threshold`` (0: predicted
  harmful), at most ``max_fraction`` of each task's examples, most harmful first;
- ``random``: retrained without as many random examples *of each task* as ``mtif``
  removed (so the comparison is not confounded by which tasks lose data);
- ``stl``: single-task learning on all data (``stl`` model).

The target is one task (its column of the instance scores) or, by default, the average
test loss over tasks (the mean of the columns).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from taskrel.config import DataConfig
from taskrel.data.taskset import TaskSet
from taskrel.errors import ConfigError
from taskrel.models.sharing import SingleTaskConfig
from taskrel.relatedness import RelateContext
from taskrel.relatedness.ground_truth import Retrainer, train_model
from taskrel.relatedness.mtif import mtif_relatedness
from taskrel.training.metrics import evaluate, summarize

SETTINGS = ("all", "mtif", "random", "stl")


@dataclass
class SelectionResult:
    """What :func:`select_data` returns.

    Attributes:
        target: the target task's name, or ``"average"``.
        ids: ``(N, 2)`` training ids; scores: ``(N,)`` their score on the target.
        removed: ``(R, 2)`` ids removed by MTIF; random_removed: ``(R, 2)`` random ones.
        metrics: setting -> task -> test metrics (``all``, ``mtif``, ``random``, ``stl``).
        summary: setting -> metrics averaged over tasks.
        meta: options and MTIF diagnostics.
    """

    target: str
    ids: np.ndarray
    scores: np.ndarray
    removed: np.ndarray
    random_removed: np.ndarray
    metrics: dict[str, dict[str, dict[str, float]]]
    summary: dict[str, dict[str, float]]
    meta: dict[str, Any] = field(default_factory=dict)

    def table(self, metric: str) -> str:
        """Markdown table of ``metric`` per task (rows) and setting (columns)."""
        head = "| task | " + " | ".join(SETTINGS) + " |"
        rows = [head, "|---" * (len(SETTINGS) + 1) + "|"]
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


def harmful_examples(
    scores: np.ndarray, ids: np.ndarray, threshold: float = 0.0, max_fraction: float = 0.5
) -> np.ndarray:
    """Ids ``(R, 2)`` of the examples with ``scores < threshold``, at most
    ``floor(max_fraction * n_t)`` per task (the lowest scores first) and never a task's
    last example."""
    if not 0.0 <= max_fraction < 1.0:
        raise ConfigError(f"max_fraction must lie in [0, 1), got {max_fraction}")
    picked = []
    for t in np.unique(ids[:, 0]):
        rows = np.flatnonzero(ids[:, 0] == t)
        cap = min(int(max_fraction * len(rows)), len(rows) - 1)
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


def select_data(
    taskset: TaskSet,
    ctx: RelateContext,
    target: str | int | None = None,
    threshold: float = 0.0,
    max_fraction: float = 0.5,
    seed: int = 0,
    data: DataConfig | Mapping[str, Any] | None = None,
    stl: Mapping[str, Any] | None = None,
    mtif_options: Mapping[str, Any] | None = None,
) -> SelectionResult:
    """Remove the training examples MTIF predicts to hurt ``target``, retrain, compare.

    Args:
        taskset: the data.
        ctx: model, training config, executor and cache (as for relatedness methods).
        target: task name or position; None: the average test loss over tasks.
        threshold: remove examples whose score is below it (0: predicted harmful).
        max_fraction: at most this fraction of each task's training examples is removed.
        seed: seed of the random-removal baseline.
        data: spec rebuilding ``taskset`` in retraining jobs (see
            :class:`~taskrel.relatedness.ground_truth.Retrainer`).
        stl: config of the single-task baseline (default: :func:`stl_config`).
        mtif_options: options of :func:`~taskrel.relatedness.mtif.mtif_relatedness`.

    Returns:
        A :class:`SelectionResult` with test metrics of every setting.
    """
    model = train_model(taskset, ctx.model, ctx.model_config, ctx.train_config)
    options = {**(mtif_options or {}), "instance": True}
    rel = mtif_relatedness(taskset, ctx, model=model, **options)
    assert rel.instance_scores is not None and rel.instance_ids is not None
    if target is None:
        name, scores = "average", rel.instance_scores.mean(axis=1)
    else:
        pos = taskset.index(target) if isinstance(target, str) else int(target)
        name, scores = taskset.names[pos], rel.instance_scores[:, pos]
    removed = harmful_examples(scores, rel.instance_ids, threshold, max_fraction)
    random_removed = random_like(removed, taskset, seed)
    with Retrainer(taskset, ctx, data) as rt:
        pruned, random_run = rt.run(
            [{"drop_ids": removed.tolist()}, {"drop_ids": random_removed.tolist()}]
        )
    stl_ctx = dataclasses.replace(
        ctx, model="stl", model_config=dict(stl or stl_config(ctx.model_config))
    )
    with Retrainer(taskset, stl_ctx, data) as rt:
        (stl_run,) = rt.run([{}])
    metrics = {
        "all": evaluate(model, taskset, "test"),
        "mtif": pruned["metrics"],
        "random": random_run["metrics"],
        "stl": stl_run["metrics"],
    }
    summary = {s: summarize(m) for s, m in metrics.items()}
    meta = {
        "threshold": threshold,
        "max_fraction": max_fraction,
        "seed": seed,
        "n_removed": len(removed),
        "n_train": len(rel.instance_ids),
        "removed_per_task": {
            n: int((removed[:, 0] == t).sum()) for t, n in enumerate(taskset.names)
        },
        "mtif": {k: rel.meta[k] for k in ("solver", "structure", "timings_s")},
    }
    return SelectionResult(
        name, rel.instance_ids, scores, removed, random_removed, metrics, summary, meta
    )
