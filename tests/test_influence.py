"""Generic influence machinery: per-example gradients, HVPs, solvers, diagnostics."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.func import grad

from taskrel.data import load
from taskrel.models import build_model
from taskrel.notices import collect
from taskrel.relatedness.influence import (
    CGSolver,
    DenseOperator,
    ExplicitSolver,
    HessianOperator,
    LissaSolver,
    ParamSpace,
    hvp,
    lanczos_extremes,
    per_example_grads,
    resolve_damping,
)
from taskrel.relatedness.mtif import MTLFunctions


@pytest.fixture(scope="module")
def mlp_functions() -> MTLFunctions:
    ts = load(
        "synthetic",
        n_per_task=40,
        n_features=4,
        clusters=1,
        cluster_size=2,
        n_unrelated=0,
        n_adversarial=1,
        seed=3,
    ).standardize()
    torch.manual_seed(0)
    model = build_model("hard", ts, {"hidden": [5], "activation": "tanh", "l2": 1e-2})
    return MTLFunctions(model, ts)


def _spd(n: int, cond: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    ev = torch.logspace(0, torch.log10(torch.tensor(cond)).item(), n, dtype=torch.float64)
    return q @ torch.diag(ev) @ q.T


def test_param_space_round_trip() -> None:
    params = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([7.0, 8.0])}
    space = ParamSpace.from_params(params)
    flat = space.flatten(params)
    assert flat.tolist() == [0, 1, 2, 3, 4, 5, 7, 8]
    back = space.unflatten(flat)
    assert torch.equal(back["a"], params["a"]) and torch.equal(back["b"], params["b"])
    assert space.indices(["b"]).tolist() == [6, 7]
    assert space.indices(["b", "a"]).tolist() == [6, 7, 0, 1, 2, 3, 4, 5]


def test_per_example_grads_equal_autograd_loop(mlp_functions: MTLFunctions) -> None:
    fns = mlp_functions
    x, y = fns.train[1]
    coords = torch.arange(fns.space.numel)
    loss = fns.example_loss(1, coords)
    batched = torch.cat(list(per_example_grads(loss, fns.theta, x, y, chunk_size=5)))
    assert batched.shape == (len(x), fns.space.numel)
    for i in range(0, len(x), 3):
        theta = fns.theta.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(fns.losses(theta, 1, x[i : i + 1], y[i : i + 1])[0], theta)
        torch.testing.assert_close(batched[i], g, rtol=1e-10, atol=1e-12)


def test_hvp_equals_finite_differences(mlp_functions: MTLFunctions) -> None:
    fns = mlp_functions
    gen = torch.Generator().manual_seed(1)
    v = torch.randn(fns.space.numel, 3, generator=gen, dtype=torch.float64)
    hv = hvp(fns.objective, fns.theta, v)
    g = grad(fns.objective)
    eps = 1e-5
    for k in range(3):
        fd = (g(fns.theta + eps * v[:, k]) - g(fns.theta - eps * v[:, k])) / (2 * eps)
        torch.testing.assert_close(hv[:, k], fd, rtol=1e-6, atol=1e-8)
    dense = HessianOperator(fns.objective, fns.theta).dense()
    torch.testing.assert_close(dense @ v, hv, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("solver", [CGSolver(0.0, tol=1e-12), LissaSolver(0.0, tol=1e-13)])
def test_iterative_solvers_converge_to_exact(solver) -> None:
    op = DenseOperator(_spd(30, cond=50.0, seed=0))
    rhs = torch.randn(30, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    exact = torch.linalg.solve(op.matrix, rhs)
    x, report = solver.solve(op, rhs)
    torch.testing.assert_close(x, exact, rtol=1e-7, atol=1e-9)
    assert report.positive_definite and report.rel_residual < 1e-8
    assert report.iterations is not None and report.iterations > 1


def test_damping_is_added_to_the_diagonal() -> None:
    op = DenseOperator(_spd(12, cond=10.0, seed=4))
    rhs = torch.ones(12, 1, dtype=torch.float64)
    exact = torch.linalg.solve(op.matrix + 0.5 * torch.eye(12, dtype=torch.float64), rhs)
    for solver in (ExplicitSolver(0.5), CGSolver(0.5), LissaSolver(0.5)):
        x, report = solver.solve(op, rhs)
        assert report.damping == 0.5
        torch.testing.assert_close(x, exact, rtol=1e-7, atol=1e-9)


def test_lanczos_finds_extreme_eigenvalues() -> None:
    q, _ = torch.linalg.qr(
        torch.randn(200, 200, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    )
    ev = torch.cat(
        [
            torch.tensor([-5.0], dtype=torch.float64),
            torch.linspace(1.0, 100.0, 199, dtype=torch.float64),
        ]
    )
    a = q @ torch.diag(ev) @ q.T
    lo, hi = lanczos_extremes(DenseOperator(a), iters=60)
    assert lo == pytest.approx(float(ev[0]), rel=1e-6)
    assert hi == pytest.approx(float(ev[-1]), rel=1e-6)


def test_indefinite_hessian_is_diagnosed_and_auto_damped() -> None:
    a = torch.diag(torch.tensor([-1.0, 0.5, 2.0, 4.0], dtype=torch.float64))
    op = DenseOperator(a)
    rhs = torch.ones(4, 1, dtype=torch.float64)
    with collect() as caveats:
        x, report = ExplicitSolver("auto").solve(op, rhs)
    assert len(caveats) == 1 and "not positive definite" in caveats[0]
    assert "\n" not in caveats[0]
    assert report.min_eig == pytest.approx(-1.0)
    assert report.damping == pytest.approx(resolve_damping("auto", -1.0, 4.0))
    assert report.damping > 1.0
    torch.testing.assert_close(x[:, 0], 1.0 / (torch.diagonal(a) + report.damping))
    with warnings.catch_warnings(), collect() as caveats:
        warnings.simplefilter("error")  # no Python warning any more: a one-line notice
        _, cg_report = CGSolver(0.0, max_iter=20).solve(op, rhs)
    assert not cg_report.positive_definite  # negative curvature met
    assert any("not positive definite" in c for c in caveats)
    assert resolve_damping("auto", 0.3, 4.0) == 0.0


def test_max_iter_hit_is_reported_and_noticed() -> None:
    h = DenseOperator(_spd(30, 1e4, seed=5))
    b = torch.randn(30, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with collect() as given:
        _, short = CGSolver(damping=0.0, max_iter=3).solve(h, b)
    assert (short.iterations, short.max_iter_hit) == (3, True)
    assert short.rel_residual is not None and short.rel_residual > 1e-3
    assert any("max_iter=3" in line for line in given)
    with collect() as given:
        _, full = CGSolver(damping=0.0, max_iter=500).solve(h, b)
    assert full.max_iter_hit is False and full.iterations is not None and full.iterations < 500
    assert not any("max_iter" in line for line in given)
    _, lissa = LissaSolver(damping=0.0, max_iter=5).solve(h, b)
    assert lissa.max_iter_hit is True
    _, direct = ExplicitSolver(damping=0.0).solve(h, b)
    assert direct.max_iter_hit is None


class _Counting(DenseOperator):
    calls = 0

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return super().matvec(v)


def test_cg_takes_extreme_eigenvalues_from_its_own_coefficients() -> None:
    """The Ritz values of CG's Lanczos tridiagonal match the true extremes once CG has
    explored the space, and no separate Lanczos run is made (products = iterations + the
    residual check)."""
    m = _spd(30, cond=200.0, seed=7)
    ev = torch.linalg.eigvalsh(m)
    op = _Counting(m)
    rhs = torch.randn(30, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x, report = CGSolver("auto", tol=1e-12).solve(op, rhs)
    assert report.min_eig == pytest.approx(float(ev[0]), rel=1e-6)
    assert report.max_eig == pytest.approx(float(ev[-1]), rel=1e-6)
    assert report.damping == 0.0 and report.positive_definite
    assert op.calls == report.iterations + 1
    torch.testing.assert_close(x, torch.linalg.solve(m, rhs), rtol=1e-8, atol=1e-10)
    _, separate = CGSolver("auto", tol=1e-12, spectrum="lanczos").solve(_Counting(m), rhs)
    assert separate.min_eig == pytest.approx(float(ev[0]), rel=1e-6)


def test_cg_auto_damps_an_indefinite_operator_from_its_own_estimates() -> None:
    a = torch.diag(torch.tensor([-1.0, 0.5, 2.0, 4.0], dtype=torch.float64))
    rhs = torch.ones(4, 1, dtype=torch.float64)
    with collect() as caveats:
        x, report = CGSolver("auto", tol=1e-12).solve(DenseOperator(a), rhs)
    assert report.min_eig <= -1.0 + 1e-9 and report.damping > 1.0
    torch.testing.assert_close(x[:, 0], 1.0 / (torch.diagonal(a) + report.damping))
    assert sum("not positive definite" in c for c in caveats) == 1
