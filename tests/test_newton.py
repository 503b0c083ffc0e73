"""Newton training: separable (single-task) models are stepped task by task; above the
dense bound the step solves in the sample space."""

from __future__ import annotations

import copy

import pytest
import torch

from taskrel.data.taskset import TaskSet
from taskrel.models import build_model
from taskrel.models.base import MTLModel
from taskrel.training import trainer
from taskrel.training.convergence import gradient_check
from taskrel.training.newton import _damped_step, newton_size, newton_step
from taskrel.training.trainer import TaskSampler, TrainConfig, fit, resolve_train_config


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_per_task_step_equals_the_joint_step_and_lands_on_the_least_squares_optimum(
    synthetic_reg: TaskSet,
) -> None:
    model = build_model("stl", synthetic_reg, {"l2": 0.3}).double()
    assert (
        model.separable
        and not build_model("soft", synthetic_reg, {"l2": 0.3, "coupling": 0.1}).separable
    )
    joint = copy.deepcopy(model)
    batches = TaskSampler(synthetic_reg, 32, 0, torch.float64).full()
    with torch.no_grad():
        before = float(model.objective(batches)[0])
    assert newton_step(model, batches) == pytest.approx(before, rel=1e-12)
    _damped_step(joint, [n for n, _ in joint.named_parameters()], batches)
    for name, value in _params(joint).items():
        torch.testing.assert_close(_params(model)[name], value, rtol=1e-9, atol=1e-10)
    # squared loss: one Newton step is the closed form, so the gradient vanishes
    assert gradient_check(model, batches, 1e-3).relative < 1e-9
    per_task = sum(p.numel() for p in model.heads[0].parameters())
    assert newton_size(model) == per_task < sum(p.numel() for p in model.parameters())


def test_auto_trains_single_task_models_by_newton_when_each_task_is_small(
    synthetic_cls: TaskSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    stl = build_model("stl", synthetic_cls, {"l2": 1e-2})
    per_task = newton_size(stl)
    monkeypatch.setattr(trainer, "NEWTON_MAX_PARAMS", per_task)  # below the total
    assert resolve_train_config(TrainConfig(), stl).optimizer == "newton"
    hard = build_model("hard", synthetic_cls, {"l2": 1e-2})
    assert resolve_train_config(TrainConfig(), hard).optimizer == "lbfgs"
    result = fit(synthetic_cls, "stl", {"l2": 1e-2})
    assert result.config is not None and result.config.optimizer == "newton"
    # logistic loss: a few damped steps reach the optimum of every task
    assert result.convergence["relative"] < 1e-9 and result.epochs_run < 20


def _below_the_dense_bound(monkeypatch: pytest.MonkeyPatch, model: MTLModel) -> None:
    """Make ``model`` too large for the dense Newton step (in the trainer and the step)."""
    from taskrel.training import newton

    bound = newton_size(model) - 1
    monkeypatch.setattr(newton, "NEWTON_MAX_PARAMS", bound)
    monkeypatch.setattr(trainer, "NEWTON_MAX_PARAMS", bound)


@pytest.mark.parametrize("dataset", ["synthetic_cls", "synthetic_reg"])
def test_sample_space_step_equals_the_dense_newton_step(
    dataset: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    taskset: TaskSet = request.getfixturevalue(dataset)
    model = build_model("hard", taskset, {"l2": 0.05, "l2_task": 0.2}).double()
    dense, start = copy.deepcopy(model), _params(model)
    batches = TaskSampler(taskset, 32, 0, torch.float64).full()
    _below_the_dense_bound(monkeypatch, model)
    newton_step(model, batches)  # Woodbury solve in the sample space
    _damped_step(dense, [n for n, _ in dense.named_parameters()], batches)  # dense Hessian
    for name, value in _params(dense).items():
        torch.testing.assert_close(_params(model)[name], value, rtol=1e-8, atol=1e-10)
        assert float((value - start[name]).abs().max()) > 1e-3  # the step moved it


def test_auto_picks_the_sample_space_newton_step_above_the_dense_bound(
    synthetic_cls: TaskSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    from taskrel.training import newton

    hard = build_model("hard", synthetic_cls, {"l2": 1e-2, "l2_task": 1e-2})
    coupled = build_model("soft", synthetic_cls, {"l2": 1e-2, "coupling": 0.1})
    _below_the_dense_bound(monkeypatch, coupled)  # the smaller of the two
    rows = newton.sample_space_rows(hard, synthetic_cls)
    n_train = sum(len(t.train_idx) for t in synthetic_cls.tasks)
    assert rows == n_train  # binary softmax: one curvature direction per example
    assert resolve_train_config(TrainConfig(), hard, synthetic_cls).optimizer == "newton"
    assert resolve_train_config(TrainConfig(), hard).optimizer == "lbfgs"  # rows unknown
    # a coupling penalty has no diagonal Hessian: no sample-space form, L-BFGS
    assert newton.sample_space_rows(coupled, synthetic_cls) is None
    assert resolve_train_config(TrainConfig(), coupled, synthetic_cls).optimizer == "lbfgs"
    monkeypatch.setattr(trainer, "NEWTON_MAX_ROWS", n_train - 1)
    assert resolve_train_config(TrainConfig(), hard, synthetic_cls).optimizer == "lbfgs"
    monkeypatch.setattr(trainer, "NEWTON_MAX_ROWS", n_train)
    result = fit(synthetic_cls, "hard", {"l2": 1e-2, "l2_task": 1e-2})
    assert result.config is not None and result.config.optimizer == "newton"
    assert result.convergence["relative"] < 1e-9 and result.epochs_run < 20


def test_sample_space_step_trains_without_a_task_to_the_dense_optimum(
    synthetic_cls: TaskSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    from taskrel.relatedness.ground_truth import train_model
    from taskrel.training import newton

    config = {"l2": 0.05, "l2_task": 0.2}
    dense = train_model(synthetic_cls, "hard", config, TrainConfig(optimizer="newton"), [1])
    _below_the_dense_bound(monkeypatch, dense)
    forms: list[object] = []
    form = newton._sample_space
    monkeypatch.setattr(newton, "_sample_space", lambda m, b: forms.append(form(m, b)) or forms[-1])
    sampled = train_model(synthetic_cls, "hard", config, TrainConfig(), [1])
    assert sampled.dropped_tasks == frozenset({1})
    assert len(forms) > 2 and all(f is not None for f in forms)  # every step in the sample space
    for name, value in _params(dense).items():
        torch.testing.assert_close(_params(sampled)[name], value, rtol=1e-7, atol=1e-9)


def test_an_objective_the_sample_space_form_does_not_know_falls_back(
    synthetic_cls: TaskSet,
) -> None:
    from taskrel.training import newton

    model = build_model("hard", synthetic_cls, {"l2": 0.05, "l2_task": 0.2}).double()
    batches = TaskSampler(synthetic_cls, 32, 0, torch.float64).full()
    assert newton._sample_space(model, batches) is not None
    full = model.objective
    model.objective = lambda b: full([b[0], *b])  # type: ignore[method-assign]  # task 0 twice
    assert newton._sample_space(model, batches) is None
    model.dropped_tasks = frozenset({0})  # declared, but not what the objective does
    assert newton._sample_space(model, batches) is None


def test_few_wide_rows_take_the_sample_space_step_below_the_dense_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from taskrel.data import load
    from taskrel.training import newton

    wide = load("synthetic", n_per_task=20, n_features=40, train=0.5, val=0.2, seed=0)
    forms: list[object] = []
    form = newton._sample_space
    monkeypatch.setattr(newton, "_sample_space", lambda m, b: forms.append(form(m, b)) or forms[-1])
    result = fit(wide, "hard", {"l2": 1e-2, "l2_task": 1e-1})
    assert result.config is not None and result.config.optimizer == "newton"
    assert newton_size(result.model) <= newton.NEWTON_MAX_PARAMS
    assert forms and all(f is not None for f in forms)  # R <= p: every step in the sample space
    assert result.convergence["relative"] < 1e-9


def test_a_dense_newton_step_over_the_memory_budget_is_refused_before_allocating(
    synthetic_cls: TaskSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    from taskrel.errors import ConfigError
    from taskrel.relatedness import influence

    model = build_model("hard", synthetic_cls, {"l2": 0.05, "l2_task": 0.2}).double()
    batches = TaskSampler(synthetic_cls, 32, 0, torch.float64).full()
    p = newton_size(model)
    monkeypatch.setattr(influence, "memory_budget_gb", lambda: 3 * p * p * 8 / 1e9 * 0.99)
    with pytest.raises(ConfigError, match=f"dense Hessian of {p:,} parameters.*lbfgs"):
        _damped_step(model, [n for n, _ in model.named_parameters()], batches)
