"""Decision evaluation: subset outcomes are the losses of training each group, the exact
(retraining) predictor reproduces the oracle, and the statistics (group LDS, its ceiling,
CIs) have their closed-form values."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import three_task_group_args
from sklearn.metrics import adjusted_rand_score

from taskrel.cli import main
from taskrel.data.taskset import TaskSet
from taskrel.decisions.evaluate import (
    SubsetOutcomes,
    evaluate_decisions,
    group_lds,
    group_lds_reliability,
    random_partitions,
    random_subsets,
    ratio_ci,
    selection_view,
    t_interval,
)
from taskrel.decisions.predictors import PREDICTORS, RetrainPredictor
from taskrel.errors import ConfigError
from taskrel.relatedness import RelateContext
from taskrel.relatedness.ground_truth import train_model
from taskrel.training.metrics import evaluate
from taskrel.training.trainer import TrainConfig, TrainingInterrupted

CONVEX = {"hidden": [], "shared_head": True, "l2": 1e-2, "l2_task": 1e-1}
EXACT = TrainConfig(optimizer="lbfgs", lr=1.0, epochs=2, patience=None, dtype="float64")


def context(tmp_path: Path) -> RelateContext:
    return RelateContext(model="hard", model_config=CONVEX, train_config=EXACT, cache_dir=tmp_path)


def test_subset_outcomes_are_the_losses_of_training_each_group(
    synthetic_reg: TaskSet, tmp_path: Path
) -> None:
    ctx = context(tmp_path)
    groups = [[0, 2], [1], [3]]
    with SubsetOutcomes(synthetic_reg, ctx) as outcomes:
        test, val = outcomes.partition(groups, "test"), outcomes.partition(groups, "val")
        metrics = outcomes.partition_metrics(groups)
        with pytest.raises(ConfigError, match="more than one group"):
            outcomes.partition([[0, 1], [1, 2, 3]], "test")
    view = selection_view(synthetic_reg)
    for g in groups:
        part = synthetic_reg.select_tasks(g)
        model = train_model(part, "hard", CONVEX, EXACT)
        by_hand = evaluate(model, part, "test")
        on_val = evaluate(model, view.select_tasks(g), "test")  # view: test = validation
        for pos, name in zip(g, part.names, strict=True):
            assert test[pos] == pytest.approx(by_hand[name]["loss"], rel=1e-9)
            assert val[pos] == pytest.approx(on_val[name]["loss"], rel=1e-9)
            assert metrics[name] == pytest.approx(by_hand[name])
    for seen, task in zip(view.tasks, synthetic_reg.tasks, strict=True):
        assert np.array_equal(seen.test_idx, task.val_idx) and len(seen.val_idx) == 0


class Broken(RetrainPredictor):
    """A predictor whose fit fails (the evaluation reports it and goes on)."""

    def _fit(self, taskset: TaskSet, ctx: RelateContext) -> None:
        raise ConfigError("broken on purpose")


class Interrupted(RetrainPredictor):
    """A predictor whose training is interrupted (Ctrl-C or SIGTERM during its fit)."""

    def _fit(self, taskset: TaskSet, ctx: RelateContext) -> None:
        raise TrainingInterrupted(None, 3)


def test_an_interrupted_predictor_stops_the_evaluation_instead_of_being_left_out(
    synthetic_reg: TaskSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(PREDICTORS, "interrupted", f"{__name__}:Interrupted")
    with pytest.raises(TrainingInterrupted, match="after epoch 3"):
        evaluate_decisions(
            [synthetic_reg.select_tasks([0, 1, 2])],
            context(tmp_path),
            ["interrupted", "retrain"],
            skip_failures=True,
        )


def test_the_exact_predictor_reproduces_the_oracle(
    synthetic_reg: TaskSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    three = synthetic_reg.select_tasks([0, 1, 2])  # clusters c0, c0, c1
    lds = [[0, 1], [0, 2], [1, 2], [0, 1, 2]]
    monkeypatch.setitem(PREDICTORS, "broken", f"{__name__}:Broken")
    report = evaluate_decisions(
        [three],
        context(tmp_path),
        ["broken", "retrain"],
        planted=[0, 0, 1],
        n_random=2,
        lds_subsets=lds,
        skip_failures=True,
    )
    assert report.predictors == ["retrain"]
    assert report.failures == {"broken": "ConfigError: broken on purpose"}
    partitions = [[[0, 1, 2]], [[0], [1], [2]], [[0, 1], [2]], [[0, 2], [1]], [[0], [1, 2]]]
    with SubsetOutcomes(three, context(tmp_path)) as outcomes:
        everything = outcomes.partition([[0, 1, 2]], "test")
        val = [outcomes.partition(p, "val").sum() for p in partitions]
        test = [outcomes.partition(p, "test").sum() for p in partitions]
    (r,) = report.repeats
    chosen = r.decisions["retrain"]
    assert r.oracle_search == "exhaustive"
    assert r.oracle_groups == partitions[int(np.argmin(val))]  # best of all 5 partitions
    assert chosen.grouping.groups == r.oracle_groups  # exact predictions on validation
    assert chosen.grouping.predicted is not None
    assert chosen.grouping.predicted.sum() == pytest.approx(min(val), rel=1e-9)
    assert r.oracle is not None and np.allclose(chosen.test_loss, r.oracle)
    np.testing.assert_allclose(r.all_in_one, everything, rtol=1e-9)
    assert r.hindsight is not None and r.hindsight.sum() == pytest.approx(min(test), rel=1e-9)
    assert chosen.random_test_loss.shape == (2, 3)
    assert r.lds_actual is not None and r.lds_actual.shape == (4, 3)
    row = report.summary()["retrain"]
    if abs(r.all_in_one.mean() - r.oracle.mean()) > 1e-12:
        assert row["fraction_of_oracle_gain"]["value"] == pytest.approx(1.0)
    assert row["group_lds"]["per_target"]["mean"] == pytest.approx(1.0)
    expected_ari = adjusted_rand_score([0, 0, 1], chosen.grouping.labels())
    assert row["ari"]["n"] == 1 and row["ari"]["mean"] == pytest.approx(expected_ari)
    assert row["cost_vs_oracle"]["mean"] > 0
    with pytest.raises(ConfigError, match="every repeat must have the tasks"):
        evaluate_decisions([three, synthetic_reg], context(tmp_path), [])
    with pytest.raises(ConfigError, match="broken on purpose"):  # by default an error stops
        evaluate_decisions([three], context(tmp_path), ["broken"])


def test_group_lds_and_its_ceiling_on_hand_made_tables() -> None:
    actual = np.array([[1.0, np.nan], [2.0, 5.0], [3.0, 4.0], [4.0, 3.0], [5.0, np.nan]])
    np.testing.assert_allclose(group_lds(actual, actual), [1.0, 1.0])
    np.testing.assert_allclose(group_lds(-actual, actual), [-1.0, -1.0])
    assert math.isnan(group_lds(actual, actual, min_subsets=4)[1])  # 3 subsets hold task 1
    rng = np.random.default_rng(0)
    signal = rng.normal(size=(40, 2))
    same = np.stack([signal] * 4)
    np.testing.assert_allclose(group_lds_reliability(same), [1.0, 1.0])
    noisy = signal + rng.normal(scale=100.0, size=(4, 40, 2))
    assert np.all(np.abs(group_lds_reliability(noisy)) < 0.6)
    with pytest.raises(ConfigError, match="R >= 2"):
        group_lds_reliability(same[:1])


def test_statistics_and_random_partitions() -> None:
    s = t_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t_{0.975, 2} * std 1 / sqrt(3)
    assert (s["mean"], s["std"], s["n"]) == (2.0, 1.0, 3)
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((2 - half, 2 + half))
    r = ratio_ci(np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 2.0]))
    assert r["value"] == pytest.approx(1.0) and r["ci_low"] <= 1.0 <= r["ci_high"]
    parts = random_partitions([3, 1, 2], 5, seed=0)
    assert len(parts) == 5
    for p in parts:
        assert sorted(len(g) for g in p) == [1, 2, 3]
        assert sorted(x for g in p for x in g) == list(range(6))
    assert parts == random_partitions([3, 1, 2], 5, seed=0)
    subsets = random_subsets(5, 6, seed=1)
    assert len(subsets) == 6 and len({tuple(s) for s in subsets}) == 6
    assert all(len(s) >= 2 for s in subsets)


def test_cli_group_with_a_predictor_prints_predicted_and_actual_outcomes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKREL_PROGRESS_INTERVAL", "0")  # piped: a progress line per choice
    args = three_task_group_args(
        "model.hidden=[]",
        'train.optimizer="lbfgs"',
        "train.lr=1.0",
        "train.epochs=2",
        "train.patience=null",
        'train.dtype="float64"',
    )
    out = tmp_path / "run"
    assert main([*args, "--repeats", "1", "--random", "1", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "decisions: choices (predictors, then the oracle) 2/2 choices" in captured.err
    assert "exhaustive search on retrain" in printed
    assert "| predicted | actual | all-in-one | single-task |" in printed  # markdown when piped
    saved = json.loads((out / "grouping.json").read_text())
    per_task = saved["evaluation"]["per_task"]
    assert len(per_task) == 3 and set(saved["predicted"]) == set(per_task)
    losses = saved["evaluation"]["mean_test_loss"]
    assert set(losses) >= {"all-in-one", "single-task", "retrain", "random (retrain sizes)"}
    chosen = np.mean([per_task[t]["actual"] for t in per_task])
    assert losses["retrain"][0] == pytest.approx(chosen)
    assert main([*args, "--groups", "4", "--out", str(tmp_path / "bad")]) == 2
    assert "n_groups must lie in [1, 3]" in capsys.readouterr().err


def test_groups_are_never_chosen_on_the_test_split(synthetic_reg: TaskSet, tmp_path: Path) -> None:
    """Without a validation split the choice is made on rows carved from training: noise
    written over the test targets changes the reported test losses, never the choice."""
    empty = np.zeros(0, dtype=np.int64)
    no_val = synthetic_reg.with_tasks(
        [dataclasses.replace(t, val_idx=empty) for t in synthetic_reg.tasks]
    )
    rng = np.random.default_rng(0)
    poisoned_tasks = []
    for t in no_val.tasks:
        y = t.y.copy()
        y[t.test_idx] = rng.normal(scale=50.0, size=len(t.test_idx))
        poisoned_tasks.append(dataclasses.replace(t, y=y))
    poisoned = no_val.with_tasks(poisoned_tasks)
    runs = []
    for name, ts in (("clean", no_val), ("poisoned", poisoned)):
        ctx = context(tmp_path / name)
        report = evaluate_decisions([ts], ctx, ["retrain"], n_random=1)
        runs.append(report.repeats[0])
    clean, dirty = runs
    assert clean.decisions["retrain"].grouping.groups == dirty.decisions["retrain"].grouping.groups
    np.testing.assert_array_equal(
        clean.decisions["retrain"].grouping.predicted, dirty.decisions["retrain"].grouping.predicted
    )
    assert clean.oracle_groups == dirty.oracle_groups
    assert not np.allclose(
        clean.decisions["retrain"].test_loss, dirty.decisions["retrain"].test_loss
    )
    with pytest.raises(ConfigError, match="no validation split"):
        selection_view(no_val)
