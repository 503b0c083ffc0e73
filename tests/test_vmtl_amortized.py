"""VMTL amortised classifiers (per-class generated posteriors, their per-class mixture
priors, the absent-class fallback, the regression summary) and the reference's
range-scaled attention."""

from __future__ import annotations

import math

import pytest
import torch
from torch import distributions as D

from taskrel.models.base import TaskSpec
from taskrel.models.bayes import gaussian_kl, moment_matched
from taskrel.models.vmtl import VMTL, VMTLConfig
from taskrel.models.vmtl_parts import summary_inputs


def _classification(n_classes: int = 3, missing: tuple[int, int] | None = None):
    """Three tasks, 4-d inputs, ``n_classes`` classes, 6 rows per class per task; task
    ``missing[0]`` has no row of class ``missing[1]``."""
    gen = torch.Generator().manual_seed(0)
    xs, ys = [], []
    for t in range(3):
        y = torch.arange(n_classes).repeat_interleave(6)
        if missing is not None and t == missing[0]:
            y = y[y != missing[1]]
        xs.append(torch.randn(len(y), 4, generator=gen) + y.unsqueeze(-1).float())
        ys.append(y)
    tasks = [TaskSpec(f"t{t}", "classification", n_classes) for t in range(3)]
    return tasks, xs, ys


def _model(tasks, xs, ys, **options) -> VMTL:
    torch.manual_seed(0)
    config = VMTLConfig(latent=2, classifier="amortized", generator_hidden=8, **options)
    return VMTL(tasks, xs, ys, config)


def test_amortized_kl_is_per_class_mixture_of_generated_posteriors() -> None:
    tasks, xs, ys = _classification()
    model = _model(tasks, xs, ys, prior_form="mixture", kl_samples=200_000)
    with torch.no_grad():  # spread the generated means and variances
        for p in model.generator.parameters():
            p.normal_(std=2.0, generator=torch.Generator().manual_seed(p.numel()))
    alpha = torch.tensor([[0.0, 0.7, 0.3], [0.5, 0.0, 0.5], [0.2, 0.8, 0.0]])
    # the generated posteriors by hand: encoder mean at each task's class means -> MLP
    means = torch.stack(
        [torch.stack([x[y == c].mean(0) for c in range(3)]) for x, y in zip(xs, ys, strict=True)]
    )
    enc = model.encoder
    mu, var = model.generator(means @ enc.weight_mu + enc.bias_mu)  # (T, C, K + 1)
    mu, var = mu.detach().double(), var.detach().double()
    assert torch.allclose(model.heads()[0].detach().double(), mu.transpose(1, 2), atol=1e-6)
    t, src = 0, [1, 2]
    q = D.Independent(D.Normal(mu[t], var[t].sqrt()), 1)  # batch over classes
    prior = D.MixtureSameFamily(
        D.Categorical(probs=alpha[t, src].double().expand(3, 2)),
        D.Independent(D.Normal(mu[src].transpose(0, 1), var[src].transpose(0, 1).sqrt()), 1),
    )
    torch.manual_seed(1)
    w = q.sample((200_000,))  # (n, C, K + 1)
    reference = float((q.log_prob(w) - prior.log_prob(w)).sum(-1).mean())
    torch.manual_seed(2)
    kl = float(model.kl_w([t], alpha)[0].detach())
    assert kl == pytest.approx(reference, rel=0.01)
    # one mixture over the whole head (the free heads' prior) is a different, wrong value
    whole = D.MixtureSameFamily(
        D.Categorical(probs=alpha[t, src].double()),
        D.Independent(D.Normal(mu[src].flatten(1), var[src].flatten(1).sqrt()), 1),
    )
    flat = D.Independent(D.Normal(mu[t].flatten(), var[t].flatten().sqrt()), 1)
    torch.manual_seed(3)
    w = flat.sample((200_000,))
    wrong = float((flat.log_prob(w) - whole.log_prob(w)).mean())
    assert abs(wrong - reference) > 0.1 * abs(reference)
    # the reference (moment) form: closed form per class, summed
    model.config.prior_form = "moment"
    mu_p, var_p = moment_matched(
        alpha[t, src].double(), mu[src].transpose(0, 1), var[src].transpose(0, 1)
    )
    by_hand = float(gaussian_kl(mu[t], var[t], mu_p, var_p).sum())
    assert float(model.kl_w([t], alpha)[0].detach()) == pytest.approx(by_hand, rel=1e-4)


def test_amortized_sources_are_detached() -> None:
    tasks, xs, ys = _classification()
    model = _model(tasks, xs, ys)
    alpha = model.mixing_weights("w").detach()
    mu, _ = model.heads()
    mu.retain_grad()
    # gradient of task 0's KL reaches the generator only through task 0's own posterior
    model.zero_grad()
    (model.kl_w([0], alpha)[0]).backward()
    grad_own = model.generator.out.weight.grad.clone()
    model.zero_grad()
    mu_g, var_g = model.head_groups()
    from taskrel.models.bayes import mixture_prior_kl

    src = torch.tensor([1, 2])
    kl = mixture_prior_kl(
        mu_g[0],
        var_g[0],
        alpha[0, src].expand(3, 2),
        mu_g.detach()[src].transpose(0, 1),
        var_g.detach()[src].transpose(0, 1),
        model.config.prior_form,
    ).sum()
    kl.backward()
    assert torch.allclose(grad_own, model.generator.out.weight.grad, atol=1e-6)
    assert "generator.out.weight" in model.shared_parameters()
    assert model.task_parameter_names(1) == ["logits_w.1", "logits_z.1"]


def test_absent_classes_use_documented_fallback_and_stay_finite() -> None:
    # 4 classes: task 0 lacks class 2, no task has class 3
    tasks, xs, ys = _classification(n_classes=4, missing=(0, 2))
    for t in range(3):  # drop class 3 everywhere
        keep = ys[t] != 3
        xs[t], ys[t] = xs[t][keep], ys[t][keep]
    u, counts = summary_inputs(xs, ys, "classification", 4)
    assert counts[0].tolist() == [6, 6, 0, 0]
    assert counts[1].tolist() == [6, 6, 6, 0]
    # absent: the mean of the other tasks' class means; nowhere: the pooled input mean
    class2 = (xs[1][ys[1] == 2].mean(0) + xs[2][ys[2] == 2].mean(0)) / 2
    assert torch.allclose(u[0, 2], class2, atol=1e-6)
    assert torch.allclose(u[1, 2], xs[1][ys[1] == 2].mean(0), atol=1e-6)
    pooled = torch.cat(xs).mean(0)
    assert torch.allclose(u[:, 3], pooled.expand(3, 4), atol=1e-6)
    model = _model(tasks, xs, ys, prior_form="bound")
    mu, var = model.heads()
    assert torch.isfinite(mu).all() and torch.isfinite(var).all()
    from taskrel.models.base import Batch

    batches = [Batch(t, xs[t][:5], ys[t][:5]) for t in range(3)]
    loss, _ = model.objective(batches)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert torch.isfinite(model(xs[0], 0)).all()


def test_amortized_regression_reads_input_target_covariance() -> None:
    gen = torch.Generator().manual_seed(4)
    xs = [torch.randn(10, 3, generator=gen) for _ in range(3)]
    ys = [x @ torch.tensor([1.0, -2.0, 0.5]) * (t + 1) + 3 for t, x in enumerate(xs)]
    u, counts = summary_inputs(xs, ys, "regression", 1)
    assert counts.tolist() == [[10.0], [10.0], [10.0]]
    assert u.shape == (3, 1, 3)
    y0 = (ys[0] - ys[0].mean()) / ys[0].std(unbiased=False)
    assert torch.allclose(u[0, 0], (xs[0] * y0.unsqueeze(-1)).mean(0), atol=1e-5)
    tasks = [TaskSpec(f"t{t}", "regression", 1) for t in range(3)]
    model = _model(tasks, xs, ys)
    assert model.heads()[0].shape == (3, 3, 1)
    assert torch.isfinite(model.kl_w([0, 1, 2])).all()


def test_range_attention_reproduces_reference_weights() -> None:
    # source task 1: three rows of class 0 (dot products 2, 1, 0 with the query) and one
    # row of class 1 (dot product 5: outside the class, so outside the range too)
    rows = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, 3.0], [5.0, 0.0]])
    xs = [torch.tensor([[1.0, 0.0], [0.0, 1.0]]), rows, rows]
    ys = [torch.tensor([0, 1]), torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 0, 1])]
    tasks = [TaskSpec(f"t{t}", "classification", 2) for t in range(3)]
    query, label, task = torch.tensor([[1.0, 0.0]]), torch.tensor([0]), torch.tensor([0])
    expected = {
        # reference: logits / (max - min) = [2, 1, 0] / 2
        "range": torch.softmax(torch.tensor([1.0, 0.5, 0.0]), 0),
        "dot": torch.softmax(torch.tensor([2.0, 1.0, 0.0]) / math.sqrt(2), 0),
    }
    for mode, weights in expected.items():
        model = VMTL(tasks, xs, ys, VMTLConfig(latent=2, attention=mode))
        anchors, avail = model.anchors(query, label, task)
        assert avail[0].tolist() == [False, True, True]
        assert torch.allclose(anchors[0, 1], weights @ rows[:3], atol=1e-6), mode
    # a single matching row (zero range) gets weight one, not NaN
    model = VMTL(tasks, xs, ys, VMTLConfig(latent=2, attention="range"))
    anchors, _ = model.anchors(query, torch.tensor([1]), task)
    assert torch.allclose(anchors[0, 1], rows[3])
