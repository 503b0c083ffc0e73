"""Damped Newton steps for models whose objective is convex in their parameters.

One step solves ``H d = g`` with the exact Hessian ``H`` and gradient ``g`` of the full-batch
objective ``J`` (:meth:`MTLModel.objective`, flattened parameters, :mod:`torch.func`) and
moves to ``theta - t d`` with the largest ``t`` in 1, 1/2, 1/4, ... that satisfies the
Armijo condition ``J(theta - t d) <= J(theta) - 1e-4 t g.d``. For squared loss ``J`` is
quadratic and one step lands on the optimum (ridge regression's closed form); logistic
models need a handful. The dense Hessian holds ``P^2`` numbers, so it is built only up to
:data:`NEWTON_MAX_PARAMS` parameters; a separable model (one independent model per task) is
stepped task by task, so there the bound applies to the largest task's parameters
(:func:`newton_size`).

Above it, a model linear in its parameters with a diagonal penalty (hard sharing, or soft
sharing without coupling, with ``hidden=[]``) solves ``H d = g`` in the sample space
instead: ``H = P + G^T G`` with ``R`` rows of ``G`` (one per training example and output
curvature direction: ``C - 1`` for a softmax over ``C`` classes), by Woodbury's identity
(:class:`taskrel.relatedness.woodbury.SampleSpace`, MTIF's exact solver), in ``O(R^2 p +
R^3)`` time and ``O(R^2)`` memory. That is the method of choice with many features and few
examples, where full-batch L-BFGS crawls: office-caltech's hard sharing (40,040 parameters,
R = 1,143 at 5% training) reaches a relative gradient of 4e-9 in 12 Newton steps (2.2 s on
one core) where L-BFGS stalls at 1.7e-7 after 38 epochs (32 s), mean of 3 seeds. The
trainer picks it up to :data:`NEWTON_MAX_ROWS` rows (:func:`sample_space_rows`; L-BFGS
above, or when the form does not apply).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jacrev, jvp

from taskrel.models.base import Batch, MTLModel

if TYPE_CHECKING:
    from taskrel.data.taskset import TaskSet
    from taskrel.relatedness.woodbury import KernelOperator

NEWTON_MAX_PARAMS = 4096
"""Largest Hessian side (:func:`newton_size`) trained by Newton steps (a 4096² float64
Hessian is 128 MiB; it is built from P vectorised backward passes, in chunks of 256). Above
it the trainer uses the sample-space step where it applies, else L-BFGS, which can crawl on
ill-conditioned problems: school's hard sharing (139 tasks, 3,920 parameters, small head
penalty) was still at 2.8e-3 relative gradient after 1,500 iterations (54 s), where one
Newton step reaches 5e-13 in 4 s."""
NEWTON_MAX_ROWS = 4608
"""Largest number of sample-space rows ``R`` of a Newton step above
:data:`NEWTON_MAX_PARAMS` (its ``R x R`` float64 kernel, factorised once per step, is at
most 162 MiB). Measured by ``benchmarks/convex_training.py`` (office-caltech, 3 seeds):
L-BFGS takes 15 ± 8 times as long at R = 1,143, 8 ± 7 at 2,286 and 1.9 ± 1.6 at 4,563
(slower on 1 seed of 3), and stalls at relative gradients of 1e-7; the ``R^3``
factorisation grows faster than L-BFGS's cost beyond."""
SAMPLE_SPACE_RATIO = 1
"""Below :data:`NEWTON_MAX_PARAMS` the step also solves in the sample space when its rows
``R`` (at most) times this are no more than the dense Hessian's side: the dense Hessian
costs ``p`` backward passes and a ``p^3`` factorisation, the kernel ``R^2`` products of
short vectors and an ``R^3`` one. Rotated digits' hard sharing on 5 tasks of 30 training
rows (3,900 parameters, R = 1,350): 13 steps take 1.6 s instead of 16.8 s."""
FORM_RTOL = 1e-8
"""The sample-space Hessian must reproduce the objective's Hessian-vector product on a
random direction to this relative error (float64) to be used."""


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
    ``P_t^2`` instead of one of ``P^2``. Above :data:`NEWTON_MAX_PARAMS` (:func:`newton_size`),
    or below it with :data:`SAMPLE_SPACE_RATIO` times fewer sample rows than that size, the
    step solves in the sample space where that form applies (module docstring)."""
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    size, rows = newton_size(model), _rows_bound(model, batches)
    if rows <= NEWTON_MAX_ROWS and (size > NEWTON_MAX_PARAMS or rows * SAMPLE_SPACE_RATIO <= size):
        hessian = _sample_space(model, batches)
        if hessian is not None:
            return _damped_step(model, trainable, batches, hessian)
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


def sample_space_rows(model: MTLModel, taskset: TaskSet) -> int | None:
    """Rows ``R`` of the sample-space Newton step of ``model`` on ``taskset``'s training
    splits (the bound :func:`newton_step` compares with :data:`NEWTON_MAX_ROWS`), or None
    when that form does not apply (:func:`_sample_space`)."""
    from taskrel.training.trainer import TaskSampler

    dtype = next(model.parameters()).dtype
    batches = TaskSampler(taskset, 1, 0, torch.float64).full()
    model.to(torch.float64)  # as the trainer's exact optimisers: the checks are exact to 1e-8
    try:
        hessian = _sample_space(model, batches)
    finally:
        model.to(dtype)  # float32 -> float64 -> float32 is exact
    return None if hessian is None else _rows_bound(model, batches)


def _rows_bound(model: MTLModel, batches: Sequence[Batch]) -> int:
    """Sample-space rows of ``batches`` as the form counts them for generic outputs: ``C - 1``
    per example of a softmax over ``C`` classes, 1 per example otherwise (an upper bound:
    directions of zero curvature get no row)."""
    per_example = [
        max(t.n_outputs - 1, 1) if t.kind == "classification" else 1 for t in model.tasks
    ]
    return sum(len(b.x) * per_example[b.task] for b in batches)


def _sample_space(model: MTLModel, batches: Sequence[Batch]) -> KernelOperator | None:
    """The sample-space form of the Hessian of ``model.objective(batches)`` at the current
    parameters (tasks in ``model.dropped_tasks`` with weight 0), or None where it does not
    apply: a model not linear in its parameters, a penalty Hessian that is not diagonal
    (:func:`taskrel.relatedness.woodbury.not_applicable_reason`), frozen parameters or
    parameters off the CPU, or an objective whose Hessian-vector product on a random
    direction differs from the form's (an objective changed in a way the form does not
    know). The model's train/eval mode is kept."""
    from taskrel.errors import ConfigError, NotApplicableError
    from taskrel.relatedness.mtif import MTLFunctions, structure_for
    from taskrel.relatedness.woodbury import SampleSpace

    params = list(model.parameters())
    if not model.convex or not all(p.requires_grad and p.device.type == "cpu" for p in params):
        return None
    was_training = model.training
    try:
        space = SampleSpace(structure_for(MTLFunctions.from_batches(model, batches)))
    except (ConfigError, NotApplicableError):
        return None
    finally:
        model.train(was_training)
    if not space.linear_layers:
        return None
    weights = [0.0 if t in model.dropped_tasks else 1.0 for t in range(len(batches))]
    hessian = space.operator(weights)
    objective, theta, _ = _flat_objective(model, [n for n, _ in model.named_parameters()], batches)
    v = torch.randn(theta.shape, generator=torch.Generator().manual_seed(0), dtype=theta.dtype)
    exact = jvp(grad(objective), (theta,), (v,))[1]
    error = float((hessian.matvec(v[:, None])[:, 0] - exact).abs().max())
    return hessian if error <= FORM_RTOL * max(float(exact.abs().max()), 1e-300) else None


def _flat_objective(
    model: MTLModel, names: Sequence[str], batches: Sequence[Batch]
) -> tuple[Callable[[Tensor], Tensor], Tensor, Callable[[Tensor], None]]:
    """``model.objective(batches)`` as a function of the flat vector of the parameters
    ``names`` (the others enter as constants), their current values ``(p,)``, and a
    function writing a flat vector back into the model."""
    wrapper = _Objective(model)
    names = [f"model.{n}" for n in names]
    params = dict(wrapper.named_parameters())
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]

    def unflatten(flat: Tensor) -> dict[str, Tensor]:
        parts = torch.split(flat, sizes)
        return {n: v.reshape(s) for n, v, s in zip(names, parts, shapes, strict=True)}

    def objective(flat: Tensor) -> Tensor:
        return functional_call(wrapper, unflatten(flat), (batches,))

    def write(flat: Tensor) -> None:
        with torch.no_grad():
            for n, v in unflatten(flat).items():
                params[n].copy_(v)

    return objective, torch.cat([params[n].detach().reshape(-1) for n in names]), write


def _damped_step(
    model: MTLModel,
    names: Sequence[str],
    batches: Sequence[Batch],
    hessian: KernelOperator | None = None,
) -> float:
    """Newton step with Armijo backtracking on the parameters ``names`` of ``model`` (the
    others fixed), for the objective on ``batches``; returns that objective before the
    step. ``hessian``: solve with this sample-space form of the Hessian at the current
    parameters (``names`` are then all parameters, in
    :meth:`~torch.nn.Module.named_parameters` order) instead of the dense Hessian."""
    objective, theta, write = _flat_objective(model, names, batches)
    with torch.no_grad():
        before = objective(theta)
    g = grad(objective)(theta)
    if hessian is not None:
        direction = hessian.factorize(0.0).solve(g[:, None])[:, 0]
    else:
        direction = _dense_direction(objective, theta, g)
    slope = float(g @ direction)
    if slope <= 0.0:  # not a descent direction (a singular H solved by LU): steepest descent
        direction, slope = g, float(g @ g)
    t = 1.0
    with torch.no_grad():
        while (
            t > 1e-12 and float(objective(theta - t * direction)) > float(before) - 1e-4 * t * slope
        ):
            t *= 0.5
    if t > 1e-12:
        write(theta - t * direction)
    return float(before)


def _dense_direction(objective: Callable[[Tensor], Tensor], theta: Tensor, g: Tensor) -> Tensor:
    """``H^-1 g`` with the dense Hessian of ``objective`` at ``theta`` (Cholesky; the
    minimum-norm solution when ``H`` is singular, e.g. no penalty and more parameters than
    rows).

    Raises:
        ConfigError: the Hessian would exceed the memory budget
            (:func:`taskrel.relatedness.influence.memory_budget_gb`)."""
    from taskrel.relatedness.influence import check_memory, memory_budget_gb

    p = theta.numel()
    check_memory(
        f"optimizer='newton' (dense Hessian of {p:,} parameters)",
        3 * p * p * theta.element_size(),  # the Hessian, its symmetrised copy, the factor
        memory_budget_gb(),
        "use optimizer='lbfgs', or a model whose sample-space form applies "
        "(taskrel.training.newton)",
    )
    h = jacrev(grad(objective), chunk_size=256)(theta)  # reverse-over-reverse
    h = 0.5 * (h + h.T)
    chol, info = torch.linalg.cholesky_ex(h)
    if int(info) == 0:
        return torch.cholesky_solve(g[:, None], chol)[:, 0]
    return torch.linalg.lstsq(h, g[:, None]).solution[:, 0]
