"""MTIF subset step: predict each task's test loss after training on a task subset ``G``
from the one model trained on all tasks, without retraining.

With ``theta_hat`` trained on ``J(theta) = sum_t G_t(theta) + penalty(theta)`` (``G_t``
task t's mean training loss, ``L_i`` task i's mean test loss):

- **Newton** (``mtif-newton``): the subset objective ``J_G = sum_{t in G} G_t + penalty``
  is minimised by one Newton step from ``theta_hat``,
  ``theta_G = theta_hat - H_G^-1 grad J_G(theta_hat)`` with
  ``H_G = hess(penalty) + sum_{t in G} hess(G_t)``, and the prediction is the actual loss
  ``L_i(theta_G)`` at the stepped parameters. The gradient is taken as it is (it includes
  any residual ``grad J(theta_hat)`` of an unconverged model), so for squared loss on a
  model linear in its parameters the step lands on the subset optimum: the prediction
  equals retraining on ``G``. ``H_G`` is a :class:`~taskrel.relatedness.mtif.BlockArrow`
  (the data Hessians of tasks outside ``G`` are left out); with hard sharing the heads of
  those tasks only feel their L2 penalty, are decoupled from the rest and drop out of the
  solve, so the cost is one Schur-complement factorisation of the shared block plus one
  small factorisation per task of ``G``. The solver is chosen as MTIF's (``solver="auto"``,
  :func:`~taskrel.relatedness.mtif.plan_solver`, under ``memory_budget_gb``): when the
  sample space is small, or the block system does not fit the budget, ``H_G = P +
  sum_{t in G} G_t^T G_t`` is solved in the sample space of the tasks of ``G``
  (:mod:`~taskrel.relatedness.woodbury`; the kernel blocks of the full model are reused
  for every subset), else by conjugate gradients; the parameters of the tasks outside ``G``
  are held where they are, as the block solve leaves them. Option ``steps > 1`` continues
  with Newton steps whose Hessians are recomputed at the current point, which converges to
  the subset optimum of any convex model (e.g. logistic regression, where one step is not
  exact).
- **First order** (``mtif-first-order``): the removals add up linearly,
  ``L_i(G) = L_i(theta_hat) + sum_{j not in G} R[i, j]`` with
  ``R[i, j] = grad L_i^T H^-1 grad G_j`` the first-order task-level MTIF matrix (one solve
  with ``H`` for all targets).

Equivalence with training on ``G`` alone: a model of the tasks of ``G`` has the shared
parameters and the heads of ``G``. With hard sharing and single-task models the penalty is
separable by task, so dropping the other tasks' data terms from the full objective gives
the same optimum for those parameters, and the full model's block system is used. With
soft sharing (coupling > 0) the coupling of the smaller model ties only the tasks of
``G``, so the Newton step is taken in that model
(:class:`~taskrel.decisions.submodel.SubsetModel`; the data Hessians are still those of
the full model, only the penalty's are recomputed). The first-order version only removes
data terms (as MTIF's leave-one-task-out does); on soft sharing a notice says so.
"""

from __future__ import annotations

import copy
from functools import cached_property
from typing import ClassVar, Literal

import numpy as np
import torch
from torch import Tensor
from torch.func import grad

from taskrel.data.taskset import TaskSet
from taskrel.decisions.predictors import GroupOutcomePredictor, Subset
from taskrel.decisions.submodel import SubsetModel
from taskrel.errors import ConfigError
from taskrel.models.base import MTLModel
from taskrel.notices import notice
from taskrel.relatedness import RelateContext, woodbury
from taskrel.relatedness.influence import (
    SOLVERS,
    Damping,
    ExplicitSolver,
    HessianOperator,
    SymmetricOperator,
    check_damping,
    hvp,
    resolve_damping,
)
from taskrel.relatedness.influence import memory_budget_gb as memory_budget
from taskrel.relatedness.mtif import (
    MTIF,
    BlockArrow,
    MTLFunctions,
    SoftStructure,
    Structure,
    structure_for,
)

UNCONVERGED_GRADIENT = 1e-3
"""``||grad J(theta_hat)||`` above this fraction of the largest ``||grad G_t||`` gives a
notice: the model trained on all tasks is not at its optimum."""

STATIONARY = 1e-9
"""Further Newton steps stop once ``||grad J_G||`` is below this fraction of the largest
``||grad G_t(theta_hat)||``."""


def subset_system(structure: Structure, subset: Subset) -> tuple[BlockArrow, Tensor]:
    """``H_G`` (the Hessian of the subset objective) as a block-arrow system over the
    coordinates it involves.

    Task blocks are kept for the tasks of ``subset`` and for any other task whose block is
    coupled to the shared (or consensus) block through the penalty (soft sharing); the
    blocks of other tasks are decoupled and left out.

    Returns:
        ``(system, coords)``: the system over ``k`` coordinates and their flat positions
        ``(k,)`` in the full parameter vector.
    """
    members = set(subset)
    reduced = copy.copy(structure)  # same cached Hessians, data terms outside G zeroed
    reduced.__dict__["local_hessians"] = [
        (data if t in members else torch.zeros_like(data), pen)
        for t, (data, pen) in enumerate(structure.local_hessians)
    ]
    full = reduced.block_system()
    keep = [t for t in range(structure.n_tasks) if t in members or bool(full.cross[t].any())]
    parts = [full.task_coords[t] for t in keep]
    if full.shared_coords is not None:
        parts = [full.shared_coords, *parts]
    coords = torch.cat(parts)
    position = torch.full((full.dim,), -1, dtype=torch.long)
    position[coords] = torch.arange(coords.numel())
    system = BlockArrow(
        full.shared,
        [full.cross[t] for t in keep],
        [full.blocks[t] for t in keep],
        None if full.shared_coords is None else position[full.shared_coords],
        [position[full.task_coords[t]] for t in keep],
        coords.numel(),
    )
    return system, coords


class MTIFSubset(GroupOutcomePredictor):
    """Base of the two MTIF subset predictors (see module docstring).

    Args:
        model: a model already trained on all tasks with ``ctx`` (skips the training in
            :meth:`fit`; share one between predictors to compare their costs fairly).
        damping: added to ``H_G`` (and ``H``); ``"auto"``: 0 while positive definite,
            else just enough to make it so (a notice says when).
        solver: MTIF's solver (``auto``: by size under the memory budget, see
            :func:`~taskrel.relatedness.mtif.plan_solver`; ``explicit``, ``woodbury``,
            ``woodbury-gn``, ``cg``, ``lissa``); the plan is in ``meta["solver_plan"]``.
        memory_budget_gb: memory an explicit or sample-space solve may use (GB); default
            :func:`~taskrel.relatedness.influence.memory_budget_gb`.
    """

    order: ClassVar[Literal["newton", "first-order"]] = "newton"

    def __init__(
        self,
        model: MTLModel | None = None,
        damping: Damping = "auto",
        solver: str = "auto",
        memory_budget_gb: float | None = None,
    ) -> None:
        super().__init__()
        check_damping(damping)
        if not isinstance(solver, str) or solver not in ("auto", *SOLVERS):
            raise ConfigError(
                f"{self.name} option solver must be one of auto, {', '.join(SOLVERS)}, "
                f"got {solver!r}"
            )
        if memory_budget_gb is not None:
            memory_budget(memory_budget_gb)
        self.model = model
        self.damping = damping
        self.solver = solver
        self.memory_budget_gb = memory_budget_gb

    def _fit(self, taskset: TaskSet, ctx: RelateContext) -> None:
        from taskrel.relatedness.ground_truth import train_model

        model = self.model
        if model is None:
            model = train_model(taskset, ctx.model, ctx.model_config, ctx.train_config)
            self.trainings = 1
        self.engine = MTIF(
            model,
            taskset,
            solver=self.solver,
            damping=self.damping,
            memory_budget_gb=self.memory_budget_gb,
        )
        fns = self.engine.fns
        with torch.no_grad():
            self.base = torch.stack(
                [fns.mean_loss(fns.theta, i, "test") for i in range(len(taskset))]
            )
        self.task_grads = self.engine.train_gradients  # (p, T)
        self.penalty_grad = grad(fns.penalty)(fns.theta)
        full = self.task_grads.sum(1) + self.penalty_grad
        scale = float(self.task_grads.norm(dim=0).max())
        self.meta.update(
            grad_norm=float(full.norm()),
            grad_norm_relative=float(full.norm()) / max(scale, 1e-300),
            gradient_scale=scale,
            n_params=fns.space.numel,
            structure=self.engine.structure.name,
            solver_plan=self.engine.plan.to_meta(),
        )
        if self.meta["grad_norm_relative"] > UNCONVERGED_GRADIENT:
            notice(
                f"{self.name}: the model trained on all tasks is not at its optimum "
                f"(||grad J|| = {self.meta['grad_norm']:.3g}, "
                f"{self.meta['grad_norm_relative']:.3g} of the largest task gradient); "
                "predictions are less accurate"
            )
        self.taskset, self.ctx = taskset, ctx
        self._prepare()

    def _prepare(self) -> None:
        """Order-specific work of :meth:`fit`."""


class MTIFNewton(MTIFSubset):
    """The subset Newton step (registry ``mtif-newton``; see module docstring).

    Args:
        model, damping, solver, memory_budget_gb: see :class:`MTIFSubset`.
        steps: Newton steps on the subset objective. The first reuses the full model's
            Hessians; each further one recomputes the subset model's Hessian at the new
            point (one per task of the subset), so more steps converge to the subset
            optimum of any convex model (e.g. logistic regression).
    """

    name = "mtif-newton"
    units = "predicted mean test loss of the task (loss at the subset Newton step)"
    order = "newton"

    def __init__(
        self,
        model: MTLModel | None = None,
        damping: Damping = "auto",
        steps: int = 1,
        solver: str = "auto",
        memory_budget_gb: float | None = None,
    ) -> None:
        super().__init__(model, damping, solver, memory_budget_gb)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"mtif-newton option steps must be an integer >= 1, got {steps!r}")
        self.steps = steps

    def _prepare(self) -> None:
        structure = self.engine.structure  # MTIF checked the plan against the memory budget
        if self.engine.structured:
            _ = structure.local_hessians
            self.meta.update(hessian_columns=sum(d.shape[0] for d, _ in structure.local_hessians))
        self.meta["damped_solves"] = 0
        self.meta["max_damping"] = 0.0
        self.meta["extra_steps"] = 0
        # a penalty that couples task parameters (soft sharing) changes with the subset:
        # step on the subset model itself
        self.separable = not (isinstance(structure, SoftStructure) and structure.coupling > 0)
        self.meta["subset_model"] = not self.separable

    def step(self, subset: Subset) -> tuple[MTLFunctions, Tensor, list[int]]:
        """The Newton step on the subset objective from theta_hat.

        Returns ``(fns, theta_G, tasks)``: the functions of the model the step is in (the
        full model, or the subset model when the penalty couples tasks), its stepped
        parameters, and the task index in ``fns`` of each task of ``subset``."""
        fns, structure = self.engine.fns, self.engine.structure
        if self.separable and self.engine.structured:
            system, coords = subset_system(structure, subset)
            rhs = self.task_grads[:, list(subset)].sum(1) + self.penalty_grad
            move = self._solve(system, rhs[coords], subset)
            return fns, fns.theta.index_add(0, coords, -move), list(subset)
        if self.separable:
            op, held = self._subset_operator(subset)
            rhs = self.task_grads[:, list(subset)].sum(1) + self.penalty_grad
            rhs[held] = 0.0
            return fns, fns.theta - self._solve(op, rhs, subset), list(subset)
        sub = SubsetModel(fns, self.taskset, self.ctx, subset)
        rhs = self.task_grads[sub.coords][:, list(subset)].sum(1)
        rhs = rhs + grad(sub.fns.penalty)(sub.fns.theta)
        if not self.engine.structured:
            move = self._solve(self._hessian(sub.fns), rhs, subset)
            return sub.fns, sub.fns.theta - move, list(range(len(subset)))
        own = structure_for(sub.fns)
        hessians = []
        for k, t in enumerate(subset):
            local = own.local_coords(k)
            pen = HessianOperator(
                sub.fns.restrict(sub.fns.penalty, local), sub.fns.theta[local], chunk_size=512
            )
            hessians.append((structure.local_hessians[t][0], pen.dense()))
        own.__dict__["local_hessians"] = hessians
        move = self._solve(own.block_system(), rhs, subset)
        return sub.fns, sub.fns.theta - move, list(range(len(subset)))

    def _subset_operator(self, subset: Subset) -> tuple[SymmetricOperator, Tensor]:
        """``H_G`` over all parameters, in the engine's form (sample-space kernel or
        Hessian-vector products of the flat objective), and the flat positions ``held``
        ``(k,)`` that no task of ``subset`` touches (the other tasks' own parameters).

        ``held`` are decoupled from the rest in ``H_G`` (the penalty is separable); the
        step leaves them where they are by a zero right-hand side there. Those of them the
        penalty does not curve either (an L2 coefficient of 0) get a stand-in curvature on
        the scale of the penalty's, so that ``H_G`` stays invertible without damping."""
        engine = self.engine
        members = set(subset)
        weights = [1.0 if t in members else 0.0 for t in range(self.n_tasks)]
        touched = torch.zeros(engine.fns.space.numel, dtype=torch.bool)
        for t in subset:
            touched[engine.structure.local_coords(t)] = True
        held = torch.nonzero(~touched).flatten()
        free = [engine.orphaned(j) for j in range(self.n_tasks) if j not in members]
        pin = torch.cat([torch.zeros(0, dtype=torch.long), *free])
        return engine.operator(weights=weights, pin=pin, pin_value=self.pin_value), held

    @cached_property
    def pin_value(self) -> float:
        """Stand-in curvature of held parameters the penalty leaves flat: the largest
        diagonal entry of the penalty's Hessian (1 when there is no penalty)."""
        fns = self.engine.fns
        ones = torch.ones(fns.space.numel, 1, dtype=fns.theta.dtype)
        scale = float(hvp(fns.penalty, fns.theta, ones).abs().max())
        return scale if scale > 0 else 1.0

    def _hessian(self, fns: MTLFunctions) -> SymmetricOperator:
        """The Hessian of ``fns``'s objective at ``fns.theta`` in the engine's form: the
        block-arrow system, the sample-space kernel, or Hessian-vector products."""
        plan = self.engine.plan
        if self.engine.structured:
            return structure_for(fns).block_system()
        if plan.solver in woodbury.SAMPLE_SPACE:
            space = woodbury.SampleSpace(
                structure_for(fns), self.engine.chunk_size, plan.solver == "woodbury-gn"
            )
            return space.operator()
        return HessianOperator(fns.objective, fns.theta)

    def further_steps(
        self, subset: Subset, fns: MTLFunctions, theta: Tensor
    ) -> tuple[MTLFunctions, Tensor, list[int]]:
        """Steps 2..``steps`` from the first step's ``theta`` (in ``fns``), in the subset
        model, each with its Hessian and gradient at the current point; stops early once
        the subset objective is stationary (gradient norm below :data:`STATIONARY` of the
        largest task gradient at theta_hat). Same return as :meth:`step`."""
        if fns is self.engine.fns:
            sub = SubsetModel(fns, self.taskset, self.ctx, subset)
            fns, theta = sub.fns, theta[sub.coords]
        for _ in range(self.steps - 1):
            gradient = grad(fns.objective)(theta)
            if float(gradient.norm()) <= STATIONARY * self.meta["gradient_scale"]:
                break
            fns.theta = theta.detach()
            theta = theta - self._solve(self._hessian(fns), gradient, subset)
            self.meta["extra_steps"] += 1
        return fns, theta, list(range(len(subset)))

    def _solve(self, system: SymmetricOperator, rhs: Tensor, subset: Subset) -> Tensor:
        """``(H_G + damping)^-1 rhs`` for ``rhs`` ``(k,)``, damped (with a notice) only if
        ``H_G`` is not positive definite and ``damping="auto"``: a factorisation (block
        arrow, sample-space kernel or dense) for the direct solvers, else the engine's
        iterative solver."""
        solver = self.engine.solver
        if not isinstance(solver, ExplicitSolver):
            x, report = solver.solve(system, rhs.unsqueeze(1), diagnose=False)
            if report.damping > 0 and self.damping == "auto":
                self._damped(subset, report.min_eig, report.damping)
            return x[:, 0]
        damping = 0.0 if self.damping == "auto" else float(self.damping)
        factor = system.factorize(damping)
        if self.damping == "auto" and not factor.positive_definite:
            lo, hi = system.extreme_eigenvalues()
            damping = resolve_damping("auto", lo, hi)
            factor = system.factorize(damping)
            self._damped(subset, lo, damping)
        move: Tensor = factor.solve(rhs.unsqueeze(1))[:, 0]
        return move

    def _damped(self, subset: Subset, lo: float, damping: float) -> None:
        """Count a damped solve (a notice for the first)."""
        if self.meta["damped_solves"] == 0:
            notice(
                f"{self.name}: the subset Hessian of {list(subset)} is not positive "
                f"definite (smallest eigenvalue {lo:.3g}; e.g. l2_task=0 or a singular "
                f"model); damping {damping:.3g} used, predictions are approximate"
            )
        self.meta["damped_solves"] += 1
        self.meta["max_damping"] = max(self.meta["max_damping"], damping)

    def _subset_losses(self, subsets: list[Subset]) -> np.ndarray:
        out = np.full((len(subsets), self.n_tasks), np.nan)
        for m, s in enumerate(subsets):
            fns, theta, tasks = self.step(s)
            if self.steps > 1:
                fns, theta, tasks = self.further_steps(s, fns, theta)
            with torch.no_grad():
                for t, k in zip(s, tasks, strict=True):
                    out[m, t] = float(fns.mean_loss(theta, k, "test"))
        return out


class MTIFFirstOrder(MTIFSubset):
    """First-order additive removal (registry ``mtif-first-order``; module docstring)."""

    name = "mtif-first-order"
    units = "predicted mean test loss of the task (first-order, removals add up)"
    order = "first-order"

    def _prepare(self) -> None:
        structure = self.engine.structure
        if isinstance(structure, SoftStructure) and structure.coupling > 0:
            notice(
                f"{self.name} on soft sharing: removed tasks stay in the coupling penalty "
                "(only their data leave), unlike a model of the subset alone"
            )
        self.effects = self.engine.task_matrix()  # (T, T), [i, j]: change of L_i without j
        self.meta["solver"] = self.engine.report.to_meta()

    def _subset_losses(self, subsets: list[Subset]) -> np.ndarray:
        base = self.base.numpy()
        out = np.full((len(subsets), self.n_tasks), np.nan)
        for m, s in enumerate(subsets):
            removed = np.setdiff1d(np.arange(self.n_tasks), s)
            rows = np.asarray(s, dtype=np.int64)
            out[m, rows] = base[rows] + self.effects[np.ix_(rows, removed)].sum(1)
        return out
