"""Cross-fitted group choices: the folds partition the training + validation rows, a
cross-fitted exact predictor equals the cross-validated actual losses, and the
one-standard-error rule keeps a split only when the folds agree that it helps."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from conftest import three_task_group_args

from taskrel.cli import main
from taskrel.data.taskset import TaskSet
from taskrel.decisions.crossfit import CrossFitted, fold_tasksets, one_se_choice
from taskrel.decisions.evaluate import SubsetOutcomes, cross_fitted_losses, evaluate_decisions
from taskrel.decisions.predictors import make_predictor
from taskrel.decisions.search import Group, choose_groups
from taskrel.errors import ConfigError
from taskrel.relatedness import RelateContext
from taskrel.training.trainer import TrainConfig

CONVEX = {"hidden": [], "shared_head": True, "l2": 1e-2, "l2_task": 1e-1}


def context(tmp_path: Path) -> RelateContext:
    return RelateContext(
        model="hard", model_config=CONVEX, train_config=TrainConfig(), cache_dir=tmp_path
    )


def test_folds_partition_the_training_and_validation_rows(synthetic_cls: TaskSet) -> None:
    folds = fold_tasksets(synthetic_cls, 4, seed=3)
    for i, task in enumerate(synthetic_cls.tasks):
        pool = np.sort(np.concatenate([task.train_idx, task.val_idx]))
        vals = [f.tasks[i].val_idx for f in folds]
        assert np.array_equal(np.sort(np.concatenate(vals)), pool)  # each row validates once
        for f in folds:
            mine = f.tasks[i]
            assert np.array_equal(np.sort(np.concatenate([mine.train_idx, mine.val_idx])), pool)
            assert not set(mine.train_idx) & set(mine.val_idx)
            assert np.array_equal(mine.test_idx, task.test_idx)  # the test split is untouched
            labels = task.y[mine.val_idx]  # stratified: each class within one row of its share
            for c in np.unique(task.y[pool]):
                share = np.mean(task.y[pool] == c) * len(mine.val_idx)
                assert abs(np.sum(labels == c) - share) <= 1.0 + 1e-9
    again = fold_tasksets(synthetic_cls, 4, seed=3)
    assert all(
        np.array_equal(a.tasks[0].val_idx, b.tasks[0].val_idx)
        for a, b in zip(folds, again, strict=True)
    )


def test_bad_fold_counts_are_refused(synthetic_cls: TaskSet) -> None:
    with pytest.raises(ConfigError, match="folds must be an integer >= 2"):
        fold_tasksets(synthetic_cls, 1)
    with pytest.raises(ConfigError, match="expected at least 100000"):
        fold_tasksets(synthetic_cls, 100000)
    with pytest.raises(ConfigError, match="unknown group-outcome predictor"):
        CrossFitted("nope")
    with pytest.raises(ConfigError, match="one-se' takes its standard error over folds"):
        evaluate_decisions([synthetic_cls], RelateContext(), ["tag"], rule="one-se", folds=1)


def test_cross_fitted_retraining_equals_the_cross_validated_losses(
    synthetic_reg: TaskSet, tmp_path: Path
) -> None:
    ctx = context(tmp_path)
    subsets = [[0, 1], [0, 2, 3], [1], [0, 1, 2, 3]]
    predictor = CrossFitted("retrain", folds=3, seed=1).fit(synthetic_reg, ctx)
    predicted = predictor.subset_losses(subsets)
    folds = fold_tasksets(synthetic_reg, 3, seed=1)
    outcomes = [SubsetOutcomes(f, ctx) for f in folds]
    actual = cross_fitted_losses(outcomes, subsets)
    np.testing.assert_allclose(predicted, actual, rtol=1e-9)
    # by hand: each fold's validation loss, weighted by the task's validation rows
    per_fold = np.stack([o.losses(subsets, "val") for o in outcomes])
    sizes = np.array([[len(t.val_idx) for t in f.tasks] for f in folds], dtype=float)
    by_hand = (per_fold * sizes[:, None]).sum(0) / sizes.sum(0)
    np.testing.assert_allclose(actual, by_hand, rtol=1e-12)
    assert np.isnan(actual[2, 0]) and np.isfinite(actual[2, 1])
    # the fold costs average to the group cost the search minimises
    cost = predictor.fold_cost()([(0, 1), (1,)])
    np.testing.assert_allclose(cost.mean(0), [np.nansum(predicted[0]), predicted[2, 1]])
    for o in outcomes:
        o.close()


def table_cost(values: dict[Group, Sequence[float]]):  # type: ignore[no-untyped-def]
    """A fold cost from a hand-made table; unlisted groups cost their tasks' singles
    plus 1 per extra task (clearly worse)."""

    def cost(groups: Sequence[Group]) -> np.ndarray:
        out = []
        for g in groups:
            if g in values:
                out.append(values[g])
            else:
                out.append(np.sum([values[(t,)] for t in g], axis=0) + len(g) - 1)
        return np.array(out, dtype=float).T

    return cost


def test_one_se_keeps_a_split_only_when_the_folds_agree() -> None:
    singles = {(0,): [1.0, 1.0, 1.0], (1,): [1.0, 1.0, 1.0], (2,): [1.0, 1.0, 1.0]}
    # {0,1} | {2} beats all-in-one by 0.1 on average, but the folds disagree (SE 0.3)
    noisy = {**singles, (0, 1): [1.5, 1.0, 1.7], (0, 1, 2): [2.5, 3.0, 2.5]}
    chosen = one_se_choice(table_cost(noisy), 3)
    assert chosen.best == [[0, 1], [2]]
    assert chosen.groups == [[0, 1, 2]]
    excess = np.array([2.5, 3.0, 2.5]) - np.array([2.5, 2.0, 2.7])
    last = chosen.path[-1]
    assert last["excess"] == pytest.approx(excess.mean())
    assert last["standard_error"] == pytest.approx(excess.std(ddof=1) / np.sqrt(3))
    # the same mean gain in every fold: the split is kept
    steady = {**singles, (0, 1): [1.0, 1.0, 1.0], (0, 1, 2): [2.1, 2.1, 2.1]}
    assert one_se_choice(table_cost(steady), 3).groups == [[0, 1], [2]]


def test_one_se_needs_folds_and_a_free_number_of_groups(
    synthetic_reg: TaskSet, tmp_path: Path
) -> None:
    plain = make_predictor("tag").fit(synthetic_reg, context(tmp_path))
    with pytest.raises(ConfigError, match="needs a cross-fitted predictor"):
        choose_groups(plain, synthetic_reg.names, rule="one-se")
    with pytest.raises(ConfigError, match="rule must be"):
        choose_groups(plain, synthetic_reg.names, rule="best")
    crossed = CrossFitted("tag", folds=2).fit(synthetic_reg, context(tmp_path))
    with pytest.raises(ConfigError, match="chooses the number of groups itself"):
        choose_groups(crossed, synthetic_reg.names, n_groups=2, rule="one-se")


def test_cli_group_rejects_one_se_without_folds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "group",
            "--predictor",
            "tag",
            "--folds",
            "1",
            "--rule",
            "one-se",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "use folds >= 2" in err[0]


def test_cli_group_repeats_resample_the_split_and_record_the_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = three_task_group_args()
    out = tmp_path / "run"
    assert main([*args, "--folds", "3", "--repeats", "2", "--random", "0", "--out", str(out)]) == 0
    assert "3-fold cross-fitted validation, rule one-se" in capsys.readouterr().out
    saved = json.loads((out / "grouping.json").read_text())
    assert saved["folds"] == 3 and saved["rule"] == "one-se"
    all_in_one = saved["evaluation"]["mean_test_loss"]["all-in-one"]
    assert len(all_in_one) == 2 and abs(all_in_one[0] - all_in_one[1]) > 1e-6  # new split
    # a fixed number of groups falls back to the minimum rule unless one-se is asked for
    assert main([*args, "--groups", "2", "--no-evaluate", "--out", str(tmp_path / "k")]) == 0
    assert json.loads((tmp_path / "k" / "grouping.json").read_text())["rule"] == "min"
    code = main([*args, "--groups", "2", "--rule", "one-se", "--out", str(tmp_path / "bad")])
    assert code == 2 and "chooses the number of groups itself" in capsys.readouterr().err
