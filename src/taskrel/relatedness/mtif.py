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
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from functools import cached_property, partial
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad

from taskrel.data.taskset import SplitName, TaskSet
from taskrel.errors import ConfigError
from taskrel.models.base import MTLModel
from taskrel.models.sharing import HardSharing, SoftSharing
from taskrel.relatedness.influence import (
    Damping,
    ExampleLoss,
    Factor,
    HessianOperator,
    ParamSpace,
    Solver,
    SolveReport,
    SymmetricOperator,
    lanczos_extremes,
    make_solver,
    per_example_grads,
)
from taskrel.relatedness.result import Relatedness

Weighting = Literal["fixed", "renormalized"]
TaskLevel = Literal["first-order", "newton"]
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
        model.eval()
        self.model = model
        self.n_tasks = len(taskset)
        params = {n: p.detach().to(dtype) for n, p in model.named_parameters()}
        self.space = ParamSpace.from_params(params)
        self.theta = self.space.flatten(params)
        self._loss = _Method(model, "loss")
        self._penalty = _Method(model, "penalty")
        self.train = [self._tensors(task.arrays("train"), dtype) for task in taskset.tasks]
        self.test = [self._tensors(task.arrays("test"), dtype) for task in taskset.tasks]

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

    @abstractmethod
    def local_names(self, task: int) -> list[str]:
        """Parameter names task ``task``'s loss depends on."""

    def local_coords(self, task: int) -> Tensor:
        return self.fns.space.indices(self.local_names(task))

    @cached_property
    def local_hessians(self) -> list[tuple[Tensor, Tensor]]:
        """Per task ``(D_t, P_t)``: Hessians of ``G_t`` and of the penalty over the task's
        local coordinates, each ``(p_local, p_local)``. One batched Hessian-vector product
        per task (all local directions at once), one for the penalty."""
        fns = self.fns
        penalty = HessianOperator(fns.penalty, fns.theta, chunk_size=512).dense()
        out = []
        for t in range(self.n_tasks):
            coords = self.local_coords(t)
            fn = fns.restrict(partial(fns.mean_loss, task=t), coords)
            data = HessianOperator(fn, fns.theta[coords], chunk_size=512).dense()
            out.append((data, penalty[coords][:, coords]))
        return out

    @abstractmethod
    def block_system(self, without: int | None = None) -> BlockArrow:
        """``H`` (or ``H - H_j`` with ``without=j``: task j's data term removed)."""


class HardStructure(Structure):
    """Hard sharing: task t's loss touches the shared parameters and its own head."""

    name = "hard"

    @cached_property
    def shared_names(self) -> list[str]:
        return list(self.fns.model.shared_parameters())

    def local_names(self, task: int) -> list[str]:
        return self.shared_names + self.fns.model.task_parameter_names(task)

    def block_system(self, without: int | None = None) -> BlockArrow:
        q = self.fns.space.indices(self.shared_names).numel()
        shared = self.local_hessians[0][1][:q, :q].clone()  # penalty on the shared block
        cross, blocks, coords = [], [], []
        for t, (data, pen) in enumerate(self.local_hessians):
            local = pen if t == without else data + pen
            if t != without:
                shared = shared + data[:q, :q]
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

    def block_system(self, without: int | None = None) -> BlockArrow:
        lam = self.coupling
        q = self.coupled_positions[0].numel()
        dtype = self.fns.theta.dtype
        shared = torch.eye(q, dtype=dtype) / lam if q else torch.zeros(0, 0, dtype=dtype)
        cross, blocks, coords = [], [], []
        for t, (data, pen) in enumerate(self.local_hessians):
            block = pen if t == without else data + pen
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
    if isinstance(fns.model, HardSharing):
        return HardStructure(fns)
    if isinstance(fns.model, SoftSharing):
        return SoftStructure(fns)
    raise ConfigError(
        f"mtif supports the hard, soft and stl models, not {type(fns.model).__name__!r}"
    )


# -- the estimator ---------------------------------------------------------------------------
class MTIF:
    """Influence-function relatedness of a trained multi-task model.

    Args:
        model: a trained :class:`HardSharing`, :class:`SoftSharing` or single-task model.
        taskset: the data it was trained on (train split) and is evaluated on (test).
        solver: ``explicit``, ``cg``, ``lissa`` or a :class:`Solver` instance.
        damping: added to the Hessian's diagonal; ``"auto"``: 0 if positive definite,
            else enough to make it so (see :func:`influence.resolve_damping`).
        structured: solve with the block-arrow system (blocks formed explicitly) rather
            than Hessian-vector products of the flat objective. Default: True for the
            explicit solver, False for the iterative ones.
        chunk_size: examples per chunk of per-example gradients (memory bound).
        dtype: precision of every influence computation.
        solver_options: extra arguments of the solver (``tol``, ``max_iter``, ``scale``).
    """

    def __init__(
        self,
        model: MTLModel,
        taskset: TaskSet,
        solver: str | Solver = "explicit",
        damping: Damping = "auto",
        structured: bool | None = None,
        chunk_size: int = 256,
        dtype: torch.dtype = torch.float64,
        solver_options: dict[str, Any] | None = None,
    ) -> None:
        self.taskset = taskset
        self.fns = MTLFunctions(model, taskset, dtype)
        self.structure = structure_for(self.fns)
        self.solver = make_solver(solver, damping, **(solver_options or {}))
        self.structured = (self.solver.name == "explicit") if structured is None else structured
        self.chunk_size = chunk_size
        self.timings: dict[str, float] = {}

    @property
    def n_tasks(self) -> int:
        return self.fns.n_tasks

    def operator(self, without: int | None = None) -> SymmetricOperator:
        """``H`` (or ``H - H_j`` for ``without=j``) as the solver will see it."""
        if self.structured:
            return self.structure.block_system(without)
        weights = [0.0 if t == without else 1.0 for t in range(self.n_tasks)]
        return HessianOperator(lambda th: self.fns.objective(th, weights), self.fns.theta)

    def _task_gradients(self, split: SplitName) -> Tensor:
        """``(p, T)``: column t is the gradient of task t's mean ``split`` loss."""
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

    @cached_property
    def _solved(self) -> tuple[Tensor, SolveReport]:
        start = time.perf_counter()
        op = self.operator()
        self.timings["hessian_s"] = time.perf_counter() - start
        start = time.perf_counter()
        u, report = self.solver.solve(op, self.test_gradients)
        self.timings["solve_s"] = time.perf_counter() - start
        return u, report

    @property
    def inverse_test_gradients(self) -> Tensor:
        """``(p, T)``: ``(H + damping)^-1 grad L_i`` for every target task i."""
        return self._solved[0]

    @property
    def report(self) -> SolveReport:
        return self._solved[1]

    def task_matrix(self) -> np.ndarray:
        """First-order LOTO effects ``R[i, j] = grad L_i^T H^-1 grad G_j``, ``(T, T)``."""
        return (self.inverse_test_gradients.T @ self.train_gradients).numpy()

    def newton_task_matrix(self) -> np.ndarray:
        """LOTO effects from the task-removed Newton step, ``(T, T)``:
        ``R[i, j] = L_i(theta_hat + (H - H_j)^-1 grad G_j) - L_i(theta_hat)`` (same damping
        as for ``H``)."""
        start = time.perf_counter()
        solver = self.solver.with_damping(self.report.damping)
        fns = self.fns
        base = torch.stack([fns.mean_loss(fns.theta, i, "test") for i in range(self.n_tasks)])
        out = np.zeros((self.n_tasks, self.n_tasks))
        for j in range(self.n_tasks):
            step, _ = solver.solve(
                self.operator(without=j), self.train_gradients[:, j : j + 1], diagnose=False
            )
            theta = fns.theta + step[:, 0]
            moved = torch.stack([fns.mean_loss(theta, i, "test") for i in range(self.n_tasks)])
            out[:, j] = (moved - base).detach().numpy()
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

    def instance_scores(self, weighting: Weighting = "fixed") -> tuple[np.ndarray, np.ndarray]:
        """Scores of every training example on every target task.

        Returns:
            ``(scores (N, T), ids (N, 2))``: ``scores[n, i]`` predicted change of task i's
            mean test loss when example ``ids[n] = (task, row)`` is removed (positive: it
            helps task i); rows ordered as :meth:`TaskSet.train_ids`.
        """
        if weighting not in ("fixed", "renormalized"):
            raise ConfigError(f"weighting must be 'fixed' or 'renormalized', got {weighting!r}")
        start = time.perf_counter()
        u = self.inverse_test_gradients
        parts = []
        for j in range(self.n_tasks):
            s = self._train_scores(j, u)
            if weighting == "renormalized":
                n = s.shape[0]
                r = u.T @ self.train_gradients[:, j]  # (T,) first-order LOTO of task j
                s = (s - r / n) * (n / (n - 1)) if n > 1 else torch.zeros_like(s)
            parts.append(s)
        self.timings["instance_s"] = time.perf_counter() - start
        return torch.cat(parts).numpy(), self.taskset.train_ids()

    def test_example_scores(
        self,
        target: int,
        rows: Sequence[int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Scores per (training example, test example of ``target``).

        Args:
            target: target task position.
            rows: positions within the target's test split (default: all).

        Returns:
            ``(scores (N, M), test_rows (M,))``: ``scores[n, m]`` is the predicted change of
            the loss of test example ``m`` when training example n is removed (fixed
            weighting); their mean over m is ``instance_scores()[0][:, target]``.
        """
        fns = self.fns
        x, y = fns.test[target]
        pick = np.arange(len(x)) if rows is None else np.asarray(rows, dtype=np.int64)
        coords = self.structure.local_coords(target)
        loss = fns.example_loss(target, coords)
        rhs = torch.zeros(fns.space.numel, len(pick), dtype=fns.theta.dtype)
        sel = torch.as_tensor(pick)
        col = 0
        for g in per_example_grads(loss, fns.theta[coords], x[sel], y[sel], self.chunk_size):
            rhs[coords, col : col + len(g)] = g.T
            col += len(g)
        solver = self.solver.with_damping(self.report.damping)
        v, _ = solver.solve(self.operator(), rhs, diagnose=False)
        scores = torch.cat([self._train_scores(j, v) for j in range(self.n_tasks)])
        test_rows = self.taskset.tasks[target].test_idx[pick]
        return scores.numpy(), test_rows

    def relatedness(
        self,
        task_level: TaskLevel = "first-order",
        instance: bool = True,
        weighting: Weighting = "fixed",
        newton: bool | None = None,
    ) -> Relatedness:
        """The :class:`Relatedness` result: ``matrix`` from ``task_level``; the other
        task-level estimate (when computed) and the solver diagnostics in ``meta``.

        ``newton`` computes the Newton matrix too (default: only if ``task_level`` asks)."""
        if task_level not in ("first-order", "newton"):
            raise ConfigError(f"task_level must be 'first-order' or 'newton', got {task_level!r}")
        first = self.task_matrix()
        want_newton = task_level == "newton" or bool(newton)
        newton_m = self.newton_task_matrix() if want_newton else None
        scores = ids = None
        if instance:
            scores, ids = self.instance_scores(weighting)
        matrix = newton_m if task_level == "newton" else first
        meta = {
            "units": UNITS,
            "task_level": task_level,
            "weighting": weighting,
            "first_order_matrix": first,
            "newton_matrix": newton_m,
            "structure": self.structure.name,
            "structured_solve": self.structured,
            "n_params": self.fns.space.numel,
            "solver": self.report.to_meta(),
            "timings_s": dict(self.timings),
        }
        assert matrix is not None
        return Relatedness(matrix, self.taskset.names, "mtif", scores, ids, meta)


def mtif_relatedness(
    taskset: TaskSet,
    ctx: Any,
    model: MTLModel | None = None,
    solver: str = "explicit",
    damping: Damping = "auto",
    task_level: TaskLevel = "first-order",
    newton: bool | None = None,
    instance: bool = True,
    weighting: Weighting = "fixed",
    structured: bool | None = None,
    chunk_size: int = 256,
    solver_options: dict[str, Any] | None = None,
) -> Relatedness:
    """MTIF relatedness (registry entry ``mtif``).

    Trains ``ctx.model`` with ``ctx.model_config`` and ``ctx.train_config`` on ``taskset``
    unless a trained ``model`` is given, then computes task-level
    scores (``task_level``: ``first-order`` or ``newton``) and, with ``instance``, one
    score per (training example, target task). Other options: see :class:`MTIF`.
    ``meta['timings_s']`` splits the wall time into training and influence parts."""
    from taskrel.relatedness.ground_truth import train_model

    timings = {}
    if model is None:
        start = time.perf_counter()
        model = train_model(taskset, ctx.model, ctx.model_config, ctx.train_config)
        timings["train_s"] = time.perf_counter() - start
    start = time.perf_counter()
    engine = MTIF(
        model,
        taskset,
        solver=solver,
        damping=damping,
        structured=structured,
        chunk_size=chunk_size,
        solver_options=solver_options,
    )
    result = engine.relatedness(task_level, instance, weighting, newton)
    result.meta["timings_s"].update(timings, influence_s=time.perf_counter() - start)
    return result
