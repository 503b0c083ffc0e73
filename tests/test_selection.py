"""Data selection: harmful examples found by MTIF, removal beats random removal; the
selection never reads the test split unless asked to (``score_split="test"``)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import taskrel.pipelines.selection as selection
from taskrel.data import load
from taskrel.data.taskset import TaskSet
from taskrel.errors import ConfigError, TaskrelError
from taskrel.pipelines.selection import (
    OPTIMISTIC,
    harmful_examples,
    random_like,
    select_data,
    stl_config,
)
from taskrel.relatedness import RelateContext
from taskrel.training.regularization import carve_validation
from taskrel.training.trainer import TrainConfig

CONVEX = {"hidden": [], "shared_head": True, "l2": 1e-2, "l2_task": 1e-1}
LBFGS = TrainConfig(
    optimizer="lbfgs", lr=1.0, epochs=1, lbfgs_max_iter=300, patience=None, dtype="float64"
)


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


def _corrupted() -> tuple[TaskSet, np.ndarray]:
    """Three related regression tasks; 20% of task 0's training targets shifted by +8
    (returns the task set and those rows)."""
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
    return TaskSet(ts.name, (replace(task, y=y), *ts.tasks[1:])), bad


def test_selection_removes_corrupted_examples_and_beats_random() -> None:
    """MTIF must flag mostly the corrupted examples, and retraining without them must
    lower task 0's test loss more than random removal."""
    ts, bad = _corrupted()
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


def _regression(val: float) -> TaskSet:
    return load(
        "synthetic-regression",
        clusters=1,
        cluster_size=2,
        n_unrelated=1,
        n_adversarial=0,
        n_per_task=80,
        n_features=4,
        train=0.5,
        val=val,
        seed=2,
    ).standardize()


def _poison_test(ts: TaskSet, seed: int = 0) -> TaskSet:
    """Replace every test row's target and features by noise."""
    rng = np.random.default_rng(seed)
    tasks = []
    for task in ts.tasks:
        x, y = task.x.copy(), task.y.copy()
        x[task.test_idx] = rng.normal(size=x[task.test_idx].shape) * 3
        y[task.test_idx] = rng.normal(size=len(task.test_idx)) * 10
        tasks.append(replace(task, x=x, y=y))
    return ts.with_tasks(tasks)


def test_selection_never_reads_the_test_split_by_default() -> None:
    """Poisoning the test rows leaves the removal set unchanged when scoring on the
    validation split (the default), and changes it when scoring on test."""
    ts = _regression(val=0.2)
    poisoned = _poison_test(ts)
    ctx = RelateContext(model="hard", model_config=CONVEX, train_config=LBFGS)
    clean = select_data(ts, ctx, max_fraction=0.3, seed=0)
    dirty = select_data(poisoned, ctx, max_fraction=0.3, seed=0)
    assert len(clean.removed) > 0
    np.testing.assert_array_equal(clean.removed, dirty.removed)
    np.testing.assert_array_equal(clean.scores, dirty.scores)
    assert clean.summary["all"]["loss"] != dirty.summary["all"]["loss"]  # test read after
    assert not clean.optimistic and clean.meta["validation"]["carved"] is False
    assert OPTIMISTIC not in clean.caption() and "validation split" in clean.caption()

    on_test = select_data(ts, ctx, max_fraction=0.3, seed=0, score_split="test")
    on_poisoned_test = select_data(poisoned, ctx, max_fraction=0.3, seed=0, score_split="test")
    assert not np.array_equal(on_test.removed, on_poisoned_test.removed)
    assert on_test.optimistic and OPTIMISTIC in on_test.table("rmse").splitlines()[0]
    assert any("TEST split" in c for c in on_test.meta["caveats"])


def test_carved_validation_is_disjoint_and_deterministic() -> None:
    ts = load("synthetic", n_per_task=60, train=0.5, val=0.0, seed=0)
    a, b = carve_validation(ts, 0.2, seed=4), carve_validation(ts, 0.2, seed=4)
    other = carve_validation(ts, 0.2, seed=5)
    for before, t, same, diff in zip(ts.tasks, a.tasks, b.tasks, other.tasks, strict=True):
        assert len(t.val_idx) == round(0.2 * len(before.train_idx)) == 6
        assert not set(t.val_idx) & set(t.train_idx) and not set(t.val_idx) & set(t.test_idx)
        np.testing.assert_array_equal(np.sort(np.r_[t.train_idx, t.val_idx]), before.train_idx)
        np.testing.assert_array_equal(t.test_idx, before.test_idx)
        np.testing.assert_array_equal(t.val_idx, same.val_idx)
        assert not np.array_equal(t.val_idx, diff.val_idx)
    # tasks with shared inputs lose the same rows
    twin = replace(ts.tasks[0], name="twin")
    shared = carve_validation(ts.with_tasks([ts.tasks[0], twin], shared_inputs=True), 0.3, 1)
    np.testing.assert_array_equal(shared.tasks[0].val_idx, shared.tasks[1].val_idx)


def test_a_carved_split_is_reported_and_its_rows_are_never_scored_or_removed() -> None:
    ts = _regression(val=0.0)
    ctx = RelateContext(model="hard", model_config=CONVEX, train_config=LBFGS)
    result = select_data(ts, ctx, max_fraction=0.3, seed=1)
    carved = carve_validation(ts, 0.2, seed=1)
    assert result.meta["validation"]["carved"] is True
    assert "carved" in result.caption() and any("carved" in c for c in result.meta["caveats"])
    np.testing.assert_array_equal(result.ids, carved.train_ids())  # val rows are not scored
    for t, task in enumerate(carved.tasks):
        assert np.isin(
            result.random_removed[result.random_removed[:, 0] == t, 1], task.train_idx
        ).all()


@pytest.mark.parametrize(
    "options",
    [
        {"max_fraction": 1.5},
        {"max_fraction": -0.1},
        {"max_fraction": "0.3"},
        {"score_split": "train"},
        {"threshold": float("nan")},
        {"target": 7},
        {"target": "no-such-task"},
        {"val_fraction": 1.0},
    ],
)
def test_options_are_checked_before_any_training(
    options: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("trained before validating the options")

    monkeypatch.setattr(selection, "fit", no_training)
    ctx = RelateContext(model="hard", model_config=CONVEX, train_config=LBFGS)
    error = ConfigError if "target" not in options else TaskrelError
    with pytest.raises(error):
        select_data(_regression(val=0.0), ctx, **options)  # type: ignore[arg-type]


def test_a_rerun_reuses_the_cached_scoring_and_retrainings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ts = _regression(val=0.2)
    ctx = RelateContext(model="hard", model_config=CONVEX, train_config=LBFGS, cache_dir=tmp_path)
    first = select_data(ts, ctx, max_fraction=0.3)

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("retrained on resume")

    monkeypatch.setattr(selection, "fit", no_training)
    monkeypatch.setattr("taskrel.relatedness.ground_truth.train", no_training)
    again = select_data(ts, ctx, max_fraction=0.3)
    np.testing.assert_array_equal(first.removed, again.removed)
    assert first.metrics == again.metrics


def test_cli_select_reports_progress_when_piped_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Piped (a captured, non-terminal stderr), ``select`` prints progress lines; a rerun
    with --resume of an interrupted run (no selection.json yet) reuses every cached
    retraining and gives the same result; a complete run is left unchanged."""
    from taskrel.cli import main

    monkeypatch.setenv("TASKREL_PROGRESS_INTERVAL", "0")
    out = tmp_path / "run"
    args = [
        "select",
        "--data",
        "synthetic-regression",
        "--set",
        "data.options.n_per_task=40",
        "--set",
        "data.options.val=0",
        "--set",
        "model.hidden=[]",
        "--set",
        "model.l2=0.01",
        "--set",
        "model.l2_task=0.1",
        "--max-fraction",
        "0.3",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "taskrel: select: retraining 1/2 retrainings" in captured.err
    assert "taskrel: select: training on all data" in captured.err
    assert "selected on a validation split carved from 0.2" in captured.out
    assert OPTIMISTIC not in captured.out
    first = json.loads((out / "selection.json").read_text())
    assert first["meta"]["validation"]["carved"] is True and "carved" in first["evaluation"]

    (out / "selection.json").unlink()  # as if interrupted before the end
    cached = sorted(p.name for p in (out / "cache").rglob("*") if p.is_file())
    assert main([*args, "--resume"]) == 0
    assert sorted(p.name for p in (out / "cache").rglob("*") if p.is_file()) == cached
    assert json.loads((out / "selection.json").read_text())["metrics"] == first["metrics"]
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    assert "complete" in capsys.readouterr().err

    on_test = [*args[:-1], str(tmp_path / "on-test"), "--score-split", "test"]
    assert main(on_test) == 0
    printed = capsys.readouterr().out
    assert f"test rmse (target: average), {OPTIMISTIC}" in printed
    assert (
        json.loads((tmp_path / "on-test" / "selection.json").read_text())["meta"]["score_split"]
        == "test"
    )


def test_auto_max_fraction_is_chosen_on_validation_not_test() -> None:
    ts, _ = _corrupted()
    ctx = RelateContext(model="hard", model_config=CONVEX, train_config=LBFGS)
    result = select_data(ts, ctx, target=0, max_fraction="auto")
    search = result.meta["max_fraction_search"]
    assert search["split"] == "val" and len(search["loss"]) == len(search["candidates"])
    assert search["chosen"] == search["candidates"][int(np.argmin(search["loss"]))] > 0
    assert result.meta["max_fraction"] == search["chosen"]
    poisoned = select_data(_poison_test(ts), ctx, target=0, max_fraction="auto")
    assert poisoned.meta["max_fraction_search"] == search
    np.testing.assert_array_equal(poisoned.removed, result.removed)
