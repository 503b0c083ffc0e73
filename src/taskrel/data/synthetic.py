"""Synthetic task sets with a *known* relatedness structure: the yardstick for every
relatedness method.

Each task t has a generating weight matrix ``W_t`` of shape ``(d, C)`` (``C = 1`` for
regression). Tasks come in groups:

- ``clusters`` clusters of ``cluster_size`` tasks: ``W_t = W_k + spread * E_t`` around a
  shared cluster centre ``W_k`` (related tasks);
- ``n_unrelated`` tasks with independent weights (no relation);
- ``n_adversarial`` tasks with ``W_t = -W_k + spread * E_t`` for cluster ``k = 0, 1, ...``
  in turn: their optimum conflicts with a cluster's (negative transfer).

Regression targets are ``y = x W_t + noise``; classification labels are
``argmax(x W_t + noise)``. ``meta['similarity']`` holds the ground-truth task similarity,
the cosine between the (column-centred, flattened) generating weights: about +1 inside a
cluster, about 0 for unrelated pairs and about -1 between a cluster and its adversary.
``meta['groups']`` names each task's group (``c0``, ``c1``, ..., ``unrelated``,
``adv-c0``...).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from taskrel.data.taskset import Task, TaskSet
from taskrel.errors import DataError


def load_synthetic(
    kind: Literal["classification", "regression"] = "classification",
    clusters: int = 2,
    cluster_size: int = 3,
    n_unrelated: int = 1,
    n_adversarial: int = 1,
    n_per_task: int = 200,
    n_features: int = 20,
    n_classes: int = 2,
    spread: float = 0.3,
    noise: float = 0.5,
    train: float | int = 0.3,
    val: float | int = 0.1,
    seed: int = 0,
) -> TaskSet:
    """Generate a task set with known structure (see module docstring).

    Args:
        kind: ``classification`` or ``regression``.
        clusters, cluster_size: number of clusters of related tasks and tasks per cluster.
        n_unrelated: tasks with independent weights.
        n_adversarial: tasks whose weights are the negation of a cluster centre.
        n_per_task: examples generated per task (before the split).
        n_features: input dimension ``d``.
        n_classes: classes per task (classification only).
        spread: std of each task's deviation from its cluster centre, relative to the
            centre's (unit) scale.
        noise: std of the noise added to ``x W_t``.
        train, val: split sizes (fractions or counts); the rest is the test split.
        seed: seeds both the generation and the split.
    """
    if kind not in ("classification", "regression"):
        raise DataError(f"synthetic: kind must be 'classification' or 'regression', got {kind!r}")
    if clusters < 0 or cluster_size < 1 or n_unrelated < 0 or n_adversarial < 0:
        raise DataError("synthetic: clusters, n_unrelated, n_adversarial must be >= 0")
    if n_adversarial and clusters == 0:
        raise DataError("synthetic: adversarial tasks need at least one cluster to oppose")
    n_tasks = clusters * cluster_size + n_unrelated + n_adversarial
    if n_tasks < 2:
        raise DataError(f"synthetic: need at least 2 tasks, the options give {n_tasks}")
    rng = np.random.default_rng(seed)
    d = n_features
    c = n_classes if kind == "classification" else 1
    scale = 1.0 / np.sqrt(d)
    centres = rng.normal(0.0, scale, size=(max(clusters, 1), d, c))

    weights: list[np.ndarray] = []
    groups: list[str] = []
    for k in range(clusters):
        for _ in range(cluster_size):
            weights.append(centres[k] + spread * rng.normal(0.0, scale, size=(d, c)))
            groups.append(f"c{k}")
    for _ in range(n_unrelated):
        weights.append(rng.normal(0.0, scale, size=(d, c)))
        groups.append("unrelated")
    for a in range(n_adversarial):
        k = a % clusters
        weights.append(-centres[k] + spread * rng.normal(0.0, scale, size=(d, c)))
        groups.append(f"adv-c{k}")

    tasks = []
    for t, w in enumerate(weights):
        x = rng.normal(size=(n_per_task, d)).astype(np.float32)
        signal = x @ w
        signal = signal / signal.std() if signal.std() > 0 else signal
        out = signal + noise * rng.normal(size=signal.shape)
        if kind == "classification":
            y = out.argmax(axis=1).astype(np.int64) if c > 1 else (out[:, 0] > 0).astype(np.int64)
            n_out = max(c, 2)
        else:
            y = out[:, 0].astype(np.float32)
            n_out = 1
        tasks.append(
            Task(
                name=f"t{t}-{groups[t]}",
                kind=kind,
                x=x,
                y=y,
                n_outputs=n_out,
                train_idx=np.arange(n_per_task),
            )
        )
    flat = np.stack(
        [(w - w.mean(axis=1, keepdims=True)).ravel() if c > 1 else w.ravel() for w in weights]
    )
    flat = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    similarity = flat @ flat.T
    ts = TaskSet(
        name="synthetic",
        tasks=tuple(tasks),
        meta={"similarity": similarity, "groups": groups, "kind": kind},
    )
    return ts.split(train=train, val=val, seed=seed)
