"""Damped Newton steps for models whose objective is convex in their parameters.

One step solves ``H d = g`` with the exact Hessian ``H`` and gradient ``g`` of the full-batch
objective ``J`` (:meth:`MTLModel.objective`, flattened parameters, :mod:`torch.func`) and
moves to ``theta - t d`` with the largest ``t`` in 1, 1/2, 1/4, ... that satisfies the
Armijo condition ``J(theta - t d) <= J(theta) - 1e-4 t g.d``. For squared loss ``J`` is
quadratic and one step lands on the optimum (ridge regression's closed form); logistic
models need a handful. The dense Hessian holds ``P^2`` numbers, so the trainer uses Newton
only up to :data:`NEWTON_MAX_PARAMS` parameters (L-BFGS above).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jacrev

from taskrel.models.base import Batch, MTLModel

NEWTON_MAX_PARAMS = 2048
"""Largest parameter count trained by Newton steps (a 2048² float64 Hessian is 32 MiB; it
is built from P vectorised backward passes, in chunks of 256)."""


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
    task); returns the objective before the step."""
    wrapper = _Objective(model)
    names = [f"model.{n}" for n, p in model.named_parameters() if p.requires_grad]
    params = dict(wrapper.named_parameters())
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]
    fixed = {n: p.detach() for n, p in params.items() if n not in names}
    fixed.update(dict(wrapper.named_buffers()))

    def objective(flat: Tensor) -> Tensor:
        parts = torch.split(flat, sizes)
        swapped = {n: v.reshape(s) for n, v, s in zip(names, parts, shapes, strict=True)}
        return functional_call(wrapper, {**fixed, **swapped}, (batches,))

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
