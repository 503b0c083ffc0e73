"""Newton training: separable (single-task) models are stepped task by task."""

from __future__ import annotations

import copy

import pytest
import torch

from taskrel.data.taskset import TaskSet
from taskrel.models import build_model
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
