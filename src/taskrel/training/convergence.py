"""Convergence diagnostic: how far the trained parameters are from a stationary point.

With ``J(theta) = sum_t L_t(theta) + penalty(theta)`` (``L_t`` task t's mean data loss on
all of its training rows), the diagnostic is the *relative gradient norm*

    r = ||grad J(theta)|| / sqrt(sum_t ||grad L_t(theta)||^2),

the size of the net force on the parameters relative to the forces that the tasks' data
exert on them. It is scale-free (units and the size of the loss cancel), independent of the
initialisation (so warm starts are judged fairly), about 1 for an untrained model and
0 at an exact optimum (full-batch L-BFGS in float64 on a linear model reaches ~1e-10).

A run counts as *converged* when ``r <= TrainConfig.grad_tol`` (default 1e-3). Influence
functions assume a stationary point, so a run that ends above it gives a one-line
:func:`taskrel.notices.notice` (unless validation-based early stopping chose the epoch:
then the parameters are deliberately not a stationary point of ``J``).

The gradients are full-batch, taken in evaluation mode (no dropout) under a forked random
state, so the check never changes training. For models whose objective is stochastic
(VMTL's Monte Carlo ELBO) it uses one draw.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from taskrel.models.base import Batch, MTLModel


@dataclass(frozen=True)
class Convergence:
    """Result of :func:`gradient_check`.

    Attributes:
        grad_norm: ``||grad J||`` (objective units per parameter unit).
        scale: ``sqrt(sum_t ||grad L_t||^2)`` (same units).
        relative: ``grad_norm / scale`` (dimensionless).
        tol: the threshold ``relative`` is compared with.
        objective: ``J(theta)`` itself (objective units).
    """

    grad_norm: float
    scale: float
    relative: float
    tol: float
    objective: float

    @property
    def converged(self) -> bool:
        return self.relative <= self.tol

    def as_dict(self) -> dict[str, float | bool]:
        return {**asdict(self), "converged": self.converged}


def _norm(grads: Sequence[Tensor | None]) -> float:
    return math.sqrt(sum(float(g.detach().double().pow(2).sum()) for g in grads if g is not None))


def gradient_check(model: MTLModel, batches: Sequence[Batch], tol: float) -> Convergence:
    """Relative gradient norm of ``model``'s objective on ``batches`` (one full batch per
    task: all of its training rows); see the module docstring."""
    params = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            total, _ = model.objective(batches)
            grad_norm = _norm(torch.autograd.grad(total, params, allow_unused=True))
            per_task = [
                _norm(
                    torch.autograd.grad(
                        model.loss(b.x, b.y, b.task).mean(), params, allow_unused=True
                    )
                )
                for b in batches
            ]
    finally:
        model.train(was_training)
    scale = math.sqrt(sum(s * s for s in per_task))
    relative = grad_norm / scale if scale > 0 else (0.0 if grad_norm == 0 else math.inf)
    return Convergence(grad_norm, scale, relative, tol, float(total.detach()))
