"""MTIF's small-model path: the Hessian and the task gradients in two autodiff calls.

For a model of a few hundred parameters the structured explicit solve
(:class:`~taskrel.relatedness.mtif.BlockArrow`) costs almost nothing in arithmetic; its
time goes to ``3 T + 1`` separate ``torch.func`` calls (the T local Hessian blocks and
the penalty's, then ``grad G_t`` and ``grad L_t`` per task), each with its own
``functional_call`` set-up. Here every task's mean loss runs inside *one*
``functional_call`` (:class:`_AllTasks`), and

- ``H`` (``(p, p)``, the Hessian of ``J = sum_t G_t + penalty``) comes from one
  reverse-over-reverse ``jacrev(jacrev(J))`` call, vectorised over the ``p`` directions;
- the ``2 T`` task gradients (``grad G_t``, ``grad L_t``) from one ``jacrev`` call of the
  vector of mean losses.

The dense ``H`` is then solved by the same :class:`~taskrel.relatedness.influence.ExplicitSolver`
(exact eigenvalues, damping, positive-definiteness check and residual as before; a Cholesky
factorisation, :class:`CholeskyOperator`), so the task matrix and every diagnostic equal the
block path's to rounding. The arithmetic is
``O(p N)`` instead of ``O(sum_t p_t n_t)`` (every direction passes every example), which is
why the path is limited to ``p <= SMALL_MAX_PARAMS`` and to one vectorised pass of bounded
size (:func:`applies`). Recorded as ``meta['solver_plan']['small_dense']``.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev

from taskrel.data.taskset import SplitName
from taskrel.models.base import MTLModel
from taskrel.relatedness.influence import GB, DenseOperator, ExplicitSolver, Factor, Solver

if TYPE_CHECKING:
    from taskrel.relatedness.mtif import MTLFunctions, SolverPlan

SMALL_MAX_PARAMS = 1024
"""Largest ``p`` for which the dense one-call Hessian is used (above it the ``O(p N)``
arithmetic outgrows the per-call overhead it saves)."""
SMALL_MAX_ELEMENTS = 2**26
"""Bound on the input elements of one vectorised pass (``p`` times the training inputs'
elements for ``H``); its transient memory is a small multiple of this, in ``dtype``."""


class _AllTasks(nn.Module):
    """Every task's mean loss (and optionally the penalty) of a model in one forward, so
    that one ``functional_call`` serves them all."""

    def __init__(self, model: MTLModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, data: list[tuple[Tensor, Tensor, int]], penalty: bool) -> Tensor:
        """``(len(data) [+ 1],)``: ``mean loss(x, y, task)`` per entry, then the penalty."""
        out = [self.model.loss(x, y, t).mean() for x, y, t in data]
        if penalty:
            out.append(self.model.penalty())
        return torch.stack(out)


def applies(fns: MTLFunctions, plan: SolverPlan, solver: Solver) -> bool:
    """Whether the small-model path replaces the structured explicit solve's Hessian and
    task gradients: the plan is the structured explicit solve (exact eigenvalues there,
    as here), the solver an :class:`ExplicitSolver`, ``p <= SMALL_MAX_PARAMS``, and the
    vectorised passes (``p`` directions over the training inputs, ``2 T`` over all
    inputs) at most :data:`SMALL_MAX_ELEMENTS` input elements and, four copies of them,
    within the memory budget."""
    if plan.solver != "explicit" or not plan.structured or not isinstance(solver, ExplicitSolver):
        return False
    p, tasks = fns.space.numel, fns.n_tasks
    train = sum(x.numel() for x, _ in fns.train)
    test = sum(x.numel() for x, _ in fns.test)
    elements = max(p * train, 2 * tasks * (train + test))  # the larger of the two passes
    nbytes = 4 * elements * fns.theta.element_size()
    return (
        p <= SMALL_MAX_PARAMS and elements <= SMALL_MAX_ELEMENTS and nbytes <= plan.budget_gb * GB
    )


class CholeskyOperator(DenseOperator):
    """A dense symmetric matrix factorised by Cholesky (about 20x cheaper than the
    eigendecomposition of :class:`DenseOperator` at a few hundred parameters); where
    ``H + damping`` is not positive definite, the eigendecomposition as before."""

    def factorize(self, damping: float) -> Factor:
        eye = torch.eye(self.dim, dtype=self.dtype)
        chol, info = torch.linalg.cholesky_ex(self.matrix + damping * eye)
        if int(info) != 0:
            return super().factorize(damping)
        return Factor(lambda rhs: torch.cholesky_solve(rhs, chol), True)


class SmallModel:
    """The Hessian ``(p, p)`` and the task gradients ``(p, T)`` of a small model, each from
    one ``torch.func`` call over all tasks (see the module docstring)."""

    def __init__(self, fns: MTLFunctions) -> None:
        self.fns = fns
        self._all = _AllTasks(fns.model)

    def _params(self, theta: Tensor) -> dict[str, Tensor]:
        return {f"model.{n}": v for n, v in self.fns.space.unflatten(theta).items()}

    def _objective(self, theta: Tensor) -> Tensor:
        """``J(theta) = sum_t G_t(theta) + penalty(theta)`` (as ``MTLFunctions.objective``)."""
        data = [(x, y, t) for t, (x, y) in enumerate(self.fns.train)]
        values = functional_call(self._all, self._params(theta), (data, True))
        return values[:-1].sum() + values[-1]

    def _mean_losses(self, theta: Tensor) -> Tensor:
        """``(2 T,)``: ``G_1 .. G_T`` then ``L_1 .. L_T`` at ``theta``."""
        data = [(x, y, t) for t, (x, y) in enumerate(self.fns.train)]
        data += [(x, y, t) for t, (x, y) in enumerate(self.fns.test)]
        return functional_call(self._all, self._params(theta), (data, False))

    @cached_property
    def _operator(self) -> CholeskyOperator:
        return CholeskyOperator(jacrev(jacrev(self._objective))(self.fns.theta).detach())

    def operator(self) -> CholeskyOperator:
        """``H`` as a dense operator (one ``jacrev(jacrev(J))`` call, kept: at most
        ``SMALL_MAX_PARAMS ** 2`` numbers)."""
        return self._operator

    @cached_property
    def _gradients(self) -> Tensor:
        return jacrev(self._mean_losses)(self.fns.theta).detach().T

    def gradients(self, split: SplitName) -> Tensor:
        """``(p, T)``: column t is the gradient of task t's mean ``split`` loss
        (``split``: ``train`` or ``test``, the two the one call computes)."""
        t = self.fns.n_tasks
        columns = {"train": slice(0, t), "test": slice(t, 2 * t)}
        if split not in columns:
            raise ValueError(f"the small-model path has train and test gradients, not {split!r}")
        return self._gradients[:, columns[split]].contiguous()
