"""Generic influence-function machinery: flat parameter vectors, per-example gradients,
Hessian-vector products, and solvers of ``(H + damping * I) x = b``.

Nothing here knows about tasks: :mod:`taskrel.relatedness.mtif` builds the multi-task
objective and its block structure on top of it.

Notation: ``p`` is the number of (flattened) parameters, ``k`` the number of right-hand
sides solved at once, ``n`` a number of examples. Every function works on flat ``(p,)``
parameter vectors so that Hessians are plain ``(p, p)`` matrices and right-hand sides
``(p, k)`` matrices. Use float64: influence scores are small differences of large
numbers.

Solvers (one interface, :class:`Solver`):

- :class:`ExplicitSolver` factorises the operator (a dense eigendecomposition, or a
  structured factorisation the operator provides, e.g. the block-arrow Schur complement
  of hard sharing);
- :class:`CGSolver`: conjugate gradients, all ``k`` columns at once, only Hessian-vector
  products;
- :class:`LissaSolver`: the LiSSA/Neumann-series recursion
  ``x <- b + (I - (H + damping) / scale) x`` (full-batch products, so deterministic).

Each solve returns a :class:`SolveReport` (damping used, extreme-eigenvalue estimates,
whether the Hessian looked positive definite, iterations, relative residual) and warns with
:class:`NotPositiveDefiniteWarning` when the Hessian is not positive definite.
"""

from __future__ import annotations

import copy
import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor
from torch.func import grad, jvp, vmap

Damping = float | Literal["auto"]
AUTO_DAMPING_FLOOR = 1e-3  # "auto" lifts the smallest eigenvalue to this fraction of the largest


class NotPositiveDefiniteWarning(UserWarning):
    """The Hessian (plus damping) is not positive definite: influence scores are unreliable."""


# -- flat parameter vectors ------------------------------------------------------------------
@dataclass(frozen=True)
class ParamSpace:
    """The layout of a flat parameter vector: names and shapes in order.

    ``flatten`` concatenates the tensors of a name -> tensor mapping into a ``(p,)`` vector;
    ``unflatten`` is its inverse (views into the vector, so gradients flow)."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @classmethod
    def from_params(cls, params: Mapping[str, Tensor]) -> ParamSpace:
        return cls(tuple(params), tuple(p.shape for p in params.values()))

    @property
    def sizes(self) -> list[int]:
        return [math.prod(s) for s in self.shapes]

    @property
    def numel(self) -> int:
        return sum(self.sizes)

    def flatten(self, params: Mapping[str, Tensor]) -> Tensor:
        """``(p,)`` vector of the parameters, in :attr:`names` order."""
        return torch.cat([params[n].reshape(-1) for n in self.names])

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """name -> tensor (views into ``flat``)."""
        parts = torch.split(flat, self.sizes)
        return {n: v.reshape(s) for n, v, s in zip(self.names, parts, self.shapes, strict=True)}

    def indices(self, names: Sequence[str]) -> Tensor:
        """Flat positions (int64) of the parameters ``names``, in the given order."""
        starts = dict(zip(self.names, _cumsum([0, *self.sizes]), strict=False))
        sizes = dict(zip(self.names, self.sizes, strict=True))
        if not names:
            return torch.zeros(0, dtype=torch.long)
        return torch.cat([torch.arange(starts[n], starts[n] + sizes[n]) for n in names])


def _cumsum(values: Sequence[int]) -> list[int]:
    out, total = [], 0
    for v in values:
        total += v
        out.append(total)
    return out


# -- gradients and Hessian-vector products ---------------------------------------------------
ExampleLoss = Callable[[Tensor, Tensor, Tensor], Tensor]  # (theta (p,), x_i, y_i) -> scalar


def per_example_grads(
    loss: ExampleLoss, theta: Tensor, x: Tensor, y: Tensor, chunk_size: int = 256
) -> Iterator[Tensor]:
    """Gradients of ``loss(theta, x_i, y_i)`` for every example, streamed in chunks.

    Batched with ``torch.func.vmap(grad(loss))`` (no Python loop per example); only one
    ``(chunk_size, p)`` block is alive at a time, so memory stays bounded for any ``n``.

    Args:
        loss: per-example loss of one example (``x_i``, ``y_i`` without batch dimension).
        theta: ``(p,)`` parameters.
        x, y: ``(n, ...)`` inputs and ``(n, ...)`` targets.
        chunk_size: examples per chunk.

    Yields:
        ``(c, p)`` gradients of consecutive examples (``c <= chunk_size``).
    """
    batched = vmap(grad(loss), in_dims=(None, 0, 0))
    for start in range(0, len(x), chunk_size):
        yield batched(theta, x[start : start + chunk_size], y[start : start + chunk_size])


def hvp(
    fn: Callable[[Tensor], Tensor],
    theta: Tensor,
    v: Tensor,
    chunk_size: int = 64,
) -> Tensor:
    """Hessian of the scalar ``fn`` at ``theta`` times ``v`` ``(p, k)``, returns ``(p, k)``.

    Forward-over-reverse (``jvp`` of ``grad``), vectorised over up to ``chunk_size``
    columns at a time."""

    def one(col: Tensor) -> Tensor:
        return jvp(grad(fn), (theta,), (col,))[1]

    cols = [
        vmap(one, in_dims=1, out_dims=1)(v[:, s : s + chunk_size])
        for s in range(0, v.shape[1], chunk_size)
    ]
    return torch.cat(cols, dim=1) if cols else torch.zeros_like(v)


# -- operators -------------------------------------------------------------------------------
@dataclass
class Factor:
    """A factorisation of ``H + damping * I``: ``solve`` maps ``(p, k)`` right-hand sides
    to solutions; ``positive_definite`` is exact (from the factorisation itself)."""

    solve: Callable[[Tensor], Tensor]
    positive_definite: bool


class SymmetricOperator(ABC):
    """A symmetric ``(p, p)`` matrix known through products with ``(p, k)`` blocks."""

    dim: int
    dtype: torch.dtype

    @abstractmethod
    def matvec(self, v: Tensor) -> Tensor:
        """``H @ v`` for ``v`` of shape ``(p, k)``."""

    def dense(self, chunk_size: int = 256) -> Tensor:
        """The ``(p, p)`` matrix, built from products with identity columns."""
        eye = torch.eye(self.dim, dtype=self.dtype)
        cols = [self.matvec(eye[:, s : s + chunk_size]) for s in range(0, self.dim, chunk_size)]
        h = torch.cat(cols, dim=1)
        return 0.5 * (h + h.T)

    def extreme_eigenvalues(self, seed: int = 0) -> tuple[float, float]:
        """Estimates of the smallest and largest eigenvalue (Lanczos by default)."""
        return lanczos_extremes(self, seed=seed)

    def factorize(self, damping: float) -> Factor:
        """Factorise ``H + damping * I`` (dense eigendecomposition by default)."""
        return _dense_factor(self.dense(), damping)


class HessianOperator(SymmetricOperator):
    """Hessian of a scalar function ``fn(theta)`` at ``theta``, via Hessian-vector products.

    ``fn`` takes a ``(p,)`` vector; ``chunk_size`` bounds the number of columns pushed
    through autograd at once (memory)."""

    def __init__(
        self,
        fn: Callable[[Tensor], Tensor],
        theta: Tensor,
        chunk_size: int = 256,
    ) -> None:
        self.fn = fn
        self.theta = theta.detach()
        self.dim = theta.numel()
        self.dtype = theta.dtype
        self.chunk_size = chunk_size

    def matvec(self, v: Tensor) -> Tensor:
        return hvp(self.fn, self.theta, v, self.chunk_size)

    def dense(self, chunk_size: int | None = None) -> Tensor:
        return super().dense(chunk_size or self.chunk_size)

    def extreme_eigenvalues(self, seed: int = 0) -> tuple[float, float]:
        if self.dim <= 512:  # exact is cheaper than 60 Lanczos steps for small models
            ev = torch.linalg.eigvalsh(self.dense())
            return float(ev[0]), float(ev[-1])
        return lanczos_extremes(self, seed=seed)


class DenseOperator(SymmetricOperator):
    """An explicit symmetric matrix ``(p, p)``."""

    def __init__(self, matrix: Tensor) -> None:
        self.matrix = 0.5 * (matrix + matrix.T)
        self.dim = matrix.shape[0]
        self.dtype = matrix.dtype

    def matvec(self, v: Tensor) -> Tensor:
        return self.matrix @ v

    def dense(self, chunk_size: int = 256) -> Tensor:
        return self.matrix

    def extreme_eigenvalues(self, seed: int = 0) -> tuple[float, float]:
        ev = torch.linalg.eigvalsh(self.matrix)
        return float(ev[0]), float(ev[-1])


def _dense_factor(h: Tensor, damping: float) -> Factor:
    evals, evecs = torch.linalg.eigh(h)
    shifted = evals + damping

    def solve(b: Tensor) -> Tensor:
        return evecs @ ((evecs.T @ b) / shifted[:, None])

    return Factor(solve, bool(shifted.min() > 0))


def lanczos_extremes(
    op: SymmetricOperator,
    iters: int = 60,
    seed: int = 0,
) -> tuple[float, float]:
    """Smallest and largest eigenvalue estimates of ``op`` by ``iters`` Lanczos steps
    (full reorthogonalisation; random start drawn from ``seed``). Extreme eigenvalues
    converge first, so a few dozen steps suffice for a diagnostic."""
    n = op.dim
    steps = min(iters, n)
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(n, 1, generator=gen, dtype=op.dtype)
    q = q / q.norm()
    basis = [q]
    alphas: list[Tensor] = []
    betas: list[Tensor] = []
    for i in range(steps):
        w = op.matvec(basis[-1])
        alphas.append((basis[-1] * w).sum())
        stack = torch.cat(basis, dim=1)
        w = w - stack @ (stack.T @ w)
        w = w - stack @ (stack.T @ w)
        beta = w.norm()
        if i == steps - 1 or beta < 1e-12 * max(1.0, float(alphas[-1].abs())):
            break
        betas.append(beta)
        basis.append(w / beta)
    t = torch.diag(torch.stack(alphas))
    if betas:
        off = torch.stack(betas)
        t = t + torch.diag(off, 1) + torch.diag(off, -1)
    ev = torch.linalg.eigvalsh(t)
    return float(ev[0]), float(ev[-1])


# -- solvers -----------------------------------------------------------------------------------
@dataclass
class SolveReport:
    """Diagnostics of one solve, recorded in the result's ``meta``.

    ``min_eig``/``max_eig`` are estimates of the Hessian's extreme eigenvalues before
    damping (exact for dense small models, Lanczos otherwise); ``positive_definite`` says
    whether ``H + damping * I`` was found positive definite (factorisation, eigenvalues,
    or no negative curvature met by CG); ``rel_residual`` is
    ``max_k ||(H + damping) x_k - b_k|| / ||b_k||``."""

    solver: str
    damping: float
    min_eig: float
    max_eig: float
    positive_definite: bool
    iterations: int | None = None
    rel_residual: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_meta(self) -> dict[str, Any]:
        return asdict(self)


def resolve_damping(damping: Damping, min_eig: float, max_eig: float) -> float:
    """The damping to use: a number as given; ``"auto"``: 0 when the Hessian is positive
    definite, else ``-min_eig + 1e-3 * max_eig`` (lifts the spectrum just above zero)."""
    if damping == "auto":
        if min_eig > 0:
            return 0.0
        return -min_eig + AUTO_DAMPING_FLOOR * max(abs(max_eig), 1e-12)
    if not isinstance(damping, int | float) or damping < 0:
        raise ValueError(f"damping must be a number >= 0 or 'auto', got {damping!r}")
    return float(damping)


class Solver(ABC):
    """Solves ``(H + damping * I) X = B`` for ``B`` of shape ``(p, k)``."""

    name: str = "solver"

    def __init__(self, damping: Damping = "auto") -> None:
        self.damping = damping

    def solve(
        self,
        op: SymmetricOperator,
        rhs: Tensor,
        diagnose: bool = True,
    ) -> tuple[Tensor, SolveReport]:
        """Solutions ``(p, k)`` and a :class:`SolveReport`.

        With ``diagnose`` (default) the extreme eigenvalues are estimated, ``"auto"``
        damping resolved, the residual measured, and a :class:`NotPositiveDefiniteWarning`
        issued when the Hessian is not positive definite. ``diagnose=False`` (repeated
        solves with a numeric damping) skips the estimates the solver does not need."""
        if diagnose or self.damping == "auto" or self.needs_spectrum:
            lo, hi = op.extreme_eigenvalues()
        else:
            lo = hi = math.nan
        damping = resolve_damping(self.damping, lo, hi)
        x, report = self._solve(op, rhs, damping, lo, hi)
        if not diagnose:
            return x, report
        residual = op.matvec(x) + damping * x - rhs
        scale = rhs.norm(dim=0).clamp(min=1e-300)
        report.rel_residual = float((residual.norm(dim=0) / scale).max()) if rhs.numel() else 0.0
        if lo <= 0 or not report.positive_definite:
            warnings.warn(
                f"{self.name}: the Hessian is not positive definite (smallest eigenvalue "
                f"estimate {lo:.3g}, largest {hi:.3g}); damping {damping:.3g} used. Influence "
                "scores of a non-convex model at a non-minimum are approximate.",
                NotPositiveDefiniteWarning,
                stacklevel=2,
            )
            report.notes.append("Hessian not positive definite")
        return x, report

    @property
    def needs_spectrum(self) -> bool:
        """Whether :meth:`_solve` needs the eigenvalue estimates."""
        return False

    @abstractmethod
    def _solve(
        self, op: SymmetricOperator, rhs: Tensor, damping: float, lo: float, hi: float
    ) -> tuple[Tensor, SolveReport]:
        """Solve with a resolved damping; ``lo``/``hi``: eigenvalue estimates of ``op``."""

    def with_damping(self, damping: float) -> Solver:
        """The same solver with a fixed damping (e.g. reuse the one resolved for H)."""
        clone = copy.copy(self)
        clone.damping = damping
        return clone


class ExplicitSolver(Solver):
    """Exact solve by factorising the operator (dense eigendecomposition, or the
    operator's structured factorisation). For models up to a few thousand parameters."""

    name = "explicit"

    def _solve(
        self, op: SymmetricOperator, rhs: Tensor, damping: float, lo: float, hi: float
    ) -> tuple[Tensor, SolveReport]:
        factor = op.factorize(damping)
        return factor.solve(rhs), SolveReport(self.name, damping, lo, hi, factor.positive_definite)


class CGSolver(Solver):
    """Conjugate gradients on ``H + damping * I``, one independent CG per column, all
    columns advanced together (one batched Hessian-vector product per iteration).

    Stops when every column's residual is below ``tol * ||b||`` or after ``max_iter``
    iterations. Meeting ``p^T (H + damping) p <= 0`` means negative curvature: the
    report then says the Hessian is not positive definite."""

    name = "cg"

    def __init__(
        self,
        damping: Damping = "auto",
        tol: float = 1e-10,
        max_iter: int = 1000,
    ) -> None:
        super().__init__(damping)
        self.tol = tol
        self.max_iter = max_iter

    def _solve(
        self, op: SymmetricOperator, rhs: Tensor, damping: float, lo: float, hi: float
    ) -> tuple[Tensor, SolveReport]:
        x = torch.zeros_like(rhs)
        r = rhs.clone()
        d = r.clone()
        rs = (r * r).sum(0)
        target = (self.tol * rhs.norm(dim=0)) ** 2
        negative = False
        it = 0
        while it < self.max_iter:
            active = rs > target
            if not bool(active.any()):
                break
            it += 1
            hd = op.matvec(d) + damping * d
            curv = (d * hd).sum(0)
            negative |= bool(((curv <= 0) & active).any())
            alpha = torch.where(
                active & (curv > 0), rs / curv.clamp(min=1e-300), torch.zeros_like(rs)
            )
            x = x + alpha * d
            r = r - alpha * hd
            rs_new = (r * r).sum(0)
            d = r + torch.where(active, rs_new / rs.clamp(min=1e-300), torch.zeros_like(rs)) * d
            rs = rs_new
        return x, SolveReport(self.name, damping, lo, hi, not negative, iterations=it)


class LissaSolver(Solver):
    """LiSSA: ``x_{t+1} = b + (I - (H + damping) / scale) x_t``, answer ``x / scale``.

    A Neumann series for ``(H + damping)^{-1}``; it converges when ``H + damping`` is
    positive definite and ``scale`` exceeds its largest eigenvalue (``scale=None`` takes
    1.1 times the Lanczos estimate). The error shrinks by ``1 - lambda_min / scale`` per
    step, so ill-conditioned problems need many steps: stops when the update is below
    ``tol`` (relative) or after ``max_iter`` steps. Products are full-batch (this is the
    deterministic variant of LiSSA's stochastic recursion)."""

    name = "lissa"

    def __init__(
        self,
        damping: Damping = "auto",
        scale: float | None = None,
        tol: float = 1e-10,
        max_iter: int = 20000,
    ) -> None:
        super().__init__(damping)
        self.scale = scale
        self.tol = tol
        self.max_iter = max_iter

    @property
    def needs_spectrum(self) -> bool:
        return self.scale is None

    def _solve(
        self, op: SymmetricOperator, rhs: Tensor, damping: float, lo: float, hi: float
    ) -> tuple[Tensor, SolveReport]:
        scale = self.scale if self.scale is not None else 1.1 * (hi + damping)
        notes = []
        if scale <= hi + damping:
            notes.append(
                f"scale {scale:.3g} <= largest eigenvalue {hi + damping:.3g}: LiSSA diverges"
            )
        h = rhs.clone()
        it, change = 0, math.inf
        while it < self.max_iter and change >= self.tol:
            it += 1
            step = rhs - (op.matvec(h) + damping * h) / scale
            h = h + step
            change = float((step.norm(dim=0) / h.norm(dim=0).clamp(min=1e-300)).max())
        return h / scale, SolveReport(
            self.name, damping, lo, hi, lo + damping > 0, iterations=it, notes=notes
        )


SOLVERS: dict[str, type[Solver]] = {
    "explicit": ExplicitSolver,
    "cg": CGSolver,
    "lissa": LissaSolver,
}


def make_solver(name: str | Solver, damping: Damping = "auto", **options: Any) -> Solver:
    """A solver by name (``explicit``, ``cg``, ``lissa``) or an instance as given."""
    if isinstance(name, Solver):
        return name
    if name not in SOLVERS:
        from taskrel.errors import ConfigError

        raise ConfigError(f"unknown solver {name!r}; available: {', '.join(SOLVERS)}")
    return SOLVERS[name](damping, **options)
