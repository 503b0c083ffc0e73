"""The convergence diagnostic (relative gradient norm) and its one-line notice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from taskrel.data.taskset import TaskSet
from taskrel.models import build_model
from taskrel.notices import collect
from taskrel.training.convergence import gradient_check
from taskrel.training.trainer import TaskSampler, TrainConfig, fit

LINEAR = {"hidden": [], "l2": 1e-2, "l2_task": 1e-1}


def test_notice_fires_on_an_under_trained_model(synthetic_reg: TaskSet) -> None:
    cfg = TrainConfig(optimizer="adam", lr=1e-5, epochs=1, patience=None)
    with collect() as caveats:
        result = fit(synthetic_reg, "hard", LINEAR, cfg)
    assert len(caveats) == 1 and "has not converged after 1 epochs of adam" in caveats[0]
    assert result.convergence["relative"] > 0.3 and not result.convergence["converged"]


@pytest.mark.parametrize("optimizer", ["auto", "lbfgs"])
def test_no_notice_on_a_converged_exact_fit(synthetic_reg: TaskSet, optimizer: str) -> None:
    with collect() as caveats:
        result = fit(synthetic_reg, "hard", LINEAR, TrainConfig(optimizer=optimizer))
    assert caveats == []
    assert result.convergence["converged"] and result.convergence["relative"] < 1e-7
    assert result.config is not None and result.config.dtype == "float64"
    assert result.config.optimizer == ("newton" if optimizer == "auto" else "lbfgs")
    assert "grad_rel" in result.history[-1]


def test_no_notice_when_early_stopping_chose_the_epoch(synthetic_cls: TaskSet) -> None:
    cfg = TrainConfig(optimizer="adam", lr=5e-2, epochs=200, batch_size=16, patience=3)
    with collect() as caveats:
        result = fit(synthetic_cls, "stl", {"hidden": [16], "l2": 0.0}, cfg)
    assert result.stopped_early and result.best_epoch < result.epochs_run
    assert caveats == []
    assert result.convergence["relative"] > cfg.grad_tol  # recorded all the same


def test_relative_gradient_norm_closed_forms(synthetic_reg: TaskSet) -> None:
    one = synthetic_reg.select_tasks([0])
    batches = TaskSampler(one, 32, 0, torch.float64).full()
    # no penalty, one task: J = L_1, so ||grad J|| / ||grad L_1|| = 1 anywhere
    model = build_model("stl", one, {"l2": 0.0}).double()
    assert gradient_check(model, batches, 1e-3).relative == pytest.approx(1.0, rel=1e-12)
    # at the optimum of L_1 + (l2/2)(||w||^2 + 1e-3 b^2): grad L_1 = -l2 (w, 1e-3 b), so
    # the scale is the norm of that and the relative norm is ~0
    l2 = 0.3
    trained = fit(one, "stl", {"l2": l2}).model
    check = gradient_check(trained, batches, 1e-3)
    head = trained.heads[0]
    force = torch.cat([head.weight.detach().reshape(-1), 1e-3 * head.bias.detach()])
    assert check.scale == pytest.approx(l2 * float(force.norm()), rel=1e-8)
    assert check.relative < 1e-10 and check.converged
    assert np.isfinite(check.objective)


def test_tasks_with_their_own_rows_are_checked_in_one_chunk(synthetic_reg: TaskSet) -> None:
    """Chunking needs every task's batch to hold the same rows; tasks with their own rows
    (different sizes and inputs) keep the one full batch, whatever ``chunk_rows``."""
    from taskrel.training.convergence import _chunks

    batches = TaskSampler(synthetic_reg, 32, 0, torch.float64).full()
    assert len(_chunks(batches, 2)) == 1
    same = [type(b)(b.task, batches[0].x, batches[0].y) for b in batches]
    assert len(_chunks(same, 2)) == -(-len(batches[0].x) // 2)
