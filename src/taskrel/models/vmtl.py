"""VMTL: variational multi-task learning with Gumbel-Softmax mixture priors.

Model (``T`` tasks, all of one kind with the same number of outputs ``C``):

- a shared Bayesian encoder (input dropout, ``encoder_layers`` deterministic ``Linear -> ELU``
  layers of width ``K`` — none by default, two in the reference's ``vmtl_ac`` — then a
  :class:`BayesianLinear` layer ``-> K``) gives the amortised posterior
  ``q(z|x) = N(mu(x), diag var(x))`` of the representation (local reparameterisation: the
  law of ``h W + b`` under the weight posterior, ``h`` the deterministic layers' output);
- task ``t`` has a Bayesian linear head ``w_t`` of shape ``(K + 1, C)`` (last row = bias)
  with mean-field posterior ``q(w_t) = N(M_t, diag S_t^2)``; outputs are
  ``[a(z), 1] w_t`` with ``a`` the configured activation (identity by default).
  ``classifier="free"`` (default): ``M_t``, ``S_t`` are free parameters of task ``t``;
  ``classifier="amortized"`` (the reference's ``vmtl_ac``): column ``c`` of the head,
  ``w_{t,c}``, has a posterior *generated* from task ``t``'s class-``c`` mean feature by
  an MLP shared by all tasks (:mod:`taskrel.models.vmtl_parts`; regression: one column,
  generated from the task's input-target covariance);
- priors: ``p(w_t)`` is a mixture of the other tasks' head posteriors, weights
  ``alpha^w_t = gumbel_softmax(logits^w_t, tau)`` over the ``T - 1`` other tasks (amortised
  heads: one mixture per class, ``p(w_{t,c})`` over the ``q(w_{s,c})``, same weights); for an
  example ``(x, y)`` of task ``t``, ``p(z)`` mixes ``q(z | x~_s)`` over the other tasks ``s``
  with weights ``alpha^z_t``, where ``x~_s`` is an *anchor*: an attention-weighted average of
  task ``s``'s training inputs that are like ``(x, y)`` (see below). Source posteriors enter
  every prior detached (stop-gradient): a task's KL moves only its own posterior and its
  own mixing logits. The mixture form (``prior_form``) is one of
  :data:`taskrel.models.bayes.PRIOR_FORMS`; ``prior`` picks which of ``z``/``w`` get mixture
  priors (``both``, ``w``, ``z``, ``none``); the others get ``N(0, I)``.

Anchors: attention over task ``s``'s training rows ``j`` with logits ``x . x_j / sqrt(d)``
(``attention="dot"``) or ``x . x_j / (max_j - min_j)`` over the row (``attention="range"``,
the reference), see :func:`taskrel.models.vmtl_parts.attention_logits`;

- classification: restricted to rows of the same class as ``y`` (a task with no training
  row of that class is left out of this example's mixture and the weights renormalise;
  with no source at all the prior is ``N(0, I)``);
- regression (our choice, "nearest targets, softly"): a Gaussian kernel on the target
  distance is added to the logits, ``- (y - y_j)^2 / (2 h^2)``, with bandwidth
  ``h = target_bandwidth * (pooled std of the training targets)`` in target units; as
  ``h -> 0`` the anchor is task ``s``'s training row(s) with the nearest target, as
  ``h -> inf`` (``target_bandwidth=None``) the conditioning on the target disappears.

Objective on one mini-batch per task (minimised; nats per example)::

    sum_t [ mean_i E_q[-log p(y_i | x_i, z_i, w_t)]
            + beta * KL(q(w_t) || p(w_t)) / n_t
            + eta  * mean_i KL(q(z_i | x_i) || p(z_i)) ]  +  (l2/2) ||encoder means||^2

with ``n_t`` the task's number of training examples (so ``beta = eta = 1`` is the ELBO
per example), the expectation estimated with ``train_samples`` samples of ``z`` and of the
head outputs (local reparameterisation). With ``batching="balanced"`` (the reference's
sampler) each classification task's training batch is replaced by ``per_class`` rows of
every class present in the task (:class:`taskrel.models.vmtl_parts.BalancedSampler`), so
the likelihood term is a class-balanced mean; regression tasks keep the trainer's batches.
Regression uses a Gaussian likelihood with a learned noise std per task, on targets
standardised per task with the training mean/std.

Schedules (:meth:`VMTL.on_step`): the Gumbel-Softmax temperature anneals geometrically
from ``tau_start`` to ``tau_end``; ``beta`` and ``eta`` rise linearly from 0 over the first
``kl_warmup`` fraction of the steps; during the first ``prior_start`` fraction every prior
is ``N(0, I)``. Outside the trainer (no ``on_step`` call) the final weights apply.

Test time: ``predict='mean'`` (default) plugs in posterior means (deterministic, like the
reference); ``predict='sample'`` averages the predictive distribution over
``test_samples`` samples of ``z`` and ``w``.

Relatedness: ``alpha[t, s] = softmax(logits_t / tau_end)[s]`` is the weight task ``t``'s
prior puts on task ``s``'s posterior: a non-negative affinity (rows sum to one, no self
weight). See :func:`vmtl_relatedness`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from taskrel.data.taskset import TaskSet
from taskrel.errors import ConfigError, NotApplicableError
from taskrel.models.base import Batch, ModelConfig, MTLModel, TaskSpec
from taskrel.models.bayes import (
    BayesianLinear,
    PriorForm,
    gaussian_log_prob,
    mixture_prior_kl,
    softplus_inverse,
    standard_normal_kl,
)
from taskrel.models.schedules import exponential_anneal, linear_warmup
from taskrel.models.vmtl_parts import (
    Attention,
    BalancedSampler,
    PosteriorGenerator,
    attention_logits,
    elu_layers,
    summary_inputs,
)
from taskrel.notices import notice
from taskrel.relatedness.result import Relatedness
from taskrel.training.trainer import fit

if TYPE_CHECKING:
    from taskrel.relatedness import RelateContext

Component = Literal["w", "z"]


class VMTLConfig(ModelConfig):
    latent: int = Field(128, ge=1, description="size K of the representation z")
    encoder_layers: int = Field(
        0,
        ge=0,
        description="deterministic Linear -> ELU layers of width `latent` before the "
        "Bayesian encoder layer (the reference's vmtl_ac uses 2)",
    )
    batching: Literal["shuffled", "balanced"] = Field(
        "shuffled",
        description="training batches: shuffled = the trainer's (batch_size rows per task); "
        "balanced = per_class rows of every class per task and step (the reference; a "
        "class with fewer rows is drawn with replacement; regression: shuffled)",
    )
    per_class: int = Field(4, ge=1, description="balanced batching: rows per class, task and step")
    classifier: Literal["free", "amortized"] = Field(
        "free",
        description="free: a Gaussian head per task; amortized: head posteriors generated "
        "per task and class from the class-mean feature by a shared MLP (the reference)",
    )
    generator_hidden: int = Field(
        256, ge=1, description="hidden width of the amortised classifier generator"
    )
    attention: Attention = Field(
        "dot",
        description="z-prior anchor attention logits: dot = x.x'/sqrt(d); range = x.x' "
        "divided by the row's range max - min (the reference)",
    )
    activation: Literal["none", "relu", "tanh"] = Field(
        "none", description="applied to z before the heads (the reference uses none)"
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="input dropout rate")
    sigma_init: float = Field(0.05, gt=0.0, description="initial posterior std of weights")
    prior: Literal["both", "w", "z", "none"] = Field(
        "both", description="components with mixture priors; the others get N(0, I)"
    )
    prior_form: PriorForm = Field(
        "bound",
        description="bound (sum_s alpha_s KL(q || q_s); chosen on held-out data, "
        "docs/bench/vmtl.md), moment (the reference's closed form) or mixture "
        "(Monte Carlo KL)",
    )
    kl_samples: int = Field(4, ge=1, description="Monte Carlo samples of the 'mixture' KL")
    train_samples: int = Field(10, ge=1, description="samples of z and outputs in training")
    test_samples: int = Field(10, ge=1, description="samples with predict='sample'")
    predict: Literal["mean", "sample"] = Field(
        "mean", description="test-time prediction: posterior means or sample average"
    )
    beta: float = Field(1.0, ge=0.0, description="final weight of KL(q(w_t)||p(w_t))/n_t")
    eta: float = Field(1e-3, ge=0.0, description="final weight of the per-example z KL")
    kl_warmup: float = Field(
        0.5, ge=0.0, le=1.0, description="fraction of steps over which beta, eta rise from 0"
    )
    prior_start: float = Field(
        0.1, ge=0.0, le=1.0, description="fraction of steps with N(0, I) priors"
    )
    tau_start: float = Field(1.0, gt=0.0, description="initial Gumbel-Softmax temperature")
    tau_end: float = Field(0.5, gt=0.0, description="final Gumbel-Softmax temperature")
    gumbel_hard: bool = Field(False, description="straight-through one-hot samples")
    logit_scale: float = Field(
        10.0,
        gt=0.0,
        description="mixing logits = logit_scale * parameters: with Adam this "
        "multiplies the logits' learning rate (they get gradients from the KL terms only)",
    )
    target_bandwidth: float | None = Field(
        0.5,
        gt=0.0,
        description="regression z-prior: kernel width on targets, in units of "
        "the pooled training target std; null = no target conditioning",
    )
    l2: float = Field(1e-4, ge=0.0, description="L2 coefficient on the encoder means")

    @model_validator(mode="after")
    def _check(self) -> VMTLConfig:
        if self.tau_end > self.tau_start:
            raise ValueError("tau_end must not exceed tau_start (the temperature anneals down)")
        return self


@dataclass
class ScheduleState:
    """Values of the annealed quantities at the current step."""

    tau: float
    beta: float
    eta: float
    mixing: bool


def off_diagonal_to_full(values: Tensor) -> Tensor:
    """Place per-row values over the *other* columns into a square matrix with zero diagonal.

    Args:
        values: ``(T, T - 1)``; row ``t`` lists columns ``0..T-1`` without ``t``, in order.

    Returns:
        ``(T, T)`` with ``out[t, t] = 0``.
    """
    t = values.shape[0]
    mask = ~torch.eye(t, dtype=torch.bool, device=values.device)
    out = values.new_zeros(t, t)
    return out.masked_scatter(mask, values.reshape(-1))


class VMTL(MTLModel):
    """Variational MTL with Gumbel-Softmax mixture priors (see module docstring)."""

    Config = VMTLConfig
    name = "vmtl"
    # buffers (set in _register_data)
    anchor_x: Tensor  # (T, n_max, d) training inputs, zero-padded
    anchor_y: Tensor  # (T, n_max) training targets
    anchor_valid: Tensor  # (T, n_max) bool, False on padding
    others: Tensor  # (T, T - 1) long: the other tasks of each task
    n_train: Tensor  # (T,) training examples per task
    y_mean: Tensor  # (T,) regression: training target mean per task
    y_std: Tensor  # (T,) regression: training target std per task
    y_scale: Tensor  # () regression: pooled training target std
    summary_x: Tensor  # (T, G, d) amortised heads: summary input of each task and group

    def __init__(
        self,
        tasks: Sequence[TaskSpec],
        train_x: Sequence[Tensor],
        train_y: Sequence[Tensor],
        config: VMTLConfig,
    ) -> None:
        """Args:
        tasks: the task specs (one kind and one output size for all).
        train_x: each task's training inputs ``(n_t, d)`` (anchors of the z-prior).
        train_y: each task's training targets ``(n_t,)`` (class ids or values).
        config: the options.
        """
        super().__init__(tasks)
        kinds = {(t.kind, t.n_outputs) for t in tasks}
        if len(kinds) != 1 or tasks[0].kind not in ("classification", "regression"):
            raise NotApplicableError(
                "model 'vmtl' needs tasks of one kind (classification or "
                f"regression) with one number of outputs; got {sorted(kinds)}"
            )
        if len(tasks) < 2:
            raise NotApplicableError("model 'vmtl' needs at least 2 tasks")
        self.config = config
        self.kind = tasks[0].kind
        self.n_tasks = n = len(tasks)
        d = train_x[0].shape[1]
        c = tasks[0].n_outputs if self.kind == "classification" else 1
        k = config.latent
        self.dropout = nn.Dropout(config.dropout)
        self.encoder_body = elu_layers(d, k, config.encoder_layers)
        self.encoder = BayesianLinear(k if config.encoder_layers else d, k, config.sigma_init)
        if config.classifier == "amortized":
            self.generator = PosteriorGenerator(k, config.generator_hidden, config.sigma_init)
            summary, _ = summary_inputs(train_x, train_y, self.kind, c)
            self.register_buffer("summary_x", summary, persistent=False)
        else:
            rho = softplus_inverse(config.sigma_init)
            # every head starts at the same (zero) mean, so differences between heads come
            # from the data only and the learned mixing weights are not init noise
            self.head_mu = nn.ParameterList(nn.Parameter(torch.zeros(k + 1, c)) for _ in range(n))
            self.head_rho = nn.ParameterList(
                nn.Parameter(torch.full((k + 1, c), rho)) for _ in range(n)
            )
        self.logits_w = nn.ParameterList(nn.Parameter(torch.zeros(n - 1)) for _ in range(n))
        self.logits_z = nn.ParameterList(nn.Parameter(torch.zeros(n - 1)) for _ in range(n))
        if self.kind == "regression":
            self.log_noise = nn.ParameterList(
                nn.Parameter(torch.tensor(math.log(0.5))) for _ in range(n)
            )
        self._register_data(train_x, train_y)
        self.sampler: BalancedSampler | None = None
        if config.batching == "balanced" and self.kind == "classification":
            self.sampler = BalancedSampler(self.anchor_y, self.anchor_valid, c, config.per_class)
        elif config.batching == "balanced" and "batching" in config.model_fields_set:
            notice(
                "model 'vmtl': batching='balanced' draws rows per class; regression tasks "
                "have none, so the trainer's shuffled batches are used"
            )
        self.schedule = ScheduleState(config.tau_start, config.beta, config.eta, mixing=True)

    def _register_data(self, train_x: Sequence[Tensor], train_y: Sequence[Tensor]) -> None:
        """Padded training data per task (non-persistent buffers: rebuilt from the task set)."""
        n, d = self.n_tasks, train_x[0].shape[1]
        sizes = [len(x) for x in train_x]
        n_max = max(sizes)
        xs = torch.zeros(n, n_max, d)
        ys = torch.zeros(n, n_max, dtype=train_y[0].dtype)
        valid = torch.zeros(n, n_max, dtype=torch.bool)
        for t, (x, y) in enumerate(zip(train_x, train_y, strict=True)):
            xs[t, : len(x)], ys[t, : len(y)], valid[t, : len(x)] = x, y, True
        others = torch.tensor([[s for s in range(n) if s != t] for t in range(n)])
        self.register_buffer("anchor_x", xs, persistent=False)
        self.register_buffer("anchor_y", ys, persistent=False)
        self.register_buffer("anchor_valid", valid, persistent=False)
        self.register_buffer("others", others.reshape(n, n - 1), persistent=False)
        self.register_buffer("n_train", torch.tensor(sizes, dtype=torch.float32), persistent=False)
        if self.kind == "regression":
            y_mean = torch.stack([y.float().mean() for y in train_y])
            y_std = torch.stack(
                [
                    y.float().std(unbiased=False).clamp_min(1e-6)
                    if len(y) > 1
                    else torch.tensor(1.0)
                    for y in train_y
                ]
            )
            pooled = torch.cat([y.float() for y in train_y]).std(unbiased=False)
            self.register_buffer("y_mean", y_mean, persistent=False)
            self.register_buffer("y_std", y_std, persistent=False)
            self.register_buffer("y_scale", pooled.clamp_min(1e-6), persistent=False)

    @classmethod
    def build(cls, taskset: TaskSet, config: VMTLConfig) -> VMTL:
        shape = taskset.input_shape
        if len(shape) != 1 or taskset.tasks[0].x.dtype.kind != "f":
            raise NotApplicableError(
                f"model 'vmtl' needs flat float feature vectors; dataset "
                f"{taskset.name!r} has inputs of shape {shape}"
            )
        xs = [torch.as_tensor(t.x[t.train_idx]) for t in taskset.tasks]
        ys = [torch.as_tensor(t.y[t.train_idx]) for t in taskset.tasks]
        return cls(TaskSpec.from_taskset(taskset), xs, ys, config)

    # -- schedules ------------------------------------------------------------------------
    def on_step(self, step: int, total_steps: int) -> None:
        cfg = self.config
        warm = round(cfg.kl_warmup * total_steps)
        self.schedule = ScheduleState(
            tau=exponential_anneal(step, total_steps, cfg.tau_start, cfg.tau_end),
            beta=linear_warmup(step, warm, cfg.beta),
            eta=linear_warmup(step, warm, cfg.eta),
            mixing=step >= cfg.prior_start * total_steps,
        )

    # -- posteriors -------------------------------------------------------------------
    def heads(self) -> tuple[Tensor, Tensor]:
        """Means and variances of every head posterior, each ``(T, K + 1, C)`` (``C = 1``
        for regression). Amortised heads are generated from the encoder mean at the
        summary inputs (no dropout)."""
        if self.config.classifier == "amortized":
            mu, var = self.generate(self.summary_x)  # (T, G, K + 1)
            return mu.transpose(1, 2), var.transpose(1, 2)
        mu = torch.stack(list(self.head_mu))
        var = F.softplus(torch.stack(list(self.head_rho))) ** 2
        return mu, var

    def head_mean(self, task: int) -> Tensor:
        """Posterior mean ``(K + 1, C)`` of task ``task``'s head, without building every
        task's head (prediction loops over tasks)."""
        if self.config.classifier == "amortized":
            return self.generate(self.summary_x[task])[0].T
        return self.head_mu[task]

    def generate(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """Amortised head posteriors ``(..., K + 1)`` (mean, variance) for summary inputs
        ``u`` ``(..., d)``: the generator at the encoder mean (no dropout)."""
        return self.generator(self._activate(self.encoder_moments(u)[0]))

    def head_groups(self) -> tuple[Tensor, Tensor]:
        """Head posteriors grouped by independent prior mixture, each ``(T, G, D)``: free
        heads are one group (``D = (K + 1) C``); amortised heads one group per column
        (``G = C``, ``D = K + 1``)."""
        mu, var = self.heads()
        if self.config.classifier == "amortized":
            return mu.transpose(1, 2), var.transpose(1, 2)
        return mu.flatten(1).unsqueeze(1), var.flatten(1).unsqueeze(1)

    def encoder_moments(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance ``(..., K)`` of ``q(z|x)`` for inputs ``(..., d)``, without
        input dropout: the deterministic ELU layers, then the Bayesian layer."""
        return self.encoder.moments(self.encoder_body(x))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``q(z|x)``: mean and variance ``(b, K)`` of the representation (input dropout
        applies in training mode)."""
        return self.encoder_moments(self.dropout(x))

    def _activate(self, z: Tensor) -> Tensor:
        """``a(z)``: the configured activation."""
        act = self.config.activation
        return torch.relu(z) if act == "relu" else torch.tanh(z) if act == "tanh" else z

    def _augment(self, z: Tensor) -> Tensor:
        """``[a(z), 1]``: activation plus a constant column for the head bias."""
        h = self._activate(z)
        return torch.cat([h, torch.ones_like(h[..., :1])], dim=-1)

    def sample_outputs(
        self,
        x: Tensor,
        tasks: Tensor,
        n_samples: int,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Sampled head outputs ``(S, b, C)`` for inputs ``x`` ``(b, d)`` of tasks ``tasks``
        (long ``(b,)``): ``z ~ q(z|x)`` by reparameterisation, then the head outputs given
        ``z`` by local reparameterisation (standardised units for regression). Also returns
        the moments ``(b, K)`` of ``q(z|x)``."""
        mu_w, var_w = self.heads()
        mu_z, var_z = self.encode(x)
        z = mu_z + var_z.sqrt() * torch.randn(n_samples, *mu_z.shape)
        h = self._augment(z)  # (S, b, K + 1)
        mean = torch.einsum("sbk,bkc->sbc", h, mu_w[tasks])
        var = torch.einsum("sbk,bkc->sbc", h**2, var_w[tasks])
        return mean + var.sqrt() * torch.randn_like(mean), mu_z, var_z

    # -- predictions ------------------------------------------------------------------
    def forward(self, x: Tensor, task: int) -> Tensor:
        """Predictive outputs: logits ``(b, C)`` (with ``predict='sample'``: log of the
        sample-averaged class probabilities) or predictions ``(b,)`` in target units."""
        if self.config.predict == "sample":
            tasks = torch.full((len(x),), task)
            out, _, _ = self.sample_outputs(x, tasks, self.config.test_samples)
            if self.kind == "classification":
                return torch.logsumexp(F.log_softmax(out, -1), 0) - math.log(len(out))
            pred = out.mean(0)
        else:
            pred = self._augment(self.encode(x)[0]) @ self.head_mean(task)
            if self.kind == "classification":
                return pred
        return pred.squeeze(-1) * self.y_std[task] + self.y_mean[task]

    # -- priors -----------------------------------------------------------------------
    def mixing_weights(self, component: Component, sample: bool = True) -> Tensor:
        """Mixing weights ``(T, T)`` with zero diagonal, rows summing to one: Gumbel-Softmax
        samples at the current temperature (``sample=True``) or the noise-free
        ``softmax(logits / tau_end)``."""
        raw = torch.stack(list(self.logits_w if component == "w" else self.logits_z))
        logits = self.config.logit_scale * raw
        if sample:
            alpha = F.gumbel_softmax(
                logits, tau=self.schedule.tau, hard=self.config.gumbel_hard, dim=-1
            )
        else:
            alpha = torch.softmax(logits / self.config.tau_end, dim=-1)
        return off_diagonal_to_full(alpha)

    def _mixes(self, component: Component) -> bool:
        return self.schedule.mixing and self.config.prior in (component, "both")

    def kl_w(self, tasks: Sequence[int], alpha: Tensor | None = None) -> Tensor:
        """``KL(q(w_t) || p(w_t))`` of the given tasks, shape ``(len(tasks),)`` (nats):
        summed over the groups of :meth:`head_groups`, each with its own mixture prior
        over the other tasks' posteriors of that group.

        ``alpha`` ``(T, T)`` are the mixing weights with zero diagonal (drawn if None); the
        other tasks' posteriors enter the prior detached."""
        mu, var = self.head_groups()  # (T, G, D)
        idx = torch.as_tensor(list(tasks), dtype=torch.long)
        mu_q, var_q = mu[idx], var[idx]
        if not self._mixes("w"):
            return standard_normal_kl(mu_q, var_q).sum(-1)
        alpha = self.mixing_weights("w") if alpha is None else alpha
        src = self.others[idx]  # (n, T-1): never the task itself
        weights = torch.gather(alpha[idx], 1, src).unsqueeze(1).expand(-1, mu.shape[1], -1)
        mu_s = mu.detach()[src].transpose(1, 2)  # (n, G, T-1, D)
        var_s = var.detach()[src].transpose(1, 2)
        kl = mixture_prior_kl(
            mu_q, var_q, weights, mu_s, var_s, self.config.prior_form, self.config.kl_samples
        )
        return kl.sum(-1)

    @torch.no_grad()
    def anchors(self, x: Tensor, y: Tensor, tasks: Tensor) -> tuple[Tensor, Tensor]:
        """Anchor inputs of the z-prior for examples ``(x, y)`` of tasks ``tasks``.

        Args:
            x: inputs ``(b, d)``; y: targets ``(b,)``; tasks: task position of each example,
                long ``(b,)``.

        Returns:
            ``(anchors, available)``: ``(b, T, d)`` attention-weighted averages of each
            task's training inputs (see module docstring) and ``(b, T)`` bool, False where
            that task has no matching training row and for the example's own task.
        """
        xs, ys = self.anchor_x, self.anchor_y
        not_self = tasks.reshape(-1, 1) != torch.arange(self.n_tasks)  # (b, T)
        valid = self.anchor_valid.unsqueeze(0) & not_self.unsqueeze(-1)
        if self.kind == "classification":
            valid = valid & (ys.unsqueeze(0) == y.reshape(-1, 1, 1))
        logits = attention_logits(x, xs, valid, self.config.attention)
        if self.kind == "regression" and self.config.target_bandwidth is not None:
            h = self.config.target_bandwidth * self.y_scale
            dist = (y.reshape(-1, 1, 1).float() - ys.unsqueeze(0)) ** 2
            logits = logits - dist / (2 * h**2)
        weights = torch.softmax(logits, dim=-1)
        return torch.einsum("bsj,sjd->bsd", weights, xs), valid.any(-1)

    def kl_z(
        self,
        x: Tensor,
        y: Tensor,
        tasks: Tensor,
        mu_z: Tensor,
        var_z: Tensor,
        alpha: Tensor | None = None,
    ) -> Tensor:
        """``KL(q(z|x_i) || p(z_i))`` per example, shape ``(b,)`` (nats).

        Args:
            x: inputs ``(b, d)``.
            y: targets ``(b,)``.
            tasks: task positions ``(b,)``.
            mu_z: mean ``(b, K)`` of ``q(z|x)``.
            var_z: variance ``(b, K)`` of ``q(z|x)``.
            alpha: mixing weights ``(T, T)`` with zero diagonal (drawn if None).

        The sources ``q(z | anchor_s)`` are computed without gradient (and without dropout);
        the weights of a task with no matching row are dropped and the rest renormalised."""
        if not self._mixes("z"):
            return standard_normal_kl(mu_z, var_z)
        alpha = self.mixing_weights("z") if alpha is None else alpha
        anchors, avail = self.anchors(x, y, tasks)
        with torch.no_grad():
            mu_s, var_s = self.encoder_moments(anchors)  # (b, T, K)
        weights = alpha[tasks] * avail  # (b, T)
        total = weights.sum(-1, keepdim=True)
        weights = weights / total.clamp_min(1e-12)
        # a standard normal source takes the whole weight when no task has a matching row
        none = (total <= 0).to(weights.dtype)
        weights = torch.cat([weights, none], dim=-1)
        mu_s = torch.cat([mu_s, torch.zeros_like(mu_s[:, :1])], dim=1)
        var_s = torch.cat([var_s, torch.ones_like(var_s[:, :1])], dim=1)
        return mixture_prior_kl(
            mu_z, var_z, weights, mu_s, var_s, self.config.prior_form, self.config.kl_samples
        )

    # -- objective --------------------------------------------------------------------
    def nll(self, out: Tensor, y: Tensor, tasks: Tensor) -> Tensor:
        """Negative log-likelihood of sampled outputs ``out`` ``(S, b, C)`` for targets
        ``y`` ``(b,)`` of tasks ``tasks`` ``(b,)``, averaged over samples, shape ``(b,)``
        (nats; regression in standardised target units)."""
        if self.kind == "classification":
            nll = F.cross_entropy(out.flatten(0, 1), y.repeat(len(out)), reduction="none")
            return nll.reshape(len(out), -1).mean(0)
        target = ((y - self.y_mean[tasks]) / self.y_std[tasks]).unsqueeze(-1)
        var = torch.exp(2 * torch.stack(list(self.log_noise)))[tasks].unsqueeze(-1)
        return -gaussian_log_prob(out, target, var).mean(0)

    def balanced_batches(self, tasks: Sequence[int]) -> list[Batch]:
        """One class-balanced batch per task in ``tasks`` (``batching="balanced"``):
        ``per_class`` training rows of every class present in the task."""
        if self.sampler is None:  # pragma: no cover - only called with balanced batching
            raise ValueError("balanced batches need batching='balanced'")
        rows, present = self.sampler.draw()  # (T, C, k), (T, C)
        out = []
        for t in tasks:
            idx = rows[t][present[t]].flatten()
            out.append(Batch(t, self.anchor_x[t, idx], self.anchor_y[t, idx]))
        return out

    row_mean_objective = False  # the KL terms and amortised heads read whole batches

    def objective(self, batches: Sequence[Batch]) -> tuple[Tensor, dict[str, float]]:
        """Negative ELBO per example, summed over tasks (see module docstring); every
        task's batch is processed in one vectorised pass. With ``batching="balanced"``,
        in training mode, each task's batch is replaced by a class-balanced draw from its
        training rows (the trainer's batches only say which tasks take part; in eval mode,
        e.g. the trainer's full-batch gradient check, the given batches are used)."""
        st = self.schedule
        if self.sampler is not None and self.training:
            batches = self.balanced_batches([b.task for b in batches])
        x = torch.cat([b.x for b in batches])
        y = torch.cat([b.y for b in batches])
        tasks = torch.cat([torch.full((len(b.x),), b.task) for b in batches])
        # per-example weight 1 / batch size: sums over examples are sums of task means
        weight = torch.cat([torch.full((len(b.x),), 1.0 / len(b.x)) for b in batches])
        out, mu_z, var_z = self.sample_outputs(x, tasks, self.config.train_samples)
        nll = (weight * self.nll(out, y, tasks)).sum()
        present = [b.task for b in batches]
        kl_w = (self.kl_w(present) / self.n_train[present]).sum()
        kl_z = torch.zeros(())
        if st.eta > 0:
            kl_z = (weight * self.kl_z(x, y, tasks, mu_z, var_z)).sum()
        pen = self.penalty()
        total = nll + st.beta * kl_w + st.eta * kl_z + pen
        return total, {
            "data_loss": float(nll.detach()),
            "kl_w": float(kl_w.detach()),
            "kl_z": float(kl_z.detach()),
            "penalty": float(pen.detach()),
            "tau": st.tau,
            "beta": st.beta,
        }

    def penalty(self) -> Tensor:
        """``(l2/2) ||encoder weights and biases||^2``: the Bayesian layer's means and the
        deterministic ELU layers' parameters."""
        enc = self.encoder
        total = enc.weight_mu.pow(2).sum() + enc.bias_mu.pow(2).sum()
        for p in self.encoder_body.parameters():
            total = total + p.pow(2).sum()
        return 0.5 * self.config.l2 * total

    def task_parameter_names(self, task: int) -> list[str]:
        """A task's mixing logits, noise std (regression) and free head (the amortised
        generator is shared)."""
        names = [f"logits_w.{task}", f"logits_z.{task}"]
        if self.config.classifier == "free":
            names = [f"head_mu.{task}", f"head_rho.{task}", *names]
        return names + ([f"log_noise.{task}"] if self.kind == "regression" else [])

    # -- read-out ---------------------------------------------------------------------
    def active_components(self) -> list[Component]:
        """The components whose priors are mixtures (their alpha is learned)."""
        prior = self.config.prior
        return [c for c in ("w", "z") if prior in (c, "both")]

    def relatedness(self, taskset: TaskSet, component: Component = "w") -> Relatedness:
        """The learned mixing weights of ``component`` as a :class:`Relatedness`: entry
        ``[t, s]`` is the weight task ``t``'s prior puts on task ``s``'s posterior
        (``softmax(logits / tau_end)``, non-negative, rows sum to one); diagonal NaN."""
        with torch.no_grad():
            alpha = self.mixing_weights(component, sample=False).numpy().astype(np.float64)
        np.fill_diagonal(alpha, np.nan)
        meta: dict[str, Any] = {
            "component": component,
            "learned": component in self.active_components(),
            "meaning": "alpha[t, s]: weight of task s's posterior in task t's prior "
            "(non-negative affinity, rows sum to 1 over s != t)",
            "diagonal": "undefined (NaN): a task's prior never includes its own posterior",
            "temperature": self.config.tau_end,
            "config": self.config.model_dump(),
        }
        return Relatedness(alpha, list(taskset.names), f"vmtl-{component}", meta=meta)

    def write_artifacts(self, run_dir: Path, taskset: TaskSet) -> list[Path]:
        """``vmtl_alpha_{w,z}.json`` (:class:`Relatedness`) and ``.png`` heatmaps of the
        learned mixing weights of each mixture prior."""
        written: list[Path] = []
        for comp in self.active_components():
            rel = self.relatedness(taskset, comp)
            written.append(rel.save(Path(run_dir) / f"vmtl_alpha_{comp}.json"))
            png = Path(run_dir) / f"vmtl_alpha_{comp}.png"
            rel.plot(png, title=f"VMTL {comp}-prior mixing weights alpha[target, source]")
            written.append(png)
        return written


def vmtl_relatedness(
    taskset: TaskSet,
    ctx: RelateContext,
    model: VMTL | None = None,
    component: Component | None = None,
    **model_options: Any,
) -> Relatedness:
    """Task relatedness from VMTL's learned mixing weights.

    Trains VMTL on ``taskset`` with ``ctx.train_config`` (model options: ``ctx.model_config``
    when ``ctx.model == 'vmtl'``, updated by ``model_options``) unless a trained ``model``
    is given. ``component`` picks the ``w``- or ``z``-prior weights (default: ``w`` when the
    head prior is a mixture, else ``z``).

    Returns:
        ``matrix[t, s] = alpha_ts >= 0``, the weight target task ``t``'s prior puts on source
        task ``s`` (larger = ``s`` is a better prior for ``t``, i.e. helps; rows sum to 1 over
        ``s != t``; never negative, so it cannot flag harmful sources); diagonal NaN.
        ``meta['alpha_w']``/``meta['alpha_z']`` hold both learned matrices.
    """
    if model is None:
        config = {**(ctx.model_config if ctx.model == "vmtl" else {}), **model_options}
        if config.get("prior", "both") == "none":
            raise ConfigError("vmtl relatedness needs a mixture prior; got prior='none'")
        trained = fit(taskset, "vmtl", config, ctx.train_config, progress=ctx.progress).model
        if not isinstance(trained, VMTL):  # pragma: no cover - the registry builds VMTL
            raise TypeError(type(trained))
        model = trained
    active = model.active_components()
    if not active:
        raise ConfigError("vmtl relatedness needs a model trained with a mixture prior")
    chosen = component or active[0]
    if chosen not in active:
        raise ConfigError(
            f"vmtl relatedness: component {chosen!r} has no mixture prior "
            f"in this model (prior={model.config.prior!r})"
        )
    result = model.relatedness(taskset, chosen)
    for comp in active:
        result.meta[f"alpha_{comp}"] = model.relatedness(taskset, comp).matrix
    return result
