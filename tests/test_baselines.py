"""Gradient cosine and lookahead affinity: closed forms on a linear model, the sign on a
task's exact and adversarial copies, recording that leaves training untouched, and the
planted structure of synthetic tasks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from taskrel.data import load
from taskrel.data.taskset import Task, TaskSet
from taskrel.errors import ConfigError, NotApplicableError
from taskrel.models import build_model
from taskrel.models.base import Batch
from taskrel.relatedness import RelateContext, agreement, relate
from taskrel.relatedness.baselines import (
    gradient_cosine_step,
    lookahead_affinity_step,
    record_during_training,
)
from taskrel.training import TrainConfig, fit

LINEAR = {"hidden": [], "shared_head": True, "l2": 1e-2}


def copies_taskset(n: int = 30, d: int = 4, seed: int = 0) -> TaskSet:
    """Regression tasks: A, an exact copy of A, A with negated targets, and an unrelated B."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x @ rng.normal(size=d) + 0.1 * rng.normal(size=n)).astype(np.float32)
    xb = rng.normal(size=(n, d)).astype(np.float32)
    yb = (xb @ rng.normal(size=d)).astype(np.float32)
    data = {"A": (x, y), "A-copy": (x, y), "A-adversary": (x, -y), "B": (xb, yb)}
    return TaskSet(
        "copies",
        tuple(Task(name, "regression", xs, ys, 1, np.arange(n)) for name, (xs, ys) in data.items()),
    )


def linear_model(
    taskset: TaskSet, rng: np.random.Generator | None
) -> tuple[torch.nn.Module, list[Batch]]:
    """Hard sharing ``f_t(x) = x.(w + v_t) + b_t`` in float64 with random parameters (all
    zero when ``rng`` is None) and one full batch per task."""
    model = build_model("hard", taskset, LINEAR).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(
                torch.zeros_like(p)
                if rng is None
                else torch.from_numpy(rng.normal(size=tuple(p.shape)))
            )
    batches = [
        Batch(t, torch.from_numpy(task.x).double(), torch.from_numpy(task.y).double())
        for t, task in enumerate(taskset.tasks)
    ]
    return model, batches


def numpy_losses_and_grads(
    model: torch.nn.Module,
    batches: list[Batch],
    w: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Closed form: ``L_t(w) = mean((x (w + v_t) + b_t - y)^2)`` for each task and its
    gradient ``2/n sum (residual) x`` w.r.t. the shared weight ``w``; ``(T,)``, ``(T, d)``."""
    losses, grads = [], []
    for b in batches:
        head = model.heads[b.task]
        v, c = head.weight.detach().numpy()[0], head.bias.detach().numpy()[0]
        x, y = b.x.numpy(), b.y.numpy()
        r = x @ (w + v) + c - y
        losses.append(np.mean(r**2))
        grads.append(2 * x.T @ r / len(y))
    return np.array(losses), np.array(grads)


def test_probes_match_closed_forms_on_a_linear_model() -> None:
    taskset = copies_taskset()
    model, batches = linear_model(taskset, np.random.default_rng(1))
    w = model.shared_head.weight.detach().numpy()[0].copy()
    losses, grads = numpy_losses_and_grads(model, batches, w)
    unit = grads / np.linalg.norm(grads, axis=1, keepdims=True)
    np.testing.assert_allclose(
        gradient_cosine_step(model, batches).numpy(), unit @ unit.T, rtol=1e-10, atol=1e-12
    )
    lr = 0.05
    expected = np.array(
        [
            [
                1 - numpy_losses_and_grads(model, batches, w - lr * grads[j])[0][i] / losses[i]
                for j in range(4)
            ]
            for i in range(4)
        ]
    )
    np.testing.assert_allclose(
        lookahead_affinity_step(model, batches, lr).numpy(), expected, rtol=1e-10, atol=1e-12
    )
    np.testing.assert_array_equal(model.shared_head.weight.detach().numpy()[0], w)  # untouched


def test_a_task_helps_its_copy_and_hurts_its_adversary() -> None:
    """At w = 0 with zero heads, the adversary's gradient is exactly the negated gradient."""
    taskset = copies_taskset()
    model, batches = linear_model(taskset, None)
    cos = gradient_cosine_step(model, batches).numpy()
    np.testing.assert_allclose(cos[0, :3], [1.0, 1.0, -1.0], atol=1e-12)
    lr = 0.05
    z = lookahead_affinity_step(model, batches, lr).numpy()
    x, y = taskset.tasks[0].x.astype(np.float64), taskset.tasks[0].y.astype(np.float64)
    g = -2 * x.T @ y / len(y)  # gradient of A's loss at w = 0
    own = 1 - np.mean((x @ (-lr * g) - y) ** 2) / np.mean(y**2)
    adversary = 1 - np.mean((x @ (lr * g) - y) ** 2) / np.mean(y**2)
    assert own > 0 > adversary
    np.testing.assert_allclose(z[0, :3], [own, own, adversary], rtol=1e-10)


def test_recording_leaves_training_unchanged_and_counts_steps(synthetic_cls: TaskSet) -> None:
    cfg = TrainConfig(epochs=3, batch_size=16, patience=None)
    ctx = RelateContext(model_config={"hidden": [8], "dropout": 0.3}, train_config=cfg)
    matrix, count, recorded = record_during_training(
        synthetic_cls, ctx, gradient_cosine_step, every=2
    )
    plain = fit(synthetic_cls, "hard", ctx.model_config, cfg).model
    for (name, a), b in zip(
        recorded.model.state_dict().items(), plain.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    steps = cfg.epochs * math.ceil(max(s["train"] for s in synthetic_cls.sizes().values()) / 16)
    assert count == math.ceil(steps / 2)
    assert np.allclose(matrix, matrix.T) and np.allclose(np.diag(matrix), 1.0)


@pytest.mark.parametrize("method", ["gradient", "affinity"])
@pytest.mark.parametrize("given", ["context", "override"])
def test_auto_optimiser_records_minibatch_adam_on_a_convex_model(
    synthetic_cls: TaskSet, method: str, given: str
) -> None:
    """A convex model's ``'auto'`` optimiser is an exact full-batch one (one step per
    epoch); the probes are defined on stochastic training, so ``'auto'`` becomes Adam on
    mini-batches whether the config comes with the context or as ``train_config``. An
    optimiser named explicitly is kept."""
    options = {"epochs": 2, "batch_size": 8, "patience": None}
    steps = 2 * math.ceil(max(s["train"] for s in synthetic_cls.sizes().values()) / 8)
    if given == "context":
        ctx = RelateContext(model_config=LINEAR, train_config=TrainConfig(**options))
        rel = relate(synthetic_cls, method, ctx, every=1)
    else:
        rel = relate(
            synthetic_cls, method, RelateContext(model_config=LINEAR), every=1, train_config=options
        )
    assert rel.meta["train_config"]["optimizer"] == "adam"
    assert rel.meta["recorded_steps"] == steps > 2
    exact = relate(
        synthetic_cls,
        method,
        RelateContext(model_config=LINEAR),
        every=1,
        train_config={**options, "optimizer": "lbfgs"},
    )
    assert exact.meta["train_config"]["optimizer"] == "lbfgs"
    assert exact.meta["recorded_steps"] == 2  # one full-batch step per epoch


def test_both_recover_planted_clusters_and_conflicts() -> None:
    taskset = load(
        "synthetic-regression",
        clusters=2,
        cluster_size=2,
        n_unrelated=1,
        n_adversarial=1,
        n_per_task=80,
        n_features=8,
        seed=3,
    ).standardize()
    ctx = RelateContext(
        model_config=LINEAR, train_config=TrainConfig(epochs=15, batch_size=16, patience=None)
    )
    truth = taskset.meta["similarity"]
    for method in ("gradient", "affinity"):
        rel = relate(taskset, method, ctx, every=1)
        assert rel.method == method and rel.meta["recorded_steps"] > 0
        assert agreement(rel, truth) > 0.6, method
        # the adversary (last task, opposing cluster 0) conflicts with cluster 0's tasks
        assert np.all(rel.matrix[:2, -1] < 0) and np.all(rel.matrix[-1, :2] < 0), method
        assert np.all(rel.matrix[0, 1] > rel.matrix[0, 2:]), method


def test_models_without_shared_parameters_are_refused(synthetic_reg: TaskSet) -> None:
    ctx = RelateContext(
        model="stl", model_config={"hidden": [4]}, train_config=TrainConfig(epochs=1, patience=None)
    )
    with pytest.raises(NotApplicableError, match="no shared parameters"):
        relate(synthetic_reg, "gradient", ctx)
    with pytest.raises(ConfigError, match="every must be"):
        relate(synthetic_reg, "affinity", RelateContext(), every=0)
