"""Grad-TAG: subset outcomes from a linearised model fitted on projected gradients.

After Li, Sharma and Zhang, "Scalable Multitask Learning Using Gradient-based Estimation
of Task Affinity" (KDD 2024):

1. Train a meta-initialisation ``theta_0`` on all tasks (the model of ``ctx``).
2. Linearise every output around it, ``f(x; theta_0 + Delta) ~ f(x; theta_0) +
   J(x) Delta`` with ``J(x)`` the per-example output Jacobian (``(C, p)``, ``C`` outputs),
   taken with ``torch.func.vmap(jacrev)`` over the parameters the task touches (shared
   ones and its own).
3. Project: ``Delta = P a`` with ``P`` a seeded Gaussian ``(p, d)`` matrix scaled by
   ``1/sqrt(d)`` (``dim=d``), or the identity (``dim=None``, ``d = p``); the features of
   an example are ``J(x) P`` (``(C, d)``), computed once.
4. For each subset ``S``, fit ``a`` on the training data of ``S`` by minimising the
   model's own objective on the linearised outputs,
   ``sum_{t in S} mean_i loss_t(f(x_i; theta_0) + J(x_i) P a, y_i) + penalty(theta_0 + P a)``
   (least squares for regression, softmax regression for classification, with the
   penalty of the model of ``S`` alone: "the same L2"; with soft sharing its coupling ties
   only the tasks of ``S``, see :mod:`taskrel.decisions.submodel`). Only the rows of ``P``
   of parameters that ``S``'s tasks touch move; parameters of other tasks stay at
   ``theta_0``. The problem is convex in ``a`` and is solved by Newton's method with a
   backtracking line search.
5. Evaluate each target's mean test loss with the linearised model at ``a``.

When the model is linear in its parameters (hard sharing with ``hidden=[]``) and
``dim=None``, the linearisation and the objective are exact, so the estimate equals
training on ``S`` (tested against retraining).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor
from torch.func import functional_call, jacrev, vmap

from taskrel.data.taskset import TaskSet
from taskrel.decisions.predictors import GroupOutcomePredictor, Subset
from taskrel.decisions.submodel import SubsetModel
from taskrel.errors import ConfigError
from taskrel.models.base import MTLModel
from taskrel.notices import notice
from taskrel.relatedness import RelateContext
from taskrel.relatedness.influence import check_memory, hvp, memory_budget_gb
from taskrel.relatedness.mtif import MTLFunctions

Features = tuple[Tensor, Tensor, Tensor]
"""``(f0, phi, y)`` of one task and split: outputs at theta_0 ``(n, *out)``, projected
Jacobians ``(n, *out, d)``, targets ``(n, ...)``."""


def output_hessians(model: MTLModel, task: int, out: Tensor, y: Tensor) -> Tensor:
    """``(n, k, k)``: Hessian of each example's loss in its ``k`` outputs (per-example
    losses, so one double-backward pass per output column gives all examples at once)."""
    o = out.detach().requires_grad_(True)
    g = torch.autograd.grad(model.output_loss(o, y, task).sum(), o, create_graph=True)[0]
    g = g.reshape(len(o), -1)
    cols = [
        torch.autograd.grad(g[:, j].sum(), o, retain_graph=True)[0].reshape(len(o), -1)
        for j in range(g.shape[1])
    ]
    return torch.stack(cols, dim=1).detach()


def newton_minimise(
    objective: Callable[[Tensor], Tensor],
    curvature: Callable[[Tensor], Tensor],
    start: Tensor,
    max_iter: int,
) -> tuple[Tensor, int, bool]:
    """Minimise a smooth convex ``objective`` of ``(k,)`` by Newton's method with a
    backtracking (Armijo) line search; ``curvature(a)`` is its ``(k, k)`` Hessian (a
    least-squares solve copes with flat directions).

    Returns ``(minimiser, iterations, converged)``; converged when half the squared Newton
    decrement falls below ``1e-12`` of ``max(1, |objective|)``."""
    a = start
    with torch.no_grad():
        value = objective(a)
    for iteration in range(1, max_iter + 1):
        point = a.detach().requires_grad_(True)
        g = torch.autograd.grad(objective(point), point)[0]
        step = torch.linalg.lstsq(curvature(a), g.unsqueeze(1)).solution[:, 0]
        decrement = float(g @ step)
        if decrement <= 2e-12 * max(1.0, abs(float(value))):
            return a, iteration, True
        size = 1.0
        with torch.no_grad():
            trial = objective(a - step)
            while float(trial) > float(value) - 1e-4 * size * decrement and size > 1e-10:
                size /= 2
                trial = objective(a - size * step)
        a, value = a - size * step, trial
    return a, max_iter, False


class GradTAG(GroupOutcomePredictor):
    """Grad-TAG subset estimator (registry ``grad-tag``; see module docstring).

    Args:
        dim: projection dimension ``d`` (None: no projection, ``d = p``).
        seed: seed of the Gaussian projection.
        model: a model already trained on all tasks with ``ctx`` (skips the training).
        chunk_size: examples per batch of per-example Jacobians.
        max_newton: Newton iterations per subset (converged fits stop earlier).
    """

    name = "grad-tag"
    units = "predicted mean test loss of the task (linearised model fitted on the subset)"

    def __init__(
        self,
        dim: int | None = 200,
        seed: int = 0,
        model: MTLModel | None = None,
        chunk_size: int = 256,
        max_newton: int = 50,
    ) -> None:
        super().__init__()
        for key, value in (("dim", dim), ("chunk_size", chunk_size), ("max_newton", max_newton)):
            if value is None and key == "dim":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"grad-tag option {key} must be an integer >= 1, got {value!r}")
        self.dim, self.seed, self.model = dim, seed, model
        self.chunk_size, self.max_newton = chunk_size, max_newton

    # -- fit: meta-initialisation, Jacobians, projection ------------------------------------
    def _fit(self, taskset: TaskSet, ctx: RelateContext) -> None:
        from taskrel.relatedness.ground_truth import train_model

        model = self.model
        if model is None:
            model = train_model(taskset, ctx.model, ctx.model_config, ctx.train_config)
            self.trainings = 1
        fns = MTLFunctions(model, taskset)
        self.fns, self.taskset, self.ctx = fns, taskset, ctx
        p = fns.space.numel
        d = p if self.dim is None else self.dim
        shared = list(model.shared_parameters())
        self.coords = [
            fns.space.indices(shared + model.task_parameter_names(t)) for t in range(len(taskset))
        ]
        n_rows = 0
        for t in range(len(taskset)):
            width = self._output(t)(fns.theta[self.coords[t]], fns.train[t][0][0]).numel()
            n_rows += width * (len(fns.train[t][0]) + len(fns.test[t][0]))
        check_memory(
            f"grad-tag features ({n_rows:,} output rows x {d:,} dimensions)",
            8 * n_rows * d,
            memory_budget_gb(),
            "choose a smaller dim (the projection dimension)",
        )
        if self.dim is None:
            self.projection = torch.eye(p, dtype=fns.theta.dtype)
        else:
            gen = torch.Generator().manual_seed(self.seed)
            self.projection = torch.randn(p, d, generator=gen, dtype=fns.theta.dtype)
            self.projection /= math.sqrt(d)
        self.train_features = [self._features(t, *fns.train[t]) for t in range(len(taskset))]
        self.test_features = [self._features(t, *fns.test[t]) for t in range(len(taskset))]
        self.meta.update(
            dim=d,
            n_params=p,
            projection="identity" if self.dim is None else f"gaussian(seed={self.seed})",
            jacobian_rows=n_rows,
            newton_iterations=0,
            unconverged_subsets=0,
        )

    def _output(self, task: int) -> Callable[[Tensor, Tensor], Tensor]:
        """``(local params (p_t,), one input) -> output`` of ``task`` (other parameters at
        theta_0); the output has the shape of one row of :meth:`MTLModel.forward`."""
        fns, coords = self.fns, self.coords[task]

        def output(local: Tensor, xi: Tensor) -> Tensor:
            params = fns.space.unflatten(fns.theta.index_copy(0, coords, local))
            return functional_call(fns.model, params, (xi.unsqueeze(0), task))[0]

        return output

    def _features(self, task: int, x: Tensor, y: Tensor) -> Features:
        output = self._output(task)
        local = self.fns.theta[self.coords[task]]
        jac = vmap(jacrev(output), in_dims=(None, 0))
        values = vmap(output, in_dims=(None, 0))
        local_p = self.projection[self.coords[task]]
        f0, phi = [], []
        with torch.no_grad():
            for s in range(0, len(x), self.chunk_size):
                xs = x[s : s + self.chunk_size]
                f0.append(values(local, xs))
                phi.append(jac(local, xs) @ local_p)
        return torch.cat(f0), torch.cat(phi), y

    # -- subsets -----------------------------------------------------------------------------
    def fit_subset(self, subset: Subset) -> tuple[Tensor, Tensor]:
        """Fit the linearised model on ``subset``: returns ``(a (k,), cols (k,))``, the
        coefficients of the projection's columns ``cols`` (those that move a parameter
        the subset's tasks touch)."""
        fns = self.fns
        rows = torch.unique(torch.cat([self.coords[t] for t in subset]))
        block = self.projection[rows]
        cols = torch.nonzero(block.norm(dim=0) > 0).flatten()
        lift = torch.zeros(fns.space.numel, cols.numel(), dtype=fns.theta.dtype)
        lift[rows] = block[:, cols]  # Delta = lift @ a
        data = []
        for t in subset:
            f0, phi, y = self.train_features[t]
            data.append((t, f0, phi[..., cols], y))
        model = fns.model
        penalty = SubsetModel(fns, self.taskset, self.ctx, subset).penalty
        # the penalty's Hessian at theta_0 (exact for the quadratic L2 and coupling terms;
        # for other penalties the line search and exact gradient still converge)
        pen_hessian = lift.T @ hvp(penalty, fns.theta, lift)

        def objective(a: Tensor) -> Tensor:
            losses = [model.output_loss(f0 + phi @ a, y, t).mean() for t, f0, phi, y in data]
            return torch.stack(losses).sum() + penalty(fns.theta + lift @ a)

        def curvature(a: Tensor) -> Tensor:
            """Hessian of the objective: ``sum_t mean_i phi_i^T (d2 loss / d out2) phi_i``
            plus the penalty's."""
            total = pen_hessian.clone()
            for t, f0, phi, y in data:
                flat = phi.reshape(len(phi), -1, phi.shape[-1])  # (n, k outputs, d)
                h_out = output_hessians(model, t, f0 + phi @ a, y)  # (n, k, k)
                total += torch.einsum("nkd,nkl,nle->de", flat, h_out, flat) / len(flat)
            return total

        start = torch.zeros(cols.numel(), dtype=fns.theta.dtype)
        a, iterations, converged = newton_minimise(objective, curvature, start, self.max_newton)
        self.meta["newton_iterations"] += iterations
        if not converged:
            if self.meta["unconverged_subsets"] == 0:
                notice(
                    f"grad-tag: the linearised fit of subset {list(subset)} did not converge "
                    f"in {self.max_newton} Newton iterations (max_newton)"
                )
            self.meta["unconverged_subsets"] += 1
        return a, cols

    def _subset_losses(self, subsets: list[Subset]) -> np.ndarray:
        out = np.full((len(subsets), self.n_tasks), np.nan)
        model = self.fns.model
        for m, s in enumerate(subsets):
            a, cols = self.fit_subset(s)
            with torch.no_grad():
                for t in s:
                    f0, phi, y = self.test_features[t]
                    out[m, t] = float(model.output_loss(f0 + phi[..., cols] @ a, y, t).mean())
        return out
