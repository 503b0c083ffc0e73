"""Damped Newton steps for models whose objective is convex in their parameters.

One step solves ``H d = g`` with the exact Hessian ``H`` and gradient ``g`` of the full-batch
objective ``J`` (:meth:`MTLModel.objective`, flattened parameters, :mod:`torch.func`) and
moves to ``theta - t d`` with the largest ``t`` in 1, 1/2, 1/4, ... that satisfies the
Armijo condition ``J(theta - t d) <= J(theta) - 1e-4 t g.d``. For squared loss ``J`` is
quadratic and one step lands on the optimum (ridge regression's closed form); logistic
models need a handful. The dense Hessian holds ``P^2`` numbers, so the trainer uses Newton
only up to :data:`NEWTON_MAX_PARAMS` parameters (L-BFGS above); a separable model (one
independent model per task) is stepped task by task, so there the bound applies to the
largest task's parameters (:func:`newton_size`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jacrev

from taskrel.models.base import Batch, MTLModel

NEWTON_MAX_PARAMS = 4096
"""Largest Hessian side (:func:`newton_size`) trained by Newton steps (a 4096² float64
Hessian is 128 MiB; it is built from P vectorised backward passes, in chunks of 256). Above
it the trainer uses L-BFGS, which can crawl on ill-conditioned problems: school's hard
sharing (139 tasks, 3,920 parameters, small head penalty) was still at 2.8e-3 relative
gradient after 1,500 iterations (54 s), where one Newton step reaches 5e-13 in 4 s."""


class _Objective(nn.Module):
    """``model.objective`` as a module call, so :func:`functional_call` can swap the
    parameters."""

    def __init__(self, model: MTLModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, batches: Sequence[Batch]) -> Tensor:
        return self.model.objective(batches)[0]


def newton_step(model: MTLModel, batches: Sequence[Batch]) -> float:
    """One damped Newton step on ``model`` (in place) over ``batches`` (one full batch per
    task); returns the objective before the step.

    A :attr:`~taskrel.models.base.MTLModel.separable` model (no shared parameters, no
    coupling) takes one Newton step per task on that task's parameters and batch: its
    Hessian is block diagonal, so this is the same step at the cost of ``T`` blocks of
    ``P_t^2`` instead of one of ``P^2``."""
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if not model.separable:
        return _damped_step(model, trainable, batches)
    with torch.no_grad():
        before = float(model.objective(batches)[0])
    for batch in batches:
        names = [n for n in model.task_parameter_names(batch.task) if n in trainable]
        _damped_step(model, names, [batch])
    return before


def newton_size(model: MTLModel) -> int:
    """Side of the largest dense Hessian :func:`newton_step` builds for ``model``: its
    number of trainable parameters, or a separable model's largest per-task count."""
    params = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    if model.separable:
        return max(
            sum(params.get(n, 0) for n in model.task_parameter_names(t))
            for t in range(len(model.tasks))
        )
    return sum(params.values())


def _damped_step(model: MTLModel, names: Sequence[str], batches: Sequence[Batch]) -> float:
    """Newton step with Armijo backtracking on the parameters ``names`` of ``model`` (the
    others fixed), for the objective on ``batches``; returns that objective before the
    step."""
    wrapper = _Objective(model)
    names = [f"model.{n}" for n in names]
    params = dict(wrapper.named_parameters())
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]

    def objective(flat: Tensor) -> Tensor:  # the other parameters enter as constants
        parts = torch.split(flat, sizes)
        swapped = {n: v.reshape(s) for n, v, s in zip(names, parts, shapes, strict=True)}
        return functional_call(wrapper, swapped, (batches,))

    theta = torch.cat([params[n].detach().reshape(-1) for n in names])
    with torch.no_grad():
        before = objective(theta)
    g = grad(objective)(theta)
    h = jacrev(grad(objective), chunk_size=256)(theta)  # reverse-over-reverse
    h = 0.5 * (h + h.T)
    chol, info = torch.linalg.cholesky_ex(h)
    if int(info) == 0:
        direction = torch.cholesky_solve(g[:, None], chol)[:, 0]
    else:  # singular (e.g. no penalty and more parameters than rows): minimum-norm step
        direction = torch.linalg.lstsq(h, g[:, None]).solution[:, 0]
    slope = float(g @ direction)
    t = 1.0
    with torch.no_grad():
        while (
            t > 1e-12 and float(objective(theta - t * direction)) > float(before) - 1e-4 * t * slope
        ):
            t *= 0.5
        if t > 1e-12:
            new = torch.split(theta - t * direction, sizes)
            for n, v, s in zip(names, new, shapes, strict=True):
                params[n].copy_(v.reshape(s))
    return float(before)
