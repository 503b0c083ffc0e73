"""Task-level selection: on a constructed least-squares task set the search drops the
adversarial source and keeps the identical one (and retraining proves it on test), the
subset Newton prediction of the chosen subset equals retraining, the choice never reads
the test split, and the CLI refuses bad input on one line."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from taskrel.cli import main
from taskrel.data.taskset import Task, TaskSet
from taskrel.decisions.crossfit import fold_tasksets
from taskrel.decisions.predictors import GroupOutcomePredictor
from taskrel.errors import ConfigError, DataError
from taskrel.pipelines.selection import select_data
from taskrel.pipelines.task_selection import backward_elimination, select_tasks
from taskrel.relatedness import RelateContext
from taskrel.relatedness.ground_truth import train_model
from taskrel.training.metrics import evaluate
from taskrel.training.trainer import TrainConfig

LINEAR = {"hidden": [], "shared_head": True, "l2": 1e-2, "l2_task": 1.0}
EXACT = TrainConfig(
    optimizer="lbfgs", lr=1.0, epochs=1, lbfgs_max_iter=300, patience=None, dtype="float64"
)


def _least_squares(seed: int = 0) -> TaskSet:
    """A target with few training rows, a source with the same weights, one with the
    negated weights (adversarial) and an unrelated one; ``y = x w + 0.5 noise``."""
    rng = np.random.default_rng(seed)
    d = 5
    w = rng.normal(size=d)
    sources = {"target": (w, 12), "same": (w, 150), "adverse": (-w, 150)}
    sources["unrelated"] = (rng.normal(size=d), 150)
    tasks = []
    for name, (weights, n_train) in sources.items():
        n = n_train + 40 + 200
        x = rng.normal(size=(n, d)).astype(np.float32)
        y = (x @ weights + 0.5 * rng.normal(size=n)).astype(np.float32)
        idx = np.arange(n)
        split = idx[:n_train], idx[n_train : n_train + 40], idx[n_train + 40 :]
        tasks.append(Task(name, "regression", x, y, 1, *split))
    return TaskSet("least-squares", tuple(tasks))


def _ctx(tmp_path: Path | None = None) -> RelateContext:
    return RelateContext(model="hard", model_config=LINEAR, train_config=EXACT, cache_dir=tmp_path)


@pytest.fixture(scope="module")
def chosen() -> tuple[TaskSet, object]:
    ts = _least_squares()
    return ts, select_tasks(ts, _ctx(), target="target", n_random=3)


def test_drops_the_adversarial_source_and_keeps_the_identical_one(chosen) -> None:
    ts, result = chosen
    choice = result.targets["target"]
    assert list(result.targets) == ["target"]
    assert "adverse" in choice.dropped and "same" in choice.kept
    # each step lowered the predicted validation loss
    steps = [s["predicted"] for s in choice.path]
    assert all(b < a for a, b in zip(steps, steps[1:], strict=False))
    # proved by retraining: the chosen subset's test loss is lower than all-in-one's
    loss = {s: m["loss"] for s, m in choice.metrics.items()}
    assert loss["chosen"] < loss["all"] and loss["chosen"] < loss["random"]
    assert set(loss) == {"all", "chosen", "random", "single-task", "examples"}
    # single-task is the same model trained on the target alone
    alone = ts.select_tasks([0])
    by_hand = evaluate(train_model(alone, "hard", LINEAR, EXACT), alone, "test")["target"]
    assert choice.metrics["single-task"]["loss"] == pytest.approx(by_hand["loss"], rel=1e-6)
    assert len(choice.random_dropped) == 3
    assert all(len(d) == len(choice.dropped) and "target" not in d for d in choice.random_dropped)
    assert result.meta["validation"]["carved"] is False and result.metric == "explained_variance"
    table = result.table()
    assert "| target | chosen |" in table and "adverse" in table


def test_examples_setting_is_select_data_for_the_target(chosen) -> None:
    ts, result = chosen
    by_select = select_data(ts, _ctx(), target="target", seed=0)
    choice = result.targets["target"]
    assert choice.examples_removed == len(by_select.removed) > 0
    assert choice.metrics["examples"] == pytest.approx(by_select.metrics["mtif"]["target"])


def test_newton_prediction_of_the_chosen_subset_equals_retraining(chosen) -> None:
    _, result = chosen
    choice = result.targets["target"]
    for setting in ("all", "chosen"):
        assert choice.predicted_val[setting] == pytest.approx(choice.actual_val[setting], rel=1e-6)


def test_cross_fitted_choice_is_the_row_weighted_mean_of_fold_retrainings() -> None:
    """With 3 folds the predicted validation loss of all tasks is the mean over every
    training + validation row of the target, fold by fold: retrain each fold by hand and
    weight each fold by its validation rows."""
    ts = _least_squares()
    result = select_tasks(ts, _ctx(), target="target", n_random=1, examples=False, folds=3)
    assert result.meta["folds"] == 3
    folds = fold_tasksets(ts, 3, seed=0)
    losses = [
        evaluate(train_model(f, "hard", LINEAR, EXACT), f, "val")["target"]["loss"] for f in folds
    ]
    rows = [len(f.tasks[0].val_idx) for f in folds]
    assert sum(rows) == len(ts.tasks[0].train_idx) + len(ts.tasks[0].val_idx)
    by_hand = float(np.dot(losses, rows) / sum(rows))
    choice = result.targets["target"]
    assert choice.predicted_val["all"] == pytest.approx(by_hand, rel=1e-6)
    assert choice.actual_val["all"] == pytest.approx(by_hand, rel=1e-6)
    assert "adverse" in choice.dropped and "same" in choice.kept
    assert "3 cross-fitted folds" in result.caption()


def test_by_default_the_choice_is_made_on_the_validation_split(chosen) -> None:
    ts, result = chosen
    choice = result.targets["target"]
    assert result.meta["folds"] == 1
    on_val = evaluate(train_model(ts, "hard", LINEAR, EXACT), ts, "val")["target"]["loss"]
    assert choice.predicted_val["all"] == pytest.approx(on_val, rel=1e-6)
    assert choice.actual_val["all"] == pytest.approx(on_val, rel=1e-6)
    assert "cross-fitted" not in result.caption()


def _poison_test(ts: TaskSet, seed: int = 1) -> TaskSet:
    """Every test row's target replaced by loud noise."""
    rng = np.random.default_rng(seed)
    tasks = []
    for task in ts.tasks:
        y = task.y.copy()
        y[task.test_idx] = rng.normal(size=len(task.test_idx)).astype(np.float32) * 10
        tasks.append(replace(task, y=y))
    return ts.with_tasks(tasks)


def test_poisoned_test_labels_leave_the_choice_unchanged(chosen) -> None:
    ts, clean = chosen
    dirty = select_tasks(_poison_test(ts), _ctx(), target="target", n_random=3, examples=False)
    a, b = clean.targets["target"], dirty.targets["target"]
    assert (b.kept, b.dropped, b.path, b.random_dropped) == (
        a.kept,
        a.dropped,
        a.path,
        a.random_dropped,
    )
    assert b.metrics["all"]["loss"] > 10 * a.metrics["all"]["loss"]  # test was poisoned


class Table(GroupOutcomePredictor):
    """Predictions from a hand-made table ``subset -> loss of task 0``."""

    def __init__(self, table: dict[tuple[int, ...], float]) -> None:
        super().__init__()
        self.table, self.n_tasks = table, 4

    def _fit(self, taskset: TaskSet, ctx: RelateContext) -> None:
        raise NotImplementedError

    def _subset_losses(self, subsets: list[tuple[int, ...]]) -> np.ndarray:
        out = np.full((len(subsets), 4), np.nan)
        out[:, 0] = [self.table.get(s, 9.0) for s in subsets]
        return out


def test_backward_elimination_on_a_hand_made_table() -> None:
    table = {(0, 1, 2, 3): 1.0, (0, 1, 2): 0.5, (0, 1, 3): 0.8, (0, 2, 3): 0.7, (0, 1): 0.45}
    kept, path = backward_elimination(Table(table), 0, range(4))
    assert kept == [0, 1] and path == [(None, 1.0), (3, 0.5), (2, 0.45)]
    # a minimum improvement of 0.1 stops after the first step (0.05 is not enough)
    kept, path = backward_elimination(Table(table), 0, range(4), min_improvement=0.1)
    assert kept == [0, 1, 2] and path == [(None, 1.0), (3, 0.5)]


def test_bad_options_are_refused_before_training(monkeypatch: pytest.MonkeyPatch) -> None:
    import taskrel.pipelines.task_selection as module

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("trained before checking the options")

    monkeypatch.setattr(module, "ensure_validation", no_training)
    ts = _least_squares()
    with pytest.raises(ConfigError, match="unknown group-outcome predictor 'nope'"):
        select_tasks(ts, _ctx(), predictor="nope")
    with pytest.raises(DataError, match="no task 'absent'"):
        select_tasks(ts, _ctx(), target="absent")
    with pytest.raises(ConfigError, match="min_improvement must be >= 0"):
        select_tasks(ts, _ctx(), min_improvement=-1.0)
    with pytest.raises(ConfigError, match="n_random"):
        select_tasks(ts, _ctx(), n_random=0)
    with pytest.raises(ConfigError, match="folds must be an integer >= 1"):
        select_tasks(ts, _ctx(), folds=0)


CLI = [
    "select",
    "--data",
    "synthetic-regression",
    "--set",
    "data.options.n_per_task=30",
    "--set",
    "model.l2=0.01",
]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--drop", "rows"], "--drop must be examples or tasks, got 'rows'"),
        (["--drop", "tasks", "--predictor", "nope"], "unknown group-outcome predictor 'nope'"),
        (["--drop", "tasks", "--target", "absent"], "no task 'absent'"),
        (["--predictor", "mtif-newton"], "--predictor needs --drop tasks"),
        (["--folds", "2"], "--folds needs --drop tasks"),
        (["--drop", "tasks", "--folds", "0"], "--folds >= 1"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*CLI, *extra, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("taskrel: error:"), err
    assert message in err


def test_cli_drop_tasks_prints_the_table_and_writes_the_result(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    out = tmp_path / "run"
    small = ["data.options.clusters=1", "data.options.cluster_size=2", "data.options.n_unrelated=0"]
    small.append("data.options.val=0")  # no validation split: one is carved
    args = [*CLI, *(x for s in small for x in ("--set", s)), "--set", "model.hidden=[]"]
    args += ["--set", "model.l2_task=0.1", "--drop", "tasks"]
    args += ["--target", "t0-c0", "--random", "2", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    doc = json.loads((out / "task_selection.json").read_text())
    choice = doc["targets"]["t0-c0"]
    assert list(doc["targets"]) == ["t0-c0"] and doc["meta"]["predictor"] == "mtif-newton"
    assert "| target | setting | test loss | test explained_variance |" in printed
    dropped = ", ".join(choice["dropped"]) or "none"
    loss = choice["metrics"]["chosen"]["loss"]
    assert f"| t0-c0 | chosen | {loss:.4f} |" in printed and f"| {dropped} |" in printed
    assert len(choice["random_dropped"]) == 2
    assert doc["meta"]["validation"]["carved"] is True
    assert "chosen on a validation split carved from 0.2" in printed
    assert any("carved 0.2" in c for c in doc["meta"]["caveats"])
    assert main([*args, "--resume"]) == 0  # complete: left unchanged
    assert "complete" in capsys.readouterr().err
