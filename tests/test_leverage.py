"""Leverage-corrected instance scores (one Newton step per removed example): exact
leave-one-out for least squares, and the exact one-step Newton update for softmax
regression."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import grad, hessian

from taskrel.data import load
from taskrel.data.taskset import TaskSet
from taskrel.errors import ConfigError
from taskrel.relatedness import RelateContext
from taskrel.relatedness.ground_truth import loo_effects, sample_train_ids, train_model
from taskrel.relatedness.mtif import MTIF
from taskrel.training.trainer import TrainConfig

CONVEX = {"hidden": [], "shared_head": True, "l2": 1e-2, "l2_task": 1e-1}
EXACT = TrainConfig(optimizer="newton", lr=1.0, epochs=2, patience=None, dtype="float64")


@pytest.fixture(scope="module")
def small_regression() -> TaskSet:
    """4 regression tasks with 20 training rows each: high-leverage removals."""
    return load(
        "synthetic-regression",
        clusters=2,
        cluster_size=2,
        n_unrelated=0,
        n_adversarial=0,
        n_per_task=40,
        n_features=5,
        train=0.5,
        val=0.0,
        seed=1,
    ).standardize()


def _rows(all_ids: np.ndarray, ids: np.ndarray) -> list[int]:
    return [int(np.flatnonzero((all_ids == i).all(1))[0]) for i in ids]


@pytest.fixture(scope="module")
def exact_loo(small_regression: TaskSet) -> tuple[object, np.ndarray, np.ndarray]:
    """The trained model, 5 training ids and their exact leave-one-out effects."""
    ctx = RelateContext(model="hard", model_config=CONVEX, train_config=EXACT)
    model = train_model(small_regression, "hard", CONVEX, EXACT)
    ids = sample_train_ids(small_regression, 5, seed=0)
    return model, ids, loo_effects(small_regression, ctx, ids)


@pytest.mark.parametrize("solver", ["explicit", "woodbury"])
def test_leverage_scores_equal_exact_leave_one_out_for_least_squares(
    small_regression: TaskSet, exact_loo: tuple, solver: str
) -> None:
    model, ids, actual = exact_loo
    engine = MTIF(model, small_regression, solver=solver)
    scores, all_ids = engine.instance_scores("renormalized", kind="leverage")
    assert scores.shape == (len(all_ids), len(small_regression))
    rows = _rows(all_ids, ids)
    scale = np.abs(actual).max()
    np.testing.assert_allclose(scores[rows], actual, rtol=1e-6, atol=1e-6 * scale)
    first, _ = engine.instance_scores("renormalized")  # the correction matters here
    assert np.abs(first[rows] - actual).max() > 1e-2 * scale


def test_leverage_scores_are_one_exact_newton_step_for_softmax() -> None:
    """Fixed weighting, 3-class logistic model: the score equals the test-loss change at
    the Newton step of ``J - l_z / n_j`` computed from the dense Hessian of that
    objective (the rank-C leverage update must reproduce it exactly)."""
    ts = load(
        "synthetic",
        n_per_task=30,
        n_features=4,
        n_classes=3,
        clusters=1,
        cluster_size=2,
        n_unrelated=1,
        n_adversarial=0,
        train=0.5,
        val=0.0,
        seed=6,
    ).standardize()
    model = train_model(ts, "hard", CONVEX, EXACT)
    engine = MTIF(model, ts, solver="explicit")
    scores, ids = engine.instance_scores("fixed", kind="leverage")
    fns = engine.fns
    base = torch.stack([fns.mean_loss(fns.theta, i, "test") for i in range(len(ts))])
    for n in (0, 17, 40):
        task, row = int(ids[n, 0]), int(ids[n, 1])
        k = int(np.flatnonzero(ts.tasks[task].train_idx == row)[0])
        x, y = fns.train[task]

        def reweighted(th: torch.Tensor, task=task, k=k, x=x, y=y) -> torch.Tensor:
            example = fns.losses(th, task, x[k : k + 1], y[k : k + 1])[0]
            return fns.objective(th) - example / len(x)

        step = -torch.linalg.solve(hessian(reweighted)(fns.theta), grad(reweighted)(fns.theta))
        moved = torch.stack([fns.mean_loss(fns.theta + step, i, "test") for i in range(len(ts))])
        np.testing.assert_allclose(scores[n], (moved - base).numpy(), rtol=1e-8, atol=1e-13)


def test_leverage_through_relatedness_and_bad_kind(
    small_regression: TaskSet, exact_loo: tuple
) -> None:
    engine = MTIF(exact_loo[0], small_regression)
    result = engine.relatedness(instance="leverage", weighting="renormalized")
    assert result.meta["instance"] == "leverage"
    expected, _ = engine.instance_scores("renormalized", kind="leverage")
    np.testing.assert_allclose(result.instance_scores, expected)
    with pytest.raises(ConfigError, match="instance"):
        engine.relatedness(instance="second-order")  # type: ignore[arg-type]
