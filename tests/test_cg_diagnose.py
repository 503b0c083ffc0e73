"""CG computes its eigenvalue estimates (Ritz values) only when a solve needs them: a
solve that diagnoses nothing with a numeric damping skips them, and its solutions are
unchanged (they equal the explicit solver's)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import four_binary_tasks

from taskrel.data.taskset import TaskSet
from taskrel.relatedness import influence
from taskrel.relatedness.ground_truth import train_model
from taskrel.relatedness.influence import CGSolver, DenseOperator
from taskrel.relatedness.mtif import MTIF
from taskrel.training.trainer import TrainConfig

CONVEX = {"hidden": [], "shared_head": True, "l2": 1e-2, "l2_task": 1e-1}
LBFGS = TrainConfig(
    optimizer="lbfgs", lr=1.0, epochs=1, lbfgs_max_iter=300, patience=None, dtype="float64"
)


@pytest.fixture
def ritz_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Spy on the Ritz-value estimate: one entry (its column count) per call."""
    calls: list[int] = []
    real = influence._ritz_extremes

    def spy(alphas, betas, steps):  # type: ignore[no-untyped-def]
        calls.append(int(alphas[0].numel()) if alphas else 0)
        return real(alphas, betas, steps)

    monkeypatch.setattr(influence, "_ritz_extremes", spy)
    return calls


def _spd(n: int = 12, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=gen, dtype=torch.float64)
    return a @ a.T + torch.diag(torch.linspace(0.5, 3.0, n, dtype=torch.float64))


def test_undiagnosed_cg_skips_the_eigenvalue_estimates(ritz_calls: list[int]) -> None:
    h = _spd()
    rhs = torch.randn(12, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    solver = CGSolver(damping=0.5, tol=1e-13)
    x, report = solver.solve(DenseOperator(h), rhs, diagnose=False)
    assert ritz_calls == []
    assert math.isnan(report.min_eig) and math.isnan(report.max_eig)
    assert report.positive_definite and report.damping == 0.5
    exact = torch.linalg.solve(h + 0.5 * torch.eye(12, dtype=torch.float64), rhs)
    torch.testing.assert_close(x, exact, rtol=1e-9, atol=1e-12)

    # diagnosing (or damping="auto") still estimates the spectrum, from CG's coefficients
    ev = torch.linalg.eigvalsh(h)
    for diagnosed in (CGSolver(damping=0.5, tol=1e-13), CGSolver(tol=1e-13)):
        _, report = diagnosed.solve(DenseOperator(h), rhs, diagnose=True)
        assert report.max_eig == pytest.approx(float(ev[-1]), rel=1e-6)
        assert report.min_eig == pytest.approx(float(ev[0]), rel=1e-6)
    assert ritz_calls == [5, 5]


@pytest.fixture(scope="module")
def classification() -> TaskSet:
    return four_binary_tasks(seed=2)


def test_cg_scores_equal_explicit_without_repeated_estimates(
    classification: TaskSet, ritz_calls: list[int]
) -> None:
    """Per-test-example and leverage scores with CG: only the diagnosed solve of H
    (the T test gradients) estimates the spectrum; the scores equal the explicit ones."""
    model = train_model(classification, "hard", CONVEX, LBFGS)
    options = {"tol": 1e-12}
    cg = MTIF(model, classification, solver="cg", damping=0.0, solver_options=options)
    explicit = MTIF(model, classification, solver="explicit", damping=0.0)
    targets = range(len(classification))
    ours, rows = cg.test_example_scores(targets)
    assert ritz_calls == [len(classification)]  # the report's solve, once
    theirs, rows_explicit = explicit.test_example_scores(targets)
    np.testing.assert_array_equal(rows, rows_explicit)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-9 * np.abs(theirs).max())
    lev, _ = cg.instance_scores("fixed", kind="leverage")
    assert ritz_calls == [len(classification)]
    lev_exact, _ = explicit.instance_scores("fixed", kind="leverage")
    np.testing.assert_allclose(lev, lev_exact, rtol=1e-6, atol=1e-9 * np.abs(lev_exact).max())
    assert 0 < cg.report.min_eig < cg.report.max_eig  # the reported diagnostics remain
