"""Sample-space (Woodbury / kernel) solves: exact for models that are linear in their
parameters, the generalised Gauss-Newton (GGN) approximation for networks.

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
with the same factors (and the same kernel blocks, cached while ``D`` stays the same). A
few unpenalised coordinates (biases) are handled exactly by ``u`` extra kernel rows
(:meth:`KernelOperator.factorize`). Directions of zero output curvature (softmax's
constant direction, ``Lambda_i 1 = 0``) contribute nothing and get no row: ``C - 1`` rows
per example for a softmax over ``C`` classes.

Networks (solver ``woodbury-gn``): the Hessian of a model that is not linear in its
parameters has a second term, ``sum_i (d loss / d f) d^2 f / d theta^2``, which the form
above drops. What remains, ``P + G^T G``, is the generalised Gauss-Newton matrix: positive
definite whenever ``P`` is, equal to the Hessian at a perfect fit, and solved by the same
code (per-example Jacobians from ``torch.func``, in chunks of bounded memory). For a model
linear in its parameters it is the exact Hessian, so both solvers agree there.

Networks of ``nn.Linear`` layers (hard sharing with hidden layers, per-task heads, a plain
MLP through the adapter; a linear model too): both solves keep each ``G_t`` in factored form, per
layer the inputs ``a_n`` of every example and the output sensitivities ``delta`` of every
row (:mod:`~taskrel.relatedness.gn_kernel`), and form the kernel, ``G v`` and ``G^T z``
from them (:class:`LinearKernelOperator`): ``O(R^2 (in + out))`` per layer instead of
``O(R^2 in out)``, and no ``R x p`` matrix. The extreme eigenvalues then come from the
sample space too (:meth:`LinearKernelOperator.extreme_eigenvalues`; Lanczos on those
products above :data:`RITZ_MAX_ROWS` rows). With ``woodbury-gn`` MTIF's first-order task
matrix does not leave the sample space either: the task gradients are sums of rows of the
same layer form, and ``grad L_i^T H^-1 grad G_j`` comes from Gram blocks
(:meth:`LinearKernelOperator.grouped_inverse`; ``meta['task_matrix_path']``). Models it
cannot prove it handles use the per-example Jacobians; ``meta['solver_plan']['gn_kernel']``
says which path ran (:func:`gn_kernel_path`).

Not applicable (a reason is returned, :func:`not_applicable_reason`): for ``woodbury``,
models not linear in their parameters; for both, a penalty Hessian that is not diagonal
(soft-sharing coupling > 0) or many zeros (an L2 coefficient of 0 on a whole block), and
outputs with more than one dimension per example (sequence labelling).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.func import grad, hessian, jacrev, vmap

from taskrel.errors import ConfigError
from taskrel.relatedness import gn_kernel
from taskrel.relatedness.influence import (
    SOLVERS,
    ExplicitSolver,
    Factor,
    SolveReport,
    SymmetricOperator,
    lanczos_extremes,
)

if TYPE_CHECKING:
    from taskrel.data.taskset import SplitName
    from taskrel.relatedness.mtif import MTLFunctions, Structure

DIAGONAL_RTOL = 1e-12  # penalty Hessian counts as diagonal within this relative error
NULL_RTOL = 1e-10
"""An output-curvature direction of an example whose eigenvalue is at most this fraction of
the example's largest gets no row (softmax's constant direction: 0 up to rounding, which
for a confident prediction is ~1e-16 / p_min of the largest)."""
JACOBIAN_CHUNK_BYTES = 2**26
"""A chunk of per-example Jacobians is kept near this size (its gradients over all
parameters): fewer examples per chunk for wide networks."""
LANCZOS_STEPS = 20
"""Lanczos steps of the eigenvalue estimates of a large sample-space operator (a
diagnostic: positive definiteness comes from the factorisation itself)."""
EXACT_SPECTRUM_DIM = 2048
"""Up to this many parameters the extreme eigenvalues of the factored Gauss-Newton operator
are those of its dense matrix (:meth:`LinearKernelOperator.extreme_eigenvalues`)."""
RITZ_MAX_ROWS = 1024
"""Above this many sample-space rows the layer-factored operator estimates its extreme
eigenvalues by Lanczos instead of an ``R x R`` eigenproblem
(:meth:`LinearKernelOperator.extreme_eigenvalues`)."""
SAMPLE_SPACE = ("woodbury", "woodbury-gn")
"""The sample-space solvers: exact for models linear in their parameters, Gauss-Newton."""


def _example_loss(fns: MTLFunctions, task: int) -> Callable[[Tensor, Tensor], Tensor]:
    """The loss of one example of task ``task`` as a function of its flat outputs ``(C,)``
    and its target."""
    shape = fns.outputs(fns.theta, task, fns.train[task][0][:1]).shape
    model = fns.model

    def loss(out: Tensor, yi: Tensor) -> Tensor:
        return model.output_loss(out.reshape(shape), yi.unsqueeze(0), task)[0]

    return loss


def curvature_roots(
    fns: MTLFunctions, task: int, x: Tensor, y: Tensor, chunk_size: int = 256
) -> Tensor:
    """Square roots of the per-example loss curvature in the outputs, ``(n, C, C)``:
    ``Lambda_i = root_i root_i^T`` with columns ``sqrt(lambda_k) v_k`` (eigenpairs of
    ``Lambda_i``, negative eigenvalues clamped to 0). Forward passes only."""
    curv = vmap(hessian(_example_loss(fns, task)))
    width = output_width(fns, task)
    parts = [torch.zeros(0, width, width, dtype=fns.theta.dtype)]
    for s in range(0, len(x), chunk_size):
        xs, ys = x[s : s + chunk_size], y[s : s + chunk_size]
        with torch.no_grad():
            out = fns.outputs(fns.theta, task, xs).reshape(len(xs), width)
        lam = curv(out, ys)  # (c, C, C)
        evals, evecs = torch.linalg.eigh(0.5 * (lam + lam.transpose(1, 2)))
        parts.append(evecs * evals.clamp(min=0.0).sqrt().unsqueeze(1))
    return torch.cat(parts)


def train_roots(fns: MTLFunctions, task: int, chunk_size: int = 256) -> Tensor:
    """:func:`curvature_roots` of task ``task``'s training examples, memoised per model
    and point (planning and the sample space both need them)."""
    x, y = fns.train[task]
    roots: Tensor = _memo(
        fns, f"train_roots_{task}", lambda: curvature_roots(fns, task, x, y, chunk_size)
    )
    return roots


def jacobian_chunks(
    fns: MTLFunctions, task: int, coords: Tensor, x: Tensor, chunk_size: int
) -> Iterator[Tensor]:
    """Per-example output Jacobians ``J_i`` of task ``task`` over the coordinates
    ``coords``, ``(c, C, p_local)`` for ``chunk_size`` consecutive examples at a time
    (``torch.func.vmap(jacrev)``)."""
    theta = fns.theta

    def outputs(values: Tensor, xi: Tensor) -> Tensor:
        return fns.outputs(theta.index_copy(0, coords, values), task, xi.unsqueeze(0)).reshape(-1)

    jac = vmap(jacrev(outputs), in_dims=(None, 0))
    local = theta[coords]
    for s in range(0, len(x), chunk_size):
        yield jac(local, x[s : s + chunk_size])


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
    roots = curvature_roots(fns, task, x, y, chunk_size)
    for s, jac in zip(
        range(0, len(x), chunk_size), jacobian_chunks(fns, task, coords, x, chunk_size), strict=True
    ):
        yield roots[s : s + chunk_size].transpose(1, 2) @ jac


def output_width(fns: MTLFunctions, task: int) -> int:
    """Outputs per example of task ``task`` (``C``; 1 for regression)."""
    x = fns.train[task][0]
    return int(fns.outputs(fns.theta, task, x[:1]).numel())


def kept_directions(roots: Tensor) -> Tensor:
    """``(n, C)`` bool: the output-curvature directions of each example that get a row
    (eigenvalue above :data:`NULL_RTOL` of the example's largest), from
    :func:`curvature_roots`."""
    lam = roots.pow(2).sum(1)  # (n, C): the eigenvalues
    return lam > NULL_RTOL * lam.max(1, keepdim=True).values


def task_rows(fns: MTLFunctions, task: int, chunk_size: int = 256) -> int:
    """``R_t``: rows of task ``task`` in the sample space (``n_t C``, less the directions of
    zero curvature: ``n_t (C - 1)`` for a softmax). Forward passes only."""
    return int(kept_directions(train_roots(fns, task, chunk_size)).sum())


def sample_rows(structure: Structure) -> int:
    """``R = sum_t R_t``: the dimension of the sample space (:func:`task_rows`)."""
    return sum(task_rows(structure.fns, t) for t in range(structure.fns.n_tasks))


def jacobian_chunk_size(width: int, numel: int, itemsize: int = 8, chunk_size: int = 256) -> int:
    """Examples per chunk of Jacobians: at most ``chunk_size``, and few enough that the
    chunk's gradients ``(c, width, numel)`` stay near :data:`JACOBIAN_CHUNK_BYTES` (``numel``
    = all parameters: the backward pass writes each output's gradient over the full vector
    before the local coordinates are picked)."""
    return max(1, min(chunk_size, JACOBIAN_CHUNK_BYTES // max(width * numel * itemsize, 1)))


def woodbury_bytes(
    structure: Structure, itemsize: int = 8, chunk_size: int = 256, gauss_newton: bool = False
) -> int:
    """Estimated peak bytes of the Woodbury solve: the factors (``R_t x p_local`` per task),
    the kernel, its cached blocks, its LU factor and a working copy (``4 R^2``), one scaled
    copy of the largest factor while the kernel is formed, one chunk of Jacobians (three
    copies of its gradients over all parameters) and the Lanczos basis of the eigenvalue
    estimates. For the Gauss-Newton solve of a network of ``nn.Linear`` layers
    (:func:`gn_kernel_path`): :func:`linear_bytes` instead."""
    if gauss_newton and gn_kernel_path(structure) == LINEAR_PATH:
        return linear_bytes(structure, itemsize, chunk_size)
    fns = structure.fns
    widths = [output_width(fns, t) for t in range(fns.n_tasks)]
    rows = [task_rows(fns, t, chunk_size) for t in range(fns.n_tasks)]
    local = [structure.local_coords(t).numel() for t in range(fns.n_tasks)]
    sizes = [r * n for r, n in zip(rows, local, strict=True)]
    width, numel = max(widths), fns.space.numel
    examples = min(max(len(fns.train[t][0]) for t in range(fns.n_tasks)), chunk_size)
    chunk = 3 * jacobian_chunk_size(width, numel, itemsize, examples) * width * numel
    lanczos = 2 * LANCZOS_STEPS * numel  # its basis and a stacked copy
    return itemsize * (sum(sizes) + max(sizes) + 4 * sum(rows) ** 2 + chunk + lanczos)


LINEAR_PATH = "linear-layers"
""":func:`gn_kernel_path` of a network whose factor is held per ``nn.Linear`` layer."""


_MEMO: weakref.WeakKeyDictionary[MTLFunctions, dict[str, tuple[Tensor, Any]]] = (
    weakref.WeakKeyDictionary()
)


def _memo(fns: MTLFunctions, key: str, compute: Callable[[], Any]) -> Any:
    """``compute()``, remembered per ``fns`` while its ``theta`` is the same tensor
    (planning, the sample space and the solver ask for the same facts several times)."""
    slot = _MEMO.setdefault(fns, {})
    hit = slot.get(key)
    if hit is not None and hit[0] is fns.theta:
        return hit[1]
    value = compute()
    slot[key] = (fns.theta, value)
    return value


def linear_reason(structure: Structure) -> str | None:
    """:func:`gn_kernel.linear_reason`, memoised per model and point."""
    return _memo(structure.fns, "linear_reason", lambda: gn_kernel.linear_reason(structure))


def gn_kernel_path(structure: Structure) -> str:
    """How the Gauss-Newton solve forms its kernel for ``structure``'s model:
    :data:`LINEAR_PATH` (factored per ``nn.Linear`` layer), or ``"jacobians (<why the
    factored form does not apply>)"`` (per-example Jacobians over all parameters)."""
    reason = linear_reason(structure)
    return LINEAR_PATH if reason is None else f"jacobians ({reason})"


def linear_bytes(structure: Structure, itemsize: int = 8, chunk_size: int = 256) -> int:
    """Estimated peak bytes of the factored Gauss-Newton solve: per task and layer the
    inputs ``(n_t, in)`` and sensitivities ``(R_t, out)``; the kernel, its cached blocks,
    its factor and a working copy plus the two Gram matrices of the eigenvalue estimates
    (``7 R^2``); one chunk of captured activations and sensitivities (``C + 1`` copies);
    two slices of explicit rows (a layer whose penalty varies within its weight); the
    ``(p, T)`` blocks of the task-level solve (test and training gradients, solutions, a
    working copy: ``4 p T``), which are now the largest part."""
    fns = structure.fns
    layers = gn_kernel.task_layers(structure)
    rows = [task_rows(fns, t, chunk_size) for t in range(fns.n_tasks)]
    held = chunk = 0
    for t in range(fns.n_tasks):
        n, width = len(fns.train[t][0]), output_width(fns, t)
        held += sum(n * m.in_features + rows[t] * m.out_features for m in layers[t])
        sizes = sum(m.in_features + m.out_features for m in layers[t])
        chunk = max(chunk, min(n, chunk_size) * (width + 1) * sizes)
    r, blocks = sum(rows), 4 * fns.space.numel * fns.n_tasks
    return itemsize * (held + chunk + 7 * r * r + blocks) + 2 * gn_kernel.MATERIALISE_BYTES


def penalty_diagonal(fns: MTLFunctions, seed: int = 0) -> Tensor | None:
    """The diagonal ``(p,)`` of the penalty's Hessian, or None when that Hessian is not
    diagonal (checked on a random vector); memoised per model and point."""
    diag: Tensor | None = _memo(
        fns, f"penalty_diagonal_{seed}", lambda: _penalty_diagonal(fns, seed)
    )
    return diag


def _penalty_diagonal(fns: MTLFunctions, seed: int) -> Tensor | None:
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(fns.space.numel, 1, generator=gen, dtype=fns.theta.dtype)
    diag, hv = _penalty_products(fns, [torch.ones_like(v[:, 0]), v[:, 0]])
    scale = float(diag.abs().max()) * float(v.abs().max()) if diag.numel() else 0.0
    if float((hv - diag * v[:, 0]).abs().max()) > DIAGONAL_RTOL * max(scale, 1e-300):
        return None
    return diag


def _penalty_products(fns: MTLFunctions, vectors: Sequence[Tensor]) -> list[Tensor]:
    """The penalty's Hessian times each of ``vectors`` ``(p,)``, by reverse over reverse
    mode (plain autograd: no forward-mode machinery to load, a few milliseconds for an L2
    penalty over a million parameters)."""
    with torch.enable_grad():
        theta = fns.theta.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(fns.penalty(theta), theta, create_graph=True, allow_unused=True)
        if g is None or not g.requires_grad:  # constant (or no) penalty: zero Hessian
            return [torch.zeros_like(v) for v in vectors]
        out = []
        for i, v in enumerate(vectors):
            (hv,) = torch.autograd.grad(
                g, theta, v, retain_graph=i < len(vectors) - 1, allow_unused=True
            )
            out.append(torch.zeros_like(v) if hv is None else hv.detach())
    return out


def sample_space_solver(structure: Structure) -> str:
    """The sample-space solver for ``structure``'s model: ``woodbury`` (exact) for a model
    linear in its parameters, ``woodbury-gn`` (Gauss-Newton) otherwise."""
    model = getattr(getattr(structure, "fns", None), "model", None)
    return "woodbury" if getattr(model, "convex", False) else "woodbury-gn"


def not_applicable_reason(structure: Structure, gauss_newton: bool = False) -> str | None:
    """Why the Woodbury solver (``gauss_newton``: its Gauss-Newton version) does not apply
    to ``structure``'s model (None: it does)."""
    fns = getattr(structure, "fns", None)
    model = getattr(fns, "model", None)
    if fns is None or model is None:
        return "no model"
    if not gauss_newton and not getattr(model, "convex", False):
        return (
            "the model is not linear in its parameters (solver='woodbury-gn' applies its "
            "Gauss-Newton approximation)"
        )
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


@dataclass
class KernelCache:
    """Unweighted kernel blocks ``G_t D^-1 G_s^T`` by task pair ``(t, s)``, ``t <= s``, all
    for the one inverse diagonal ``inverse`` ``(p,)`` (cleared when another is asked)."""

    inverse: Tensor | None = None
    blocks: dict[tuple[int, int], Tensor] = field(default_factory=dict)

    def for_inverse(self, inverse: Tensor) -> dict[tuple[int, int], Tensor]:
        """The blocks valid for ``inverse`` (emptied if it differs from the cached one)."""
        if self.inverse is None or not torch.equal(self.inverse, inverse):
            self.inverse, self.blocks = inverse, {}
        return self.blocks


class SampleSpace:
    """The factors ``G_t`` and penalty diagonal of the sample-space form.

    Args:
        structure: the model's MTIF structure (local coordinates per task).
        chunk_size: at most this many examples per chunk of Jacobians (fewer for wide
            networks, see :func:`jacobian_chunk_size`).
        gauss_newton: accept a model that is not linear in its parameters (``G^T G`` is
            then the Gauss-Newton part of its data Hessian).
        linear_layers: hold the factors per ``nn.Linear`` layer
            (:class:`LinearKernelOperator`) instead of as ``R_t x p_local`` matrices;
            None: whenever the model allows it (:func:`gn_kernel.linear_reason`), for
            both solvers (a linear model's exact Hessian has the same factors).

    Raises:
        ConfigError: the form does not apply (the reason is in the message), or
            ``linear_layers=True`` for a model it does not apply to."""

    def __init__(
        self,
        structure: Structure,
        chunk_size: int = 256,
        gauss_newton: bool = False,
        linear_layers: bool | None = None,
    ) -> None:
        reason = not_applicable_reason(structure, gauss_newton)
        if reason is not None:
            name = "woodbury-gn" if gauss_newton else "woodbury"
            raise ConfigError(f"solver={name!r} does not apply: {reason}")
        self.structure = structure
        self.fns = structure.fns
        self.chunk_size = chunk_size
        self.gauss_newton = gauss_newton
        self.cache = KernelCache()
        self._gradient_factors: dict[tuple[int, str], gn_kernel.LinearFactor] = {}
        wanted = True if linear_layers is None else linear_layers
        why = linear_reason(structure) if wanted else None
        if linear_layers and why is not None:
            raise ConfigError(f"linear_layers=True does not apply: {why}")
        self.linear_layers = wanted and why is None

    @cached_property
    def penalty_diagonal(self) -> Tensor:
        """``(p,)`` diagonal of the penalty Hessian (entries >= 0)."""
        diag = penalty_diagonal(self.fns)
        assert diag is not None
        return diag

    @cached_property
    def factors(self) -> list[Tensor]:
        """Per task ``G_t``, ``(R_t, p_local)``: rows ``sqrt(lambda_k) v_k^T J_i / sqrt(n_t)``
        for every example i and output-curvature eigenpair ``(lambda_k, v_k)`` of it above
        :data:`NULL_RTOL` of its largest (``R_t <= n_t C``). Each is written in place chunk
        by chunk, so the peak is the factors plus one chunk."""
        return [self._factor(t) for t in range(self.fns.n_tasks)]

    @cached_property
    def linear_factors(self) -> list[gn_kernel.LinearFactor]:
        """Per task ``G_t`` held per ``nn.Linear`` layer (the rows of :attr:`factors`, same
        order: example-major, the kept curvature directions of each example)."""
        fns = self.fns
        out = []
        for t, layers in enumerate(gn_kernel.task_layers(self.structure)):
            x, y = fns.train[t]
            roots = train_roots(fns, t, self.chunk_size)  # (n, C, C)
            keep = kept_directions(roots)
            coef = (roots.transpose(1, 2) / max(len(x), 1) ** 0.5)[keep]  # (R_t, C)
            example = torch.nonzero(keep)[:, 0]
            out.append(
                gn_kernel.LinearFactor.build(fns, t, layers, x, coef, example, self.chunk_size)
            )
        return out

    def example_gradient_sq_norms(self, task: int) -> Tensor:
        """``(n_t,)`` squared norms of the per-example loss gradients of task ``task`` over
        its local parameters, from the layer factors (rows ``J_i^T dl_i/df``;
        ``linear_layers`` only)."""
        return self.gradient_factor(task).sq_norms()

    def gradient_factor(
        self, task: int, split: SplitName = "train", scale: float = 1.0
    ) -> gn_kernel.LinearFactor:
        """The per-example loss gradients of task ``task`` on ``split`` over its local
        parameters, held per layer: row ``n`` is ``scale J_n^T dl_n/df_n`` (``(n_split, p)``;
        ``scale = 1/n_split``: its rows sum to the gradient of the mean loss). One forward
        and ``C`` backward passes per chunk, once per task and split (kept for the
        stationarity scale and the task matrix); ``linear_layers`` only."""
        key = (task, split)
        if key not in self._gradient_factors:
            fns = self.fns
            x, y = (fns.train if split == "train" else fns.test)[task]
            with torch.no_grad():
                out = fns.outputs(fns.theta, task, x).reshape(len(x), -1)
            coef = vmap(grad(_example_loss(fns, task)))(out, y)  # (n, C)
            layers = gn_kernel.task_layers(self.structure)[task]
            example = torch.arange(len(x))
            self._gradient_factors[key] = gn_kernel.LinearFactor.build(
                fns, task, layers, x, coef, example, self.chunk_size
            )
        factor = self._gradient_factors[key]
        return factor if scale == 1.0 else gn_kernel.LinearFactor.stack([factor], [scale])

    def _factor(self, task: int) -> Tensor:
        fns = self.fns
        x, y = fns.train[task]
        coords = self.structure.local_coords(task)
        roots = train_roots(fns, task, self.chunk_size)  # (n, C, C)
        keep = kept_directions(roots)
        out = torch.empty(int(keep.sum()), coords.numel(), dtype=fns.theta.dtype)
        width = roots.shape[1]
        chunk = jacobian_chunk_size(width, fns.space.numel, out.element_size(), self.chunk_size)
        root_rows = roots.transpose(1, 2) / max(len(x), 1) ** 0.5  # row k: S_i's k-th row
        row = 0
        for s, jac in zip(
            range(0, len(x), chunk), jacobian_chunks(fns, task, coords, x, chunk), strict=True
        ):
            mine = keep[s : s + chunk]  # (c, C)
            picked = root_rows[s : s + chunk][mine]  # (k, C): the kept rows, example-major
            counts = mine.sum(1)
            if bool((counts == counts[0]).all()):  # m rows each: multiply straight into out
                c, m = mine.shape[0], int(counts[0])
                target = out[row : row + c * m].view(c, m, -1)
                torch.matmul(picked.view(c, m, width), jac, out=target)
            else:
                owner = torch.nonzero(mine)[:, 0]
                out[row : row + picked.shape[0]] = torch.einsum("kc,kcp->kp", picked, jac[owner])
            row += picked.shape[0]
            del jac
        return out

    def operator(
        self,
        weights: Sequence[float] | None = None,
        pin: Tensor | None = None,
        pin_value: float = 0.0,
    ) -> KernelOperator:
        """``P + sum_t w_t G_t^T G_t`` (default weights 1: the Hessian ``H``, or its
        Gauss-Newton approximation), plus ``pin_value`` on the diagonal at the flat
        positions ``pin``."""
        coords = [self.structure.local_coords(t) for t in range(self.fns.n_tasks)]
        w = list(weights) if weights is not None else [1.0] * self.fns.n_tasks
        penalty = self.penalty_diagonal
        if pin is not None and pin.numel():
            penalty = penalty.clone()
            penalty[pin] += pin_value
        if self.linear_layers:
            return LinearKernelOperator(penalty, self.linear_factors, coords, w, self.cache)
        return KernelOperator(penalty, self.factors, coords, w, self.cache)


def _columns(g: Tensor, idx: Tensor) -> Tensor:
    """``g[:, idx]``: a view (no copy) when ``idx`` is a contiguous increasing range."""
    n = idx.numel()
    if n and int(idx[-1]) - int(idx[0]) + 1 == n and (n == 1 or bool((idx.diff() == 1).all())):
        return g[:, int(idx[0]) : int(idx[-1]) + 1]
    return g[:, idx]


def _membership(factors: Sequence[gn_kernel.LinearFactor], dtype: torch.dtype) -> Tensor:
    """``(sum n_rows, len(factors))``: 1 where a row of the stacked ``factors`` belongs to
    that factor (summing rows per factor)."""
    sizes = torch.tensor([f.n_rows for f in factors], dtype=torch.long)
    owner = torch.repeat_interleave(torch.arange(len(factors)), sizes)
    out = torch.zeros(int(sizes.sum()), len(factors), dtype=dtype)
    out[torch.arange(owner.numel()), owner] = 1.0
    return out


class KernelOperator(SymmetricOperator):
    """``H = diag(P) + sum_t w_t G_t^T G_t`` with ``G_t`` ``(R_t, p_t)`` acting on the flat
    positions ``coords[t]``; factorised in the sample space (Woodbury).

    The factors are shared, not copied (weights scale the products); ``cache`` keeps the
    unweighted kernel blocks for reuse by operators with other weights."""

    def __init__(
        self,
        penalty: Tensor,
        factors: Sequence[Any],
        coords: Sequence[Tensor],
        weights: Sequence[float],
        cache: KernelCache | None = None,
    ) -> None:
        self.penalty = penalty
        self.tasks = [t for t, w in enumerate(weights) if w != 0.0]
        self.factors = [factors[t] for t in self.tasks]
        self.scales = [float(weights[t]) ** 0.5 for t in self.tasks]
        self.coords = [coords[t] for t in self.tasks]
        self.cache = cache
        self.dim = penalty.numel()
        self.dtype = penalty.dtype

    @property
    def rows(self) -> int:
        return sum(self._row_counts())

    def _apply(self, v: Tensor) -> Tensor:
        """``G v``: ``(R, k)``."""
        if not self.factors:
            return torch.zeros(0, v.shape[1], dtype=v.dtype)
        parts = zip(self.factors, self.coords, self.scales, strict=True)
        return torch.cat([s * (g @ v[c]) for g, c, s in parts])

    def _apply_t(self, z: Tensor) -> Tensor:
        """``G^T z``: ``(p, k)``."""
        out = torch.zeros(self.dim, z.shape[1], dtype=z.dtype)
        start = 0
        for g, c, s in zip(self.factors, self.coords, self.scales, strict=True):
            out.index_add_(0, c, g.T @ (s * z[start : start + g.shape[0]]))
            start += g.shape[0]
        return out

    def matvec(self, v: Tensor) -> Tensor:
        return self.penalty[:, None] * v + self._apply_t(self._apply(v))

    def extreme_eigenvalues(self, seed: int = 0) -> tuple[float, float]:
        """Exact up to 2048 parameters; else :data:`LANCZOS_STEPS` Lanczos steps (each
        reads the factors twice), sharpened by the interlacing bounds of a rank-``R``
        positive semidefinite update of the diagonal ``P``: ``lambda_min <= P_(R+1)`` (the
        ``R+1``-th smallest entry; exact when it equals the smallest, as with many
        equally penalised biases) and ``lambda_max >= max P``."""
        if self.dim <= 2048:
            ev = torch.linalg.eigvalsh(self.dense())
            return float(ev[0]), float(ev[-1])
        lo, hi = lanczos_extremes(self, iters=LANCZOS_STEPS, seed=seed)
        diag = torch.sort(self.penalty).values
        lo = min(lo, float(diag[min(self.rows, self.dim - 1)]))
        return lo, max(hi, float(diag[-1]))

    def _cross(self, t: int, s: int, scaled: Tensor) -> Tensor:
        """``G_t D^-1 G_s^T`` ``(R_t, R_s)`` (unweighted) from ``scaled = G_s D^-1``, over
        the coordinates the two tasks share (column views where they are a contiguous
        range, as the shared parameters of hard sharing are)."""
        gt, ct, cs = self.factors[t], self.coords[t], self.coords[s]
        if ct.numel() == cs.numel() and torch.equal(ct, cs):
            return gt @ scaled.T
        where = torch.full((self.dim,), -1, dtype=torch.long)
        where[cs] = torch.arange(cs.numel())
        pos = where[ct]
        mine = torch.nonzero(pos >= 0).flatten()
        if not mine.numel():
            return torch.zeros(gt.shape[0], scaled.shape[0], dtype=self.dtype)
        return _columns(gt, mine) @ _columns(scaled, pos[mine]).T

    def _row_counts(self) -> list[int]:
        """``R_t`` of each task with a nonzero weight."""
        return [g.shape[0] for g in self.factors]

    def _blocks(self, s: int, missing: Sequence[int], diagonal: Tensor) -> list[Tensor]:
        """Unweighted ``G_t diag(diagonal) G_s^T`` for the positions ``t`` in ``missing``
        (positions in :attr:`tasks`), from one scaled copy of ``G_s``."""
        scaled = self.factors[s] * diagonal[self.coords[s]]
        return [self._cross(t, s, scaled) for t in missing]

    def kernel(self, inverse_diagonal: Tensor) -> Tensor:
        """``I_R + G diag(inverse_diagonal) G^T``, ``(R, R)`` (:meth:`weighted_gram`; blocks
        come from :attr:`cache` when it holds them for this inverse diagonal)."""
        blocks = {} if self.cache is None else self.cache.for_inverse(inverse_diagonal)
        k = self.weighted_gram(inverse_diagonal, blocks)
        k.diagonal().add_(1.0)
        return k

    def weighted_gram(
        self, diagonal: Tensor, blocks: dict[tuple[int, int], Tensor] | None = None
    ) -> Tensor:
        """``G diag(diagonal) G^T``, ``(R, R)`` with the task weights, block by block over
        the coordinates each pair of tasks shares; ``blocks`` holds (and receives) the
        unweighted blocks by task pair."""
        blocks = {} if blocks is None else blocks
        sizes = self._row_counts()
        starts = [sum(sizes[:t]) for t in range(len(sizes))]
        k = torch.empty(sum(sizes), sum(sizes), dtype=self.dtype)
        for s in range(len(sizes)):
            missing = [t for t in range(s + 1) if (self.tasks[t], self.tasks[s]) not in blocks]
            if missing:
                for t, block in zip(missing, self._blocks(s, missing, diagonal), strict=True):
                    blocks[(self.tasks[t], self.tasks[s])] = block
            rs = slice(starts[s], starts[s] + sizes[s])
            for t in range(s + 1):
                rt = slice(starts[t], starts[t] + sizes[t])
                k[rt, rs] = blocks[(self.tasks[t], self.tasks[s])]
                if self.scales[t] * self.scales[s] != 1.0:
                    k[rt, rs] *= self.scales[t] * self.scales[s]
                if t != s:
                    k[rs, rt] = k[rt, rs].T
        return k

    def factorize(self, damping: float) -> Factor:
        """Woodbury factorisation of ``H + damping``.

        Coordinates ``U`` where ``P + damping`` is not positive (unpenalised biases) get
        a stand-in ``rho`` (the mean data curvature there), taken back out by ``u = |U|``
        extra rows ``E_U`` of weight ``-(rho - P_U - damping)``: ``H + damping = D +
        W^T C W`` with ``W = [G; E_U^T]``, ``C = diag(I_R, -c_U)``, solved through the
        ``(R + u)``-dimensional kernel ``C^-1 + W D^-1 W^T`` (LU; symmetric indefinite
        when ``u > 0``). By Haynsworth's inertia theorem ``H + damping`` is positive
        definite iff that kernel has exactly ``u`` negative eigenvalues. Without such
        coordinates (``u = 0``) the kernel is positive definite: Cholesky."""
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
        if u == 0:  # D > 0: the kernel and H + damping are positive definite
            chol, info = torch.linalg.cholesky_ex(self.kernel(inv))
            if int(info) == 0:

                def solve_pd(rhs: Tensor) -> Tensor:
                    y = inv[:, None] * rhs
                    z = torch.cholesky_solve(self._apply(y), chol)
                    return y - inv[:, None] * self._apply_t(z)

                return Factor(solve_pd, True)
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


class LinearKernelOperator(KernelOperator):
    """:class:`KernelOperator` with each ``G_t`` held per ``nn.Linear`` layer
    (:class:`gn_kernel.LinearFactor`): kernel blocks ``O(R^2 (in + out))`` per layer,
    ``G v`` and ``G^T z`` one pass over the layers, nothing of size ``R x p``."""

    factors: list[gn_kernel.LinearFactor]

    @cached_property
    def stacked(self) -> gn_kernel.LinearFactor:
        """All weighted rows as one factor (one product per layer for ``G v``, ``G^T z``)."""
        return gn_kernel.LinearFactor.stack(self.factors, self.scales)

    def _row_counts(self) -> list[int]:
        return [f.n_rows for f in self.factors]

    def _apply(self, v: Tensor) -> Tensor:
        return self.stacked.apply(v)

    def _apply_t(self, z: Tensor) -> Tensor:
        out = torch.zeros(self.dim, z.shape[1], dtype=z.dtype)
        self.stacked.apply_t(z, out)
        return out

    def _blocks(self, s: int, missing: Sequence[int], diagonal: Tensor) -> list[Tensor]:
        layers = {p.layer.name: p.layer for f in self.factors for p in f.parts.values()}
        weights = gn_kernel.layer_weights(list(layers.values()), diagonal)
        return [self.factors[t].gram(self.factors[s], weights) for t in missing]

    def grouped_inverse(
        self,
        left: Sequence[gn_kernel.LinearFactor],
        right: Sequence[gn_kernel.LinearFactor],
        damping: float,
    ) -> tuple[Tensor, float] | None:
        """``M[i, j] = l_i^T (H + damping)^-1 r_j``, ``(len(left), len(right))``, with
        ``l_i`` the sum of the rows of ``left[i]`` (likewise ``r_j``), entirely in the sample
        space: with ``D = P + damping``, ``K = I + G D^-1 G^T`` and ``L``, ``Rr`` the
        stacked rows,

            ``M = S_l^T (L D^-1 Rr^T) S_r - B_l^T K^-1 B_r``,  ``B = G D^-1 L^T S_l``,

        (``S`` sums rows per factor) from Gram blocks between the rows of ``left``,
        ``right`` and ``G`` (:meth:`gn_kernel.LinearFactor.gram`, ``O(N_l N_r (in + out))``
        per layer and memory ``N_l N_r``): no vector over the ``p`` parameters. Also the
        relative residual of the solves ``x_i = (H + damping)^-1 l_i``, ``max_i ||(H +
        damping) x_i - l_i|| / ||l_i||``: the residual is ``G^T (B_l - K Z)`` with ``Z``
        the computed ``K^-1 B_l``, its norm read through ``G G^T``.

        None (use :meth:`factorize`) when ``D`` is not positive everywhere (coordinates
        without curvature need its extra rows) or the kernel's Cholesky factorisation
        fails."""
        shifted = self.penalty + damping
        if not bool((shifted > 0).all()):
            return None
        inverse = 1.0 / shifted
        kernel = self.kernel(inverse)
        chol, info = torch.linalg.cholesky_ex(kernel)
        if int(info):
            return None
        lf = gn_kernel.LinearFactor.stack(left, [1.0] * len(left))
        rf = gn_kernel.LinearFactor.stack(right, [1.0] * len(right))
        parts = [*self.stacked.parts.values(), *lf.parts.values(), *rf.parts.values()]
        layers = list({p.layer.name: p.layer for p in parts}.values())
        weights = gn_kernel.layer_weights(layers, inverse)
        sl, sr = _membership(left, self.dtype), _membership(right, self.dtype)
        b_left = self.stacked.gram(lf, weights) @ sl  # (R, len(left))
        b_right = self.stacked.gram(rf, weights) @ sr
        z = torch.cholesky_solve(b_left, chol)
        matrix = sl.T @ lf.gram(rf, weights) @ sr - z.T @ b_right
        ones = gn_kernel.layer_weights(layers, torch.ones_like(inverse))
        res = b_left - kernel @ z
        res_sq = (res * (self.stacked.gram(self.stacked, ones) @ res)).sum(0)
        rhs_sq = (sl * (lf.gram(lf, ones) @ sl)).sum(0)
        ratio = res_sq.clamp(min=0).sqrt() / rhs_sq.clamp(min=0).sqrt().clamp(min=1e-300)
        return matrix, float(ratio.max()) if ratio.numel() else 0.0

    def extreme_eigenvalues(self, seed: int = 0) -> tuple[float, float]:
        """Exact up to :data:`EXACT_SPECTRUM_DIM` parameters; else the Ritz values of ``H``
        on the range of ``G^T`` (at most ``R`` dimensions; no Lanczos over ``p``): with
        ``G G^T = U S U^T`` (directions with ``S`` above ``1e-12`` of its largest),
        ``Q = G^T U S^-1/2`` is orthonormal and ``Q^T H Q = S^-1/2 U^T G P G^T U S^-1/2 +
        S``, from two sample-space Gram matrices. Exact when the penalty is a multiple of
        the identity (``lambda_max = P + s_max``); in general a lower bound of
        ``lambda_max`` and an upper bound of ``lambda_min``, sharpened as in
        :meth:`KernelOperator.extreme_eigenvalues` by ``lambda_min <= P_(R+1)`` and
        ``lambda_max >= max P``. Above :data:`RITZ_MAX_ROWS` rows that ``O(R^3)``
        eigenproblem costs more than the solve itself: Lanczos as in
        :meth:`KernelOperator.extreme_eigenvalues` (its products are cheap here)."""
        if self.dim <= EXACT_SPECTRUM_DIM or self.rows > RITZ_MAX_ROWS:
            return super().extreme_eigenvalues(seed)
        diag = torch.sort(self.penalty).values
        lo, hi = float(diag[min(self.rows, self.dim - 1)]), float(diag[-1])
        if not self.rows:
            return float(diag[0]), hi
        gram = self.weighted_gram(torch.ones_like(self.penalty))
        evals, evecs = torch.linalg.eigh(gram)
        keep = evals > 1e-12 * max(float(evals[-1]), 1e-300)
        if not bool(keep.any()):
            return lo, hi
        basis = evecs[:, keep] / evals[keep].sqrt()
        curved = basis.T @ self.weighted_gram(self.penalty) @ basis
        ritz = torch.linalg.eigvalsh(0.5 * (curved + curved.T) + torch.diag(evals[keep]))
        return min(lo, float(ritz[0])), max(hi, float(ritz[-1]))


class WoodburySolver(ExplicitSolver):
    """Exact solve in the sample space (see module docstring); needs the
    :class:`KernelOperator` of a model linear in its parameters."""

    name = "woodbury"

    def _solve(
        self, op: SymmetricOperator, rhs: Tensor, damping: float, lo: float, hi: float
    ) -> tuple[Tensor, SolveReport]:
        if not isinstance(op, KernelOperator):
            raise ConfigError(
                f"solver={self.name!r} needs the sample-space operator of the model (use it "
                "through MTIF)"
            )
        return super()._solve(op, rhs, damping, lo, hi)


class WoodburyGNSolver(WoodburySolver):
    """The same solve with the Gauss-Newton matrix ``P + G^T G`` of a network (see module
    docstring): exact for a model linear in its parameters, an approximation of the
    Hessian otherwise (positive definite when the penalty is)."""

    name = "woodbury-gn"


SOLVERS["woodbury"] = WoodburySolver
SOLVERS["woodbury-gn"] = WoodburyGNSolver
