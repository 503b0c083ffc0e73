"""Resampled splits and resampled ground truths: sizes kept, repeats reproducible, a
killed sweep resumes to identical results, the datamodel fit, and bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import taskrel.relatedness.ground_truth as gt
from taskrel.data import load
from taskrel.data.taskset import Task, TaskSet
from taskrel.errors import ConfigError, DataError
from taskrel.relatedness import RelateContext
from taskrel.relatedness.resample import (
    average,
    distinct_splits,
    plan_repeats,
    resplit,
    split_seed,
)
from taskrel.relatedness.result import Relatedness
from taskrel.training import TrainConfig

EXACT = TrainConfig(optimizer="lbfgs", lr=1.0, epochs=2, patience=None, dtype="float64")
LINEAR = {"hidden": [], "shared_head": True, "l2": 1e-2, "l2_task": 1.0}


@pytest.fixture(scope="module")
def four() -> TaskSet:
    return load(
        "synthetic-regression",
        clusters=2,
        cluster_size=2,
        n_unrelated=0,
        n_adversarial=0,
        n_per_task=30,
        n_features=4,
        seed=3,
    ).standardize()


def test_resplit_keeps_sizes_and_rows_and_depends_only_on_its_seed() -> None:
    ts = load("synthetic", n_per_task=60, train=0.3, val=0.1, seed=0)
    a, b = resplit(ts, 7), resplit(ts, 7)
    assert a.sizes() == ts.sizes()
    for old, new, again in zip(ts.tasks, a.tasks, b.tasks, strict=True):
        np.testing.assert_array_equal(new.train_idx, again.train_idx)
        pooled = np.sort(np.concatenate([new.train_idx, new.val_idx, new.test_idx]))
        np.testing.assert_array_equal(pooled, np.arange(old.n_examples))
        assert not np.array_equal(new.train_idx, old.train_idx)
        # stratified: the class balance of the training split follows the task's
        share = old.y.mean()
        assert abs(old.y[new.train_idx].mean() - share) <= 1.0 / len(new.train_idx) + 1e-9
    assert not np.array_equal(resplit(ts, 8).tasks[0].train_idx, a.tasks[0].train_idx)


def test_plan_keeps_the_original_split_first_then_new_splits_and_seeds() -> None:
    ts = load("synthetic", n_per_task=40)
    plan = plan_repeats(ts, 3, seed=5, train_seed=10, seed_repeats=2)
    assert [(p.role, p.split_seed, p.train_seed) for p in plan] == [
        ("resample", None, 10),
        ("resample", split_seed(5, 1), 11),
        ("resample", split_seed(5, 2), 12),
        ("seed", None, 11),
        ("seed", None, 12),
    ]


def test_bad_repeats_give_one_line_errors() -> None:
    ts = load("synthetic", n_per_task=40)
    with pytest.raises(ConfigError, match="repeats must be an integer >= 1, got 0"):
        plan_repeats(ts, 0)
    with pytest.raises(ConfigError, match="seed_repeats must be an integer >= 0, got -1"):
        plan_repeats(ts, 2, seed_repeats=-1)
    x, y = np.zeros((3, 2), np.float32), np.arange(3, dtype=np.float32)
    tiny = TaskSet("tiny", (Task("t", "regression", x, y, 1, [0, 1], test_idx=[2]),))
    assert distinct_splits(2, 0, 1) == 3 and len(plan_repeats(tiny, 3)) == 3
    with pytest.raises(ConfigError, match=r"repeats=4: task 't' has only 3 distinct .*<= 3"):
        plan_repeats(tiny, 4)
    no_test = TaskSet("no-test", (Task("t", "regression", x, y, 1, [0, 1, 2]),))
    with pytest.raises(DataError, match="'t' is too small to re-split for repeats"):
        plan_repeats(no_test, 2)
    assert len(plan_repeats(no_test, 1)) == 1  # one repeat keeps the split as it is


def _loto(taskset: TaskSet, cache: Path | None, repeats: int, **kw: Any) -> Relatedness:
    ctx = RelateContext(model_config=LINEAR, train_config=EXACT, cache_dir=cache)
    return gt.loto_relatedness(taskset, ctx, repeats=repeats, **kw)


def test_each_repeat_is_the_ground_truth_of_its_resplit(four: TaskSet, tmp_path: Path) -> None:
    rel = _loto(four, tmp_path, 2, seed=4)
    single = _loto(four, tmp_path, 1)  # repeat 0's jobs: all cached
    np.testing.assert_allclose(rel.meta["per_repeat"][0], single.matrix, atol=1e-12)
    ctx = RelateContext(model_config=LINEAR, train_config=EXACT.model_copy(update={"seed": 1}))
    second = gt.loto_relatedness(resplit(four, split_seed(4, 1)), ctx)
    np.testing.assert_allclose(rel.meta["per_repeat"][1], second.matrix, atol=1e-12)
    np.testing.assert_allclose(rel.matrix, rel.meta["per_repeat"].mean(0))
    np.testing.assert_allclose(
        rel.meta["stderr"], np.abs(single.matrix - second.matrix) / 2.0, atol=1e-12
    )  # std (ddof=1) of two values / sqrt(2) = |a - b| / 2
    assert rel.meta["repeats"] == 2 and 0.0 <= rel.meta["ceiling"] <= 1.0


def test_killed_resampled_sweep_resumes_to_identical_results(
    four: TaskSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = _loto(four, None, 2, seed_repeats=1)
    calls = {"n": 0}
    real = gt.train_model

    def dies_after_seven(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] > 7:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(gt, "train_model", dies_after_seven)
    with pytest.raises(RuntimeError, match="killed"):
        _loto(four, tmp_path, 2, seed_repeats=1)
    assert len(list((tmp_path / "retrain").glob("*.pkl"))) == 7
    monkeypatch.setattr(gt, "train_model", real)
    resumed = _loto(four, tmp_path, 2, seed_repeats=1)
    assert len(list((tmp_path / "retrain").glob("*.pkl"))) == 3 * (len(four) + 1)
    np.testing.assert_array_equal(resumed.matrix, reference.matrix)
    np.testing.assert_array_equal(resumed.meta["per_repeat"], reference.meta["per_repeat"])
    np.testing.assert_array_equal(
        resumed.meta["seed_only_per_repeat"], reference.meta["seed_only_per_repeat"]
    )
    assert resumed.meta["reliability"] == reference.meta["reliability"]
    # a convex model trained to its optimum: a new seed on the same split changes nothing
    assert resumed.meta["seed_only_agreement"] == pytest.approx(1.0)


def test_datamodel_fit_recovers_additive_effects() -> None:
    rng = np.random.default_rng(0)
    t = 5
    effect = rng.normal(size=(t, t))
    np.fill_diagonal(effect, 0.0)
    member = gt.balanced_membership(t, 24, 0.5, rng)
    assert (member.sum(0) == 12).all() and member.any(1).all()
    losses = np.where(member, 3.0 - member.astype(float) @ effect.T, np.nan)
    np.testing.assert_allclose(gt.datamodel_matrix(member, losses), effect, atol=1e-10)


def test_subsets_ground_truth_over_repeats(four: TaskSet) -> None:
    ctx = RelateContext(model_config=LINEAR, train_config=EXACT)
    rel = gt.subsets_relatedness(four, ctx, n_subsets=12, repeats=2, seed_repeats=1)
    assert rel.method == "subsets" and rel.meta["retrainings"] <= 3 * 12
    # the seed-only repeat trains repeat 0's subsets on its split: a convex optimum
    np.testing.assert_allclose(
        rel.meta["seed_only_per_repeat"][1], rel.meta["per_repeat"][0], atol=1e-6
    )
    assert rel.meta["per_repeat"].shape == (2, 4, 4)
    np.testing.assert_array_equal(np.diag(rel.matrix), 0.0)
    with pytest.raises(ConfigError, match="n_subsets=6 .* expected at least T \\+ 1 = 5"):
        gt.subsets_relatedness(four, ctx, n_subsets=6)
    with pytest.raises(ConfigError, match="warm_start needs repeats=1"):
        gt.loto_relatedness(four, ctx, warm_start=True, repeats=2)


def test_average_stacks_and_sums_durations() -> None:
    names = ["a", "b"]
    one = Relatedness(np.eye(2), names, "m", meta={"wall_time_s": 1.0, "timings_s": {"x_s": 2}})
    two = Relatedness(3 * np.eye(2), names, "m", meta={"wall_time_s": 2.0, "timings_s": {"x_s": 1}})
    mean = average([one, two])
    np.testing.assert_array_equal(mean.matrix, 2 * np.eye(2))
    assert mean.meta["wall_time_s"] == 3.0 and mean.meta["timings_s"] == {"x_s": 3.0}
    assert mean.meta["per_repeat"].shape == (2, 2, 2) and mean.meta["repeats"] == 2
