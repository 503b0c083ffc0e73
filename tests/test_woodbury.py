"""Sample-space (Woodbury) solvers: the exact one equals the explicit solve of the same
Hessian on linear models (regression and classification, with unpenalised biases), the
Gauss-Newton one equals a generalised Gauss-Newton matrix built by hand on tiny MLPs (and
the exact solve on linear models); ``solver="auto"`` picks them when the sample space is
much smaller than the parameter space, and they are refused where they do not apply."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from taskrel.data.taskset import TaskSet
from taskrel.errors import ConfigError
from taskrel.models import build_model
from taskrel.relatedness.mtif import MTIF, MTLFunctions, plan_solver, structure_for
from taskrel.relatedness.woodbury import KernelOperator, not_applicable_reason

CONVEX = {"hidden": [], "shared_head": True, "l2": 1e-2, "l2_task": 1e-1}


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
    expected = flat.inverse_test_gradients  # H has condition ~1e5 (biases at 1e-3 l2)
    atol = 1e-10 * float(expected.abs().max())
    torch.testing.assert_close(wood.inverse_test_gradients, expected, rtol=1e-8, atol=atol)


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
    n_rows = sum(len(t.train_idx) for t in wide.tasks) * 2  # 3 classes: 2 curved directions
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
    mlp = build_model("hard", synthetic_reg, {"hidden": [3], "l2": 1e-2})
    soft = build_model("soft", synthetic_reg, {"coupling": 0.5, "l2": 1e-2})
    cases = [
        (mlp, "woodbury", "not linear in its parameters"),
        (soft, "woodbury", "not diagonal"),
        (soft, "woodbury-gn", "not diagonal"),
    ]
    for model, solver, reason in cases:
        structure = structure_for(MTLFunctions(model, synthetic_reg))
        assert reason in str(not_applicable_reason(structure, solver == "woodbury-gn"))
        with pytest.raises(ConfigError, match=reason):
            MTIF(model, synthetic_reg, solver=solver)
    assert MTIF(soft, synthetic_reg).plan.woodbury_not_applicable is not None
    # the Gauss-Newton version applies to the MLP; auto keeps the explicit solve while
    # the sample space is not much smaller than the parameter space (R = 72 > p / 4)
    plan = MTIF(mlp, synthetic_reg).plan
    assert plan.woodbury_not_applicable is None and plan.solver == "explicit"


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


# -- the Gauss-Newton version for networks ----------------------------------------------------
MLP = {"hidden": [4], "l2": 1e-2}


def _ggn_by_hand(
    fns: MTLFunctions, classification: bool, without: int | None = None
) -> torch.Tensor:
    """``P + sum_t (1/n_t) sum_i J_i^T Lambda_i J_i`` (task ``without`` left out) from full
    Jacobians, one example at a time, with the closed-form output curvature (softmax
    ``diag(p) - p p^T``; squared error 2)."""
    theta = fns.theta
    ggn = torch.autograd.functional.hessian(fns.penalty, theta)
    for t in range(fns.n_tasks):
        x, _ = fns.train[t]
        for i in range(len(x) if t != without else 0):

            def out(th: torch.Tensor, t: int = t, xi: torch.Tensor = x[i : i + 1]) -> torch.Tensor:
                return fns.outputs(th, t, xi).reshape(-1)

            jac = torch.autograd.functional.jacobian(out, theta)  # (C, p)
            if classification:
                prob = torch.softmax(out(theta), 0)
                lam = torch.diag(prob) - torch.outer(prob, prob)
            else:
                lam = torch.full((1, 1), 2.0, dtype=theta.dtype)
            ggn += jac.T @ lam @ jac / len(x)
    return ggn


@pytest.mark.parametrize("kind", ["classification", "regression"])
def test_gauss_newton_solve_equals_the_ggn_built_by_hand(
    small: TaskSet, synthetic_reg: TaskSet, kind: str
) -> None:
    """Tiny MLP: the sample-space operator is the generalised Gauss-Newton matrix built by
    hand (softmax's constant direction gets no row), MTIF's solves with it and with
    ``H - H_j`` equal dense solves of that matrix to 1e-8, and it is not the Hessian."""
    taskset = small if kind == "classification" else synthetic_reg
    torch.manual_seed(0)
    model = build_model("hard", taskset, MLP)
    engine = MTIF(model, taskset, solver="woodbury-gn", damping=0.0)
    assert engine.plan.solver == "woodbury-gn" and engine.solver.name == "woodbury-gn"
    fns = engine.fns
    ggn = _ggn_by_hand(fns, kind == "classification")
    scale = float(ggn.abs().max())
    torch.testing.assert_close(engine.operator().dense(), ggn, rtol=1e-10, atol=1e-12 * scale)
    assert engine.sample_space is not None
    rows = [g.shape[0] for g in engine.sample_space.factors]
    width = 3 if kind == "classification" else 1
    assert rows == [len(fns.train[t][0]) * max(width - 1, 1) for t in range(len(taskset))]
    expected = torch.linalg.solve(ggn, engine.test_gradients)
    got = engine.inverse_test_gradients
    assert float((got - expected).norm()) <= 1e-8 * float(expected.norm())
    # H - H_j: task 1's rows removed, solved through the same factors
    without = _ggn_by_hand(fns, kind == "classification", without=1)
    rhs = engine.train_gradients
    solved = engine.operator(without=1).factorize(0.0).solve(rhs)
    reference = torch.linalg.solve(without, rhs)
    assert float((solved - reference).norm()) <= 1e-8 * float(reference.norm())
    hessian = MTIF(model, taskset, solver="explicit", structured=False, damping=0.0)
    assert float((hessian.operator().dense() - ggn).abs().max()) > 1e-4 * scale


def test_gauss_newton_equals_the_exact_solve_on_a_linear_model(small: TaskSet) -> None:
    """For a model linear in its parameters the Gauss-Newton matrix is the Hessian: the
    first-order and Newton task matrices equal the structured explicit ones."""
    torch.manual_seed(0)
    model = build_model("hard", small, CONVEX)
    gn = MTIF(model, small, solver="woodbury-gn", damping=0.0)
    exact = MTIF(model, small, solver="explicit", damping=0.0)
    for name in ("task_matrix", "newton_task_matrix"):
        expected = getattr(exact, name)()
        np.testing.assert_allclose(
            getattr(gn, name)(), expected, rtol=0, atol=1e-8 * np.abs(expected).max()
        )


def test_auto_picks_gauss_newton_for_a_wide_network(wide: TaskSet) -> None:
    """An MLP with R = 72 sample-space rows and p = 1,129 parameters: ``auto`` takes the
    Gauss-Newton sample-space solve; under a budget too small for it, the explicit
    (exact Hessian) solve."""
    torch.manual_seed(0)
    model = build_model("hard", wide, {"hidden": [16], "l2": 1e-2})
    engine = MTIF(model, wide, damping=0.0)
    plan = engine.plan
    assert (plan.solver, engine.solver.name) == ("woodbury-gn", "woodbury-gn")
    assert plan.sample_rows is not None and 4 * plan.sample_rows <= plan.n_params
    assert engine.relatedness(instance=False).meta["solver"]["solver"] == "woodbury-gn"
    assert plan.woodbury_gb is not None
    fallback = MTIF(model, wide, damping=0.0, memory_budget_gb=plan.woodbury_gb / 2)
    assert fallback.plan.solver in ("explicit", "cg")


def test_factor_rows_are_the_kept_curvature_directions(
    small: TaskSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The factors are the curvature-scaled Jacobians S_i J_i / sqrt(n_t) without the
    dropped directions: with one chunk, with chunks of one example (a tiny chunk budget),
    and with a coarse cut-off under which examples keep different numbers of rows."""
    from taskrel.relatedness import woodbury

    torch.manual_seed(0)
    model = build_model("hard", small, MLP)
    assert woodbury.jacobian_chunk_size(3, 10**6, 8, 256) == 2**26 // (3 * 10**6 * 8)

    def formed(rtol: float) -> tuple[float, woodbury.SampleSpace | None]:
        space = MTIF(model, small, solver="woodbury-gn").sample_space
        assert space is not None
        _ = space.factors  # formed now, under the current settings
        return rtol, space

    spaces = [formed(1e-10)]
    monkeypatch.setattr(woodbury, "JACOBIAN_CHUNK_BYTES", 1)
    assert woodbury.jacobian_chunk_size(3, 10**6, 8, 256) == 1
    spaces.append(formed(1e-10))
    monkeypatch.setattr(woodbury, "NULL_RTOL", 0.5)
    spaces.append(formed(0.5))
    uneven = False
    for rtol, space in spaces:
        assert space is not None
        fns = space.fns
        for t, factor in enumerate(space.factors):
            x, y = fns.train[t]
            coords = space.structure.local_coords(t)
            full = torch.cat(list(woodbury.curvature_factors(fns, t, coords, x, y)))
            lam = woodbury.curvature_roots(fns, t, x, y).pow(2).sum(1)
            keep = lam > rtol * lam.max(1, keepdim=True).values
            uneven |= len(set(keep.sum(1).tolist())) > 1
            expected = full[keep] / len(x) ** 0.5
            torch.testing.assert_close(factor, expected, rtol=1e-12, atol=1e-15)
    assert uneven
