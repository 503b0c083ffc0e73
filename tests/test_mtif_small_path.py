"""MTIF's small-model path (one autodiff call for H, one for the task gradients) gives
the block path's results and diagnostics to rounding."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from taskrel.data import load
from taskrel.data.taskset import TaskSet
from taskrel.relatedness import small_path
from taskrel.relatedness.ground_truth import train_model
from taskrel.relatedness.influence import DenseOperator
from taskrel.relatedness.mtif import MTIF
from taskrel.training.trainer import TrainConfig

CONVEX = {"hidden": [], "shared_head": True, "l2": 1e-2, "l2_task": 1e-1}
NEWTON = TrainConfig(optimizer="newton", lr=1.0, epochs=20, patience=None, dtype="float64")
SYN = {"n_per_task": 60, "n_features": 5, "clusters": 2, "cluster_size": 2, "seed": 3}


def taskset(name: str) -> TaskSet:
    return load(name, **SYN, n_unrelated=1, n_adversarial=0, train=0.5, val=0.0).standardize()


@pytest.fixture(scope="module", params=["synthetic", "synthetic-regression"])
def trained(request: pytest.FixtureRequest) -> tuple[Any, TaskSet]:
    """A trained convex hard-sharing model (shared head, per-task heads with biases)."""
    ts = taskset(request.param)
    return train_model(ts, "hard", CONVEX, NEWTON), ts


def close(a: Any, b: Any) -> None:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-10 * max(1.0, float(np.abs(b).max())))


def test_small_path_equals_block_path(trained: tuple[Any, TaskSet]) -> None:
    """Task matrix, Newton matrix, instance and per-test-example scores and every
    diagnostic of the small path equal those of the block-arrow path (the same engine
    with the small path switched off)."""
    model, ts = trained
    fast = MTIF(model, ts)
    ref = MTIF(model, ts)
    ref.small = None
    assert fast.small is not None and fast.plan.small_dense and fast.plan.solver == "explicit"
    got = fast.relatedness(instance=True, newton=True)
    want = ref.relatedness(instance=True, newton=True)
    close(got.matrix, want.matrix)
    close(got.meta["newton_matrix"], want.meta["newton_matrix"])
    close(got.instance_scores, want.instance_scores)
    close(fast.test_example_scores([0, 1])[0], ref.test_example_scores([0, 1])[0])
    assert np.abs(want.matrix).max() > 1e-4  # a non-trivial matrix
    close(fast.train_gradients, ref.train_gradients)
    close(fast.test_gradients, ref.test_gradients)
    g, w = got.meta["diagnostics"], want.meta["diagnostics"]
    for key in ("damping", "min_eig", "max_eig"):
        close(g[key], w[key])
    for key in ("positive_definite", "iterations", "max_iter_hit"):
        assert g[key] == w[key]
    assert g["stationarity"]["stationary"] == w["stationarity"]["stationary"]
    for key, values in w["newton"].items():
        close(g["newton"][key], values)
    assert got.meta["solver"]["rel_residual"] < 1e-12
    assert got.meta["caveats"] == want.meta["caveats"]
    assert got.meta["task_matrix_path"] == want.meta["task_matrix_path"]
    assert got.meta["solver_plan"]["small_dense"] is True


def test_cholesky_operator_matches_eigen_solve() -> None:
    """Positive definite: the Cholesky solve equals the eigendecomposition's; indefinite:
    it falls back to the eigendecomposition and reports not positive definite."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(7, 7, generator=gen, dtype=torch.float64)
    rhs = torch.randn(7, 3, generator=gen, dtype=torch.float64)
    for matrix, damping, pd in ((a @ a.T + 0.1 * torch.eye(7), 0.5, True), (a + a.T, 0.0, False)):
        got = small_path.CholeskyOperator(matrix).factorize(damping)
        want = DenseOperator(matrix).factorize(damping)
        assert got.positive_definite is pd and want.positive_definite is pd
        close(got.solve(rhs), want.solve(rhs))
    solution = small_path.CholeskyOperator(a @ a.T).factorize(1.0).solve(rhs)
    close((a @ a.T + torch.eye(7)) @ solution, rhs)


def test_small_path_only_where_it_applies(
    trained: tuple[Any, TaskSet], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not for iterative solvers or the flat (unstructured) explicit solve, nor above the
    size limit; then the plan says so and the block path runs."""
    model, ts = trained
    assert MTIF(model, ts, solver="cg").small is None
    assert MTIF(model, ts, solver="explicit", structured=False).small is None
    monkeypatch.setattr(small_path, "SMALL_MAX_PARAMS", 10)
    engine = MTIF(model, ts)
    assert engine.small is None and not engine.plan.small_dense
