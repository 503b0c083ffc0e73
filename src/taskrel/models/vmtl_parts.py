"""Parts of VMTL (:mod:`taskrel.models.vmtl`): the amortised classifier generator, the
per-task summaries it reads, the attention of the z-prior anchors, the encoder's
deterministic ELU layers and the class-balanced batch sampler.

Amortised classifiers (``classifier="amortized"``)
---------------------------------------------------
The head of task ``t`` is split into groups ``g`` (one per class for classification; one
for regression), each a vector ``w_{t,g}`` of size ``K + 1`` (last entry = bias). Its
posterior ``q(w_{t,g}) = N(m, diag v)`` is *generated* by an MLP shared by all tasks
(:class:`PosteriorGenerator`) from the encoder's posterior mean at a summary input
``u_{t,g}`` (:func:`summary_inputs`):

- classification: ``u_{t,c}`` = mean of task ``t``'s training inputs of class ``c``. The
  reference keeps a running mean of each class's features over batches; we compute the
  mean once from the whole training split, which is what the running mean converges to.
  With the (default) linear encoder the encoder mean at ``u_{t,c}`` *is* the class mean of
  the encoded features, and it follows the encoder at every step (it is differentiable).
  **Absent classes**: when task ``t`` has no training row of class ``c``, ``u_{t,c}`` is the
  mean of the class-``c`` means of the other tasks that have that class; when no task has
  it, the mean of all training inputs. The generated posterior is then finite (nothing
  learns it from the task's own data).
- regression (our choice): ``u_t = mean_i x_i y~_i`` with ``y~`` the task's targets
  standardised with its training mean/std: the input-target covariance, i.e. the
  least-squares sufficient statistic ``X^T y / n`` (for inputs with a common covariance it
  determines the task's regression coefficients).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

Attention = Literal["dot", "range"]
_MASKED = -1e30


def summary_inputs(
    train_x: Sequence[Tensor], train_y: Sequence[Tensor], kind: str, n_classes: int
) -> tuple[Tensor, Tensor]:
    """The summary input ``u_{t,g}`` of every task and head group (see module docstring).

    Args:
        train_x: each task's training inputs ``(n_t, d)``.
        train_y: each task's training targets ``(n_t,)`` (class ids or values).
        kind: ``classification`` or ``regression``.
        n_classes: number of classes ``C`` (ignored for regression).

    Returns:
        ``(u, counts)``: ``u`` ``(T, G, d)`` (``G = C``, or 1 for regression) and the
        number of training rows behind each summary ``(T, G)`` (0: absent class, whose
        ``u`` is the fallback).
    """
    if kind == "regression":
        rows = []
        for x, y in zip(train_x, train_y, strict=True):
            y = y.float()
            std = y.std(unbiased=False).clamp_min(1e-6) if len(y) > 1 else torch.tensor(1.0)
            rows.append((x.float() * ((y - y.mean()) / std).unsqueeze(-1)).mean(0))
        u = torch.stack(rows).unsqueeze(1)
        return u, torch.tensor([[float(len(x))] for x in train_x])
    d = train_x[0].shape[1]
    sums = torch.zeros(len(train_x), n_classes, d)
    counts = torch.zeros(len(train_x), n_classes)
    for t, (x, y) in enumerate(zip(train_x, train_y, strict=True)):
        sums[t].index_add_(0, y.long(), x.float())
        counts[t].index_add_(0, y.long(), torch.ones(len(y)))
    present = (counts > 0).float().unsqueeze(-1)  # (T, C, 1)
    means = sums / counts.clamp_min(1).unsqueeze(-1) * present
    # the other tasks' class means: totals over tasks minus the task's own
    n_other = present.sum(0, keepdim=True) - present
    other = (means.sum(0, keepdim=True) - means) / n_other.clamp_min(1)
    pooled = torch.cat([x.float() for x in train_x]).mean(0)
    fallback = torch.where(n_other > 0, other, pooled)
    return torch.where(present > 0, means, fallback), counts


class PosteriorGenerator(nn.Module):
    """Shared generator of head posteriors: ``h -> (mean, var)`` with an MLP
    ``Linear(K, H) -> ELU -> Linear(H, 2 (K + 1))`` whose second half of outputs is the
    log-variance (clamped to ``[-20, 5]``). The log-variance starts at
    ``log(sigma_init^2)`` for every input (zero weights, constant bias).

    Args:
        latent: size ``K`` of the representation (input size).
        hidden: hidden width ``H``.
        sigma_init: initial posterior standard deviation of every weight.
    """

    def __init__(self, latent: int, hidden: int, sigma_init: float) -> None:
        super().__init__()
        self.size = latent + 1
        self.body = nn.Sequential(nn.Linear(latent, hidden), nn.ELU())
        self.out = nn.Linear(hidden, 2 * self.size)
        with torch.no_grad():
            self.out.weight[self.size :].zero_()
            self.out.bias[: self.size].zero_()
            self.out.bias[self.size :].fill_(2 * math.log(sigma_init))

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance ``(..., K + 1)`` of the head posterior for inputs ``(..., K)``."""
        raw = self.out(self.body(h))
        mean, log_var = raw[..., : self.size], raw[..., self.size :]
        return mean, torch.exp(log_var.clamp(-20.0, 5.0))


def attention_logits(x: Tensor, xs: Tensor, valid: Tensor, mode: Attention) -> Tensor:
    """Attention logits of queries ``x`` ``(b, d)`` over each source task's rows ``xs``
    ``(T, n, d)``, shape ``(b, T, n)``; entries where ``valid`` ``(b, T, n)`` is False are
    masked (a large negative number).

    - ``dot``: ``x . x_j / sqrt(d)`` (scaled dot product);
    - ``range`` (the reference): ``x . x_j / (max_j - min_j)``, the dot products of each
      row divided by their range over the row's valid entries (shifted by the row maximum,
      which the softmax ignores, so that a zero range gives equal weights, not NaN).
    """
    dots = torch.einsum("bd,sjd->bsj", x, xs)
    if mode == "dot":
        scaled = dots / math.sqrt(x.shape[-1])
    else:
        hi = dots.masked_fill(~valid, -math.inf).amax(-1, keepdim=True)
        lo = dots.masked_fill(~valid, math.inf).amin(-1, keepdim=True)
        span = torch.where(torch.isfinite(hi - lo), hi - lo, torch.ones_like(hi))
        shift = torch.where(torch.isfinite(hi), hi, torch.zeros_like(hi))
        scaled = (dots - shift) / span.clamp_min(1e-12)
    return scaled.masked_fill(~valid, _MASKED)


def elu_layers(in_features: int, width: int, layers: int) -> nn.Sequential:
    """``layers`` deterministic layers ``Linear -> ELU`` of width ``width`` (the reference's
    ``vmtl_ac`` encoder has two before its Bayesian layer); the identity when ``layers=0``.

    Maps ``(..., in_features)`` to ``(..., width)`` (``(..., in_features)`` when empty)."""
    body: list[nn.Module] = []
    for i in range(layers):
        body += [nn.Linear(in_features if i == 0 else width, width), nn.ELU()]
    return nn.Sequential(*body)


class BalancedSampler(nn.Module):
    """Class-balanced mini-batches (``batching="balanced"``, the reference's sampler):
    per step, ``k`` training rows of every class present in a task, for every task.

    A class with at least ``k`` rows in the task gives ``k`` distinct rows (drawn without
    replacement); a class with ``0 < n < k`` rows gives ``k`` rows drawn *with*
    replacement (uniformly among its ``n`` rows, so it still weighs as much as the other
    classes); a class absent from the task gives none. Randomness: torch's global
    generator (seeded by the trainer).

    Args:
        labels: training class ids of each task, ``(T, n_max)`` long (padded).
        valid: ``(T, n_max)`` bool, False on padding.
        n_classes: number of classes ``C``.
        k: rows per class, task and step.
    """

    rows: Tensor  # (T, C, m) row positions of each task's class-c rows, padded with 0
    counts: Tensor  # (T, C) number of such rows

    def __init__(self, labels: Tensor, valid: Tensor, n_classes: int, k: int) -> None:
        super().__init__()
        self.k = k
        classes = torch.arange(n_classes).reshape(1, -1, 1)
        hits = (labels.unsqueeze(1) == classes) & valid.unsqueeze(1)  # (T, C, n_max)
        counts = hits.sum(-1)
        m = max(int(counts.max()), 1)
        # stable sort puts each class's rows first, in their original order
        order = torch.sort((~hits).to(torch.int8), dim=-1, stable=True).indices[..., :m]
        self.register_buffer("rows", order, persistent=False)
        self.register_buffer("counts", counts, persistent=False)

    def draw(self) -> tuple[Tensor, Tensor]:
        """Row positions ``(T, C, k)`` into each task's training rows, and ``(T, C)`` bool:
        whether the class is present (positions of absent classes are meaningless)."""
        counts = self.counts
        t, c, m = self.rows.shape
        width = max(m, self.k)
        keys = torch.rand(t, c, width, device=counts.device)
        keys = keys.masked_fill(torch.arange(width, device=counts.device) >= counts[..., None], 2.0)
        distinct = keys.argsort(-1)[..., : self.k]  # k random valid positions, no repeats
        repeated = (torch.rand(t, c, self.k, device=counts.device) * counts[..., None]).long()
        slots = torch.where(counts[..., None] >= self.k, distinct, repeated)
        slots = torch.minimum(slots, (counts[..., None] - 1).clamp_min(0))
        rows = torch.gather(self.rows, -1, slots.clamp_max(m - 1))
        return rows, counts > 0
