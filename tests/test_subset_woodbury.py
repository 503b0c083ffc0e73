"""The subset Newton step (``mtif-newton``) in the sample space: equals the block-arrow
(explicit) step on small linear classification and regression models, holds the
parameters of the tasks outside the subset even when nothing curves them, and is chosen by
``solver="auto"`` when the block system does not fit the memory budget."""

from __future__ import annotations

import pytest
import torch

from taskrel.data import load
from taskrel.data.taskset import TaskSet
from taskrel.decisions.mtif_subset import MTIFNewton
from taskrel.decisions.predictors import make_predictor
from taskrel.errors import ConfigError
from taskrel.models import build_model
from taskrel.models.base import MTLModel
from taskrel.relatedness import RelateContext

SUBSETS = [(0, 2), (1,), (0, 1, 2), (1, 2, 3)]


@pytest.fixture(scope="module")
def classification() -> TaskSet:
    """4 three-class tasks, 12 training rows each, 6 features."""
    return load(
        "synthetic",
        n_per_task=24,
        n_features=6,
        n_classes=3,
        clusters=1,
        cluster_size=2,
        n_unrelated=2,
        n_adversarial=0,
        train=0.5,
        val=0.0,
        seed=5,
    ).standardize()


def _model(taskset: TaskSet, config: dict[str, object]) -> MTLModel:
    """An untrained linear model (the step from there is long: a strong check)."""
    torch.manual_seed(0)
    return build_model("hard", taskset, config)


def _steps(
    taskset: TaskSet,
    model: MTLModel,
    config: dict[str, object],
    solver: str,
    subsets: list[tuple[int, ...]],
) -> tuple[MTIFNewton, list[torch.Tensor]]:
    """The fitted predictor and its stepped parameters ``theta_G`` ``(p,)`` per subset."""
    ctx = RelateContext(model="hard", model_config=config)
    predictor = MTIFNewton(model=model, solver=solver)
    predictor.fit(taskset, ctx)
    return predictor, [predictor.step(s)[1] for s in subsets]


def _assert_relative(got: torch.Tensor, expected: torch.Tensor, rtol: float) -> None:
    assert float((got - expected).norm()) <= rtol * float(expected.norm())


@pytest.mark.parametrize(
    "case",
    [
        ("classification", {"hidden": [], "shared_head": True, "l2": 1e-2, "l2_task": 1e-1}),
        ("regression", {"hidden": [], "shared_head": True, "l2": 1e-2, "l2_task": 1e-1}),
        # unpenalised heads: those of the tasks outside G are held by a stand-in curvature
        ("regression", {"hidden": [], "shared_head": True, "l2": 1e-2, "l2_task": 0.0}),
    ],
)
def test_woodbury_subset_step_equals_the_explicit_step(
    classification: TaskSet, synthetic_reg: TaskSet, case: tuple[str, dict[str, object]]
) -> None:
    """From an untrained point (a long step): the sample-space step equals the block-arrow
    step to 1e-8 relative, the other tasks' parameters stay exactly where they were, and
    the predicted losses agree."""
    kind, config = case
    taskset = classification if kind == "classification" else synthetic_reg
    model = _model(taskset, config)
    explicit, expected = _steps(taskset, model, config, "explicit", SUBSETS)
    predictor, got = _steps(taskset, model, config, "woodbury", SUBSETS)
    assert predictor.meta["solver_plan"]["solver"] == "woodbury"
    assert predictor.meta["damped_solves"] == 0 == explicit.meta["damped_solves"]
    theta = explicit.engine.fns.theta
    for subset, a, b in zip(SUBSETS, got, expected, strict=True):
        _assert_relative(a - theta, b - theta, 1e-8)
        outside = torch.ones(theta.numel(), dtype=torch.bool)
        for t in subset:
            outside[explicit.engine.structure.local_coords(t)] = False
        assert torch.equal(a[outside], theta[outside])
    torch.testing.assert_close(
        torch.as_tensor(predictor.subset_losses(SUBSETS)),
        torch.as_tensor(explicit.subset_losses(SUBSETS)),
        rtol=1e-8,
        atol=0.0,
        equal_nan=True,
    )


def test_cg_subset_step_equals_the_explicit_step(synthetic_reg: TaskSet) -> None:
    """The iterative fallback: CG (tolerance 1e-10 on the residual, condition ~1e3) lands
    on the explicit step to 1e-6."""
    config = {"hidden": [], "shared_head": True, "l2": 1e-2, "l2_task": 0.0}
    model = _model(synthetic_reg, config)
    subsets = [(0, 2)]
    explicit, expected = _steps(synthetic_reg, model, config, "explicit", subsets)
    predictor, got = _steps(synthetic_reg, model, config, "cg", subsets)
    assert predictor.meta["solver_plan"]["solver"] == "cg"
    theta = explicit.engine.fns.theta
    _assert_relative(got[0] - theta, expected[0] - theta, 1e-6)


def test_auto_falls_back_to_the_sample_space_under_the_memory_budget() -> None:
    """A budget below the block system's need but above the kernel's: ``auto`` solves in
    the sample space (the office-caltech case of issue 13, where the block-arrow solve
    needs 31.8 GB); the plan is in ``meta``; an explicit request over budget is refused."""
    classification = load(  # p = 312 < 4 R = 384: auto prefers the block solve while it fits
        "synthetic",
        n_per_task=24,
        n_features=20,
        n_classes=3,
        clusters=1,
        cluster_size=2,
        n_unrelated=2,
        n_adversarial=0,
        train=0.5,
        val=0.0,
        seed=6,
    ).standardize()
    config = {"hidden": [], "shared_head": True, "l2": 1e-2, "l2_task": 1e-1}
    model = _model(classification, config)
    ctx = RelateContext(model="hard", model_config=config)
    plan = MTIFNewton(model=model).fit(classification, ctx).meta["solver_plan"]
    assert (plan["solver"], plan["structured"]) == ("explicit", True)  # R > p / 4 here
    budget = 0.5 * (plan["structured_gb"] + plan["woodbury_gb"])
    assert plan["woodbury_gb"] < budget < plan["structured_gb"]
    auto = MTIFNewton(model=model, memory_budget_gb=budget).fit(classification, ctx)
    assert auto.meta["solver_plan"]["solver"] == "woodbury"
    assert "hessian_columns" not in auto.meta  # no block Hessians were formed
    explicit = MTIFNewton(model=model).fit(classification, ctx)
    torch.testing.assert_close(
        torch.as_tensor(auto.subset_losses(SUBSETS)),
        torch.as_tensor(explicit.subset_losses(SUBSETS)),
        rtol=1e-8,
        atol=0.0,
        equal_nan=True,
    )
    tiny = 0.5 * plan["woodbury_gb"]
    assert (
        MTIFNewton(model=model, memory_budget_gb=tiny)
        .fit(classification, ctx)
        .meta["solver_plan"]["solver"]
        == "cg"
    )
    with pytest.raises(ConfigError, match="over the memory budget"):
        MTIFNewton(model=model, solver="explicit", memory_budget_gb=tiny).fit(classification, ctx)


def test_subset_solver_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="solver must be one of"):
        make_predictor("mtif-newton", solver="qr")
    with pytest.raises(ConfigError, match="memory_budget_gb"):
        make_predictor("mtif-first-order", memory_budget_gb=-1)
