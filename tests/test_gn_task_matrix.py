"""MTIF's first-order task matrix from the sample space alone (issue 15): for
``woodbury-gn`` with the factor held per nn.Linear layer, ``grad L_i^T (H + damping)^-1
grad G_j`` from Gram blocks between test rows, training rows and G's rows equals the
solve over all parameters (same layer operator) and the per-example-Jacobian path to
1e-9, on small MLPs with biases, two hidden layers and per-task heads (softmax
classification and regression, with and without damping); the solve report is the same;
runs that need the solve over all parameters (instance scores) or that the shortcut does
not cover (coordinates without curvature) take the parameter-space path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from taskrel.data.taskset import TaskSet
from taskrel.models import build_model
from taskrel.relatedness.mtif import MTIF
from taskrel.relatedness.woodbury import LinearKernelOperator, SampleSpace

MLP = {"hidden": [5, 4], "activation": "tanh", "l2": 1e-2, "l2_task": 1e-1}


def _close(got: np.ndarray, expected: np.ndarray, rtol: float = 1e-9) -> None:
    """Largest difference within ``rtol`` of the largest entry."""
    assert np.abs(got - expected).max() <= rtol * np.abs(expected).max()


def _engines(model: torch.nn.Module, taskset: TaskSet, damping: float) -> tuple[MTIF, ...]:
    """The sample-space path, the parameter-space solve with the same layer operator, and
    the parameter-space solve with per-example Jacobians."""
    fast = MTIF(model, taskset, solver="woodbury-gn", damping=damping)
    layered = MTIF(model, taskset, solver="woodbury-gn", damping=damping)
    _ = layered._solved  # the solve over all parameters has run: task_matrix uses it
    dense = MTIF(model, taskset, solver="woodbury-gn", damping=damping)
    dense.sample_space = SampleSpace(dense.structure, gauss_newton=True, linear_layers=False)
    return fast, layered, dense


@pytest.mark.parametrize("damping", [0.0, 0.3])
@pytest.mark.parametrize("kind", ["classification", "regression"])
def test_sample_space_task_matrix_equals_the_parameter_space_solves(
    small: TaskSet, synthetic_reg: TaskSet, kind: str, damping: float
) -> None:
    """Matrix to 1e-9 of both parameter-space paths; the report's damping, eigenvalue
    estimates and positive definiteness identical to the layer solve's, its residual as
    small; no vector over the parameters solved for."""
    taskset = small if kind == "classification" else synthetic_reg
    torch.manual_seed(0)
    model = build_model("hard", taskset, MLP)
    fast, layered, dense = _engines(model, taskset, damping)
    matrix = fast.task_matrix()
    assert fast.task_matrix_path == "sample-space" and "_solved" not in fast.__dict__
    assert isinstance(fast.operator(), LinearKernelOperator)
    expected = layered.task_matrix()
    assert layered.task_matrix_path == "parameter-space"
    _close(matrix, expected)
    _close(matrix, dense.task_matrix())
    assert np.abs(np.diag(matrix)).min() > 0  # a nontrivial matrix
    mine, theirs = fast.report, layered.report
    assert (mine.solver, mine.damping, mine.positive_definite) == (
        theirs.solver,
        theirs.damping,
        theirs.positive_definite,
    )
    assert mine.min_eig == pytest.approx(theirs.min_eig, rel=1e-12)
    assert mine.max_eig == pytest.approx(theirs.max_eig, rel=1e-12)
    assert mine.rel_residual is not None and theirs.rel_residual is not None
    assert mine.rel_residual < 1e-10 and theirs.rel_residual < 1e-8


def test_relatedness_records_the_path(small: TaskSet) -> None:
    """``relatedness(instance=False)`` takes the sample-space path (recorded in meta, with
    the same diagnostics keys); with instance scores the task matrix comes from the solve
    over all parameters, and equals the fixed-weight scores summed per source task."""
    torch.manual_seed(0)
    model = build_model("hard", small, MLP)
    fast = MTIF(model, small, solver="woodbury-gn").relatedness(instance=False)
    full = MTIF(model, small, solver="woodbury-gn").relatedness(instance=True)
    assert fast.meta["task_matrix_path"] == "sample-space"
    assert full.meta["task_matrix_path"] == "parameter-space"
    _close(fast.matrix, full.matrix)
    assert fast.meta["diagnostics"].keys() == full.meta["diagnostics"].keys()
    assert fast.meta["diagnostics"]["stationarity"]["relative"] == pytest.approx(
        full.meta["diagnostics"]["stationarity"]["relative"], rel=1e-12
    )
    assert fast.meta["solver_plan"] == full.meta["solver_plan"]
    assert set(fast.meta["timings_s"]) == set(full.meta["timings_s"]) - {"instance_s"}
    scores, ids = full.instance_scores, full.instance_ids
    assert scores is not None and ids is not None
    summed = np.stack([scores[ids[:, 0] == j].sum(0) for j in range(len(small))], axis=1)
    np.testing.assert_allclose(summed, full.matrix, rtol=1e-10, atol=1e-14)


def test_coordinates_without_curvature(small: TaskSet) -> None:
    """Unpenalised heads (``l2_task=0``): the smallest eigenvalue estimate is 0, so the
    shortcut steps aside, damped or not (the parameter-space solve runs, with its extra
    kernel rows and its not-positive-definite notice); the sample-space product itself
    refuses a diagonal with zeros."""
    torch.manual_seed(0)
    model = build_model("hard", small, {**MLP, "l2_task": 0.0})
    for damping in (0.0, 0.05):
        engine = MTIF(model, small, solver="woodbury-gn", damping=damping)
        assert engine._sample_solve is None
        assert np.isfinite(engine.task_matrix()).all()
        assert engine.task_matrix_path == "parameter-space"
    space = engine.sample_space
    assert space is not None
    op = space.operator()
    assert isinstance(op, LinearKernelOperator)
    rows = [space.gradient_factor(t) for t in range(len(small))]
    assert op.grouped_inverse(rows, rows, 0.0) is None
    assert op.grouped_inverse(rows, rows, 0.05) is not None
