from __future__ import annotations

import numpy as np
import pytest

from taskrel.data import load
from taskrel.data.taskset import Task, TaskSet
from taskrel.errors import DataError


def _task(name: str = "a", n: int = 20, classes: int = 2) -> Task:
    rng = np.random.default_rng(0)
    return Task(
        name,
        "classification",
        rng.normal(size=(n, 3)).astype(np.float32),
        np.arange(n) % classes,
        classes,
        train_idx=np.arange(n),
    )


def test_split_is_deterministic_and_disjoint() -> None:
    ts = TaskSet("toy", (_task("a", 50), _task("b", 40)))
    s1, s2 = ts.split(0.3, val=0.1, seed=4), ts.split(0.3, val=0.1, seed=4)
    s3 = ts.split(0.3, val=0.1, seed=5)
    for t1, t2 in zip(s1, s2, strict=True):
        np.testing.assert_array_equal(t1.train_idx, t2.train_idx)
        np.testing.assert_array_equal(t1.test_idx, t2.test_idx)
    assert not np.array_equal(s1[0].train_idx, s3[0].train_idx)
    a = s1["a"]
    assert (len(a.train_idx), len(a.val_idx), len(a.test_idx)) == (15, 5, 30)
    assert len(np.unique(np.concatenate([a.train_idx, a.val_idx, a.test_idx]))) == 50


def test_split_by_count_and_stratified() -> None:
    ts = TaskSet("toy", (_task("a", 100, classes=4), _task("b", 100, classes=4)))
    s = ts.split(train=20, val=8, test=40, seed=0)
    t = s["a"]
    assert (len(t.train_idx), len(t.val_idx), len(t.test_idx)) == (20, 8, 40)
    # 4 balanced classes, 20 training rows: stratification gives exactly 5 of each
    assert np.bincount(t.y[t.train_idx], minlength=4).tolist() == [5, 5, 5, 5]


def test_global_ids_and_drop_keep() -> None:
    ts = TaskSet("toy", (_task("a", 10), _task("b", 10))).split(train=4, seed=0)
    ids = ts.train_ids()
    assert ids.shape == (8, 2)
    assert ids[:4, 0].tolist() == [0] * 4 and ids[4:, 0].tolist() == [1] * 4
    dropped = ts.drop_train(ids[:2])
    assert len(dropped["a"].train_idx) == 2 and len(dropped["b"].train_idx) == 4
    assert set(dropped["a"].train_idx) == set(ids[2:4, 1])
    kept = ts.keep_train(ids[4:6])
    assert kept.names == ["b"] and kept["b"].train_idx.tolist() == sorted(ids[4:6, 1].tolist())
    with pytest.raises(DataError, match="not training examples"):
        ts.drop_train([(0, int(ts["a"].test_idx[0]))])
    with pytest.raises(DataError, match="leaves no training data"):
        ts.drop_train(ids[:4])


def test_standardize_fits_on_training_rows_only() -> None:
    ts = TaskSet("toy", (_task("a", 200), _task("b", 200))).split(0.25, seed=0)
    raw = ts["a"]
    shifted = Task(
        raw.name,
        raw.kind,
        raw.x + np.float32(5.0) * (np.arange(200) % 2 == 0)[:, None],
        raw.y,
        2,
        raw.train_idx,
        raw.val_idx,
        raw.test_idx,
    )
    std = ts.with_tasks([shifted, ts["b"]]).standardize()
    a = std["a"]
    np.testing.assert_allclose(a.x[a.train_idx].mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(a.x[a.train_idx].std(0), 1.0, atol=1e-4)
    assert not np.allclose(a.x[a.test_idx].mean(0), 0.0, atol=1e-3)
    # the scaler is exactly the training rows' mean/std
    train = shifted.x[shifted.train_idx]
    expected = (shifted.x - train.mean(0)) / train.std(0)
    np.testing.assert_allclose(a.x, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: TaskSet("x", ()), "no tasks"),
        (lambda: TaskSet("x", (_task("a"), _task("a"))), "duplicate task names"),
        (
            lambda: Task(
                "a", "classification", np.zeros((3, 2)), np.array([0, 1, 5]), 2, np.arange(3)
            ),
            r"class labels must lie in \[0, 2\)",
        ),
        (
            lambda: Task(
                "a", "classification", np.zeros((3, 2)), np.zeros(4, int), 2, np.arange(3)
            ),
            "x has 3 rows but y has 4",
        ),
        (
            lambda: Task(
                "a",
                "ranking",
                np.zeros((3, 2)),
                np.zeros(3),
                1,  # type: ignore[arg-type]
                np.arange(3),
            ),
            "kind 'ranking'",
        ),
        (
            lambda: Task(
                "a", "regression", np.zeros((3, 2)), np.zeros(3), 1, [0, 1], test_idx=[1, 2]
            ),
            "overlap",
        ),
    ],
)
def test_invalid_tasks_are_rejected(build, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DataError, match=message):
        build()


def test_synthetic_similarity_reflects_structure() -> None:
    ts = load("synthetic", seed=3)
    sim = ts.meta["similarity"]
    groups = ts.meta["groups"]
    assert len(ts) == 8 and groups.count("c0") == 3 and groups.count("unrelated") == 1
    c0 = [i for i, g in enumerate(groups) if g == "c0"]
    adv = groups.index("adv-c0")
    within = [sim[i, j] for i in c0 for j in c0 if i != j]
    assert min(within) > 0.6
    assert max(sim[adv, i] for i in c0) < -0.6
    assert ts.select_tasks([0, adv]).meta["similarity"].shape == (2, 2)


def test_synthetic_is_reproducible_and_regression_targets_follow_weights() -> None:
    a, b = load("synthetic-regression", seed=2), load("synthetic-regression", seed=2)
    np.testing.assert_array_equal(a[0].x, b[0].x)
    np.testing.assert_array_equal(a[0].y, b[0].y)
    assert a[0].kind == "regression" and a[0].y.dtype == np.float32
    # noise 0.5 on a unit-variance signal: a least-squares fit explains ~80% of the variance
    t = load("synthetic-regression", noise=0.5, n_per_task=2000, seed=2)[0]
    w, *_ = np.linalg.lstsq(t.x, t.y, rcond=None)
    r2 = 1 - np.var(t.y - t.x @ w) / np.var(t.y)
    assert 0.7 < r2 < 0.9


def test_unknown_dataset_name_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="unknown dataset 'nope'.*synthetic"):
        load("nope")
    with pytest.raises(DataError, match="missing.csv: no such file"):
        load("missing.csv")
