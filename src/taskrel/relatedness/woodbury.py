"""Sample-space (Woodbury / kernel) solves for models that are linear in their parameters.

For a model whose outputs ``f(x; theta)`` are linear in ``theta`` (a linear or logistic
model, e.g. hard or soft sharing with ``hidden=[]``) the Hessian of the MTIF objective is
exactly

    ``H = P + sum_t w_t G_t^T G_t``,   ``G_t`` stacking ``S_i J_i / sqrt(n_t)`` for the
    ``n_t`` training examples ``i`` of task t,

with ``P`` the penalty's Hessian, ``J_i = d f(x_i) / d theta`` (``C x p``, ``C`` the
output width, 1 for regression) and ``S_i^T S_i = Lambda_i`` the loss curvature in the
outputs (``2`` for squared error, ``diag(p) - p p^T`` for softmax cross-entropy). With
``P`` diagonal and positive Woodbury's identity solves in the ``R = sum_t n_t C``-dimensional
sample space:

    ``(D + G^T G)^-1 b = D^-1 b - D^-1 G^T (I_R + G D^-1 G^T)^-1 G D^-1 b``,
    ``D = P + damping``.

Cost ``O(R^2 p_local + R^3)`` time and ``O(R p_local + R^2)`` memory instead of
``O(p^3)`` / ``O(p^2)``: the method of choice when ``R << p`` (many features, few
examples). Task weights ``w_t`` give ``H - H_j`` (``w_j = 0``) and reweighted objectives
with the same factors. A few unpenalised coordinates (biases) are handled exactly by
``u`` extra kernel rows (:meth:`KernelOperator.factorize`).

Not applicable (a reason is returned, :func:`not_applicable_reason`): models not linear in
their parameters (an MLP's Hessian has a second-order term this form drops; that would be
the Gauss-Newton approximation), a penalty Hessian that is not diagonal (soft-sharing
coupling > 0) or many zeros (an L2 coefficient of 0 on a whole block), and outputs with
more than one dimension per example (sequence labelling).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import cached_property
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.func import hessian, jacrev, vmap

from taskrel.errors import ConfigError
from taskrel.relatedness.influence import (
    SOLVERS,
    ExplicitSolver,
    Factor,
    SolveReport,
    SymmetricOperator,
    hvp,
    lanczos_extremes,
)

if TYPE_CHECKING:
    from taskrel.relatedness.mtif import MTLFunctions, Structure

DIAGONAL_RTOL = 1e-12  # penalty Hessian counts as diagonal within this relative error


def curvature_factors(
    fns: MTLFunctions,
    task: int,
    coords: Tensor,
    x: Tensor,
    y: Tensor,
    chunk_size: int = 256,
) -> Iterator[Tensor]:
    """Per-example curvature-scaled output Jacobians ``S_i J_i`` of task ``task`` over the
    coordinates ``coords``, streamed in chunks of ``(c, C, p_local)``; ``(S_i J_i)^T S_i J_i``
    is the Gauss-Newton part of example i's loss Hessian (all of it for a model linear in
    its parameters)."""
    theta = fns.theta

    def outputs(values: Tensor, xi: Tensor) -> Tensor:
        return fns.outputs(theta.index_copy(0, coords, values), task, xi.unsqueeze(0)).reshape(-1)

    shape = fns.outputs(theta, task, x[:1]).shape
    model = fns.model

    def loss(out: Tensor, yi: Tensor) -> Tensor:
        return model.output_loss(out.reshape(shape), yi.unsqueeze(0), task)[0]

    local = theta[coords]
    jac = vmap(jacrev(outputs), in_dims=(None, 0))
    out = vmap(outputs, in_dims=(None, 0))
    curv = vmap(hessian(loss))
    for s in range(0, len(x), chunk_size):
        xs, ys = x[s : s + chunk_size], y[s : s + chunk_size]
        lam = curv(out(local, xs).detach(), ys)  # (c, C, C)
        evals, evecs = torch.linalg.eigh(0.5 * (lam + lam.transpose(1, 2)))
        root = evecs * evals.clamp(min=0.0).sqrt().unsqueeze(1)  # lam = root root^T
        yield root.transpose(1, 2) @ jac(local, xs)


def output_width(fns: MTLFunctions, task: int) -> int:
    """Outputs per example of task ``task`` (``C``; 1 for regression)."""
    x = fns.train[task][0]
    return int(fns.outputs(fns.theta, task, x[:1]).numel())


def sample_rows(structure: Structure) -> int:
    """``R = sum_t n_t C_t``: the dimension of the sample space."""
    fns = structure.fns
    return sum(len(fns.train[t][0]) * output_width(fns, t) for t in range(fns.n_tasks))


def woodbury_bytes(structure: Structure, itemsize: int = 8, chunk_size: int = 256) -> int:
    """Estimated peak bytes of the Woodbury solve: the factors (``R_t x p_local`` per task),
    the kernel, its Cholesky factor and a working copy (``3 R^2``), and one chunk of
    Jacobians."""
    fns = structure.fns
    widths = [output_width(fns, t) for t in range(fns.n_tasks)]
    rows = [len(fns.train[t][0]) * c for t, c in enumerate(widths)]
    local = [structure.local_coords(t).numel() for t in range(fns.n_tasks)]
    factors = sum(r * n for r, n in zip(rows, local, strict=True))
    chunk = 2 * chunk_size * max(widths) * max(local)
    return itemsize * (factors + 3 * sum(rows) ** 2 + chunk)


def penalty_diagonal(fns: MTLFunctions, seed: int = 0) -> Tensor | None:
    """The diagonal ``(p,)`` of the penalty's Hessian, or None when that Hessian is not
    diagonal (checked on a random vector)."""
    ones = torch.ones(fns.space.numel, 1, dtype=fns.theta.dtype)
    diag = hvp(fns.penalty, fns.theta, ones)[:, 0]
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(fns.space.numel, 1, generator=gen, dtype=fns.theta.dtype)
    hv = hvp(fns.penalty, fns.theta, v)[:, 0]
    scale = float(diag.abs().max()) * float(v.abs().max()) if diag.numel() else 0.0
    if float((hv - diag * v[:, 0]).abs().max()) > DIAGONAL_RTOL * max(scale, 1e-300):
        return None
    return diag


def not_applicable_reason(structure: Structure) -> str | None:
    """Why the Woodbury solver does not apply to ``structure``'s model (None: it does)."""
    fns = getattr(structure, "fns", None)
    model = getattr(fns, "model", None)
    if fns is None or model is None:
        return "no model"
    if not getattr(model, "convex", False):
        return "the model is not linear in its parameters"
    for t in range(fns.n_tasks):
        if len(fns.outputs(fns.theta, t, fns.train[t][0][:1]).shape) > 2:
            return "outputs have more than one dimension per example"
    diag = penalty_diagonal(fns)
    if diag is None:
        return "the penalty Hessian is not diagonal (soft-sharing coupling)"
    if bool((diag < 0).any()):
        return "the penalty Hessian has negative diagonal entries"
    unpenalized = int((diag == 0).sum())
    if unpenalized > max(64, fns.space.numel // 16):
        return f"{unpenalized} parameters are unpenalised (an L2 coefficient of 0)"
    return None


class SampleSpace:
    """The factors ``G_t`` and penalty diagonal of a model linear in its parameters.

    Args:
        structure: the model's MTIF structure (local coordinates per task).
        chunk_size: examples per chunk of Jacobians.

    Raises:
        ConfigError: the Woodbury form does not apply (the reason is in the message)."""

    def __init__(self, structure: Structure, chunk_size: int = 256) -> None:
        reason = not_applicable_reason(structure)
        if reason is not None:
            raise ConfigError(f"solver='woodbury' does not apply: {reason}")
        self.structure = structure
        self.fns = structure.fns
        self.chunk_size = chunk_size

    @cached_property
    def penalty_diagonal(self) -> Tensor:
        """``(p,)`` diagonal of the penalty Hessian (entries >= 0)."""
        diag = penalty_diagonal(self.fns)
        assert diag is not None
        return diag

    @cached_property
    def factors(self) -> list[Tensor]:
        """Per task ``G_t``, ``(n_t C, p_local)``: rows ``S_i J_i / sqrt(n_t)``."""
        out = []
        for t in range(self.fns.n_tasks):
            x, y = self.fns.train[t]
            coords = self.structure.local_coords(t)
            parts = curvature_factors(self.fns, t, coords, x, y, self.chunk_size)
            g = torch.cat([c.reshape(-1, c.shape[-1]) for c in parts])
            out.append(g / len(x) ** 0.5)
        return out

    def operator(
        self,
        weights: Sequence[float] | None = None,
        pin: Tensor | None = None,
        pin_value: float = 0.0,
    ) -> KernelOperator:
        """``P + sum_t w_t G_t^T G_t`` (default weights 1: the Hessian ``H``), plus
        ``pin_value`` on the diagonal at the flat positions ``pin``."""
        coords = [self.structure.local_coords(t) for t in range(self.fns.n_tasks)]
        w = list(weights) if weights is not None else [1.0] * self.fns.n_tasks
        penalty = self.penalty_diagonal
        if pin is not None and pin.numel():
            penalty = penalty.clone()
            penalty[pin] += pin_value
        return KernelOperator(penalty, self.factors, coords, w)


class KernelOperator(SymmetricOperator):
    """``H = diag(P) + sum_t w_t G_t^T G_t`` with ``G_t`` ``(R_t, p_t)`` acting on the flat
    positions ``coords[t]``; factorised in the sample space (Woodbury)."""

    def __init__(
        self,
        penalty: Tensor,
        factors: Sequence[Tensor],
        coords: Sequence[Tensor],
        weights: Sequence[float],
    ) -> None:
        self.penalty = penalty
        keep = [t for t, w in enumerate(weights) if w != 0.0]
        self.factors = [factors[t] * float(weights[t]) ** 0.5 for t in keep]
        self.coords = [coords[t] for t in keep]
        self.dim = penalty.numel()
        self.dtype = penalty.dtype

    @property
    def rows(self) -> int:
        return sum(g.shape[0] for g in self.factors)

    def _apply(self, v: Tensor) -> Tensor:
        """``G v``: ``(R, k)``."""
        if not self.factors:
            return torch.zeros(0, v.shape[1], dtype=v.dtype)
        return torch.cat([g @ v[c] for g, c in zip(self.factors, self.coords, strict=True)])

    def _apply_t(self, z: Tensor) -> Tensor:
        """``G^T z``: ``(p, k)``."""
        out = torch.zeros(self.dim, z.shape[1], dtype=z.dtype)
        start = 0
        for g, c in zip(self.factors, self.coords, strict=True):
            out.index_add_(0, c, g.T @ z[start : start + g.shape[0]])
            start += g.shape[0]
        return out

    def matvec(self, v: Tensor) -> Tensor:
        return self.penalty[:, None] * v + self._apply_t(self._apply(v))

    def extreme_eigenvalues(self, seed: int = 0) -> tuple[float, float]:
        if self.dim <= 2048:
            ev = torch.linalg.eigvalsh(self.dense())
            return float(ev[0]), float(ev[-1])
        return lanczos_extremes(self, seed=seed)

    def kernel(self, inverse_diagonal: Tensor) -> Tensor:
        """``I_R + G diag(inverse_diagonal) G^T``, ``(R, R)``, block by block over the
        coordinates each pair of tasks shares."""
        sizes = [g.shape[0] for g in self.factors]
        starts = [sum(sizes[:t]) for t in range(len(sizes))]
        k = torch.eye(sum(sizes), dtype=self.dtype)
        for s, (gs, cs) in enumerate(zip(self.factors, self.coords, strict=True)):
            where = torch.full((self.dim,), -1, dtype=torch.long)
            where[cs] = torch.arange(cs.numel())
            for t in range(s + 1):
                gt, ct = self.factors[t], self.coords[t]
                pos = where[ct]
                mine = pos >= 0
                if not bool(mine.any()):
                    continue
                block = (gt[:, mine] * inverse_diagonal[ct[mine]]) @ gs[:, pos[mine]].T
                rt = slice(starts[t], starts[t] + sizes[t])
                rs = slice(starts[s], starts[s] + sizes[s])
                k[rt, rs] += block
                if t != s:
                    k[rs, rt] += block.T
        return k

    def factorize(self, damping: float) -> Factor:
        """Woodbury factorisation of ``H + damping``.

        Coordinates ``U`` where ``P + damping`` is not positive (unpenalised biases) get
        a stand-in ``rho`` (the mean data curvature there), taken back out by ``u = |U|``
        extra rows ``E_U`` of weight ``-(rho - P_U - damping)``: ``H + damping = D +
        W^T C W`` with ``W = [G; E_U^T]``, ``C = diag(I_R, -c_U)``, solved through the
        ``(R + u)``-dimensional kernel ``C^-1 + W D^-1 W^T`` (LU; symmetric indefinite
        when ``u > 0``). By Haynsworth's inertia theorem ``H + damping`` is positive
        definite iff that kernel has exactly ``u`` negative eigenvalues."""
        shifted = self.penalty + damping
        free = torch.nonzero(shifted <= 0).flatten()
        u = free.numel()
        eye = torch.zeros(self.dim, u, dtype=self.dtype)
        eye[free, torch.arange(u)] = 1.0
        g_free = self._apply(eye)  # (R, u): G restricted to U
        rho = float(g_free.pow(2).sum(0).mean()) if u else 0.0
        rho = max(rho, float(shifted.max()), 1e-12)
        diag = shifted.clone()
        diag[free] = rho
        inv = 1.0 / diag
        cut = rho - shifted[free]  # removed again by the E_U rows, (u,)
        r = self.rows
        k = torch.zeros(r + u, r + u, dtype=self.dtype)
        k[:r, :r] = self.kernel(inv)
        k[:r, r:] = g_free / rho
        k[r:, :r] = k[:r, r:].T
        k[r:, r:] = torch.diag(1.0 / rho - 1.0 / cut)
        lu = torch.linalg.lu_factor_ex(k)[:2]  # singular when H + damping is: pd says so
        pd = True
        if u:
            ev = torch.linalg.eigvalsh(k)
            pd = int((ev < 0).sum()) == u and bool((ev.abs() > 0).all())

        def solve(rhs: Tensor) -> Tensor:
            y = inv[:, None] * rhs
            z = torch.linalg.lu_solve(*lu, torch.cat([self._apply(y), y[free]]))
            back = self._apply_t(z[:r])
            back[free] += z[r:]
            return y - inv[:, None] * back

        return Factor(solve, pd)


class WoodburySolver(ExplicitSolver):
    """Exact solve in the sample space (see module docstring); needs the
    :class:`KernelOperator` of a model linear in its parameters."""

    name = "woodbury"

    def _solve(
        self, op: SymmetricOperator, rhs: Tensor, damping: float, lo: float, hi: float
    ) -> tuple[Tensor, SolveReport]:
        if not isinstance(op, KernelOperator):
            raise ConfigError(
                "solver='woodbury' needs the sample-space operator of a model linear in its "
                "parameters (use it through MTIF)"
            )
        return super()._solve(op, rhs, damping, lo, hi)


SOLVERS["woodbury"] = WoodburySolver
