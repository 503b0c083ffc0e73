"""Ground truth by retraining: LOTO, pairwise, LOO/LDS helpers, caching, data specs."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest

from taskrel.data.taskset import TaskSet
from taskrel.execution import Executor, Job
from taskrel.relatedness import RelateContext, Relatedness, relate
from taskrel.relatedness.ground_truth import (
    linear_datamodeling_score,
    load_data,
    random_subsets,
    retrain,
    snapshot_taskset,
    train_model,
)
from taskrel.relatedness.mtif import MTIF
from taskrel.training.trainer import TrainConfig

CONVEX = {"hidden": [], "shared_head": True, "l2": 1e-2, "l2_task": 1e-1}
LBFGS = TrainConfig(
    optimizer="lbfgs", lr=1.0, epochs=1, lbfgs_max_iter=300, patience=None, dtype="float64"
)
DATA = {
    "name": "synthetic-regression",
    "options": {
        "clusters": 2,
        "cluster_size": 2,
        "n_unrelated": 0,
        "n_adversarial": 1,
        "n_per_task": 80,
        "n_features": 5,
        "seed": 4,
    },
    "standardize": "task",
}


@pytest.fixture(scope="module")
def taskset() -> TaskSet:
    return load_data(DATA)


class _NoRun(Executor):
    """Fails if any job has to run: everything must come from the cache."""

    def _run(self, jobs: Sequence[Job], ids: Sequence[int]) -> Iterator[tuple[int, Any]]:
        if jobs:
            raise AssertionError(f"{len(jobs)} jobs were not cached")
        yield from ()


def test_loto_equals_task_removed_newton_step(taskset: TaskSet, tmp_path) -> None:
    """For a quadratic objective one Newton step with H - H_j is the exact retrained
    optimum, so MTIF's Newton task matrix must equal LOTO retraining (diagonal too), and
    a second run is served from the cache."""
    ctx = RelateContext(model="hard", model_config=CONVEX, train_config=LBFGS, cache_dir=tmp_path)
    loto = relate(taskset, "ground-truth", ctx, data=DATA)
    engine = MTIF(train_model(taskset, "hard", CONVEX, LBFGS), taskset)
    newton = engine.newton_task_matrix()
    np.testing.assert_allclose(newton, loto.matrix, rtol=1e-4, atol=1e-6)
    assert np.all(np.diag(loto.matrix) > 0)  # a task's own data help it
    cached = relate(
        taskset,
        "ground-truth",
        RelateContext(
            model="hard",
            model_config=CONVEX,
            train_config=LBFGS,
            cache_dir=tmp_path,
            executor=_NoRun(),
        ),
        data=DATA,
    )
    np.testing.assert_array_equal(cached.matrix, loto.matrix)


def test_single_task_models_show_no_transfer(taskset: TaskSet) -> None:
    ctx = RelateContext(model="stl", model_config={"hidden": [], "l2": 1e-1}, train_config=LBFGS)
    small = taskset.select_tasks([0, 1, 4])
    off = ~np.eye(3, dtype=bool)
    pairwise = relate(small, "pairwise", ctx)
    loto = relate(small, "ground-truth", ctx)
    assert np.abs(pairwise.matrix[off]).max() < 1e-7
    assert np.abs(loto.matrix[off]).max() < 1e-7
    assert np.all(np.diag(pairwise.matrix) == 0) and np.all(np.diag(loto.matrix) > 0)


def test_pairwise_matches_direct_retraining(taskset: TaskSet, tmp_path) -> None:
    ctx = RelateContext(model="hard", model_config=CONVEX, train_config=LBFGS)
    small = taskset.select_tasks([0, 1, 4])
    pairwise = relate(small, "pairwise", ctx).matrix
    spec = snapshot_taskset(small, tmp_path)
    alone = retrain(spec, "hard", CONVEX, LBFGS.model_dump(), tasks=[2])["test_loss"][0]
    with_0 = retrain(spec, "hard", CONVEX, LBFGS.model_dump(), tasks=[2, 0])["test_loss"][0]
    assert pairwise[2, 0] == pytest.approx(alone - with_0, abs=1e-9)


def test_snapshot_round_trip(taskset: TaskSet, tmp_path) -> None:
    spec = snapshot_taskset(taskset, tmp_path)
    assert snapshot_taskset(taskset, tmp_path) == spec  # content-addressed
    back = load_data(spec)
    assert back.names == taskset.names
    for a, b in zip(back.tasks, taskset.tasks, strict=True):
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.train_idx, b.train_idx)
        np.testing.assert_array_equal(a.test_idx, b.test_idx)
    other = taskset.drop_train(np.array([[0, taskset.tasks[0].train_idx[0]]]))
    assert snapshot_taskset(other, tmp_path)["sha256"] != spec["sha256"]


def test_random_subsets_and_lds(taskset: TaskSet) -> None:
    subsets = random_subsets(taskset, 5, fraction=0.5, seed=0)
    for s in subsets:
        for t, task in enumerate(taskset.tasks):
            rows = s[s[:, 0] == t, 1]
            assert len(rows) == round(0.5 * len(task.train_idx))
            assert np.isin(rows, task.train_idx).all() and len(np.unique(rows)) == len(rows)
    ids = taskset.train_ids()
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(len(ids), len(taskset)))
    index = {tuple(i): n for n, i in enumerate(ids.tolist())}
    exact = np.stack([scores[[index[tuple(r)] for r in s.tolist()]].sum(0) for s in subsets])
    np.testing.assert_allclose(linear_datamodeling_score(scores, ids, subsets, 3 * exact + 1), 1.0)
    np.testing.assert_allclose(linear_datamodeling_score(scores, ids, subsets, -exact), -1.0)


def test_cli_ground_truth_and_select_write_run_folders(tmp_path) -> None:
    from taskrel.cli import main

    common = [
        "--data", "synthetic-regression",
        "--set", "data.options={\"n_per_task\": 60, \"n_features\": 4, \"clusters\": 1, "
        "\"cluster_size\": 2, \"n_unrelated\": 0, \"n_adversarial\": 1}",
        "--set", "model.hidden=[]", "--set", "model.shared_head=true",
        "--set", "model.l2=0.01", "--set", "model.l2_task=0.1",
        "--set", "train.optimizer=lbfgs", "--set", "train.lr=1", "--set", "train.epochs=1",
        "--set", "train.patience=null", "--set", "train.dtype=float64",
    ]  # fmt: skip
    assert main(["ground-truth", "--kind", "loto", *common, "--out", str(tmp_path / "gt")]) == 0
    loto = Relatedness.load(tmp_path / "gt" / "relatedness" / "loto.json")
    assert loto.matrix.shape == (3, 3) and np.all(np.diag(loto.matrix) > 0)
    assert main(["select", *common, "--out", str(tmp_path / "sel")]) == 0
    doc = json.loads((tmp_path / "sel" / "selection.json").read_text())
    assert set(doc["metrics"]) == {"all", "mtif", "random", "stl"}
    assert (tmp_path / "sel" / "removed.csv").read_text().startswith("task,row,score")
    assert main(["ground-truth", "--kind", "bogus", *common]) == 2
