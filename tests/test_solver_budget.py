"""MTIF's solver choice under a memory budget (issue 14, item 2): ``solver="auto"`` picks
the explicit structured solve only while it fits, CG otherwise; an explicit request over
the budget is refused before anything large is allocated; non-PD notices land in
``meta['caveats']``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from taskrel.data.taskset import TaskSet
from taskrel.errors import ConfigError
from taskrel.models import build_model
from taskrel.relatedness import RelateContext, influence, relate
from taskrel.relatedness.influence import GB, HessianOperator, dense_solve_bytes, memory_budget_gb
from taskrel.relatedness.mtif import MTIF, MTLFunctions, plan_solver, structure_for

MLP = {"hidden": [3], "activation": "tanh", "l2": 1e-2, "l2_task": 1e-2}
CONVEX = {"hidden": [], "shared_head": True, "l2": 1e-2, "l2_task": 1e-1}


@pytest.fixture(scope="module")
def tasks(synthetic_reg: TaskSet) -> TaskSet:
    return synthetic_reg


def test_default_budget_is_an_eighth_of_ram_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(influence, "physical_memory_bytes", lambda: 16 * 10**9)
    assert memory_budget_gb() == pytest.approx(2.0)
    monkeypatch.setattr(influence, "physical_memory_bytes", lambda: 256 * 10**9)
    assert memory_budget_gb() == pytest.approx(4.0)  # the cap
    monkeypatch.setattr(influence, "physical_memory_bytes", lambda: None)
    assert memory_budget_gb() == pytest.approx(2.0)
    assert memory_budget_gb(0.5) == 0.5
    for bad in (0, -1, "1", True):
        with pytest.raises(ConfigError, match="memory_budget_gb"):
            memory_budget_gb(bad)  # type: ignore[arg-type]


def test_block_sizes_and_estimates_are_exact_counts(tasks: TaskSet) -> None:
    """Hard sharing, 5 features, hidden [3]: shared 5*3+3 = 18, head 3+1 = 4 per task."""
    model = build_model("hard", tasks, MLP)
    structure = structure_for(MTLFunctions(model, tasks))
    q, sizes = structure.block_sizes()
    assert (q, sizes) == (18, [4] * 4)
    n = 18 + 4
    blocks = q * q + 4 * (4 * q + 4 * 4)
    assert structure.structured_bytes() == 8 * (2 * 4 * n * n + 2 * blocks + 3 * n * n)
    p = sum(t.numel() for t in model.parameters())
    assert p == 18 + 4 * 4
    assert dense_solve_bytes(p) == 4 * p * p * 8


def test_office_caltech_sized_model_picks_cg() -> None:
    """The README's failing case: 800 features, hidden [64], 4 ten-class tasks (53,864
    parameters) needs ~93 GB dense and is planned onto CG under the default budget."""
    fake = type("S", (), {})()
    fake.fns = type("F", (), {"space": type("P", (), {"numel": 53_864})()})()
    fake.structured_bytes = lambda itemsize=8: 8 * 4 * 51_914**2
    plan = plan_solver(fake, "auto", None, 3.0)  # type: ignore[arg-type]
    assert (plan.solver, plan.structured) == ("cg", False)
    assert plan.dense_gb == pytest.approx(4 * 53_864**2 * 8 / GB)
    with pytest.raises(ConfigError) as err:
        plan_solver(fake, "explicit", False, 3.0)  # type: ignore[arg-type]
    message = str(err.value)
    assert "\n" not in message
    assert "92.8 GB" in message and "3 GB" in message and "53,864 parameters" in message


def test_auto_uses_cg_over_budget_and_agrees_with_explicit(tasks: TaskSet) -> None:
    tasks = tasks.select_tasks([0, 2])
    torch.manual_seed(0)
    model = build_model("hard", tasks, CONVEX)  # any point: damping makes H + 1 I PD
    explicit = MTIF(model, tasks, damping=1.0)  # plenty of budget: structured explicit
    assert (explicit.plan.solver, explicit.plan.structured) == ("explicit", True)
    tiny = explicit.plan.structured_gb / 2
    cg = MTIF(model, tasks, damping=1.0, memory_budget_gb=tiny)
    assert (cg.plan.solver, cg.plan.structured, cg.solver.name) == ("cg", False, "cg")
    np.testing.assert_allclose(cg.task_matrix(), explicit.task_matrix(), rtol=1e-6, atol=1e-10)
    meta = cg.relatedness(instance=False).meta["solver_plan"]
    assert meta["requested"] == "auto" and meta["solver"] == "cg"
    assert meta["budget_gb"] == pytest.approx(tiny)


def test_explicit_over_budget_raises_before_any_hessian(
    tasks: TaskSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("trained before checking the memory budget")

    def no_dense(*args: object, **kwargs: object) -> None:
        raise AssertionError("formed a dense Hessian before checking the budget")

    monkeypatch.setattr("taskrel.relatedness.ground_truth.train_model", no_training)
    monkeypatch.setattr(HessianOperator, "dense", no_dense)
    ctx = RelateContext(model="hard", model_config=MLP)
    for structured in (None, False):
        with pytest.raises(ConfigError, match=r"needs about .* GB, over the memory budget"):
            relate(tasks, "mtif", ctx, solver="explicit", structured=structured,
                   memory_budget_gb=1e-7)  # fmt: skip


def test_local_penalty_hessians_equal_the_dense_penalty_blocks(
    tasks: TaskSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over the budget, the per-task penalty Hessians (formed without the (p, p) matrix)
    are exactly the corresponding blocks of the full penalty Hessian."""
    torch.manual_seed(0)
    model = build_model("soft", tasks, {"hidden": [2], "coupling": 0.3, "l2": 1e-2})
    fns = MTLFunctions(model, tasks)
    full = HessianOperator(fns.penalty, fns.theta).dense()
    structure = structure_for(fns)
    structure.budget_bytes = 0.0
    calls = []
    original = HessianOperator.dense

    def spy(self: HessianOperator, chunk_size: int | None = None) -> torch.Tensor:
        calls.append(self.dim)
        return original(self, chunk_size)

    monkeypatch.setattr(HessianOperator, "dense", spy)
    assert structure.local_hessians  # formed
    assert max(calls) < fns.space.numel  # never the (p, p) matrix
    for t, (_, pen) in enumerate(structure.local_hessians):
        c = structure.local_coords(t)
        torch.testing.assert_close(pen, full[c][:, c], rtol=0, atol=1e-12)


def test_not_positive_definite_notice_is_recorded_in_caveats(tasks: TaskSet) -> None:
    torch.manual_seed(0)
    model = build_model("hard", tasks, MLP)  # untrained MLP: an indefinite Hessian
    ctx = RelateContext(model="hard", model_config=MLP)
    result = relate(tasks, "mtif", ctx, model=model, instance=False)
    assert result.meta["solver"]["min_eig"] < 0
    caveats = result.meta["caveats"]
    assert sum("not positive definite" in c for c in caveats) == 1
    assert all("\n" not in c for c in caveats)
