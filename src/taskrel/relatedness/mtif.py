"""MTIF: multitask influence functions (task- and instance-level relatedness).

Conventions (derivation in ``docs/methods/mtif.md``):

- Objective ``J(theta) = sum_t G_t(theta) + penalty(theta)`` with ``G_t`` the mean
  training loss of task ``t`` (``n_t`` examples); ``H`` its Hessian at the trained
  ``theta_hat``; ``L_i`` the mean *test* loss of task ``i``.
- Removing example ``z`` of task ``j`` is treated as up-weighting its loss by ``-1/n_j``
  with every other weight kept (``weighting="fixed"``): ``d theta = H^-1 grad l(z) / n_j``
  and the predicted change of ``L_i`` is ``score(z, i) = grad L_i^T H^-1 grad l(z) / n_j``.
  Positive = removal raises task i's test loss = **z helps task i**.
  ``weighting="renormalized"`` instead predicts retraining on the ``n_j - 1`` remaining
  examples with their mean (what :meth:`TaskSet.drop_train` does):
  ``grad L_i^T H^-1 (grad l(z) - grad G_j) / (n_j - 1)``.
- Task level (leave-one-task-out, LOTO): removing all of task j's data removes the whole
  term ``G_j``; first order ``R[i, j] = grad L_i^T H^-1 grad G_j`` = the sum of task j's
  fixed-weight instance scores. The task-removed Newton step
  ``d theta_j = (H - H_j)^-1 grad G_j`` (``H_j`` the Hessian of ``G_j``) with
  ``R[i, j] = L_i(theta_hat + d theta_j) - L_i(theta_hat)`` is exact for quadratic models
  and much better on the diagonal, where removing a task's own data is a large
  perturbation.

Structure: with hard sharing a task's loss touches only (shared, own head) and ``H`` is
block-arrow shaped; with soft sharing ``H`` is block-diagonal plus the coupling
Laplacian, which an auxiliary "consensus" block turns into the same block-arrow form. Both
are solved by one Schur-complement factorisation (:class:`BlockArrow`); per-example
gradients are taken only over the parameters a task's loss touches.

Solver choice (``solver="auto"``, the default): the sample-space solve
(:mod:`~taskrel.relatedness.woodbury`; Gauss-Newton for networks) when the sample space is
much smaller than the parameter space, else the structured explicit solve while its blocks
fit the memory budget (:func:`influence.memory_budget_gb`), else conjugate gradients on
Hessian-vector products, which need ``O(p)`` memory (details: :func:`plan_solver`). The
choice and the estimates are recorded in ``meta['solver_plan']``.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import cached_property, partial
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad

from taskrel import notices
from taskrel.data.taskset import SplitName, TaskSet
from taskrel.errors import ConfigError, NotApplicableError
from taskrel.models.base import Batch, MTLModel
from taskrel.models.sharing import HardSharing, SoftSharing
from taskrel.progress import progress
from taskrel.relatedness import small_path, woodbury
from taskrel.relatedness.adapter import ModuleAdapter
from taskrel.relatedness.influence import (
    AUTO_DAMPING_FLOOR,
    GB,
    SOLVERS,
    CGSolver,
    Damping,
    ExampleLoss,
    ExplicitSolver,
    Factor,
    HessianOperator,
    ParamSpace,
    Solver,
    SolveReport,
    SymmetricOperator,
    check_damping,
    check_memory,
    dense_solve_bytes,
    hvp,
    lanczos_extremes,
    make_solver,
    memory_budget_gb,
    per_example_grads,
    resolve_damping,
)
from taskrel.relatedness.result import Relatedness

Weighting = Literal["fixed", "renormalized"]
TaskLevel = Literal["first-order", "newton"]
InstanceKind = Literal["first-order", "leverage"]
STATIONARY_RTOL = 1e-3  # ||grad J|| above this fraction of the largest task gradient: notice
PD_RTOL = 1e-10  # smallest eigenvalue must exceed this fraction of the largest to count as PD
UNITS = (
    "predicted change of the target task's mean test loss when the source's training "
    "data are removed (loss units); positive: the source helps the target"
)


class _Method(nn.Module):
    """Calls one method of a model, so ``functional_call`` can run it with given params."""

    def __init__(self, model: MTLModel, method: str) -> None:
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, *args: Any) -> Tensor:
        return getattr(self.model, self.method)(*args)


class MTLFunctions:
    """A trained multi-task model as functions of its flat parameter vector.

    Attributes:
        space: layout of the flat vector (``named_parameters`` order).
        theta: ``(p,)`` trained parameters in ``dtype``.
        train, test: per task, ``(x, y)`` tensors of the split (float inputs in ``dtype``).
    """

    def __init__(
        self,
        model: MTLModel,
        taskset: TaskSet,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        self._bind(model, dtype)
        self.n_tasks = len(taskset)
        self.train = [self._tensors(task.arrays("train"), dtype) for task in taskset.tasks]
        self.test = [self._tensors(task.arrays("test"), dtype) for task in taskset.tasks]

    @classmethod
    def from_batches(cls, model: MTLModel, batches: Sequence[Batch]) -> MTLFunctions:
        """The model at its current parameters with ``batches`` (one per task, in task
        order, e.g. the trainer's full batches) as training split and an empty test split,
        in the dtype of the batches' features (no copy of the data)."""
        if [b.task for b in batches] != list(range(len(model.tasks))):
            raise ValueError("from_batches needs one batch per task, in task order")
        fns = cls.__new__(cls)
        fns._bind(model, batches[0].x.dtype)
        fns.n_tasks = len(batches)
        fns.train = [(b.x, b.y) for b in batches]
        fns.test = [(b.x[:0], b.y[:0]) for b in batches]
        return fns

    def _bind(self, model: MTLModel, dtype: torch.dtype) -> None:
        """The model's functions and its parameters as ``theta`` in ``dtype`` (the model
        is put in eval mode)."""
        model.eval()
        self.model = model
        params = {n: p.detach().to(dtype) for n, p in model.named_parameters()}
        self.space = ParamSpace.from_params(params)
        self.theta = self.space.flatten(params)
        self._loss = _Method(model, "loss")
        self._forward = _Method(model, "forward")
        self._penalty = _Method(model, "penalty")

    @staticmethod
    def _tensors(
        arrays: tuple[np.ndarray, np.ndarray],
        dtype: torch.dtype,
    ) -> tuple[Tensor, Tensor]:
        def cast(a: np.ndarray) -> Tensor:
            t = torch.as_tensor(a)
            return t.to(dtype) if t.is_floating_point() else t

        return cast(arrays[0]), cast(arrays[1])

    def _params(self, theta: Tensor) -> dict[str, Tensor]:
        return {f"model.{n}": v for n, v in self.space.unflatten(theta).items()}

    def losses(self, theta: Tensor, task: int, x: Tensor, y: Tensor) -> Tensor:
        """Per-example losses ``(b,)`` of task ``task`` at ``theta``."""
        return functional_call(self._loss, self._params(theta), (x, y, task))

    def outputs(self, theta: Tensor, task: int, x: Tensor) -> Tensor:
        """Outputs of task ``task`` at ``theta`` (as :meth:`MTLModel.forward`)."""
        return functional_call(self._forward, self._params(theta), (x, task))

    def mean_loss(self, theta: Tensor, task: int, split: SplitName = "train") -> Tensor:
        """Mean loss of ``task`` over ``split`` (``G_t`` for train, ``L_t`` for test)."""
        x, y = (self.train if split == "train" else self.test)[task]
        return self.losses(theta, task, x, y).mean()

    def penalty(self, theta: Tensor) -> Tensor:
        return functional_call(self._penalty, self._params(theta), ())

    def objective(self, theta: Tensor, weights: Sequence[float] | None = None) -> Tensor:
        """``sum_t w_t G_t(theta) + penalty(theta)`` (``w = 1``: the training objective)."""
        w = weights if weights is not None else [1.0] * self.n_tasks
        data = [wt * self.mean_loss(theta, t) for t, wt in enumerate(w) if wt != 0.0]
        return torch.stack(data).sum() + self.penalty(theta) if data else self.penalty(theta)

    def restrict(
        self,
        fn: Callable[[Tensor], Tensor],
        coords: Tensor,
    ) -> Callable[[Tensor], Tensor]:
        """``fn`` as a function of the coordinates ``coords`` only (others at theta_hat)."""

        def local(values: Tensor) -> Tensor:
            return fn(self.theta.index_copy(0, coords, values))

        return local

    def example_loss(self, task: int, coords: Tensor) -> ExampleLoss:
        """Loss of one example of ``task`` as a function of the coordinates ``coords``."""

        def loss(values: Tensor, x: Tensor, y: Tensor) -> Tensor:
            theta = self.theta.index_copy(0, coords, values)
            return self.losses(theta, task, x.unsqueeze(0), y.unsqueeze(0))[0]

        return loss


# -- the block-arrow system ------------------------------------------------------------------
class BlockArrow(SymmetricOperator):
    """A Hessian in block-arrow form: a shared block coupled to T task blocks that are
    not coupled to each other::

        M = [[A_s,  B_1^T, ..., B_T^T],
             [B_1,  A_1,               ],
             [...,        ...          ],
             [B_T,               A_T  ]]

    Hard sharing: ``M`` is the Hessian itself (``shared_coords`` = the shared parameters).
    Soft sharing: the shared block is an *auxiliary* consensus variable
    (``shared_coords=None``) and the Hessian is its Schur complement onto the task blocks,
    ``H = blockdiag(A_t) - B A_s^-1 B^T``.

    Either way ``H x = b`` is solved by eliminating the task blocks:
    ``S = A_s - sum_t B_t^T A_t^-1 B_t`` (``q x q``), ``x_s = S^-1 (b_s - sum_t B_t^T
    A_t^-1 b_t)``, ``x_t = A_t^-1 (b_t - B_t x_s)``; cost ``O(q^3 + sum_t p_t^3 + sum_t
    p_t^2 q)`` instead of ``O(p^3)``. ``H`` is positive definite iff every ``A_t`` and
    ``S`` is (for the auxiliary form given ``A_s`` positive definite).

    Args:
        shared: ``(q, q)``; cross: per task ``(p_t, q)``; blocks: per task ``(p_t, p_t)``.
        shared_coords: flat positions of the shared block (``(q,)``), or None if auxiliary.
        task_coords: per task, flat positions ``(p_t,)`` of its block.
        dim: the number of parameters ``p``.
    """

    def __init__(
        self,
        shared: Tensor,
        cross: list[Tensor],
        blocks: list[Tensor],
        shared_coords: Tensor | None,
        task_coords: list[Tensor],
        dim: int,
    ) -> None:
        self.shared, self.cross, self.blocks = shared, cross, blocks
        self.shared_coords, self.task_coords = shared_coords, task_coords
        self.dim = dim
        self.dtype = shared.dtype if shared.numel() else blocks[0].dtype
        covered = torch.cat([*task_coords] + ([shared_coords] if shared_coords is not None else []))
        if covered.numel() != dim or torch.unique(covered).numel() != dim:
            raise ValueError("block-arrow blocks must partition the parameters exactly")

    @property
    def auxiliary(self) -> bool:
        return self.shared_coords is None

    def matvec(self, v: Tensor) -> Tensor:
        out = torch.zeros_like(v)
        parts = [v[c] for c in self.task_coords]
        coupled = sum(
            (b.T @ p for b, p in zip(self.cross, parts, strict=True)),
            torch.zeros(self.shared.shape[0], v.shape[1], dtype=v.dtype),
        )
        if self.auxiliary:
            w = torch.linalg.solve(self.shared, coupled) if self.shared.numel() else coupled
            for c, a, b, p in zip(self.task_coords, self.blocks, self.cross, parts, strict=True):
                out[c] = a @ p - b @ w
            return out
        v_s = v[self.shared_coords]
        out[self.shared_coords] = self.shared @ v_s + coupled
        for c, a, b, p in zip(self.task_coords, self.blocks, self.cross, parts, strict=True):
            out[c] = a @ p + b @ v_s
        return out

    def extreme_eigenvalues(self, seed: int = 0) -> tuple[float, float]:
        if self.dim <= 2048:
            ev = torch.linalg.eigvalsh(self.dense())
            return float(ev[0]), float(ev[-1])
        return lanczos_extremes(self, seed=seed)

    def add_diagonal(self, coords: Tensor, value: float) -> None:
        """Add ``value`` to the diagonal at the flat positions ``coords`` (in place; the
        positions must lie in task blocks, or in the shared block when it is not
        auxiliary)."""
        found = 0
        for t, where in enumerate(self.task_coords):
            pos = torch.nonzero(torch.isin(where, coords)).flatten()
            if pos.numel():  # blocks may be views of cached Hessians: copy first
                self.blocks[t] = self.blocks[t].clone()
                self.blocks[t][pos, pos] += value
                found += pos.numel()
        if not self.auxiliary and self.shared_coords is not None:
            pos = torch.nonzero(torch.isin(self.shared_coords, coords)).flatten()
            if pos.numel():
                self.shared = self.shared.clone()
                self.shared[pos, pos] += value
                found += pos.numel()
        if found != coords.numel():
            raise ValueError("add_diagonal: positions outside the block system")

    def factorize(self, damping: float) -> Factor:
        blocks = [a + damping * torch.eye(a.shape[0], dtype=a.dtype) for a in self.blocks]
        q = self.shared.shape[0]
        shift = 0.0 if self.auxiliary else damping
        schur = self.shared + shift * torch.eye(q, dtype=self.shared.dtype)
        a_inv_b = [torch.linalg.solve(a, b) for a, b in zip(blocks, self.cross, strict=True)]
        for b, ab in zip(self.cross, a_inv_b, strict=True):
            schur = schur - b.T @ ab
        pd = all(bool(torch.linalg.eigvalsh(a)[0] > 0) for a in blocks)
        pd = pd and (q == 0 or bool(torch.linalg.eigvalsh(0.5 * (schur + schur.T))[0] > 0))

        def solve(rhs: Tensor) -> Tensor:
            y = [
                torch.linalg.solve(a, rhs[c]) for a, c in zip(blocks, self.task_coords, strict=True)
            ]
            b_s = (
                torch.zeros(q, rhs.shape[1], dtype=rhs.dtype)
                if self.auxiliary
                else rhs[self.shared_coords]
            )
            for b, yt in zip(self.cross, y, strict=True):
                b_s = b_s - b.T @ yt
            x_s = torch.linalg.solve(schur, b_s) if q else b_s
            out = torch.zeros_like(rhs)
            if not self.auxiliary:
                out[self.shared_coords] = x_s
            for c, yt, ab in zip(self.task_coords, y, a_inv_b, strict=True):
                out[c] = yt - ab @ x_s
            return out

        return Factor(solve, pd)


# -- structure strategies --------------------------------------------------------------------
class Structure(ABC):
    """How a model's parameters split across tasks, and its Hessian as a
    :class:`BlockArrow`.

    ``local_coords(t)`` are the flat positions of the parameters task t's loss depends on
    (per-example gradients are taken over these only). The data Hessian ``D_t`` of ``G_t``
    and the penalty Hessian ``P_t`` restricted to them are computed once."""

    name: str = "structure"

    def __init__(self, fns: MTLFunctions) -> None:
        self.fns = fns
        self.n_tasks = fns.n_tasks
        self.budget_bytes = math.inf  # memory the (p, p) penalty Hessian may take

    @abstractmethod
    def local_names(self, task: int) -> list[str]:
        """Parameter names task ``task``'s loss depends on."""

    def local_coords(self, task: int) -> Tensor:
        """``(p_local,)`` flat positions of task ``task``'s parameters, computed once per
        task (a few milliseconds each for a million parameters; read-only)."""
        cache: dict[int, Tensor] = self.__dict__.setdefault("_local_coords", {})
        if task not in cache:
            cache[task] = self.fns.space.indices(self.local_names(task))
        return cache[task]

    @cached_property
    def local_hessians(self) -> list[tuple[Tensor, Tensor]]:
        """Per task ``(D_t, P_t)``: Hessians of ``G_t`` and of the penalty over the task's
        local coordinates, each ``(p_local, p_local)``, from batched Hessian-vector
        products of the functions restricted to those coordinates. The penalty's come
        from one ``(p, p)`` Hessian while it fits :attr:`budget_bytes` next to the blocks
        (fewer products), else from the penalty restricted to each task's coordinates."""
        fns = self.fns
        p, size = fns.space.numel, fns.theta.element_size()
        full = None
        if 3 * p * p * size + self.structured_bytes(size) <= self.budget_bytes:
            full = HessianOperator(fns.penalty, fns.theta, chunk_size=512).dense()
        out = []
        with progress("MTIF: Hessian blocks", "tasks", self.n_tasks) as report:
            for t in range(self.n_tasks):
                coords = self.local_coords(t)
                local = fns.theta[coords]
                fn = fns.restrict(partial(fns.mean_loss, task=t), coords)
                data = HessianOperator(fn, local, chunk_size=512).dense()
                if full is not None:
                    pen = full[coords][:, coords]
                else:
                    penalty = fns.restrict(fns.penalty, coords)
                    pen = HessianOperator(penalty, local, chunk_size=512).dense()
                out.append((data, pen))
                report(t + 1)
        return out

    @abstractmethod
    def block_sizes(self) -> tuple[int, list[int]]:
        """``(q, [p_t])``: size of the shared (or auxiliary consensus) block and of each
        task block of :meth:`block_system`."""

    def structured_bytes(self, itemsize: int = 8) -> int:
        """Estimated peak bytes of the structured explicit solve: the local Hessians
        (data and penalty, ``2 sum_t n_t^2`` with ``n_t`` the local size), the block system
        and its factorisation (twice ``q^2 + sum_t (p_t q + p_t^2)``), and the transient
        copies while one local Hessian is formed (``3 max_t n_t^2``)."""
        q, sizes = self.block_sizes()
        local = [self.local_coords(t).numel() for t in range(self.n_tasks)]
        blocks = q * q + sum(b * q + b * b for b in sizes)
        return itemsize * (2 * sum(n * n for n in local) + 2 * blocks + 3 * max(local) ** 2)

    @abstractmethod
    def block_system(
        self, without: int | None = None, weights: Sequence[float] | None = None
    ) -> BlockArrow:
        """``H`` (or ``H - H_j`` with ``without=j``: task j's data term removed; with
        ``weights``, the Hessian of ``sum_t w_t G_t + penalty``)."""

    def data_weights(
        self, without: int | None = None, weights: Sequence[float] | None = None
    ) -> list[float]:
        """Per task weight of its data term (``without``: that task's set to 0)."""
        w = [1.0] * self.n_tasks if weights is None else [float(v) for v in weights]
        if without is not None:
            w[without] = 0.0
        return w


class HardStructure(Structure):
    """Hard sharing: task t's loss touches the shared parameters and its own head."""

    name = "hard"

    @cached_property
    def shared_names(self) -> list[str]:
        return list(self.fns.model.shared_parameters())

    def local_names(self, task: int) -> list[str]:
        return self.shared_names + self.fns.model.task_parameter_names(task)

    def block_sizes(self) -> tuple[int, list[int]]:
        space = self.fns.space
        names = self.fns.model.task_parameter_names
        sizes = [space.indices(names(t)).numel() for t in range(self.n_tasks)]
        return space.indices(self.shared_names).numel(), sizes

    def block_system(
        self, without: int | None = None, weights: Sequence[float] | None = None
    ) -> BlockArrow:
        q = self.fns.space.indices(self.shared_names).numel()
        shared = self.local_hessians[0][1][:q, :q].clone()  # penalty on the shared block
        cross, blocks, coords = [], [], []
        w = self.data_weights(without, weights)
        for t, (data, pen) in enumerate(self.local_hessians):
            local = pen if w[t] == 0.0 else w[t] * data + pen
            if w[t] != 0.0:
                shared = shared + w[t] * data[:q, :q]
            cross.append(local[q:, :q])
            blocks.append(local[q:, q:])
            coords.append(self.fns.space.indices(self.fns.model.task_parameter_names(t)))
        return BlockArrow(
            shared,
            cross,
            blocks,
            self.fns.space.indices(self.shared_names),
            coords,
            self.fns.space.numel,
        )


class SoftStructure(Structure):
    """Soft sharing (and single-task learning, coupling 0): task t's loss touches its own
    network; the coupling ``(lambda/2) sum_{j<k} ||theta_j - theta_k||^2`` has Hessian
    ``lambda (L kron I)`` with ``L = T I - 1 1^T`` on the coupled coordinates, written as
    ``blockdiag(lambda T I) - lambda U U^T`` with ``U`` stacking identities: an auxiliary
    consensus block ``A_s = I / lambda`` with ``B_t = -U_t``."""

    name = "soft"

    def local_names(self, task: int) -> list[str]:
        return self.fns.model.task_parameter_names(task)

    def block_sizes(self) -> tuple[int, list[int]]:
        sizes = [self.local_coords(t).numel() for t in range(self.n_tasks)]
        return self.coupled_positions[0].numel(), sizes

    @cached_property
    def coupling(self) -> float:
        model = self.fns.model
        assert isinstance(model, SoftSharing)
        return float(model.config.coupling)

    @cached_property
    def coupled_positions(self) -> list[Tensor]:
        """Per task, positions (within its local coordinates) of the coupled coordinates,
        in the same order for every task; empty without coupling."""
        model = self.fns.model
        assert isinstance(model, SoftSharing)
        if self.coupling == 0.0:
            return [torch.zeros(0, dtype=torch.long) for _ in range(self.n_tasks)]
        name_of = {id(p): n for n, p in model.named_parameters()}
        per_task: list[list[str]] = [[] for _ in range(self.n_tasks)]
        for group in model.coupled_groups():
            for t, tensor in enumerate(group):
                per_task[t].append(name_of[id(tensor)])
        out = []
        for t in range(self.n_tasks):
            local = self.local_coords(t)
            where = {int(c): i for i, c in enumerate(local)}
            out.append(
                torch.tensor(
                    [where[int(c)] for c in self.fns.space.indices(per_task[t])], dtype=torch.long
                )
            )
        return out

    def block_system(
        self, without: int | None = None, weights: Sequence[float] | None = None
    ) -> BlockArrow:
        lam = self.coupling
        q = self.coupled_positions[0].numel()
        dtype = self.fns.theta.dtype
        shared = torch.eye(q, dtype=dtype) / lam if q else torch.zeros(0, 0, dtype=dtype)
        cross, blocks, coords = [], [], []
        w = self.data_weights(without, weights)
        for t, (data, pen) in enumerate(self.local_hessians):
            block = pen if w[t] == 0.0 else w[t] * data + pen
            pos = self.coupled_positions[t]
            block = block.clone()
            block[pos, pos] += lam  # lambda (T - 1) from the penalty + lambda = lambda T
            b = torch.zeros(block.shape[0], q, dtype=dtype)
            b[pos, torch.arange(q)] = -1.0
            cross.append(b)
            blocks.append(block)
            coords.append(self.local_coords(t))
        return BlockArrow(shared, cross, blocks, None, coords, self.fns.space.numel)


def structure_for(fns: MTLFunctions) -> Structure:
    """The structure strategy of the model (hard sharing, soft sharing or single-task)."""
    if isinstance(fns.model, HardSharing | ModuleAdapter):
        return HardStructure(fns)
    if isinstance(fns.model, SoftSharing):
        return SoftStructure(fns)
    raise NotApplicableError(
        f"mtif supports the hard, soft and stl models and plain modules wrapped in "
        f"taskrel.relatedness.adapter.ModuleAdapter, not {type(fns.model).__name__!r}"
    )


WOODBURY_RATIO = 4  # "auto" prefers the sample space when R * WOODBURY_RATIO <= p


@dataclass(frozen=True)
class SolverPlan:
    """Which solver runs and why: the request, the choice, and the memory estimates (GB)
    of the explicit solves next to the budget. Recorded in ``meta['solver_plan']``.

    ``sample_rows`` is the sample-space dimension ``R = sum_t n_t C`` and ``woodbury_gb``
    its solve's memory when the Woodbury solver applies (else None, with the reason in
    ``woodbury_not_applicable``). ``gn_kernel`` says how ``woodbury`` or ``woodbury-gn``
    forms its kernel (:func:`woodbury.gn_kernel_path`: per ``nn.Linear`` layer, or
    per-example Jacobians and why); None for the other solvers. ``small_dense``: the
    structured explicit solve of a small model takes ``H`` and the task gradients from one
    autodiff call each (:mod:`~taskrel.relatedness.small_path`; set by :class:`MTIF`)."""

    requested: str
    solver: str
    structured: bool
    n_params: int
    dense_gb: float
    structured_gb: float
    budget_gb: float
    sample_rows: int | None = None
    woodbury_gb: float | None = None
    woodbury_not_applicable: str | None = None
    gn_kernel: str | None = None
    small_dense: bool = False

    def to_meta(self) -> dict[str, Any]:
        return asdict(self)


def plan_solver(
    structure: Structure,
    solver: str | Solver = "auto",
    structured: bool | None = None,
    budget_gb: float | None = None,
    itemsize: int = 8,
) -> SolverPlan:
    """Choose the solver under a memory budget, before anything large is allocated.

    ``"auto"``: the sample-space solve when it applies (a diagonal positive penalty;
    ``woodbury`` for a model linear in its parameters, its Gauss-Newton version
    ``woodbury-gn`` for a network), ``R * WOODBURY_RATIO <= p`` and it fits
    ``budget_gb``; else the structured explicit solve if it fits, else the dense explicit
    solve if ``structured=False`` was asked and it fits, else the (exact) Woodbury solve if
    it applies, fits and ``R < p``, else CG on Hessian-vector products (``O(p)`` memory).
    ``structured=None`` means structured for the explicit solver, flat Hessian-vector
    products for the iterative ones (the Woodbury solver has its own structure).

    Raises:
        ConfigError: an explicit or Woodbury solve (or a structured iterative one) that
            does not fit the budget (the message states its size and the budget), or
            ``woodbury``/``woodbury-gn`` where it does not apply (the message says why).
    """
    budget = memory_budget_gb(budget_gb)
    requested = solver.name if isinstance(solver, Solver) else solver
    if not isinstance(requested, str) or requested not in ("auto", *SOLVERS):
        raise ConfigError(
            f"unknown solver {requested!r}; available: auto, {', '.join(SOLVERS)} "
            "or a Solver instance"
        )
    if structured not in (None, True, False):
        raise ConfigError(f"structured must be true, false or None, got {structured!r}")
    n_params = structure.fns.space.numel
    dense = dense_solve_bytes(n_params, itemsize)
    blocks = structure.structured_bytes(itemsize)
    sample = woodbury.sample_space_solver(structure) if requested == "auto" else requested
    gauss_newton = sample == "woodbury-gn"
    reason = (
        woodbury.not_applicable_reason(structure, gauss_newton)
        if sample in woodbury.SAMPLE_SPACE
        else None
    )
    rows = kernel = None
    if sample in woodbury.SAMPLE_SPACE and reason is None:
        rows = woodbury.sample_rows(structure)
        kernel = woodbury.woodbury_bytes(structure, itemsize, gauss_newton=gauss_newton)
    kernel_fits = kernel is not None and kernel <= budget * GB
    name = requested
    if name == "auto":
        if kernel_fits and rows is not None and rows * WOODBURY_RATIO <= n_params:
            name, structured = sample, False
        elif structured is not False and blocks <= budget * GB:
            name, structured = "explicit", True
        elif structured is False and dense <= budget * GB:
            name = "explicit"
        elif kernel_fits and rows is not None and rows < n_params and not gauss_newton:
            name, structured = "woodbury", False
        else:
            name = "cg"
    if name in woodbury.SAMPLE_SPACE:
        if reason is not None:
            raise ConfigError(f"solver={name!r} does not apply to this model: {reason}")
        if structured:
            raise ConfigError(f"structured=True does not apply to solver={name!r}")
        assert kernel is not None
        check_memory(
            f"solver={name!r} with {rows:,} sample-space rows",
            kernel,
            budget,
            "use solver='auto' or 'cg', or raise memory_budget_gb",
        )
        path = woodbury.gn_kernel_path(structure)
        return SolverPlan(
            requested, name, False, n_params, dense / GB, blocks / GB, budget,
            rows, kernel / GB, None, path,
        )  # fmt: skip
    use_blocks = (name == "explicit") if structured is None else structured
    if use_blocks or name == "explicit":
        kind = "structured (block-arrow)" if use_blocks else "dense"
        check_memory(
            f"solver={requested!r} with the {kind} Hessian of {n_params:,} parameters",
            blocks if use_blocks else dense,
            budget,
            "use solver='auto' or 'cg' (Hessian-vector products, no dense matrix), "
            "or raise memory_budget_gb",
        )
    return SolverPlan(
        requested, name, use_blocks, n_params, dense / GB, blocks / GB, budget,
        rows, None if kernel is None else kernel / GB, reason,
    )  # fmt: skip


# -- the estimator ---------------------------------------------------------------------------
class MTIF:
    """Influence-function relatedness of a trained multi-task model.

    Args:
        model: a trained :class:`HardSharing`, :class:`SoftSharing` or single-task model.
        taskset: the data it was trained on (train split) and is evaluated on (test).
        solver: ``auto`` (by size, see :func:`plan_solver`), ``explicit``, ``woodbury``,
            ``woodbury-gn`` (Gauss-Newton, for networks), ``cg``, ``lissa`` or a
            :class:`Solver` instance.
        damping: added to the Hessian's diagonal; ``"auto"``: 0 if positive definite,
            else enough to make it so (see :func:`influence.resolve_damping`).
        structured: solve with the block-arrow system (blocks formed explicitly) rather
            than Hessian-vector products of the flat objective. Default: True for the
            explicit solver, False for the iterative ones.
        chunk_size: examples per chunk of per-example gradients (memory bound).
        dtype: precision of every influence computation.
        solver_options: extra arguments of the solver (``tol``, ``max_iter``, ``scale``;
            with ``auto`` they are CG's, used if CG is chosen).
        memory_budget_gb: memory an explicit solve may use (GB); default
            :func:`influence.memory_budget_gb`.

    Raises:
        NotApplicableError: the model is not a hard, soft or single-task model.
        ConfigError: a bad option, or an explicit solve over the memory budget (raised
            here, before any Hessian is formed).
    """

    def __init__(
        self,
        model: MTLModel,
        taskset: TaskSet,
        solver: str | Solver = "auto",
        damping: Damping = "auto",
        structured: bool | None = None,
        chunk_size: int = 256,
        dtype: torch.dtype = torch.float64,
        solver_options: dict[str, Any] | None = None,
        memory_budget_gb: float | None = None,
    ) -> None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ConfigError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
        check_damping(damping)
        self.taskset = taskset
        self.fns = MTLFunctions(model, taskset, dtype)
        self.structure = structure_for(self.fns)
        itemsize = torch.empty(0, dtype=dtype).element_size()
        self.plan = plan_solver(self.structure, solver, structured, memory_budget_gb, itemsize)
        self.structure.budget_bytes = self.plan.budget_gb * GB
        options = dict(solver_options or {})
        if self.plan.requested == "auto":  # validate for CG, pass only if CG was chosen
            make_solver("cg", damping, **options)
            options = options if self.plan.solver == "cg" else {}
        chosen = solver if isinstance(solver, Solver) else self.plan.solver
        self.solver = make_solver(chosen, damping, **options)
        self.structured = self.plan.structured
        self.small = (  # small models: H and task gradients in one autodiff call each
            small_path.SmallModel(self.fns)
            if small_path.applies(self.fns, self.plan, self.solver)
            else None
        )
        self.plan = replace(self.plan, small_dense=self.small is not None)
        self.sample_space = (
            woodbury.SampleSpace(self.structure, chunk_size, self.plan.solver == "woodbury-gn")
            if self.plan.solver in woodbury.SAMPLE_SPACE
            else None
        )
        self.chunk_size = chunk_size
        self.timings: dict[str, float] = {}
        self.caveats: list[str] = []  # notices given by the solves (e.g. not PD)
        self.newton_diagnostics: dict[str, Any] | None = None
        self.task_matrix_path: str | None = None  # set by task_matrix

    @property
    def n_tasks(self) -> int:
        return self.fns.n_tasks

    def operator(
        self,
        without: int | None = None,
        weights: Sequence[float] | None = None,
        pin: Tensor | None = None,
        pin_value: float = 1.0,
    ) -> SymmetricOperator:
        """``H`` (or ``H - H_j`` for ``without=j``; the Hessian of ``sum_t w_t G_t +
        penalty`` for ``weights``) as the solver will see it, plus ``pin_value`` on the
        diagonal at the flat positions ``pin``."""
        w = self.structure.data_weights(without, weights)
        pinned = pin if pin is not None else torch.zeros(0, dtype=torch.long)
        if self.sample_space is not None:
            return self.sample_space.operator(w, pinned, pin_value)
        if self.structured:
            system = self.structure.block_system(weights=w)
            system.add_diagonal(pinned, pin_value)
            return system
        theta = self.fns.theta

        def objective(th: Tensor) -> Tensor:
            extra = 0.5 * pin_value * (th[pinned] - theta[pinned]).pow(2).sum()
            return self.fns.objective(th, w) + extra

        return HessianOperator(objective, theta)

    @cached_property
    def _penalty_free(self) -> Tensor:
        """``(p,)`` bool: coordinates the penalty does not touch (zero Hessian row; tested
        on a random vector, exact zeros from autograd)."""
        gen = torch.Generator().manual_seed(0)
        v = torch.randn(self.fns.space.numel, 1, generator=gen, dtype=self.fns.theta.dtype)
        return hvp(self.fns.penalty, self.fns.theta, v)[:, 0] == 0

    def orphaned(self, task: int) -> Tensor:
        """Flat positions ``(k,)`` of task ``task``'s own parameters that nothing else
        curves: no other task's loss and no penalty touches them (e.g. its head's bias, or
        its whole head with ``l2_task=0``). Without the task they have zero curvature and
        zero gradient, so the task-removed Newton step leaves them where they are."""
        others = [self.structure.local_coords(t) for t in range(self.n_tasks) if t != task]
        own = self.structure.local_coords(task)
        if others:
            own = own[~torch.isin(own, torch.cat(others))]
        return own[self._penalty_free[own]]

    @cached_property
    def objective_gradient(self) -> Tensor:
        """``(p,)``: ``grad J(theta_hat)`` (zero at an exact optimum)."""
        return grad(self.fns.objective)(self.fns.theta)

    @cached_property
    def stationarity(self) -> dict[str, Any]:
        """How close theta_hat is to a stationary point of ``J``: ``grad_norm`` =
        ``||grad J||``; ``task_grad_scale`` = the largest per-task root-mean-square
        per-example gradient norm, ``max_t (mean_{i in t} ||grad l_i||^2)^(1/2)`` (not
        ``||grad G_t||``, which vanishes when every task fits its own data exactly, e.g.
        unpenalised heads); ``relative`` their ratio; ``stationary`` = ``relative <=
        STATIONARY_RTOL``. A notice is given when it is not stationary (influence
        functions assume an optimum)."""
        norm = float(self.objective_gradient.norm())
        fns = self.fns
        scale = 0.0
        space = self.sample_space
        for t in range(self.n_tasks):
            coords = self.structure.local_coords(t)
            x, y = fns.train[t]
            if space is not None and space.linear_layers:  # from the layer factors
                sq = float(space.example_gradient_sq_norms(t).sum())
            else:
                loss = fns.example_loss(t, coords)
                sq = sum(
                    float(g.pow(2).sum())
                    for g in per_example_grads(loss, fns.theta[coords], x, y, self.chunk_size)
                )
            scale = max(scale, (sq / max(len(x), 1)) ** 0.5)
        relative = norm / max(scale, 1e-300)
        stationary = relative <= STATIONARY_RTOL
        if not stationary:
            notices.notice(
                f"MTIF: the model is not at an optimum of its training objective "
                f"(||grad J|| = {norm:.3g}, {relative:.3g} of the per-example gradient scale, "
                f"tolerance {STATIONARY_RTOL:g}); scores assume a converged model: train "
                "longer or with an exact optimizer"
            )
        return {
            "grad_norm": norm,
            "task_grad_scale": scale,
            "relative": relative,
            "stationary": stationary,
        }

    def _factor(self, op: SymmetricOperator, damping: float) -> Callable[[Tensor], Tensor]:
        """Repeated solves with ``op + damping``: one factorisation for the direct solvers,
        else the (iterative) solver per call."""
        if isinstance(self.solver, ExplicitSolver):
            return op.factorize(damping).solve
        solver = self.solver.with_damping(damping)
        return lambda rhs: solver.solve(op, rhs, diagnose=False)[0]

    def _task_gradients(self, split: SplitName) -> Tensor:
        """``(p, T)``: column t is the gradient of task t's mean ``split`` loss."""
        if self.small is not None:
            return self.small.gradients(split)
        fns = self.fns
        out = torch.zeros(fns.space.numel, self.n_tasks, dtype=fns.theta.dtype)
        for t in range(self.n_tasks):
            coords = self.structure.local_coords(t)
            fn = fns.restrict(partial(fns.mean_loss, task=t, split=split), coords)
            out[coords, t] = grad(fn)(fns.theta[coords])
        return out

    @cached_property
    def train_gradients(self) -> Tensor:
        """``(p, T)``: ``grad G_j`` (mean training loss of each task) at theta_hat."""
        return self._task_gradients("train")

    @cached_property
    def test_gradients(self) -> Tensor:
        """``(p, T)``: ``grad L_i`` (mean test loss of each task) at theta_hat."""
        return self._task_gradients("test")

    def _hessian(self) -> SymmetricOperator:
        """``H`` at theta_hat as the solver sees it: the small-model path's one-call dense
        matrix where it applies, else :meth:`operator`."""
        return self.small.operator() if self.small is not None else self.operator()

    @cached_property
    def _solved(self) -> tuple[Tensor, SolveReport]:
        start = time.perf_counter()
        op = self._hessian()
        self.timings["hessian_s"] = time.perf_counter() - start
        start = time.perf_counter()
        with notices.collect() as given:
            u, report = self.solver.solve(op, self.test_gradients)
        self.caveats.extend(given)
        self.timings["solve_s"] = time.perf_counter() - start
        return u, report

    @property
    def inverse_test_gradients(self) -> Tensor:
        """``(p, T)``: ``(H + damping)^-1 grad L_i`` for every target task i."""
        return self._solved[0]

    @property
    def report(self) -> SolveReport:
        """The solve's report: that of the solve over all parameters once it has run, else
        that of the sample-space task matrix where it applies (:attr:`_sample_solve`)."""
        if "_solved" not in self.__dict__ and self._sample_solve is not None:
            return self._sample_solve[1]
        return self._solved[1]

    @cached_property
    def _sample_solve(self) -> tuple[np.ndarray, SolveReport] | None:
        """The first-order task matrix and its solve report without any vector over the
        ``p`` parameters: for ``woodbury-gn`` with the factor held per ``nn.Linear`` layer,
        every task gradient is a sum of per-example rows ``J_n^T dl_n/df_n / n`` in the same
        layer form as ``G`` (:meth:`woodbury.SampleSpace.gradient_factor`), and
        ``grad L_i^T (H + damping)^-1 grad G_j`` comes from Gram blocks between test rows,
        training rows and ``G``'s rows (:meth:`woodbury.LinearKernelOperator.grouped_inverse`).
        Eigenvalue estimates, damping and report are those of the solver's own solve
        (positive definite by the kernel's Cholesky factorisation; the residual measured in
        the sample space). None (the solve over all parameters runs instead, with its
        notices) for other solvers or models, a task without training or test rows, a
        smallest eigenvalue estimate <= 0, or coordinates without curvature."""
        space, fns = self.sample_space, self.fns
        if (
            space is None
            or not space.linear_layers
            or not isinstance(self.solver, woodbury.WoodburyGNSolver)
            or any(not len(fns.train[t][0]) or not len(fns.test[t][0]) for t in range(self.n_tasks))
        ):
            return None
        start = time.perf_counter()
        op = self.operator()
        assert isinstance(op, woodbury.LinearKernelOperator)
        hessian_s = time.perf_counter() - start
        start = time.perf_counter()
        lo, hi = op.extreme_eigenvalues()
        damping = resolve_damping(self.solver.damping, lo, hi)
        if not lo > 0:
            return None
        n = [(len(fns.test[t][0]), len(fns.train[t][0])) for t in range(self.n_tasks)]
        test = [space.gradient_factor(t, "test", 1.0 / n[t][0]) for t in range(self.n_tasks)]
        train = [space.gradient_factor(t, "train", 1.0 / n[t][1]) for t in range(self.n_tasks)]
        solved = op.grouped_inverse(test, train, damping)
        if solved is None:
            return None
        matrix, residual = solved
        report = SolveReport(self.solver.name, damping, lo, hi, True, rel_residual=residual)
        self.timings.update(hessian_s=hessian_s, solve_s=time.perf_counter() - start)
        return matrix.numpy(), report

    def task_matrix(self) -> np.ndarray:
        """First-order LOTO effects ``R[i, j] = grad L_i^T H^-1 grad G_j``, ``(T, T)``: from
        the sample space alone where it applies and the solve over all parameters has not
        run (:attr:`_sample_solve`), else from that solve; :attr:`task_matrix_path` says
        which (``meta['task_matrix_path']``)."""
        if "_solved" not in self.__dict__ and self._sample_solve is not None:
            self.task_matrix_path = "sample-space"
            return self._sample_solve[0].copy()
        self.task_matrix_path = "parameter-space"
        return (self.inverse_test_gradients.T @ self.train_gradients).numpy()

    def _newton_solve(
        self, op: SymmetricOperator, rhs: Tensor, damping: float
    ) -> tuple[Tensor, SolveReport, float, float]:
        """Solve one task-removed system with ``damping``, raised to ``-lambda_min +
        1e-3 lambda_max`` when ``op + damping`` is not positive definite. Returns the
        solution, its report and the eigenvalue estimates ``(lo, hi)`` of ``op``: from
        CG's own coefficients when CG meets no negative curvature (no extra products),
        else exact (small) or Lanczos estimates."""
        lo = hi = math.nan
        if isinstance(self.solver, CGSolver) and self.solver.spectrum == "cg":
            step, solved = self.solver._solve(op, rhs, damping, math.nan, math.nan)
            lo, hi = solved.min_eig, solved.max_eig
            if solved.positive_definite and lo + damping > PD_RTOL * max(abs(hi), 1e-300):
                return step, solved, lo, hi
        full_lo, full_hi = op.extreme_eigenvalues()
        lo = full_lo if math.isnan(lo) else min(lo, full_lo)
        hi = full_hi if math.isnan(hi) else max(hi, full_hi)
        if lo + damping <= PD_RTOL * max(abs(hi), 1e-300):
            damping = -min(lo, 0.0) + AUTO_DAMPING_FLOOR * max(abs(hi), 1e-12)
        step, solved = self.solver.with_damping(damping).solve(op, rhs, diagnose=False)
        return step, solved, lo, hi

    def _test_losses(self, theta: Tensor) -> Tensor:
        """``(T,)`` mean test loss of every task at ``theta``."""
        return torch.stack([self.fns.mean_loss(theta, i, "test") for i in range(self.n_tasks)])

    def newton_task_matrix(self) -> np.ndarray:
        """LOTO effects from the task-removed Newton step, ``(T, T)``:
        ``R[i, j] = L_i(theta_hat + d_j) - L_i(theta_hat)`` with
        ``d_j = (H - H_j + damping)^-1 (grad G_j - grad J)`` (the Newton step of
        ``J - G_j`` from theta_hat; ``grad J`` = 0 at an exact optimum).

        Task j's orphaned parameters (:meth:`orphaned`: e.g. its unpenalised head bias, or
        its whole head with ``l2_task=0``) have no curvature in ``H - H_j``; they are held
        at their trained values (exact: they are decoupled and their right-hand side is 0),
        by a stand-in curvature ``lambda_max(H)`` on their diagonal. The damping is that of
        ``H``, raised for a task whose remaining ``H - H_j`` is still not positive definite
        (to ``-lambda_min + 1e-3 lambda_max``, as ``damping="auto"``) with a notice. Per
        task eigenvalue estimates, positive definiteness, damping, iterations and the
        number of held parameters go to :attr:`newton_diagnostics`."""
        start = time.perf_counter()
        fns = self.fns
        base_damping = self.report.damping
        pin_value = max(abs(self.report.max_eig), 1e-12)
        rhs = self.train_gradients - self.objective_gradient[:, None]
        base = self._test_losses(fns.theta)
        out = np.zeros((self.n_tasks, self.n_tasks))
        keys = ("min_eig", "max_eig", "positive_definite", "damping", "iterations", "held")
        diag: dict[str, list[Any]] = {k: [] for k in keys}
        with progress("MTIF: task-removed solves", "tasks", self.n_tasks) as report:
            for j in range(self.n_tasks):
                held = self.orphaned(j)
                rhs[held, j] = 0.0  # exactly 0 already: only G_j touches them
                op = self.operator(without=j, pin=held, pin_value=pin_value)
                step, solved, lo, hi = self._newton_solve(op, rhs[:, j : j + 1], base_damping)
                floor = PD_RTOL * max(abs(hi), 1e-300)
                damping = solved.damping
                moved = self._test_losses(fns.theta + step[:, 0])
                out[:, j] = (moved - base).detach().numpy()
                values = (lo, hi, lo > floor, damping, solved.iterations, held.numel())
                for key, value in zip(keys, values, strict=True):
                    diag[key].append(value)
                report(j + 1)
        self.newton_diagnostics = diag
        bad = [self.taskset.names[j] for j, pd in enumerate(diag["positive_definite"]) if not pd]
        if bad:
            notices.notice(
                f"MTIF Newton step: H - H_j is not positive definite when removing "
                f"{', '.join(bad)} (smallest eigenvalue {min(diag['min_eig']):.3g}); damped "
                f"up to {max(diag['damping']):.3g}; those columns of the Newton matrix are "
                "approximate"
            )
        self.timings["newton_s"] = time.perf_counter() - start
        return out

    def _train_scores(self, task: int, directions: Tensor) -> Tensor:
        """``(n_task, k)``: per-example training gradients of ``task`` times
        ``directions`` ``(p, k)``, divided by ``n_task`` (streamed in chunks)."""
        coords = self.structure.local_coords(task)
        x, y = self.fns.train[task]
        loss = self.fns.example_loss(task, coords)
        local = directions[coords]
        chunks = [
            g @ local
            for g in per_example_grads(loss, self.fns.theta[coords], x, y, self.chunk_size)
        ]
        return torch.cat(chunks) / len(x)

    def instance_scores(
        self, weighting: Weighting = "fixed", kind: InstanceKind = "first-order"
    ) -> tuple[np.ndarray, np.ndarray]:
        """Scores of every training example on every target task.

        ``kind="first-order"``: the influence function (see module docstring);
        ``"leverage"``: the per-example Newton step, :meth:`leverage_scores`.

        Returns:
            ``(scores (N, T), ids (N, 2))``: ``scores[n, i]`` predicted change of task i's
            mean test loss when example ``ids[n] = (task, row)`` is removed (positive: it
            helps task i); rows ordered as :meth:`TaskSet.train_ids`.
        """
        if weighting not in ("fixed", "renormalized"):
            raise ConfigError(f"weighting must be 'fixed' or 'renormalized', got {weighting!r}")
        if kind not in ("first-order", "leverage"):
            raise ConfigError(f"instance must be 'first-order' or 'leverage', got {kind!r}")
        if kind == "leverage":
            return self.leverage_scores(weighting)
        start = time.perf_counter()
        u = self.inverse_test_gradients
        parts = []
        with progress("MTIF: instance scores", "tasks", self.n_tasks) as report:
            for j in range(self.n_tasks):
                s = self._train_scores(j, u)
                if weighting == "renormalized":
                    n = s.shape[0]
                    r = u.T @ self.train_gradients[:, j]  # (T,) first-order LOTO of task j
                    s = (s - r / n) * (n / (n - 1)) if n > 1 else torch.zeros_like(s)
                parts.append(s)
                report(j + 1)
        self.timings["instance_s"] = time.perf_counter() - start
        return torch.cat(parts).numpy(), self.taskset.train_ids()

    def leverage_scores(self, weighting: Weighting = "fixed") -> tuple[np.ndarray, np.ndarray]:
        """Leverage-corrected instance scores: one Newton step per removed example.

        Removing example z of task j (``n = n_j`` examples) changes the objective to
        ``J - c l_z + beta c G_j`` with ``c = 1/n, beta = 0`` (``weighting="fixed"``) or
        ``c = 1/(n-1), beta = 1`` (``"renormalized"``, retraining on the mean of the
        ``n - 1`` others). Its Newton step from theta_hat is
        ``d_z = (A_j - c H_z)^-1 (c (grad l_z - beta grad G_j) - grad J)`` with
        ``A_j = H + beta c H_j`` (plus the damping of ``H``) and ``H_z = F_z^T F_z`` the
        example's curvature (``F_z = S_z J_z``, ``C`` rows; exact for a model linear in
        its parameters, the Gauss-Newton part otherwise). ``A_j - c H_z`` is a rank-``C``
        update of ``A_j``, inverted by Woodbury's identity with the leverage matrix
        ``I - c F_z A_j^-1 F_z^T`` (for squared loss ``1 - h_z``, ``h_z`` the leverage).
        The score is the actual change ``L_i(theta_hat + d_z) - L_i(theta_hat)``.

        Exact leave-one-out for squared loss on a linear model; one Newton step for
        logistic/softmax. Cost: per task one factorisation of ``A_j`` (or the iterative
        solver) applied to ``n_j (1 + C)`` right-hand sides, plus one test evaluation per
        example.

        Returns:
            ``(scores (N, T), ids (N, 2))`` as :meth:`instance_scores`.
        """
        start = time.perf_counter()
        fns = self.fns
        damping = self.report.damping
        beta = 1.0 if weighting == "renormalized" else 0.0
        base = self._test_losses(fns.theta)
        losses = torch.vmap(self._test_losses)
        grad_j = self.objective_gradient
        parts = []
        full_solve = None
        with progress("MTIF: leverage-corrected scores", "tasks", self.n_tasks) as report:
            for j in range(self.n_tasks):
                x, y = fns.train[j]
                n = len(x)
                if n < 2 and beta:
                    parts.append(torch.zeros(n, self.n_tasks, dtype=fns.theta.dtype))
                    continue
                c = 1.0 / (n - beta)
                if beta:
                    weights = [1.0 + c if t == j else 1.0 for t in range(self.n_tasks)]
                    solve = self._factor(self.operator(weights=weights), damping)
                else:
                    full_solve = full_solve or self._factor(self._hessian(), damping)
                    solve = full_solve
                coords = self.structure.local_coords(j)
                width = woodbury.output_width(fns, j)
                chunk = max(1, self.chunk_size // (1 + width))
                loss = fns.example_loss(j, coords)
                grads = per_example_grads(loss, fns.theta[coords], x, y, chunk)
                factors = woodbury.curvature_factors(fns, j, coords, x, y, chunk)
                shift = grad_j + beta * c * self.train_gradients[:, j]
                for g, f in zip(grads, factors, strict=True):
                    steps = self._leverage_steps(solve, coords, g, f, c, shift)
                    parts.append(losses(fns.theta + steps.T) - base)
                report(j + 1)
        self.timings["leverage_s"] = time.perf_counter() - start
        return torch.cat(parts).detach().numpy(), self.taskset.train_ids()

    def _leverage_steps(
        self,
        solve: Callable[[Tensor], Tensor],
        coords: Tensor,
        grads: Tensor,
        factors: Tensor,
        c: float,
        shift: Tensor,
    ) -> Tensor:
        """Newton steps ``(p, b)`` of :meth:`leverage_scores` for ``b`` examples of one
        task: local gradients ``grads`` ``(b, p_local)``, curvature factors ``factors``
        ``(b, C, p_local)``, right-hand sides ``c grad l_z - shift`` (``shift`` ``(p,)``);
        ``solve`` applies ``A_j^-1``."""
        b, width, local = factors.shape
        p = self.fns.space.numel
        f = factors * c**0.5
        rhs = torch.zeros(p, b * (1 + width), dtype=grads.dtype)
        rhs[:, :b] = -shift[:, None]
        rhs[coords, :b] += c * grads.T
        rhs[coords, b:] = f.reshape(b * width, local).T
        sol = solve(rhs)
        u = sol[:, :b]  # A^-1 a_z
        v = sol[:, b:].reshape(p, b, width)  # A^-1 F_z^T
        fu = torch.einsum("bcl,lb->bc", f, u[coords])
        leverage = torch.einsum("icl,lik->ick", f, v[coords])  # F_z A^-1 F_z^T, (b, C, C)
        eye = torch.eye(width, dtype=grads.dtype).expand(b, width, width)
        coef = torch.linalg.solve(eye - leverage, fu.unsqueeze(-1)).squeeze(-1)
        return u + torch.einsum("pik,ik->pi", v, coef)

    def test_example_scores(
        self,
        target: int | Sequence[int],
        rows: Sequence[int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Scores per (training example, test example of ``target``).

        Args:
            target: target task position, or several: their test examples side by side in
                the order given, from one solve and one pass over the training examples
                (memory: a ``(p, M)`` right-hand side).
            rows: positions within the target's test split (default: all; one target only).

        Returns:
            ``(scores (N, M), test_rows (M,))``: ``scores[n, m]`` is the predicted change of
            the loss of test example ``m`` when training example n is removed (fixed
            weighting); their mean over a target's m is ``instance_scores()[0][:, target]``.
        """
        fns = self.fns
        targets = [target] if isinstance(target, int) else list(target)
        if rows is not None and len(targets) != 1:
            raise ConfigError(f"rows selects test rows of one target, got targets {targets}")
        blocks, test_rows = [], []
        for i in targets:
            x, y = fns.test[i]
            pick = np.arange(len(x)) if rows is None else np.asarray(rows, dtype=np.int64)
            coords = self.structure.local_coords(i)
            loss = fns.example_loss(i, coords)
            rhs = torch.zeros(fns.space.numel, len(pick), dtype=fns.theta.dtype)
            sel = torch.as_tensor(pick)
            col = 0
            for g in per_example_grads(loss, fns.theta[coords], x[sel], y[sel], self.chunk_size):
                rhs[coords, col : col + len(g)] = g.T
                col += len(g)
            blocks.append(rhs)
            test_rows.append(self.taskset.tasks[i].test_idx[pick])
        solver = self.solver.with_damping(self.report.damping)
        v, _ = solver.solve(self._hessian(), torch.cat(blocks, dim=1), diagnose=False)
        scores = torch.cat([self._train_scores(j, v) for j in range(self.n_tasks)])
        return scores.numpy(), np.concatenate(test_rows)

    def diagnostics(self) -> dict[str, Any]:
        """Diagnostics of the computation so far (``meta['diagnostics']``): stationarity of
        theta_hat (:attr:`stationarity`), the damping used, whether ``H + damping`` was
        positive definite, the solver's iterations and whether it stopped at ``max_iter``,
        and the per-task Newton-step diagnostics (None unless the Newton matrix was
        computed)."""
        report = self.report
        return {
            "stationarity": dict(self.stationarity),
            "damping": report.damping,
            "positive_definite": report.positive_definite,
            "min_eig": report.min_eig,
            "max_eig": report.max_eig,
            "iterations": report.iterations,
            "max_iter_hit": report.max_iter_hit,
            "newton": self.newton_diagnostics,
        }

    def relatedness(
        self,
        task_level: TaskLevel = "first-order",
        instance: bool | InstanceKind = True,
        weighting: Weighting = "fixed",
        newton: bool | None = None,
    ) -> Relatedness:
        """The :class:`Relatedness` result: ``matrix`` from ``task_level``; the other
        task-level estimate (when computed), the solver plan and
        :meth:`diagnostics` in ``meta``; every notice given in ``meta['caveats']``.

        ``instance``: False, True (= ``"first-order"``) or ``"leverage"``
        (:meth:`leverage_scores`). ``newton`` computes the Newton matrix too (default: only
        if ``task_level`` asks)."""
        if task_level not in ("first-order", "newton"):
            raise ConfigError(f"task_level must be 'first-order' or 'newton', got {task_level!r}")
        kind = check_instance(instance)
        with notices.collect() as given:
            if kind is not None:  # the instance scores need the solve over all parameters:
                _ = self._solved  # the task matrix then comes from it too (and sums them)
            first = self.task_matrix()
            _ = self.stationarity
            want_newton = task_level == "newton" or bool(newton)
            newton_m = self.newton_task_matrix() if want_newton else None
            scores = ids = None
            if kind is not None:
                scores, ids = self.instance_scores(weighting, kind)
        matrix = newton_m if task_level == "newton" else first
        meta = {
            "units": UNITS,
            "task_level": task_level,
            "instance": kind,
            "weighting": weighting,
            "first_order_matrix": first,
            "newton_matrix": newton_m,
            "structure": self.structure.name,
            "structured_solve": self.structured,
            "n_params": self.fns.space.numel,
            "solver": self.report.to_meta(),
            "solver_plan": self.plan.to_meta(),
            "task_matrix_path": self.task_matrix_path,
            "diagnostics": self.diagnostics(),
            "caveats": list(dict.fromkeys([*self.caveats, *given])),
            "timings_s": dict(self.timings),
        }
        assert matrix is not None
        return Relatedness(matrix, self.taskset.names, "mtif", scores, ids, meta)


def check_instance(instance: bool | str) -> InstanceKind | None:
    """The instance-score kind of an ``instance`` option (None: no instance scores).

    Raises:
        ConfigError: not a bool, ``"first-order"`` or ``"leverage"``."""
    if instance is True or instance == "first-order":
        return "first-order"
    if instance == "leverage":
        return "leverage"
    if instance is False:
        return None
    raise ConfigError(
        f"instance must be true, false, 'first-order' or 'leverage', got {instance!r}"
    )


def mtif_relatedness(
    taskset: TaskSet,
    ctx: Any,
    model: MTLModel | None = None,
    solver: str | Solver = "auto",
    damping: Damping = "auto",
    task_level: TaskLevel = "first-order",
    newton: bool | None = None,
    instance: bool | InstanceKind = True,
    weighting: Weighting = "fixed",
    structured: bool | None = None,
    chunk_size: int = 256,
    solver_options: dict[str, Any] | None = None,
    memory_budget_gb: float | None = None,
) -> Relatedness:
    """MTIF relatedness (registry entry ``mtif``).

    Trains ``ctx.model`` with ``ctx.model_config`` and ``ctx.train_config`` on ``taskset``
    unless a trained ``model`` is given, then computes task-level
    scores (``task_level``: ``first-order`` or ``newton``) and, with ``instance`` (true or
    ``"first-order"``: influence functions; ``"leverage"``: per-example Newton steps), one
    score per (training example, target task). Other options: see :class:`MTIF`; every
    option (and the solver's memory need) is checked before training.
    ``meta['timings_s']`` splits the wall time into training and influence parts;
    ``meta['caveats']`` lists the notices given (e.g. a Hessian that is not positive
    definite)."""
    from taskrel.relatedness.ground_truth import train_model

    options: dict[str, Any] = {
        "solver": solver,
        "damping": damping,
        "structured": structured,
        "chunk_size": chunk_size,
        "solver_options": solver_options,
        "memory_budget_gb": memory_budget_gb,
    }
    check_mtif(taskset, ctx, model, task_level, weighting, instance=instance, **options)
    timings = {}
    with notices.collect() as caveats:
        if model is None:
            start = time.perf_counter()
            model = train_model(taskset, ctx.model, ctx.model_config, ctx.train_config)
            timings["train_s"] = time.perf_counter() - start
        start = time.perf_counter()
        engine = MTIF(model, taskset, **options)
        result = engine.relatedness(task_level, instance, weighting, newton)
    result.meta["timings_s"].update(timings, influence_s=time.perf_counter() - start)
    result.meta["caveats"] = list(caveats)
    return result


def check_mtif(
    taskset: TaskSet,
    ctx: Any,
    model: MTLModel | None = None,
    task_level: TaskLevel = "first-order",
    weighting: Weighting = "fixed",
    **options: Any,
) -> None:
    """The checks of :func:`mtif_relatedness` that need no training (``relate`` runs them
    first): option values, that MTIF applies to the model, and the solver's memory need
    (planned on an untrained model of ``ctx``'s architecture when no ``model`` is given).

    Raises:
        ConfigError: a bad option or an explicit solve over the memory budget.
        NotApplicableError: the model is not a hard, soft or single-task model."""
    if task_level not in ("first-order", "newton"):
        raise ConfigError(f"task_level must be 'first-order' or 'newton', got {task_level!r}")
    if weighting not in ("fixed", "renormalized"):
        raise ConfigError(f"weighting must be 'fixed' or 'renormalized', got {weighting!r}")
    check_instance(options.get("instance", True))
    engine = {k: v for k, v in options.items() if k in ENGINE_OPTIONS}
    subject = model if model is not None else _untrained(ctx.model, taskset, ctx.model_config)
    MTIF(subject, taskset, **engine)


ENGINE_OPTIONS = (
    "solver",
    "damping",
    "structured",
    "chunk_size",
    "solver_options",
    "memory_budget_gb",
)
mtif_relatedness.check = check_mtif  # type: ignore[attr-defined]


def _untrained(name: str, taskset: TaskSet, config: Any) -> MTLModel:
    """An untrained model with the architecture ``name``/``config`` will have after
    training, for checks before training: config fields still ``"auto"`` (regularisation
    chosen during training) are pinned to a number, which does not change any shape."""
    from pydantic import BaseModel

    from taskrel.models import build_model, model_class

    cls = model_class(name)
    given = config.model_dump() if isinstance(config, BaseModel) else dict(config or {})
    fields = cls.Config.model_fields
    pinned = {
        f: 1e-3
        for f in cls.auto_fields
        if given.get(f, fields[f].default if f in fields else None) == "auto"
    }
    return build_model(name, taskset, {**given, **pinned})
