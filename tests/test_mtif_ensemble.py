"""MTIF ensembles (``relate(..., "mtif", ensemble=K)``): the mean over K trained members,
checked against the members computed one by one."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from conftest import four_binary_tasks

from taskrel.data.taskset import TaskSet
from taskrel.errors import ConfigError
from taskrel.relatedness import RelateContext, Relatedness, relate
from taskrel.relatedness import ensemble as ens
from taskrel.relatedness.ground_truth import train_model
from taskrel.relatedness.reliability import self_agreement
from taskrel.relatedness.resample import resplit, split_seed
from taskrel.training.trainer import TrainConfig

MLP = {"hidden": [4], "activation": "tanh", "l2": 1e-2, "l2_task": 1e-2}
CONVEX = {"hidden": [], "shared_head": True, "l2": 1e-2, "l2_task": 1e-1}
LBFGS = TrainConfig(
    optimizer="lbfgs", lr=1.0, epochs=1, lbfgs_max_iter=300, patience=None, dtype="float64"
)


@pytest.fixture(scope="module")
def tasks() -> TaskSet:
    """4 small classification tasks (a related pair, an unrelated and an adversarial one)."""
    return four_binary_tasks(seed=3)


def mlp(seed: int = 5) -> RelateContext:
    return RelateContext(
        model="hard", model_config=MLP, train_config=LBFGS.model_copy(update={"seed": seed})
    )


def test_identical_members_give_the_single_result_exactly(
    tasks: TaskSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    single = relate(tasks, "mtif", mlp(), solver="explicit")
    monkeypatch.setattr(ens, "member_seed", lambda seed, k: seed)  # K copies of member 0
    three = relate(tasks, "mtif", mlp(), solver="explicit", ensemble=3)
    np.testing.assert_array_equal(three.matrix, single.matrix)
    np.testing.assert_array_equal(three.instance_scores, single.instance_scores)
    np.testing.assert_array_equal(three.instance_ids, single.instance_ids)
    first = three.meta["first_order_matrix"]
    np.testing.assert_array_equal(first, single.meta["first_order_matrix"])
    assert three.meta["ensemble"] == 3 and single.meta["ensemble"] == 1
    assert three.meta["member_agreement"] == pytest.approx(1.0)
    assert np.isnan(single.meta["member_agreement"])
    assert np.abs(three.meta["member_stderr"]).max() <= 1e-14 * np.abs(single.matrix).max()
    assert three.meta["instance_members"].tolist() == [3] * len(tasks.train_ids())


def test_mean_of_members_computed_separately(tasks: TaskSet) -> None:
    """Different seeds: the ensemble is the mean of the members' own MTIF results (and
    the members differ, so the mean is not trivially one of them)."""
    k = 3
    got = relate(tasks, "mtif", mlp(), solver="explicit", ensemble=k)
    seeds = [ens.member_seed(5, m) for m in range(k)]
    assert seeds[0] == 5 and len(set(seeds)) == k
    members = [relate(tasks, "mtif", mlp(s), solver="explicit") for s in seeds]
    stack = np.stack([m.matrix for m in members])
    assert np.ptp(stack, axis=0).max() > 1e-3 * np.abs(stack).max()  # seeds matter (MLP)
    np.testing.assert_allclose(got.matrix, stack.mean(0), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(got.meta["member_matrices"], stack, rtol=1e-12, atol=1e-15)
    scores = np.mean([m.instance_scores for m in members], axis=0)
    np.testing.assert_allclose(got.instance_scores, scores, rtol=1e-12, atol=1e-15)
    assert got.meta["member_agreement"] == pytest.approx(self_agreement(stack))
    assert got.meta["member_seeds"] == seeds
    assert got.meta["timings_s"]["train_s"] == pytest.approx(
        sum(m.meta["timings_s"]["train_s"] for m in members), rel=0.5
    )


def test_resampled_members_average_over_the_members_that_trained_on_each_example(
    tasks: TaskSet,
) -> None:
    got = relate(tasks, "mtif", mlp(), solver="explicit", ensemble=2, ensemble_resample=True)
    first = relate(tasks, "mtif", mlp(), solver="explicit")
    split = split_seed(5, 1)
    second = relate(resplit(tasks, split), "mtif", mlp(ens.member_seed(5, 1)), solver="explicit")
    assert got.meta["member_split_seeds"] == [None, split]
    np.testing.assert_allclose(got.matrix, (first.matrix + second.matrix) / 2, rtol=1e-12)
    other = {tuple(i): n for n, i in enumerate(second.instance_ids.tolist())}
    both = [n for n, i in enumerate(first.instance_ids.tolist()) if tuple(i) in other]
    alone = [n for n, i in enumerate(first.instance_ids.tolist()) if tuple(i) not in other]
    assert both and alone  # the re-split moved some training rows to validation or test
    rows = [other[tuple(first.instance_ids[n].tolist())] for n in both]
    expect = (first.instance_scores[both] + second.instance_scores[rows]) / 2
    np.testing.assert_allclose(got.instance_scores[both], expect, rtol=1e-12)
    np.testing.assert_allclose(got.instance_scores[alone], first.instance_scores[alone])
    assert got.meta["instance_members"][both].tolist() == [2] * len(both)
    assert got.meta["instance_members"][alone].tolist() == [1] * len(alone)


def test_convex_ensemble_equals_single_model(tasks: TaskSet) -> None:
    """A convex model has one optimum: other seeds give the K = 1 matrix up to training
    noise (Newton steps to ~1e-9 relative gradient)."""
    ctx = RelateContext(model="hard", model_config=CONVEX)
    single = relate(tasks, "mtif", ctx, instance=False)
    three = relate(tasks, "mtif", ctx, instance=False, ensemble=3)
    scale = np.abs(single.matrix).max()
    np.testing.assert_allclose(three.matrix, single.matrix, rtol=0, atol=1e-7 * scale)
    assert three.meta["member_agreement"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"ensemble": 0}, "ensemble=0 must be an integer >= 1"),
        ({"ensemble": -2}, "ensemble=-2 must be an integer >= 1"),
        ({"ensemble": 2.5}, "ensemble=2.5 must be an int"),
        ({"ensemble": True}, "ensemble=True must be an int"),
        ({"ensemble": "3"}, "ensemble='3' must be an int"),
        ({"ensemble": 2, "ensemble_resample": "yes"}, "ensemble_resample='yes' must be a bool"),
        ({"ensemble": 2, "bogus": 1}, "unknown option 'bogus'; accepted options: ensemble"),
        ({"ensemble": 2, "task_level": "x"}, "task_level"),
        ({"ensemble": 2, "model": "trained"}, "a trained model and ensemble=2"),
    ],
)
def test_bad_input_is_one_line_before_training(
    tasks: TaskSet, monkeypatch: pytest.MonkeyPatch, options: dict[str, Any], expected: str
) -> None:
    if options.get("model") == "trained":
        options = {**options, "model": train_model(tasks, "hard", MLP, LBFGS)}

    def no_training(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("trained before the options were checked")

    monkeypatch.setattr("taskrel.relatedness.ground_truth.train_model", no_training)
    with pytest.raises(ConfigError) as err:
        relate(tasks, "mtif", mlp(), **options)
    message = str(err.value)
    assert expected in message and "\n" not in message
    assert message.startswith("relate(method='mtif')") or "task_level" in message


def test_combine_keeps_the_first_members_meta(tasks: TaskSet) -> None:
    """``combine`` of one result is that result (matrix, scores, and its meta entries)."""
    one = relate(tasks, "mtif", mlp(), solver="explicit")
    plain = replace(one, meta={k: v for k, v in one.meta.items() if not k.startswith("member")})
    again = ens.combine([plain])
    assert isinstance(again, Relatedness)
    np.testing.assert_array_equal(again.matrix, one.matrix)
    assert again.meta["diagnostics"] == one.meta["diagnostics"]
    assert again.meta["units"] == one.meta["units"]
