"""VMTL: Gaussian KLs, the three mixture-prior forms, Gumbel-Softmax mixing weights, the
stop-gradient on source posteriors, the regression z-prior conditioning, and the learned
mixing weights on clustered synthetic tasks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import distributions as D

from taskrel.data import load
from taskrel.models import build_model
from taskrel.models.bayes import gaussian_kl, mixture_prior_kl, standard_normal_kl
from taskrel.models.vmtl import VMTL, off_diagonal_to_full, vmtl_relatedness
from taskrel.relatedness import RelateContext, relate
from taskrel.relatedness.result import Relatedness
from taskrel.training.trainer import TrainConfig, fit


def _gaussians(gen: torch.Generator, *shape: int) -> tuple[torch.Tensor, torch.Tensor]:
    mu = torch.randn(*shape, generator=gen, dtype=torch.float64)
    var = 0.3 + torch.rand(*shape, generator=gen, dtype=torch.float64)
    return mu, var


def _mc_kl(mu_q: torch.Tensor, var_q: torch.Tensor, log_p, n: int = 200_000) -> float:
    """Monte Carlo KL(q || p) with ``n`` samples of q (float64)."""
    q = D.Independent(D.Normal(mu_q, var_q.sqrt()), 1)
    torch.manual_seed(0)  # a fixed Monte Carlo sample: the comparison cannot flake
    x = q.sample((n,))
    return float((q.log_prob(x) - log_p(x)).mean())


def test_gaussian_kl_closed_form_and_monte_carlo() -> None:
    # one dimension by hand: KL(N(1, 4) || N(0, 1)) = 0.5 (4 + 1 - 1 - log 4)
    kl = gaussian_kl(
        torch.tensor([1.0]), torch.tensor([4.0]), torch.tensor([0.0]), torch.tensor([1.0])
    )
    assert float(kl) == pytest.approx(0.5 * (4 + 1 - 1 - math.log(4)), rel=1e-6)
    gen = torch.Generator().manual_seed(0)
    mu_q, var_q = _gaussians(gen, 5)
    mu_p, var_p = _gaussians(gen, 5)
    ref = D.kl_divergence(D.Normal(mu_q, var_q.sqrt()), D.Normal(mu_p, var_p.sqrt())).sum()
    assert float(gaussian_kl(mu_q, var_q, mu_p, var_p)) == pytest.approx(float(ref), rel=1e-10)
    p = D.Independent(D.Normal(mu_p, var_p.sqrt()), 1)
    assert float(gaussian_kl(mu_q, var_q, mu_p, var_p)) == pytest.approx(
        _mc_kl(mu_q, var_q, p.log_prob), abs=0.03
    )
    assert float(standard_normal_kl(mu_q, var_q)) == pytest.approx(
        float(gaussian_kl(mu_q, var_q, torch.zeros(5), torch.ones(5))), rel=1e-10
    )


@pytest.fixture
def sources() -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(1)
    mu_q, var_q = _gaussians(gen, 3)
    mu_s, var_s = _gaussians(gen, 4, 3)
    alpha = torch.tensor([0.5, 0.3, 0.2, 0.0], dtype=torch.float64)
    return mu_q, var_q, alpha, mu_s, var_s


def test_moment_form_is_kl_to_law_of_weighted_sum(sources: tuple[torch.Tensor, ...]) -> None:
    mu_q, var_q, alpha, mu_s, var_s = sources
    # the law of sum_s alpha_s Z_s, estimated by sampling the Z_s
    gen = torch.Generator().manual_seed(2)
    z = mu_s + var_s.sqrt() * torch.randn(100_000, *mu_s.shape, generator=gen, dtype=torch.float64)
    total = (alpha[:, None] * z).sum(1)
    prior = D.Independent(D.Normal(total.mean(0), total.std(0)), 1)
    kl = float(mixture_prior_kl(mu_q, var_q, alpha, mu_s, var_s, "moment"))
    assert kl == pytest.approx(_mc_kl(mu_q, var_q, prior.log_prob), rel=0.02)


def test_mixture_form_matches_monte_carlo(sources: tuple[torch.Tensor, ...]) -> None:
    mu_q, var_q, alpha, mu_s, var_s = sources
    mixture = D.MixtureSameFamily(
        D.Categorical(probs=alpha), D.Independent(D.Normal(mu_s, var_s.sqrt()), 1)
    )
    reference = _mc_kl(mu_q, var_q, mixture.log_prob)
    torch.manual_seed(3)
    kl = float(mixture_prior_kl(mu_q, var_q, alpha, mu_s, var_s, "mixture", n_samples=100_000))
    assert kl == pytest.approx(reference, rel=0.02)
    # a wrong (moment-matched) answer is far away from the true mixture KL here
    moment = float(mixture_prior_kl(mu_q, var_q, alpha, mu_s, var_s, "moment"))
    assert abs(moment - reference) > 0.2


def test_bound_form_is_weighted_kl_and_upper_bound(sources: tuple[torch.Tensor, ...]) -> None:
    mu_q, var_q, alpha, mu_s, var_s = sources
    bound = float(mixture_prior_kl(mu_q, var_q, alpha, mu_s, var_s, "bound"))
    by_hand = sum(
        float(a) * float(gaussian_kl(mu_q, var_q, m, v))
        for a, m, v in zip(alpha, mu_s, var_s, strict=True)
    )
    assert bound == pytest.approx(by_hand, rel=1e-10)
    mixture = D.MixtureSameFamily(
        D.Categorical(probs=alpha), D.Independent(D.Normal(mu_s, var_s.sqrt()), 1)
    )
    assert bound > _mc_kl(mu_q, var_q, mixture.log_prob) + 0.05


def test_off_diagonal_to_full() -> None:
    full = off_diagonal_to_full(torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]))
    assert full.tolist() == [[0.0, 1.0, 2.0], [3.0, 0.0, 4.0], [5.0, 6.0, 0.0]]


@pytest.fixture(scope="module")
def clustered():
    return load("synthetic", clusters=2, cluster_size=3, n_unrelated=0, n_adversarial=0)


def _model(taskset, **options) -> VMTL:
    torch.manual_seed(0)
    model = build_model("vmtl", taskset, {"latent": 8, **options})
    assert isinstance(model, VMTL)
    return model


def test_gumbel_softmax_weights(clustered) -> None:
    model = _model(clustered)
    with torch.no_grad():
        for p in model.logits_w:
            p.copy_(torch.randn(p.shape) * 0.1)
    for tau in (1.0, 0.01):
        model.schedule.tau = tau
        alpha = torch.stack([model.mixing_weights("w") for _ in range(200)])  # (200, T, T)
        assert torch.allclose(alpha.sum(-1), torch.ones(200, 6), atol=1e-5)
        assert (alpha >= 0).all()
        assert (torch.diagonal(alpha, dim1=1, dim2=2) == 0).all()
        peak = alpha.max(-1).values.mean()
        if tau == 1.0:
            assert peak < 0.8
        else:
            assert peak > 0.99  # nearly one-hot


@pytest.mark.parametrize("form", ["moment", "bound"])
def test_w_prior_excludes_self_and_stops_gradients(clustered, form: str) -> None:
    model = _model(clustered, prior_form=form)
    with torch.no_grad():  # distinct means and variances (equal variances: zero rho-gradient)
        for p in [*model.head_mu, *model.head_rho]:
            p.normal_()
    alpha = model.mixing_weights("w")
    t = 2
    kl = model.kl_w([t], alpha)[0]
    mu, var = model.heads()
    q = (mu[t].flatten(), var[t].flatten())
    if form == "moment":
        mu_p = sum(alpha[t, s] * mu[s] for s in range(6) if s != t)
        var_p = sum(alpha[t, s] ** 2 * var[s] for s in range(6) if s != t)
        by_hand = gaussian_kl(*q, mu_p.flatten(), var_p.flatten())
    else:
        by_hand = sum(
            alpha[t, s] * gaussian_kl(*q, mu[s].flatten(), var[s].flatten())
            for s in range(6)
            if s != t
        )
    assert float(kl.detach()) == pytest.approx(float(by_hand.detach()), rel=1e-5)
    # own posterior is never a source: zero self-weight, and the prior above (built from
    # the other tasks only) gives the model's KL
    assert float(alpha[t, t].detach()) == 0.0
    kl.backward()
    for s in range(6):
        grads = [model.head_mu[s].grad, model.head_rho[s].grad]
        if s == t:
            assert all(g is not None and g.abs().sum() > 0 for g in grads)
        else:
            assert all(g is None or g.abs().sum() == 0 for g in grads)
    assert model.logits_w[t].grad is not None and model.logits_w[t].grad.abs().sum() > 0
    assert model.logits_w[0].grad is None or model.logits_w[0].grad.abs().sum() == 0


@pytest.mark.parametrize("form", ["moment", "bound"])
def test_z_prior_stops_gradient_into_sources(clustered, form: str) -> None:
    model = _model(clustered, prior_form=form)
    task = clustered.tasks[1]
    x = torch.as_tensor(task.x[task.train_idx[:10]])
    y = torch.as_tensor(task.y[task.train_idx[:10]])
    tasks = torch.full((10,), 1)
    alpha = model.mixing_weights("z").detach()
    mu_z, var_z = model.encode(x)
    model.kl_z(x, y, tasks, mu_z, var_z, alpha).sum().backward()
    grad = model.encoder.weight_mu.grad.clone()
    # the same KL with the source moments frozen as constants beforehand
    model.zero_grad()
    anchors, avail = model.anchors(x, y, tasks)
    mu_s, var_s = (m.detach() for m in model.encoder.moments(anchors))
    weights = alpha[tasks] * avail
    weights = weights / weights.sum(-1, keepdim=True)
    mu_z, var_z = model.encode(x)
    mixture_prior_kl(mu_z, var_z, weights, mu_s, var_s, form).sum().backward()
    assert torch.allclose(grad, model.encoder.weight_mu.grad, atol=1e-6)


def test_z_anchors_same_class_other_tasks_only(clustered) -> None:
    model = _model(clustered)
    task = clustered.tasks[0]
    x = torch.as_tensor(task.x[task.train_idx[:4]])
    y = torch.as_tensor(task.y[task.train_idx[:4]])
    anchors, avail = model.anchors(x, y, torch.zeros(4, dtype=torch.long))
    assert not avail[:, 0].any() and avail[:, 1:].all()
    # by hand for example 0 and source task 3: softmax attention over its rows of class y0
    src = clustered.tasks[3]
    xs, ys = src.x[src.train_idx], src.y[src.train_idx]
    rows = xs[ys == int(y[0])]
    logits = rows @ x[0].numpy() / math.sqrt(x.shape[1])
    w = np.exp(logits - logits.max())
    expected = (w / w.sum()) @ rows
    assert np.allclose(anchors[0, 3].numpy(), expected, atol=1e-5)


def test_regression_z_prior_conditions_on_nearest_targets() -> None:
    ts = load(
        "synthetic-regression",
        clusters=1,
        cluster_size=3,
        n_unrelated=0,
        n_adversarial=0,
        n_per_task=40,
    )
    x = torch.as_tensor(ts.tasks[0].x[:3])
    y = torch.tensor([-1.0, 0.0, 2.0])
    tasks = torch.zeros(3, dtype=torch.long)
    src = ts.tasks[2]
    xs, ys = src.x[src.train_idx], src.y[src.train_idx]
    # bandwidth -> 0: the anchor is the source row with the nearest target
    sharp = _model(ts, target_bandwidth=1e-4)
    anchors, avail = sharp.anchors(x, y, tasks)
    assert avail[:, 1:].all() and not avail[:, 0].any()
    for i in range(3):
        nearest = xs[np.argmin(np.abs(ys - float(y[i])))]
        assert np.allclose(anchors[i, 2].numpy(), nearest, atol=1e-4)
    # no conditioning: plain feature attention, the same for every target
    free = _model(ts, target_bandwidth=None)
    a0, _ = free.anchors(x[:1].repeat(2, 1), torch.tensor([-3.0, 3.0]), tasks[:2])
    assert torch.allclose(a0[0], a0[1])
    logits = xs @ x[0].numpy() / math.sqrt(x.shape[1])
    w = np.exp(logits - logits.max())
    assert np.allclose(a0[0, 2].numpy(), (w / w.sum()) @ xs, atol=1e-5)
    # a finite bandwidth adds the Gaussian kernel on target distance to the logits
    mid = _model(ts, target_bandwidth=0.5)
    h = 0.5 * float(np.concatenate([t.y[t.train_idx] for t in ts.tasks]).std())
    lg = logits - (ys - 3.0) ** 2 / (2 * h**2)
    w = np.exp(lg - lg.max())
    a1, _ = mid.anchors(x[:1], torch.tensor([3.0]), tasks[:1])
    assert np.allclose(a1[0, 2].numpy(), (w / w.sum()) @ xs, atol=1e-4)


def test_no_mixture_prior_is_standard_normal(clustered) -> None:
    model = _model(clustered, prior="none")
    with torch.no_grad():
        for p in model.head_mu:
            p.normal_()
        mu, var = model.heads()
        kl = model.kl_w([0, 4])
        expected = [float(standard_normal_kl(mu[t].flatten(), var[t].flatten())) for t in (0, 4)]
    assert kl.tolist() == pytest.approx(expected, rel=1e-6)
    assert model.active_components() == []


def test_schedules(clustered) -> None:
    model = _model(clustered, kl_warmup=0.5, prior_start=0.1, beta=2.0, tau_start=1.0, tau_end=0.25)
    model.on_step(0, 101)
    assert (model.schedule.tau, model.schedule.beta, model.schedule.mixing) == (1.0, 0.0, False)
    model.on_step(50, 101)
    assert model.schedule.tau == pytest.approx(0.5)
    assert model.schedule.beta == pytest.approx(2.0 * 50 / 50)
    assert model.schedule.mixing
    model.on_step(100, 101)
    assert model.schedule.tau == pytest.approx(0.25)


def test_sample_prediction_matches_mean_when_posterior_is_sharp(clustered) -> None:
    model = _model(clustered, sigma_init=1e-6)
    with torch.no_grad():
        for p in model.head_mu:
            p.normal_()
    model.eval()
    x = torch.as_tensor(clustered.tasks[0].x[:5])
    mean_logits = model(x, 0)
    model.config.predict = "sample"
    sampled = model(x, 0)
    assert torch.allclose(torch.log_softmax(mean_logits, -1), sampled, atol=1e-3)


def test_learned_alpha_favours_own_cluster(clustered, tmp_path) -> None:
    ctx = RelateContext(
        model="vmtl",
        model_config={"latent": 16, "prior_form": "bound"},
        train_config=TrainConfig(epochs=40, lr=1e-2, patience=None),
    )
    rel = relate(clustered, "vmtl", ctx)
    assert isinstance(rel, Relatedness)
    m = rel.matrix
    assert np.isnan(np.diag(m)).all()
    off = ~np.eye(6, dtype=bool)
    assert np.allclose(np.nansum(m, 1), 1.0) and (m[off] >= 0).all()
    groups = np.arange(6) // 3
    own = (groups[:, None] == groups[None, :]) & off
    mass = (np.where(own, m, 0.0)).sum(1)
    assert mass.mean() > 0.7  # uniform weights give 0.4
    assert rel.meta["alpha_z"].shape == (6, 6)


def test_artifacts_and_given_model(clustered, tmp_path) -> None:
    result = fit(clustered, "vmtl", {"latent": 8, "prior": "w"}, {"epochs": 2, "patience": None})
    model = result.model
    assert isinstance(model, VMTL)
    written = model.write_artifacts(tmp_path, clustered)
    assert sorted(p.name for p in written) == ["vmtl_alpha_w.json", "vmtl_alpha_w.png"]
    loaded = Relatedness.load(tmp_path / "vmtl_alpha_w.json")
    rel = vmtl_relatedness(clustered, RelateContext(), model=model)
    assert np.allclose(loaded.matrix, rel.matrix, equal_nan=True)
