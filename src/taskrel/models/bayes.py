"""Gaussian building blocks of variational models: mean-field Bayesian linear layers with
local reparameterisation, Gaussian KL divergences and the KL to a *mixture* prior.

Mixture priors
--------------
The prior of a variable with variational posterior ``q = N(mu_q, diag var_q)`` is built
from ``S`` source Gaussians ``q_s = N(mu_s, diag var_s)`` with weights ``alpha_s >= 0``,
``sum_s alpha_s = 1``. Three forms (``PriorForm``):

- ``moment``: ONE Gaussian ``N(sum_s alpha_s mu_s, sum_s alpha_s^2 var_s)``: the law of the
  weighted *sum* ``sum_s alpha_s Z_s`` of independent ``Z_s ~ q_s`` (what VMTL's reference
  code calls its mixture prior). KL in closed form. Note that it is not the mixture's
  moment match: its variance shrinks as the weights spread out.
- ``mixture``: the true mixture ``sum_s alpha_s q_s``; ``KL(q || mixture)`` has no closed
  form and is estimated by Monte Carlo with reparameterised samples of ``q`` (unbiased,
  differentiable in ``mu_q``, ``var_q`` and ``alpha``).
- ``bound``: ``sum_s alpha_s KL(q || q_s)``, the upper bound on ``KL(q || mixture)`` given
  by the convexity of KL in its second argument; closed form.

Every KL here is summed over the last (event) dimension and is in nats.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PriorForm = Literal["moment", "mixture", "bound"]
PRIOR_FORMS: tuple[str, ...] = ("moment", "mixture", "bound")

_TINY = 1e-30


def softplus_inverse(y: float) -> float:
    """``x`` with ``softplus(x) = y`` (``y > 0``)."""
    return y + math.log(-math.expm1(-y))


def gaussian_kl(mu_q: Tensor, var_q: Tensor, mu_p: Tensor, var_p: Tensor) -> Tensor:
    """``KL(N(mu_q, var_q) || N(mu_p, var_p))`` of diagonal Gaussians, summed over the last
    dimension (nats). Inputs broadcast; variances must be positive."""
    kl = torch.log(var_p) - torch.log(var_q) + (var_q + (mu_q - mu_p) ** 2) / var_p - 1.0
    return 0.5 * kl.sum(-1)


def gaussian_log_prob(x: Tensor, mu: Tensor, var: Tensor) -> Tensor:
    """Log density of diagonal Gaussians at ``x``, summed over the last dimension (nats)."""
    lp = -0.5 * (math.log(2 * math.pi) + torch.log(var) + (x - mu) ** 2 / var)
    return lp.sum(-1)


def moment_matched(alpha: Tensor, mu_s: Tensor, var_s: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and variance of ``sum_s alpha_s Z_s`` with independent ``Z_s ~ N(mu_s, var_s)``.

    Args:
        alpha: weights ``(..., S)``.
        mu_s, var_s: source moments ``(..., S, D)``.

    Returns:
        ``(mean, var)``, each ``(..., D)``.
    """
    a = alpha.unsqueeze(-1)
    return (a * mu_s).sum(-2), (a**2 * var_s).sum(-2)


def mixture_prior_kl(
    mu_q: Tensor,
    var_q: Tensor,
    alpha: Tensor,
    mu_s: Tensor,
    var_s: Tensor,
    form: PriorForm,
    n_samples: int = 8,
) -> Tensor:
    """KL of ``q = N(mu_q, var_q)`` to the mixture prior built from sources ``(mu_s, var_s)``
    with weights ``alpha`` (see module docstring for the three ``form`` s).

    Args:
        mu_q, var_q: posterior moments ``(..., D)``.
        alpha: non-negative weights summing to one over the last dimension, ``(..., S)``.
            Zero weights are allowed (the source is left out).
        mu_s, var_s: source moments ``(..., S, D)``.
        form: ``moment``, ``mixture`` (Monte Carlo) or ``bound``.
        n_samples: Monte Carlo samples of ``q`` for ``form='mixture'``.

    Returns:
        KL in nats, shape ``(...)``.
    """
    if form == "moment":
        mu_p, var_p = moment_matched(alpha, mu_s, var_s)
        return gaussian_kl(mu_q, var_q, mu_p, var_p)
    if form == "bound":
        kls = gaussian_kl(mu_q.unsqueeze(-2), var_q.unsqueeze(-2), mu_s, var_s)
        return (alpha * kls).sum(-1)
    if form == "mixture":
        eps = torch.randn((n_samples, *mu_q.shape), dtype=mu_q.dtype, device=mu_q.device)
        x = mu_q + var_q.sqrt() * eps  # (n, ..., D)
        log_q = gaussian_log_prob(x, mu_q, var_q)  # (n, ...)
        log_comp = gaussian_log_prob(x.unsqueeze(-2), mu_s, var_s)  # (n, ..., S)
        log_p = torch.logsumexp(torch.log(alpha.clamp_min(_TINY)) + log_comp, dim=-1)
        return (log_q - log_p).mean(0)
    raise ValueError(f"prior form must be one of {PRIOR_FORMS}, got {form!r}")


def standard_normal_kl(mu_q: Tensor, var_q: Tensor) -> Tensor:
    """``KL(N(mu_q, var_q) || N(0, I))`` summed over the last dimension (nats)."""
    return 0.5 * (var_q + mu_q**2 - 1.0 - torch.log(var_q)).sum(-1)


class BayesianLinear(nn.Module):
    """Linear layer with a mean-field Gaussian posterior on its weights and bias,
    ``W ~ N(M, softplus(rho)^2)``, used with local reparameterisation: for an input ``x``
    the output ``x W + b`` is Gaussian with mean ``x M + m_b`` and variance
    ``x^2 softplus(rho_W)^2 + softplus(rho_b)^2`` (independent across outputs).

    Args:
        in_features, out_features: sizes of ``W`` ``(in_features, out_features)``.
        sigma_init: initial posterior standard deviation of every weight.
    """

    def __init__(self, in_features: int, out_features: int, sigma_init: float = 0.05) -> None:
        super().__init__()
        rho = softplus_inverse(sigma_init)
        bound = 1.0 / math.sqrt(in_features)
        init = torch.empty(in_features, out_features).uniform_(-bound, bound)
        self.weight_mu = nn.Parameter(init)
        self.weight_rho = nn.Parameter(torch.full((in_features, out_features), rho))
        self.bias_mu = nn.Parameter(torch.zeros(out_features))
        self.bias_rho = nn.Parameter(torch.full((out_features,), rho))

    def moments(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance of the outputs for inputs ``x`` ``(..., in)``; each
        ``(..., out)``."""
        mean = x @ self.weight_mu + self.bias_mu
        var = (x**2) @ F.softplus(self.weight_rho) ** 2 + F.softplus(self.bias_rho) ** 2
        return mean, var
