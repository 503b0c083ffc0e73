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

Memory: one full-batch backward pass keeps every activation of the training set (a CRF
over SNIPS' 13,084 utterances: about 14 GB). When every task's batch holds the same rows
(e.g. intent and slots of the same utterances) and the model's objective is a per-row mean
(:attr:`MTLModel.row_mean_objective`), the gradients are accumulated over chunks of
:data:`CHUNK_ROWS` rows instead, weighted by their share of the rows: the same sums, in
bounded memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
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


CHUNK_ROWS = 512
"""Rows per chunk of a chunked check (module docstring)."""


def _norm(grads: Sequence[Tensor]) -> float:
    return math.sqrt(sum(float(g.pow(2).sum()) for g in grads))


def _shared_rows(batches: Sequence[Batch]) -> bool:
    """Whether every batch holds the same rows (same inputs, in the same order)."""
    first = batches[0].x
    return all(
        b.x is first or (b.x.shape == first.shape and torch.equal(b.x, first)) for b in batches
    )


def _chunks(
    batches: Sequence[Batch], rows: int, row_mean: bool = True
) -> list[tuple[list[Batch], float]]:
    """``batches`` cut into chunks of ``rows`` rows, each with its share of the rows; one
    chunk (share 1) when the objective is not a per-row mean (``row_mean``), or the rows
    are not shared, or few."""
    n = len(batches[0].x)
    if not row_mean or n <= rows or not _shared_rows(batches):
        return [(list(batches), 1.0)]
    starts = range(0, n, rows)
    return [
        (
            [Batch(b.task, b.x[i : i + rows], b.y[i : i + rows]) for b in batches],
            min(rows, n - i) / n,
        )
        for i in starts
    ]


def _weighted_grads(
    value: Callable[[list[Batch]], Tensor],
    chunks: Sequence[tuple[list[Batch], float]],
    params: Sequence[Tensor],
) -> tuple[list[Tensor], float]:
    """``sum_c share_c * grad value(chunk_c)`` per parameter (float64; unused ones 0) and
    ``sum_c share_c * value(chunk_c)``."""
    grads = [torch.zeros(p.shape, dtype=torch.float64, device=p.device) for p in params]
    total = 0.0
    for chunk, share in chunks:
        v = value(chunk)
        for acc, g in zip(grads, torch.autograd.grad(v, params, allow_unused=True), strict=True):
            if g is not None:
                acc += share * g.detach().double()
        total += share * float(v.detach())
    return grads, total


def gradient_check(
    model: MTLModel, batches: Sequence[Batch], tol: float, chunk_rows: int = CHUNK_ROWS
) -> Convergence:
    """Relative gradient norm of ``model``'s objective on ``batches`` (one full batch per
    task: all of its training rows); see the module docstring. ``chunk_rows``: rows per
    chunk where the check may be chunked."""
    params = [p for p in model.parameters() if p.requires_grad]
    chunks = _chunks(batches, chunk_rows, model.row_mean_objective)
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            grads, total = _weighted_grads(lambda c: model.objective(c)[0], chunks, params)
            grad_norm = _norm(grads)
            per_task = []
            for k in range(len(batches)):

                def task_loss(chunk: list[Batch], k: int = k) -> Tensor:
                    return model.loss(chunk[k].x, chunk[k].y, chunk[k].task).mean()

                per_task.append(_norm(_weighted_grads(task_loss, chunks, params)[0]))
    finally:
        model.train(was_training)
    scale = math.sqrt(sum(s * s for s in per_task))
    relative = grad_norm / scale if scale > 0 else (0.0 if grad_norm == 0 else math.inf)
    return Convergence(grad_norm, scale, relative, tol, total)
