"""VMTL's reference options: the encoder's deterministic ELU layers (``encoder_layers``) and
class-balanced batches (``batching="balanced"``), and the pooled single-model baseline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from taskrel.data.taskset import Task, TaskSet
from taskrel.errors import TaskrelError
from taskrel.models import build_model
from taskrel.models.base import Batch, TaskSpec
from taskrel.models.bayes import BayesianLinear
from taskrel.models.pooled import Pooled
from taskrel.models.vmtl import VMTL, VMTLConfig
from taskrel.models.vmtl_parts import BalancedSampler
from taskrel.notices import collect
from taskrel.training.trainer import fit

COUNTS = ((6, 2, 0), (4, 5, 1))  # rows per class (columns) of each task (rows)


def _labelled(counts=COUNTS, d: int = 3) -> tuple[list[TaskSpec], list[torch.Tensor], list]:
    """Tasks with the given class counts; inputs encode (task, row) so rows are traceable."""
    xs, ys = [], []
    for t, row in enumerate(counts):
        y = torch.cat([torch.full((n,), c) for c, n in enumerate(row)])
        x = torch.stack([torch.full((d,), 100.0 * t + i) for i in range(len(y))])
        xs.append(x)
        ys.append(y)
    specs = [TaskSpec(f"t{t}", "classification", len(COUNTS[0])) for t in range(len(counts))]
    return specs, xs, ys


def test_elu_encoder_layers_shapes_parameters_and_moments() -> None:
    specs, xs, ys = _labelled()
    torch.manual_seed(0)
    d, k = 3, 5
    model = VMTL(specs, xs, ys, VMTLConfig(latent=k, encoder_layers=2, l2=0.3))
    body = model.encoder_body
    linears = [m for m in body if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(d, k), (k, k)]
    assert sum(isinstance(m, torch.nn.ELU) for m in body) == 2
    assert isinstance(model.encoder, BayesianLinear)
    assert tuple(model.encoder.weight_mu.shape) == (k, k)
    # parameters: 2 ELU layers (d*k + k, k*k + k) + the Bayesian layer's means and scales
    n_body = sum(p.numel() for p in body.parameters())
    assert n_body == d * k + k + k * k + k
    n_bayes = sum(p.numel() for p in model.encoder.parameters())
    assert n_bayes == 2 * (k * k + k)
    # moments by hand: h = elu(elu(x W1' + b1) W2' + b2), mean = h M + m_b
    x = torch.randn(7, d)
    h = F.elu(
        F.elu(x @ linears[0].weight.T + linears[0].bias) @ linears[1].weight.T + linears[1].bias
    )
    mean, var = model.encoder_moments(x)
    assert torch.allclose(mean, h @ model.encoder.weight_mu + model.encoder.bias_mu, atol=1e-6)
    assert torch.allclose(var, model.encoder.moments(h)[1], atol=1e-7)
    assert mean.shape == var.shape == (7, k)
    # the L2 penalty covers the deterministic layers too
    sq = sum(p.pow(2).sum() for p in body.parameters())
    sq = sq + model.encoder.weight_mu.pow(2).sum() + model.encoder.bias_mu.pow(2).sum()
    assert float(model.penalty().detach()) == pytest.approx(0.15 * float(sq.detach()), rel=1e-6)
    # no layers: the Bayesian layer reads the inputs directly
    plain = VMTL(specs, xs, ys, VMTLConfig(latent=k))
    assert len(plain.encoder_body) == 0 and tuple(plain.encoder.weight_mu.shape) == (d, k)


def test_balanced_sampler_draws_k_per_class_and_resamples_small_classes() -> None:
    specs, xs, ys = _labelled()
    labels = torch.zeros(2, 11, dtype=torch.long)
    valid = torch.zeros(2, 11, dtype=torch.bool)
    for t, y in enumerate(ys):
        labels[t, : len(y)], valid[t, : len(y)] = y, True
    k = 4
    sampler = BalancedSampler(labels, valid, 3, k)
    torch.manual_seed(0)
    hits = torch.zeros(2, 11)
    n_draws = 1000
    for i in range(n_draws):
        rows, present = sampler.draw()
        assert present.tolist() == [[True, True, False], [True, True, True]]
        for t in range(2):
            picked = rows[t][present[t]]  # (classes present, k)
            hits[t].index_add_(0, picked.flatten(), torch.ones(picked.numel()))
            if i >= 50:
                continue
            for c, chosen in zip(present[t].nonzero().flatten().tolist(), picked, strict=True):
                assert len(chosen) == k
                assert bool((labels[t, chosen] == c).all()) and bool(valid[t, chosen].all())
                if COUNTS[t][c] >= k:  # enough rows: k distinct ones
                    assert len(set(chosen.tolist())) == k
    # every row of a class is drawn equally often: k / n_c per draw (with replacement when
    # n_c < k: the class still gets k rows)
    for t, row in enumerate(COUNTS):
        for c, n in enumerate(row):
            if n:
                freq = hits[t][:11][(labels[t] == c) & valid[t]] / n_draws
                assert torch.allclose(freq, torch.full((n,), k / n), rtol=0.1)


def test_balanced_batches_replace_the_trainers_batches_in_training_only() -> None:
    specs, xs, ys = _labelled()
    model = VMTL(specs, xs, ys, VMTLConfig(latent=2, batching="balanced", per_class=3))
    torch.manual_seed(1)
    batches = model.balanced_batches([0, 1])
    assert [b.task for b in batches] == [0, 1]
    for b, x, y, row in zip(batches, xs, ys, COUNTS, strict=True):
        expected = [3 if n else 0 for n in row]
        assert torch.bincount(b.y, minlength=3).tolist() == expected
        # each drawn row is a training row with its own label
        for xi, yi in zip(b.x, b.y, strict=True):
            i = int((x[:, 0] == xi[0]).nonzero())
            assert int(y[i]) == int(yi)
    # objective: in training mode the given rows are ignored (a one-row batch of class 0 gives
    # the same data loss as any other batch under the same random draw)
    model.train()
    one = [Batch(0, xs[0][:1], ys[0][:1]), Batch(1, xs[1][:1], ys[1][:1])]
    other = [Batch(0, xs[0][-2:], ys[0][-2:]), Batch(1, xs[1][-2:], ys[1][-2:])]
    torch.manual_seed(2)
    a = model.objective(one)[1]["data_loss"]
    torch.manual_seed(2)
    b = model.objective(other)[1]["data_loss"]
    assert a == pytest.approx(b, rel=1e-6)
    model.eval()  # the given batches are used (e.g. the trainer's full-batch gradient check)
    torch.manual_seed(2)
    c = model.objective(one)[1]["data_loss"]
    assert c != pytest.approx(a, rel=1e-3)


def test_balanced_batching_on_regression_keeps_shuffled_batches_with_a_notice() -> None:
    xs = [torch.randn(6, 2), torch.randn(5, 2)]
    ys = [torch.randn(6), torch.randn(5)]
    specs = [TaskSpec(f"r{t}", "regression", 1) for t in range(2)]
    with collect() as caveats:
        model = VMTL(specs, xs, ys, VMTLConfig(latent=2, batching="balanced"))
    assert model.sampler is None
    assert len(caveats) == 1 and "batching='balanced'" in caveats[0]


# -- the pooled baseline --------------------------------------------------------------------
def _regression_taskset(seed: int = 0) -> TaskSet:
    rng = np.random.default_rng(seed)
    tasks = []
    for t, n in enumerate((30, 8, 15)):
        x = rng.normal(size=(n, 3)).astype(np.float32)
        y = (x @ np.array([1.0, -2.0, 0.5]) + t + rng.normal(scale=0.3, size=n)).astype(np.float32)
        tasks.append(Task(f"r{t}", "regression", x, y, 1, train_idx=np.arange(n)))
    return TaskSet("pooled-test", tuple(tasks))


def test_pooled_linear_model_is_the_task_weighted_ridge_solution() -> None:
    ts = _regression_taskset()
    l2 = 0.1
    result = fit(ts, "pooled", {"l2": l2}, {"epochs": 20, "seed": 0})
    model = result.model
    assert isinstance(model, Pooled) and model.convex
    # closed form of sum_t mean_i (x_i w + b - y_i)^2 + (l2/2)(|w|^2 + 1e-3 b^2)
    rows, targets, weights = [], [], []
    for task in ts.tasks:
        n = len(task.y)
        rows.append(np.hstack([task.x, np.ones((n, 1))]).astype(np.float64))
        targets.append(task.y.astype(np.float64))
        weights.append(np.full(n, 1.0 / n))
    a, y, w = np.vstack(rows), np.concatenate(targets), np.concatenate(weights)
    reg = np.diag([l2 / 2] * 3 + [1e-3 * l2 / 2])
    theta = np.linalg.solve(a.T @ (w[:, None] * a) + reg, a.T @ (w * y))
    fitted = np.concatenate(
        [model.head.weight.detach().double().numpy().ravel(), model.head.bias.detach().numpy()]
    )
    assert np.allclose(fitted, theta, atol=1e-5)
    # every task gets the same predictions; no parameter belongs to a task
    x = torch.as_tensor(ts.tasks[0].x, dtype=next(model.parameters()).dtype)
    assert torch.equal(model(x, 0), model(x, 2))
    assert model.task_parameter_names(1) == []
    assert set(model.shared_parameters()) == {n for n, _ in model.named_parameters()}


def test_pooled_needs_one_output_space() -> None:
    x = np.zeros((4, 2), dtype=np.float32)
    ts = TaskSet(
        "mixed",
        (
            Task("a", "classification", x, np.array([0, 1, 0, 1]), 2, train_idx=np.arange(4)),
            Task("b", "classification", x, np.array([0, 1, 2, 0]), 3, train_idx=np.arange(4)),
        ),
    )
    with pytest.raises(TaskrelError, match="one number of outputs"):
        build_model("pooled", ts, {"l2": 1e-3})
