"""Data selection: harmful examples found by MTIF, removal beats random removal."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from taskrel.data import load
from taskrel.data.taskset import TaskSet
from taskrel.relatedness import RelateContext
from taskrel.selection import harmful_examples, random_like, select_data, stl_config
from taskrel.training.trainer import TrainConfig

CONVEX = {"hidden": [], "shared_head": True, "l2": 1e-2, "l2_task": 1e-1}
LBFGS = TrainConfig(
    optimizer="lbfgs", lr=1.0, epochs=1, lbfgs_max_iter=300, patience=None, dtype="float64"
)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_harmful_examples_respects_threshold_and_cap() -> None:
    ids = np.array([[0, 10], [0, 11], [0, 12], [0, 13], [1, 5], [1, 6]])
    scores = np.array([-3.0, 1.0, -1.0, -2.0, -1.0, -5.0])
    np.testing.assert_array_equal(
        harmful_examples(scores, ids, max_fraction=0.5), [[0, 10], [0, 13], [1, 6]]
    )
    np.testing.assert_array_equal(
        harmful_examples(scores, ids, threshold=-2.5, max_fraction=0.9), [[0, 10], [1, 6]]
    )
    # never a task's last example, whatever the fraction
    assert len(harmful_examples(scores, ids, max_fraction=0.99)) == 3 + 1


def test_random_like_matches_per_task_counts() -> None:
    ts = load("synthetic", n_per_task=50, seed=0)
    removed = np.array(
        [
            [0, int(ts.tasks[0].train_idx[0])],
            [2, int(ts.tasks[2].train_idx[1])],
            [2, int(ts.tasks[2].train_idx[2])],
        ]
    )
    rand = random_like(removed, ts, seed=1)
    assert [(rand[:, 0] == t).sum() for t in range(len(ts))] == [1, 0, 2, 0, 0, 0, 0, 0]
    for t, r in rand:
        assert r in ts.tasks[t].train_idx
    assert stl_config(CONVEX) == {"hidden": [], "l2": 1e-1}


def test_selection_removes_corrupted_examples_and_beats_random() -> None:
    """20% of task 0's training targets are shifted by +8: MTIF must flag mostly those,
    and retraining without them must lower task 0's test loss more than random removal."""
    ts = load(
        "synthetic-regression",
        clusters=1,
        cluster_size=3,
        n_unrelated=0,
        n_adversarial=0,
        n_per_task=200,
        n_features=5,
        train=0.4,
        val=0.0,
        seed=3,
    ).standardize()
    task = ts.tasks[0]
    rng = np.random.default_rng(0)
    bad = rng.choice(task.train_idx, size=len(task.train_idx) // 5, replace=False)
    y = task.y.copy()
    y[bad] += 8.0
    ts = TaskSet(ts.name, (replace(task, y=y), *ts.tasks[1:]))
    ctx = RelateContext(model="hard", model_config=CONVEX, train_config=LBFGS)
    result = select_data(ts, ctx, target=ts.names[0], max_fraction=0.3, seed=0)
    removed0 = result.removed[result.removed[:, 0] == 0, 1]
    assert len(removed0) > 0
    precision = np.isin(removed0, bad).mean()
    recall = np.isin(bad, removed0).mean()
    assert precision > 0.5 and recall > 0.5
    loss = {s: result.metrics[s][ts.names[0]]["loss"] for s in result.metrics}
    assert loss["mtif"] < loss["all"] and loss["mtif"] < loss["random"]
    assert set(result.metrics) == {"all", "mtif", "random", "stl"}
    assert "| average |" in result.table("rmse")
