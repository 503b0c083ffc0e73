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
whether the Hessian looked positive definite, iterations and whether the iterative
solvers stopped at ``max_iter``, relative residual) and gives a one-line
:func:`taskrel.notices.notice` when the Hessian is not positive definite or an iterative
solver stopped at ``max_iter`` before reaching its tolerance.

Memory: an explicit solve holds dense matrices, so callers check its size against a
budget first (:func:`memory_budget_gb`, :func:`check_memory`) and fall back to CG.
"""

from __future__ import annotations

import copy
import inspect
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor
from torch.func import grad, jvp, vmap

from taskrel.errors import ConfigError
from taskrel.notices import notice

Damping = float | Literal["auto"]
AUTO_DAMPING_FLOOR = 1e-3  # "auto" lifts the smallest eigenvalue to this fraction of the largest


DEFAULT_BUDGET_FRACTION = 1 / 8  # of physical memory
DEFAULT_BUDGET_CAP_GB = 4.0
GB = 1e9  # bytes


# -- memory budget ---------------------------------------------------------------------------
def physical_memory_bytes() -> int | None:
    """Installed physical memory in bytes (None where the platform does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def memory_budget_gb(budget_gb: float | None = None) -> float:
    """The memory (GB = 1e9 bytes) an explicit solve may use: ``budget_gb`` as given, else
    1/8 of physical memory capped at 4 GB (2 GB where physical memory is unknown).

    Raises:
        ConfigError: ``budget_gb`` is not a positive number."""
    if budget_gb is None:
        phys = physical_memory_bytes()
        if phys is None:
            return 2.0
        return min(DEFAULT_BUDGET_FRACTION * phys / GB, DEFAULT_BUDGET_CAP_GB)
    if isinstance(budget_gb, bool) or not isinstance(budget_gb, int | float) or budget_gb <= 0:
        raise ConfigError(f"memory_budget_gb must be a number > 0 (GB), got {budget_gb!r}")
    return float(budget_gb)


def dense_solve_bytes(dim: int, itemsize: int = 8) -> int:
    """Estimated peak bytes of an explicit dense solve of a ``(dim, dim)`` system: the
    matrix, its symmetrised copy, the eigenvectors and the eigensolver's workspace
    (4 matrices)."""
    return 4 * dim * dim * itemsize


def check_memory(what: str, nbytes: int, budget_gb: float, hint: str) -> None:
    """Raise a one-line :class:`ConfigError` when ``nbytes`` exceed ``budget_gb``.

    Args:
        what: the request, e.g. ``"solver='explicit' (dense Hessian of 53,864 parameters)"``.
        nbytes: its estimated memory.
        budget_gb: the budget (GB).
        hint: what to do instead."""
    if nbytes > budget_gb * GB:
        raise ConfigError(
            f"{what} needs about {nbytes / GB:.3g} GB, over the memory budget of "
            f"{budget_gb:.3g} GB (memory_budget_gb); {hint}"
        )


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
        """The ``(p, p)`` matrix, built from products with identity columns (only
        ``chunk_size`` of them exist at a time)."""
        cols = []
        for s in range(0, self.dim, chunk_size):
            width = min(chunk_size, self.dim - s)
            eye = torch.zeros(self.dim, width, dtype=self.dtype)
            eye[torch.arange(s, s + width), torch.arange(width)] = 1.0
            cols.append(self.matvec(eye))
        h = torch.cat(cols, dim=1)
        del cols
        h += h.T.clone()
        return h.mul_(0.5)

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
    or no negative curvature met by CG); ``iterations``/``max_iter_hit``: iterations of an
    iterative solver and whether it stopped at ``max_iter`` before its tolerance (None for
    direct solvers); ``rel_residual`` is ``max_k ||(H + damping) x_k - b_k|| / ||b_k||``."""

    solver: str
    damping: float
    min_eig: float
    max_eig: float
    positive_definite: bool
    iterations: int | None = None
    max_iter_hit: bool | None = None
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
    return check_damping(damping)


def check_damping(damping: Damping) -> float:
    """``damping`` as a float (``"auto"``: NaN, resolved later).

    Raises:
        ConfigError: neither a number >= 0 nor ``"auto"``."""
    if damping == "auto":
        return math.nan
    if isinstance(damping, bool) or not isinstance(damping, int | float) or not damping >= 0:
        raise ConfigError(f"damping must be a number >= 0 or 'auto', got {damping!r}")
    return float(damping)


class Solver(ABC):
    """Solves ``(H + damping * I) X = B`` for ``B`` of shape ``(p, k)``."""

    name: str = "solver"

    def __init__(self, damping: Damping = "auto") -> None:
        check_damping(damping)
        self.damping = damping

    def solve(
        self,
        op: SymmetricOperator,
        rhs: Tensor,
        diagnose: bool = True,
    ) -> tuple[Tensor, SolveReport]:
        """Solutions ``(p, k)`` and a :class:`SolveReport`.

        With ``diagnose`` (default) the extreme eigenvalues are estimated, ``"auto"``
        damping resolved, the residual measured, and a one-line notice given (and noted
        in the report) when the Hessian is not positive definite. ``diagnose=False`` (repeated
        solves with a numeric damping) skips the estimates the solver does not need."""
        if diagnose or self.damping == "auto" or self.needs_spectrum:
            lo, hi = op.extreme_eigenvalues()
        else:
            lo = hi = math.nan
        damping = resolve_damping(self.damping, lo, hi)
        x, report = self._solve(op, rhs, damping, lo, hi)
        return self._finish(op, rhs, x, report, diagnose)

    def _finish(
        self,
        op: SymmetricOperator,
        rhs: Tensor,
        x: Tensor,
        report: SolveReport,
        diagnose: bool,
    ) -> tuple[Tensor, SolveReport]:
        """Notices for ``max_iter`` and (with ``diagnose``) the residual and the
        positive-definiteness notice, from the report's damping and eigenvalues."""
        damping, lo, hi = report.damping, report.min_eig, report.max_eig
        if report.max_iter_hit:
            notice(
                f"{self.name} solver stopped at max_iter={report.iterations} before reaching "
                "its tolerance; raise solver_options max_iter or the damping"
            )
            report.notes.append("stopped at max_iter")
        if not diagnose:
            return x, report
        residual = op.matvec(x) + damping * x - rhs
        scale = rhs.norm(dim=0).clamp(min=1e-300)
        report.rel_residual = float((residual.norm(dim=0) / scale).max()) if rhs.numel() else 0.0
        if lo <= 0 or not report.positive_definite:
            notice(
                f"{self.name} solver: the Hessian is not positive definite (smallest "
                f"eigenvalue estimate {lo:.3g}, largest {hi:.3g}); damping {damping:.3g} used; "
                "influence scores of a non-convex model are approximate"
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
    iterations. Meeting ``p^T (H + damping) p <= 0`` means negative curvature: that column
    stops and the report says the Hessian is not positive definite.

    Eigenvalue estimates (``spectrum="cg"``, default) come from CG's own coefficients:
    CG is Lanczos in disguise, the Lanczos tridiagonal of column c has diagonal
    ``1/alpha_i + beta_{i-1}/alpha_{i-1}`` and off-diagonal ``sqrt(beta_i)/alpha_i``, so
    its extreme eigenvalues (Ritz values, over all columns) estimate ``H``'s at no extra
    Hessian-vector product; a direction of negative curvature bounds ``lambda_min`` by its
    Rayleigh quotient. With ``damping="auto"`` CG runs undamped first; only if it finds
    the Hessian not positive definite does the separate Lanczos run estimate the spectrum
    (CG stops at negative curvature, before it has seen ``lambda_min``) and CG run again
    with the resolved damping. The estimates cover the Krylov spaces of the
    right-hand sides only (a CG that converges in few steps sees little of the spectrum):
    ``spectrum="lanczos"`` runs the separate 60-step Lanczos from a random start instead.
    A solve that diagnoses nothing with a numeric damping (``diagnose=False``: the
    repeated solves of instance and per-test-example scores) computes no estimates at all
    (its report carries NaN eigenvalues).
    """

    name = "cg"

    def __init__(
        self,
        damping: Damping = "auto",
        tol: float = 1e-10,
        max_iter: int = 1000,
        spectrum: Literal["cg", "lanczos"] = "cg",
    ) -> None:
        super().__init__(damping)
        if spectrum not in ("cg", "lanczos"):
            raise ConfigError(f"cg option spectrum must be 'cg' or 'lanczos', got {spectrum!r}")
        self.tol = tol
        self.max_iter = max_iter
        self.spectrum = spectrum

    def solve(
        self,
        op: SymmetricOperator,
        rhs: Tensor,
        diagnose: bool = True,
    ) -> tuple[Tensor, SolveReport]:
        if not (diagnose or self.damping == "auto"):  # nothing needs the spectrum
            damping = check_damping(self.damping)
            x, report = self._solve(op, rhs, damping, math.nan, math.nan, estimate=False)
            return self._finish(op, rhs, x, report, diagnose)
        if self.spectrum == "lanczos":
            return super().solve(op, rhs, diagnose)
        damping = 0.0 if self.damping == "auto" else check_damping(self.damping)
        x, report = self._solve(op, rhs, damping, math.nan, math.nan)
        lo, hi = report.min_eig, report.max_eig
        if self.damping == "auto" and not (lo > 0 and report.positive_definite):
            # CG stops at negative curvature, before its Krylov space shows lambda_min
            full_lo, full_hi = op.extreme_eigenvalues()
            lo, hi = min(lo, full_lo), max(hi, full_hi)
            damping = resolve_damping("auto", lo, hi)
            x, report = self._solve(op, rhs, damping, lo, hi)
        report.min_eig, report.max_eig = lo, hi
        return self._finish(op, rhs, x, report, diagnose)

    def _solve(
        self,
        op: SymmetricOperator,
        rhs: Tensor,
        damping: float,
        lo: float,
        hi: float,
        estimate: bool = True,
    ) -> tuple[Tensor, SolveReport]:
        """CG with a resolved damping. With NaN ``lo`` and ``estimate`` the report's
        eigenvalue estimates come from the Ritz values of every column (one small
        tridiagonal eigenproblem per column); ``estimate=False`` (repeated solves that
        diagnose nothing) leaves them NaN and skips that cost."""
        x = torch.zeros_like(rhs)
        r = rhs.clone()
        d = r.clone()
        rs = (r * r).sum(0)
        target = (self.tol * rhs.norm(dim=0)) ** 2
        stopped = torch.zeros_like(rs, dtype=torch.bool)  # met negative curvature
        rayleigh = torch.full_like(rs, math.inf)  # d^T (H + damping) d / ||d||^2 there
        alphas: list[Tensor] = []
        betas: list[Tensor] = []
        steps: list[Tensor] = []  # which columns took each iteration
        it = 0
        while it < self.max_iter:
            active = (rs > target) & ~stopped
            if not bool(active.any()):
                break
            it += 1
            hd = op.matvec(d) + damping * d
            curv = (d * hd).sum(0)
            bad = (curv <= 0) & active
            rayleigh = torch.where(bad, curv / (d * d).sum(0).clamp(min=1e-300), rayleigh)
            stopped |= bad
            active = active & ~bad
            alpha = torch.where(active, rs / curv.clamp(min=1e-300), torch.zeros_like(rs))
            x = x + alpha * d
            r = r - alpha * hd
            rs_new = (r * r).sum(0)
            beta = torch.where(active, rs_new / rs.clamp(min=1e-300), torch.zeros_like(rs))
            d = r + beta * d
            rs = torch.where(active, rs_new, rs)
            alphas.append(alpha)
            betas.append(beta)
            steps.append(active)
        if math.isnan(lo) and estimate:
            lo, hi = _ritz_extremes(alphas, betas, steps)
            least = float(rayleigh.min())
            if math.isnan(lo):  # every column met negative curvature at once
                lo, hi = least, abs(least)
            lo, hi = min(lo, least) - damping, hi - damping
        hit = bool(((rs > target) & ~stopped).any())
        return x, SolveReport(
            self.name,
            damping,
            lo,
            hi,
            not bool(stopped.any()),
            iterations=it,
            max_iter_hit=hit,
        )


def _ritz_extremes(
    alphas: Sequence[Tensor], betas: Sequence[Tensor], steps: Sequence[Tensor]
) -> tuple[float, float]:
    """Extreme Ritz values over all columns from CG's step sizes ``alphas`` and ratios
    ``betas`` (one ``(k,)`` tensor per iteration; ``steps`` marks the columns that took
    it). NaN/NaN when no column took a step."""
    lo, hi = math.inf, -math.inf
    if not alphas:
        return math.nan, math.nan
    a, b, m = torch.stack(list(alphas)), torch.stack(list(betas)), torch.stack(list(steps))
    for c in range(a.shape[1]):
        ac, bc = a[m[:, c], c], b[m[:, c], c]
        if ac.numel() == 0:
            continue
        diag = 1.0 / ac
        diag[1:] += bc[:-1] / ac[:-1]
        off = bc[:-1].clamp(min=0).sqrt() / ac[:-1]
        t = torch.diag(diag) + torch.diag(off, 1) + torch.diag(off, -1)
        ev = torch.linalg.eigvalsh(t)
        lo, hi = min(lo, float(ev[0])), max(hi, float(ev[-1]))
    return (lo, hi) if math.isfinite(lo) else (math.nan, math.nan)


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
            self.name,
            damping,
            lo,
            hi,
            lo + damping > 0,
            iterations=it,
            max_iter_hit=change >= self.tol,
            notes=notes,
        )


SOLVERS: dict[str, type[Solver]] = {
    "explicit": ExplicitSolver,
    "cg": CGSolver,
    "lissa": LissaSolver,
}


def make_solver(name: str | Solver, damping: Damping = "auto", **options: Any) -> Solver:
    """A solver by name (``explicit``, ``cg``, ``lissa``) or an instance as given.

    Raises:
        ConfigError: an unknown solver, an option it does not take, or a bad damping."""
    if isinstance(name, Solver):
        return name
    if not isinstance(name, str) or name not in SOLVERS:
        raise ConfigError(f"unknown solver {name!r}; available: {', '.join(SOLVERS)}")
    cls = SOLVERS[name]
    params = inspect.signature(cls.__init__).parameters
    accepted = [p for p in params if p not in ("self", "damping")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"solver_options {unknown} are not options of the {name!r} solver "
            f"(accepted: {', '.join(accepted) or 'none'})"
        )
    return cls(damping, **options)
