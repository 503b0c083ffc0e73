"""Parameter-similarity baseline: cosine between the tasks' fitted parameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from taskrel.data.taskset import Task, TaskSet
from taskrel.errors import NotApplicableError
from taskrel.models import build_model
from taskrel.relatedness import RelateContext, relate
from taskrel.training.trainer import TrainConfig


def _tasks(signs: list[float], seed: int = 0) -> TaskSet:
    """Regression tasks ``y = sign * x w + noise`` sharing one generating ``w``."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=5)
    tasks = []
    for t, sign in enumerate(signs):
        x = rng.normal(size=(150, 5))
        y = sign * x @ w + rng.normal(scale=0.1, size=150)
        idx = np.arange(150)
        tasks.append(Task(f"t{t}", "regression", x, y, 1, idx[:100], idx[100:120], idx[120:]))
    return TaskSet("signs", tuple(tasks))


def test_identical_weights_give_one_and_opposite_weights_minus_one() -> None:
    ts = _tasks([1.0, 1.0, -1.0])
    rel = relate(ts, "param-similarity")
    m = rel.matrix
    assert m.shape == (3, 3) and rel.task_names == ["t0", "t1", "t2"]
    assert rel.method == "param-similarity"
    np.testing.assert_allclose(np.diag(m), 1.0)
    np.testing.assert_allclose(m, m.T)
    assert m[0, 1] > 0.99 and m[0, 2] < -0.99 and m[1, 2] < -0.99
    assert rel.meta["source"] == "single-task linear models"


def test_heads_of_a_given_model_by_hand(synthetic_reg: TaskSet) -> None:
    model = build_model("hard", synthetic_reg, {"hidden": [4], "l2": 1e-4, "l2_task": None})
    rel = relate(synthetic_reg, "param-similarity", model=model)
    heads = [
        torch.cat([model.heads[t].bias, model.heads[t].weight.reshape(-1)]).detach().double()
        for t in range(len(synthetic_reg))
    ]
    for i in range(len(heads)):
        for j in range(len(heads)):
            cos = float(heads[i] @ heads[j] / (heads[i].norm() * heads[j].norm()))
            assert rel.matrix[i, j] == pytest.approx(cos, abs=1e-12)


def test_a_nonlinear_shared_representation_compares_heads(synthetic_reg: TaskSet) -> None:
    ctx = RelateContext(
        model_config={"hidden": [4], "l2": 1e-4, "l2_task": None},
        train_config=TrainConfig(epochs=2, patience=None),
    )
    rel = relate(synthetic_reg, "param-similarity", ctx)
    assert rel.meta["source"] == "task heads of 'hard'"
    np.testing.assert_allclose(np.diag(rel.matrix), 1.0)


def test_different_parameter_shapes_are_not_applicable(synthetic_reg: TaskSet) -> None:
    from dataclasses import replace

    rng = np.random.default_rng(0)
    first = synthetic_reg[0]
    labels = rng.integers(0, 3, size=len(first.y))
    odd = replace(first, name="c3", kind="classification", y=labels, n_outputs=3)
    ts = synthetic_reg.with_tasks([odd, *synthetic_reg.tasks[1:]])
    model = build_model("stl", ts, {"l2": 1e-3})
    with pytest.raises(NotApplicableError, match="one length"):
        relate(ts, "param-similarity", RelateContext(model="stl"), model=model)
