"""Sample-space (Woodbury) solver: equals the explicit solve of the same Hessian on linear
models (regression and classification, with unpenalised biases), is chosen by
``solver="auto"`` when the sample space is much smaller than the parameter space, and is
refused where it does not apply."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from taskrel.data import load
from taskrel.data.taskset import TaskSet
from taskrel.errors import ConfigError
from taskrel.models import build_model
from taskrel.relatedness.mtif import MTIF, MTLFunctions, plan_solver, structure_for
from taskrel.relatedness.woodbury import KernelOperator, not_applicable_reason

CONVEX = {"hidden": [], "shared_head": True, "l2": 1e-2, "l2_task": 1e-1}


@pytest.fixture(scope="module")
def wide() -> TaskSet:
    """3 three-class tasks, 12 training rows each, 60 features: R = 108 rows, p = 729."""
    return load(
        "synthetic",
        n_per_task=24,
        n_features=60,
        n_classes=3,
        clusters=1,
        cluster_size=2,
        n_unrelated=1,
        n_adversarial=0,
        train=0.5,
        val=0.0,
        seed=4,
    ).standardize()


@pytest.fixture(scope="module")
def small() -> TaskSet:
    """3 three-class tasks, 12 training rows each, 6 features."""
    return load(
        "synthetic",
        n_per_task=24,
        n_features=6,
        n_classes=3,
        clusters=1,
        cluster_size=2,
        n_unrelated=1,
        n_adversarial=0,
        train=0.5,
        val=0.0,
        seed=5,
    ).standardize()


def _models(classification: TaskSet, regression: TaskSet) -> list[tuple[TaskSet, object]]:
    torch.manual_seed(0)
    return [
        (regression, build_model("hard", regression, CONVEX)),
        (classification, build_model("hard", classification, CONVEX)),
        (classification, build_model("stl", classification, {"l2": 1e-2})),
    ]


@pytest.mark.parametrize("case", [0, 1, 2])
def test_woodbury_equals_explicit_solve(small: TaskSet, synthetic_reg: TaskSet, case: int) -> None:
    """At an arbitrary (untrained) point: the kernel operator is the exact Hessian (data
    curvature of a linear model is the Gauss-Newton term), and Woodbury solves with H,
    H - H_j and a reweighted H equal dense solves of the flat Hessian to ~1e-8."""
    taskset, model = _models(small, synthetic_reg)[case]
    wood = MTIF(model, taskset, solver="woodbury", damping=0.0)
    flat = MTIF(model, taskset, solver="explicit", structured=False, damping=0.0)
    assert wood.plan.solver == "woodbury" and wood.sample_space is not None
    reweighted = [1.0, 1.5, 0.5] + [1.0] * (len(taskset) - 3)
    for kw in ({}, {"without": 1}, {"weights": reweighted}):
        h_wood = wood.operator(**kw)
        assert isinstance(h_wood, KernelOperator)
        dense = flat.operator(**kw).dense()
        torch.testing.assert_close(h_wood.dense(), dense, rtol=1e-10, atol=1e-12)
        rhs = torch.randn(dense.shape[0], 3, dtype=torch.float64, generator=torch.Generator())
        expected = torch.linalg.solve(dense + 0.5 * torch.eye(dense.shape[0]), rhs)
        got = h_wood.factorize(0.5).solve(rhs)
        torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(
        wood.inverse_test_gradients, flat.inverse_test_gradients, rtol=1e-8, atol=1e-12
    )


def test_woodbury_matches_explicit_on_a_trained_regression_model(
    synthetic_reg: TaskSet,
) -> None:
    """Trained convex model: first-order and Newton task matrices agree with the
    structured explicit solve (unpenalised biases are held exactly in the Newton step)."""
    from taskrel.relatedness.ground_truth import train_model
    from taskrel.training.trainer import TrainConfig

    exact = TrainConfig(optimizer="newton", lr=1.0, epochs=2, patience=None, dtype="float64")
    model = train_model(synthetic_reg, "hard", CONVEX, exact)
    wood = MTIF(model, synthetic_reg, solver="woodbury")
    block = MTIF(model, synthetic_reg, solver="explicit")
    scale = np.abs(block.task_matrix()).max()
    np.testing.assert_allclose(wood.task_matrix(), block.task_matrix(), atol=1e-9 * scale)
    np.testing.assert_allclose(
        wood.newton_task_matrix(), block.newton_task_matrix(), atol=1e-9 * scale
    )


def test_auto_picks_woodbury_when_the_sample_space_is_small(wide: TaskSet) -> None:
    torch.manual_seed(0)
    model = build_model("hard", wide, CONVEX)
    engine = MTIF(model, wide, damping=0.0)
    plan = engine.plan.to_meta()
    n_rows = sum(len(t.train_idx) for t in wide.tasks) * 3
    assert plan["sample_rows"] == n_rows and 4 * n_rows <= plan["n_params"]
    assert (plan["solver"], engine.solver.name) == ("woodbury", "woodbury")
    meta = engine.relatedness(instance=False).meta
    assert meta["solver_plan"]["solver"] == "woodbury" and meta["solver"]["solver"] == "woodbury"
    # a budget too small for the kernel: auto falls back (here to CG), explicit refuses
    tiny = plan["woodbury_gb"] / 2
    fallback = MTIF(model, wide, damping=0.0, memory_budget_gb=tiny)
    assert fallback.plan.solver != "woodbury"
    with pytest.raises(ConfigError, match=r"woodbury.*over the memory budget"):
        MTIF(model, wide, solver="woodbury", memory_budget_gb=tiny)


def test_auto_keeps_the_block_solve_when_the_sample_space_is_large(
    synthetic_reg: TaskSet,
) -> None:
    torch.manual_seed(0)
    model = build_model("hard", synthetic_reg, CONVEX)  # R = 4 * 30 rows > p = 29
    plan = plan_solver(structure_for(MTLFunctions(model, synthetic_reg)))
    assert (plan.solver, plan.structured) == ("explicit", True)
    assert plan.sample_rows is not None and plan.sample_rows > plan.n_params


def test_woodbury_is_refused_where_it_does_not_apply(synthetic_reg: TaskSet) -> None:
    torch.manual_seed(0)
    cases = {
        "not linear in its parameters": build_model(
            "hard", synthetic_reg, {"hidden": [3], "l2": 1e-2}
        ),
        "not diagonal": build_model("soft", synthetic_reg, {"coupling": 0.5, "l2": 1e-2}),
    }
    for reason, model in cases.items():
        structure = structure_for(MTLFunctions(model, synthetic_reg))
        assert reason in str(not_applicable_reason(structure))
        with pytest.raises(ConfigError, match=reason):
            MTIF(model, synthetic_reg, solver="woodbury")
        assert MTIF(model, synthetic_reg).plan.woodbury_not_applicable is not None


def test_kernel_operator_reports_an_indefinite_system() -> None:
    """H = G^T G with one unpenalised coordinate the data never touch is singular: the
    Haynsworth inertia check says so, and with damping the solve is exact again."""
    g = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 0.0]], dtype=torch.float64)
    penalty = torch.tensor([0.1, 0.1, 0.0], dtype=torch.float64)
    op = KernelOperator(penalty, [g], [torch.arange(3)], [1.0])
    assert not op.factorize(0.0).positive_definite
    factor = op.factorize(0.3)
    assert factor.positive_definite
    dense = torch.diag(penalty) + g.T @ g + 0.3 * torch.eye(3, dtype=torch.float64)
    rhs = torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(factor.solve(rhs), torch.linalg.inv(dense), rtol=1e-10, atol=0)
    torch.testing.assert_close(op.dense(), torch.diag(penalty) + g.T @ g)
