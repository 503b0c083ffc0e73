"""Regularisation chosen on validation data ("auto") against closed-form ridge regression,
and pinning: chosen once, never re-tuned by retrainings."""

from __future__ import annotations

import numpy as np
import pytest

from taskrel.data.taskset import Task, TaskSet
from taskrel.errors import ConfigError
from taskrel.relatedness import RelateContext
from taskrel.relatedness.ground_truth import Retrainer, retrain, train_model
from taskrel.training.regularization import (
    GRID,
    carve_validation,
    resolve_regularization,
    unresolved,
)
from taskrel.training.trainer import fit


def _regression(n_train: int, n_val: int, seed: int = 0, d: int = 8) -> TaskSet:
    """One linear regression task, noisy enough that the best ridge penalty is interior."""
    rng = np.random.default_rng(seed)
    n = n_train + n_val + 40
    x = rng.normal(size=(n, d))
    y = x @ rng.normal(size=d) * 0.5 + 0.3 + rng.normal(scale=1.5, size=n)
    idx = np.arange(n)
    task = Task(
        "t0",
        "regression",
        x,
        y,
        1,
        train_idx=idx[:n_train],
        val_idx=idx[n_train : n_train + n_val],
        test_idx=idx[n_train + n_val :],
    )
    return TaskSet("ridge", (task,))


def _ridge(x: np.ndarray, y: np.ndarray, l2: float) -> np.ndarray:
    """``[w, b]`` minimising ``mean (y - x w - b)^2 + (l2/2) (||w||^2 + 1e-3 b^2)`` (the
    model's penalty: biases carry 1e-3 of it):
    ``([x 1]^T [x 1] + (n l2 / 2) diag(1, ..., 1, 1e-3))^-1 [x 1]^T y``."""
    a = np.column_stack([x, np.ones(len(x))])
    scale = np.append(np.ones(x.shape[1]), 1e-3)
    return np.linalg.solve(a.T @ a + 0.5 * len(x) * l2 * np.diag(scale), a.T @ y)


def _val_curve(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray]) -> list:
    out = []
    for l2 in GRID:
        w = _ridge(*train, l2)
        pred = np.column_stack([val[0], np.ones(len(val[0]))]) @ w
        out.append(float(np.mean((pred - val[1]) ** 2)))
    return out


def test_auto_l2_is_the_argmin_of_the_closed_form_ridge_validation_curve() -> None:
    ts = _regression(n_train=25, n_val=40)
    expected = _val_curve(ts[0].arrays("train"), ts[0].arrays("val"))
    best = int(np.argmin(expected))
    assert 0 < best < len(GRID) - 1  # the constructed problem has an interior optimum
    result = fit(ts, "stl")  # default: linear, l2="auto"
    report = result.regularization
    assert report is not None and report["selection"] == "validation split"
    np.testing.assert_allclose(report["curves"]["l2"], expected, rtol=1e-6)
    assert report["chosen"]["l2"] == GRID[best]
    weights = np.append(
        result.model.heads[0].weight.detach().numpy(), result.model.heads[0].bias.detach().numpy()
    )
    np.testing.assert_allclose(weights, _ridge(*ts[0].arrays("train"), GRID[best]), atol=1e-8)


def test_without_validation_split_it_carves_selects_then_refits_on_all_rows() -> None:
    ts = _regression(n_train=40, n_val=0, seed=3)
    carved = carve_validation(ts, seed=0)
    assert len(carved[0].val_idx) == 8 and len(carved[0].train_idx) == 32  # 20% held out
    expected = _val_curve(carved[0].arrays("train"), carved[0].arrays("val"))
    result = fit(ts, "stl")
    report = result.regularization
    assert report is not None and report["selection"].startswith("carved")
    assert report["carved_rows"] == [8]
    assert report["chosen"]["l2"] == GRID[int(np.argmin(expected))]
    # the returned model is refitted on all 40 training rows with the chosen value
    head = result.model.heads[0]
    weights = np.append(head.weight.detach().numpy(), head.bias.detach().numpy())
    np.testing.assert_allclose(
        weights, _ridge(*ts[0].arrays("train"), report["chosen"]["l2"]), atol=1e-8
    )


def test_hard_sharing_tunes_l2_then_the_head_l2(synthetic_reg: TaskSet) -> None:
    pinned, report = resolve_regularization(synthetic_reg, "hard", {}, None)
    assert report is not None and list(report.curves) == ["l2", "l2_task"]
    # coordinate search: the head L2 is tuned with the chosen shared L2 fixed, and the
    # l2_task curve passes through the l2 curve's minimum (same model at l2_task = l2)
    l2 = pinned["l2"]
    i = GRID.index(l2)
    assert report.curves["l2_task"][i] == pytest.approx(report.curves["l2"][i], rel=1e-6)
    assert min(report.curves["l2_task"]) <= min(report.curves["l2"]) * (1 + 1e-9)
    assert unresolved("hard", pinned) == []
    assert report.fits == 2 * len(GRID)


def test_numbers_are_kept_and_non_convex_models_keep_documented_values(
    synthetic_reg: TaskSet,
) -> None:
    given = {"l2": 0.5, "l2_task": 2.0}
    assert resolve_regularization(synthetic_reg, "hard", given) == (given, None)
    pinned, report = resolve_regularization(synthetic_reg, "soft", {"hidden": [4]})
    assert pinned == {"hidden": [4], "l2": 1e-4, "coupling": 1e-2}
    assert report is not None and report.fits == 0 and "early stopping" in report.selection


def test_a_model_is_not_built_from_auto(synthetic_reg: TaskSet) -> None:
    from taskrel.models import build_model

    with pytest.raises(ConfigError, match="l2='auto' is chosen on validation data"):
        build_model("stl", synthetic_reg, {})


def test_retrainings_use_values_pinned_once(synthetic_reg: TaskSet) -> None:
    ctx = RelateContext(model="stl")
    with Retrainer(synthetic_reg, ctx) as rt:
        job = rt.job(without_tasks=[0])
        assert isinstance(rt.ctx.model_config["l2"], float)
        assert rt.ctx.regularization is not None
    assert job.kwargs["model_config"]["l2"] == rt.ctx.model_config["l2"]
    with pytest.raises(ConfigError, match="never re-tune"):
        retrain({"name": "synthetic-regression"}, "stl", {}, {})
    with pytest.raises(ConfigError, match="never re-tune"):
        train_model(synthetic_reg, "stl", {}, {}, without_tasks=[1])


def test_relate_with_a_trained_model_tunes_nothing(
    synthetic_reg: TaskSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    from taskrel.relatedness import relate

    model = train_model(synthetic_reg, "hard", {"l2": 0.01, "l2_task": 0.1}, {})
    given = relate(synthetic_reg, "mtif", RelateContext(model="hard"), model=model)

    def no_search(*args: object, **kwargs: object) -> None:
        raise AssertionError("relate searched the regularisation although a model was given")

    monkeypatch.setattr("taskrel.training.regularization.resolve_regularization", no_search)
    again = relate(synthetic_reg, "mtif", RelateContext(model="hard"), model=model)
    assert "regularization" not in again.meta
    np.testing.assert_allclose(again.matrix, given.matrix, rtol=1e-12)
