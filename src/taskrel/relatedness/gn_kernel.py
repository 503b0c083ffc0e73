"""The Gauss-Newton factor of a network of ``nn.Linear`` layers, never formed over all
parameters.

For a layer ``z = W a + b`` that runs once per example, the Jacobian of an output
direction ``k`` of example ``n`` with respect to ``W`` is the outer product
``delta_{n,k} a_n^T`` (and ``delta_{n,k}`` for ``b``), with ``a_n`` the layer's input
(``in``) and ``delta_{n,k} = d (s_k^T f_n) / d z_n`` the sensitivity of that output
direction to the layer's output (``out``). A row of the sample-space factor ``G`` is
therefore held as one ``a`` per example and one ``delta`` per row and layer, and

- the kernel block ``G_t diag(d) G_s^T`` is, per layer with ``d`` constant on its weight
  (and on its bias), ``d_W (Delta_t Delta_s^T) * (A_t A_s^T) + d_b Delta_t Delta_s^T``:
  ``O(R^2 (in + out))`` instead of ``O(R^2 in out)``;
- ``G v`` is ``delta^T (V a + v_b)`` per row and ``G^T z`` one matmul per layer.

What it needs (:func:`linear_reason` says what is missing, and the sample-space solver
falls back to per-example Jacobians): every parameter a task's loss touches is the weight
or bias of an ``nn.Linear`` that runs once per forward on a ``(batch, in)`` input, and
examples do not interact (no batch statistics). Anything between the layers (activations,
dropout in eval mode, normalisation within an example) is allowed: the sensitivities come
from autograd through the model's own forward. A numerical probe checks the result: the
structured rows of a few examples times a random direction must equal the model's own
Jacobian-vector products (``torch.func.jvp``, one example at a time) to
:data:`PROBE_RTOL`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.func import jvp, vmap

if TYPE_CHECKING:
    from taskrel.relatedness.mtif import MTLFunctions, Structure

PROBE_EXAMPLES = 2  # examples per task in the probe of :func:`linear_reason`
PROBE_RTOL = 1e-8  # structured rows vs jvp: largest difference / largest value
MATERIALISE_BYTES = 2**26
"""A layer whose kernel weights vary within its weight matrix has its rows formed
explicitly, a few output units at a time, each slice near this size."""


class NotStructured(Exception):
    """The model's Jacobians are not those of a chain of ``nn.Linear`` layers (the
    message says why)."""


@dataclass(frozen=True)
class LinearLayer:
    """One ``nn.Linear`` module: its name and the flat positions of its weight
    (``out * in``, row-major) and bias (``out``)."""

    name: str
    weight: slice
    bias: slice | None
    in_features: int
    out_features: int


LayerWeights = dict[str, tuple[float | Tensor, float | Tensor | None]]
"""Per layer the kernel weights of its weight and bias: a number where the diagonal is
constant on the tensor, else the ``(out, in)`` / ``(out,)`` values."""


def _slices(fns: MTLFunctions) -> dict[str, slice]:
    starts = [0]
    for size in fns.space.sizes:
        starts.append(starts[-1] + size)
    return {n: slice(starts[i], starts[i + 1]) for i, n in enumerate(fns.space.names)}


def task_layers(structure: Structure) -> list[list[LinearLayer]]:
    """Per task, the ``nn.Linear`` layers whose parameters its loss touches.

    Raises:
        NotStructured: a parameter a task touches is not the weight or bias of an
            ``nn.Linear``, or a task touches part of one."""
    fns = structure.fns
    modules = dict(fns.model.named_modules())
    where = _slices(fns)
    layers: dict[str, LinearLayer] = {}
    owner: dict[str, str] = {}
    for name in fns.space.names:
        module_name, _, attr = name.rpartition(".")
        module = modules.get(module_name)
        if not isinstance(module, nn.Linear) or attr not in ("weight", "bias"):
            owner[name] = ""
            continue
        owner[name] = module_name
        if module_name not in layers:
            bias = where.get(f"{module_name}.bias") if module.bias is not None else None
            layers[module_name] = LinearLayer(
                module_name,
                where[f"{module_name}.weight"],
                bias,
                module.in_features,
                module.out_features,
            )
    out = []
    for t in range(fns.n_tasks):
        local = set(structure.local_names(t))
        mine = [n for n in fns.space.names if n in local]
        stray = [n for n in mine if not owner[n]]
        if stray:
            raise NotStructured(f"parameter {stray[0]!r} is not the weight or bias of an nn.Linear")
        names = list(dict.fromkeys(owner[n] for n in mine))
        for m in names:
            module = modules[m]
            assert isinstance(module, nn.Linear)
            if any(f"{m}.{a}" not in local for a, _ in module.named_parameters()):
                raise NotStructured(f"task {t} touches only part of the layer {m!r}")
        out.append([layers[m] for m in names])
    return out


def _capture(
    fns: MTLFunctions, task: int, x: Tensor, layers: Sequence[LinearLayer]
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """One forward pass of task ``task`` on ``x`` ``(b, ...)`` with hooks on ``layers``:
    per layer its inputs ``(b, in)`` and the sensitivities ``(C, b, out)`` of each output
    column to its outputs (one backward pass per column). A layer the outputs do not
    depend on gets zeros.

    Raises:
        NotStructured: a layer runs more than once, or on an input other than
            ``(b, in)``."""
    modules = dict(fns.model.named_modules())
    calls: dict[str, list[tuple[Tensor, Tensor]]] = {layer.name: [] for layer in layers}

    def recorder(name: str) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], Tensor]:
        def record(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> Tensor:
            calls[name].append((args[0], output))
            return output.clone()  # an in-place op downstream must not rebase ``output``

        return record

    handles = [modules[layer.name].register_forward_hook(recorder(layer.name)) for layer in layers]
    try:
        with torch.enable_grad():
            theta = fns.theta.detach().requires_grad_(True)
            out = fns.outputs(theta, task, x).reshape(len(x), -1)
    finally:
        for handle in handles:
            handle.remove()
    inputs, pre = {}, []
    for layer in layers:
        seen = calls[layer.name]
        if len(seen) > 1:
            raise NotStructured(f"the layer {layer.name!r} runs {len(seen)} times per forward")
        if not seen:
            raise NotStructured(f"the layer {layer.name!r} does not run in task {task}'s forward")
        a, z = seen[0]
        if a.shape != (len(x), layer.in_features) or z.shape != (len(x), layer.out_features):
            raise NotStructured(
                f"the layer {layer.name!r} runs on inputs of shape {tuple(a.shape)}, not "
                f"(batch, {layer.in_features})"
            )
        inputs[layer.name] = a.detach()
        pre.append(z)
    width = out.shape[1]
    sens: dict[str, list[Tensor]] = {layer.name: [] for layer in layers}
    for c in range(width):
        grads = torch.autograd.grad(
            out[:, c].sum(), pre, retain_graph=c < width - 1, allow_unused=True
        )
        for layer, z, g in zip(layers, pre, grads, strict=True):
            sens[layer.name].append(torch.zeros_like(z) if g is None else g.detach())
    return inputs, {name: torch.stack(parts) for name, parts in sens.items()}


@dataclass
class LayerPart:
    """One layer's share of a factor: ``inputs`` ``(n, in)`` of the examples, ``sens``
    ``(r, out)`` of the factor rows that pass through the layer, ``example`` ``(r,)`` each
    such row's position in ``inputs`` and ``rows`` ``(r,)`` its position in the factor."""

    layer: LinearLayer
    inputs: Tensor
    sens: Tensor
    example: Tensor
    rows: Tensor


@dataclass
class LinearFactor:
    """A sample-space factor ``G`` ``(n_rows, p)`` held per ``nn.Linear`` layer: row ``r``
    is, on each layer it passes through, ``sens[r] inputs[example[r]]^T`` on the weight and
    ``sens[r]`` on the bias (:class:`LayerPart`), zero elsewhere."""

    n_rows: int
    parts: dict[str, LayerPart]

    @classmethod
    def build(
        cls,
        fns: MTLFunctions,
        task: int,
        layers: Sequence[LinearLayer],
        x: Tensor,
        coef: Tensor,
        example: Tensor,
        chunk_size: int = 256,
    ) -> LinearFactor:
        """The factor of one task: row ``r`` is ``sum_c coef[r, c] J_{example[r], c}``
        (``J_{n,c}`` the gradient of output column c of example n), from forward/backward
        passes over ``chunk_size`` examples at a time.

        Args:
            x: ``(n, ...)`` the task's inputs.
            coef: ``(R, C)`` per row its coefficients over the output columns.
            example: ``(R,)`` per row its example.

        Raises:
            NotStructured: see :func:`_capture`."""
        dtype = fns.theta.dtype
        inputs = {m.name: torch.empty(len(x), m.in_features, dtype=dtype) for m in layers}
        sens = {m.name: torch.empty(len(example), m.out_features, dtype=dtype) for m in layers}
        for s in range(0, len(x), chunk_size):
            xs = x[s : s + chunk_size]
            mine = torch.nonzero((example >= s) & (example < s + len(xs))).flatten()
            a, d = _capture(fns, task, xs, layers)
            for m in layers:
                inputs[m.name][s : s + len(xs)] = a[m.name]
                picked = d[m.name][:, example[mine] - s]  # (C, r, out)
                sens[m.name][mine] = torch.einsum("rc,cro->ro", coef[mine], picked)
        rows = torch.arange(len(example))
        parts = {m.name: LayerPart(m, inputs[m.name], sens[m.name], example, rows) for m in layers}
        return cls(len(example), parts)

    @classmethod
    def stack(cls, factors: Sequence[LinearFactor], scales: Sequence[float]) -> LinearFactor:
        """The factors' rows one below the other, each factor's scaled by its ``scales``
        entry; a layer several of them pass through becomes one part (one product per
        layer in :meth:`apply` and :meth:`apply_t`)."""
        grouped: dict[str, list[tuple[LayerPart, float, int]]] = {}
        offset = 0
        for factor, scale in zip(factors, scales, strict=True):
            for name, part in factor.parts.items():
                grouped.setdefault(name, []).append((part, scale, offset))
            offset += factor.n_rows
        parts = {}
        for name, members in grouped.items():
            starts = [0]
            for part, _, _ in members:
                starts.append(starts[-1] + part.inputs.shape[0])
            parts[name] = LayerPart(
                members[0][0].layer,
                torch.cat([p.inputs for p, _, _ in members]),
                torch.cat([p.sens * s for p, s, _ in members]),
                torch.cat([p.example + n for (p, _, _), n in zip(members, starts, strict=False)]),
                torch.cat([p.rows + o for p, _, o in members]),
            )
        return cls(offset, parts)

    def sq_norms(self) -> Tensor:
        """``(n_rows,)`` squared norms of the rows: per layer ``|sens|^2 (|a|^2 +
        1[bias])``."""
        out = torch.zeros(self.n_rows, dtype=torch.float64)
        for part in self.parts.values():
            acts = part.inputs.pow(2).sum(1)[part.example] + (part.layer.bias is not None)
            out.index_add_(0, part.rows, (part.sens.pow(2).sum(1) * acts).to(out.dtype))
        return out

    def apply(self, v: Tensor) -> Tensor:
        """``G v`` ``(n_rows, k)`` for ``v`` ``(p, k)``: per layer ``sens^T (V a + v_b)``
        (``V`` read in place, one batched product per layer)."""
        out = torch.zeros(self.n_rows, v.shape[1], dtype=v.dtype)
        k = v.shape[1]
        for part in self.parts.values():
            m = part.layer
            w = v[m.weight].view(m.out_features, m.in_features, k)
            z = torch.matmul(part.inputs, w)  # (out, n, k)
            if m.bias is not None:
                z = z + v[m.bias].unsqueeze(1)
            out.index_add_(0, part.rows, torch.einsum("ro,ork->rk", part.sens, z[:, part.example]))
        return out

    def apply_t(self, z: Tensor, out: Tensor) -> None:
        """Add ``G^T z`` to ``out`` ``(p, k)`` for ``z`` ``(n_rows, k)``: per layer the rows'
        ``z sens`` summed per example, times the inputs (added in place)."""
        k = z.shape[1]
        for part in self.parts.values():
            m, a = part.layer, part.inputs
            rows = part.sens.T.unsqueeze(2) * z[part.rows].unsqueeze(0)  # (out, r, k)
            per = torch.zeros(m.out_features, a.shape[0], k, dtype=z.dtype)
            per.index_add_(1, part.example, rows)  # (out, n, k): summed per example
            target = out[m.weight].view(m.out_features, m.in_features, k)
            target.baddbmm_(a.T.expand(m.out_features, -1, -1), per)
            if m.bias is not None:
                out[m.bias] += per.sum(1)

    def gram(self, other: LinearFactor, weights: LayerWeights) -> Tensor:
        """``G diag(d) G'^T`` ``(n_rows, other.n_rows)`` over the layers both factors pass
        through, with ``weights`` from :func:`layer_weights` of ``d``."""
        dtype = next(iter(self.parts.values())).sens.dtype if self.parts else torch.float64
        out = torch.zeros(self.n_rows, other.n_rows, dtype=dtype)
        for name, mine in self.parts.items():
            theirs = other.parts.get(name)
            if theirs is None:
                continue
            w, b = weights[name]
            if isinstance(w, Tensor):  # varies within the weight: rows formed explicitly
                block = _materialised_gram(mine, theirs, w)
            else:
                acts = mine.inputs @ theirs.inputs.T  # (n, n')
                block = w * (mine.sens @ theirs.sens.T) * acts[mine.example][:, theirs.example]
            if b is not None:
                block = block + (mine.sens * b) @ theirs.sens.T
            out.index_put_((mine.rows[:, None], theirs.rows[None, :]), block, accumulate=True)
        return out


def _materialised_gram(mine: LayerPart, theirs: LayerPart, w: Tensor) -> Tensor:
    """One layer's ``G diag(w) G'^T`` ``(r, r')`` from its explicit rows, a slice of output
    units at a time (``w`` ``(out, in)``)."""
    m = mine.layer
    rows = max(mine.rows.numel(), theirs.rows.numel(), 1)
    step = max(1, MATERIALISE_BYTES // (rows * m.in_features * w.element_size()))
    out = torch.zeros(mine.rows.numel(), theirs.rows.numel(), dtype=w.dtype)
    a_mine, a_theirs = mine.inputs[mine.example], theirs.inputs[theirs.example]
    for o in range(0, m.out_features, step):
        part = slice(o, o + step)
        g_mine = mine.sens[:, part, None] * a_mine[:, None, :]  # (r, step, in)
        g_theirs = theirs.sens[:, part, None] * a_theirs[:, None, :]
        out += (g_mine * w[part]).flatten(1) @ g_theirs.flatten(1).T
    return out


def layer_weights(layers: Sequence[LinearLayer], diagonal: Tensor) -> LayerWeights:
    """Per layer the kernel weights of ``diagonal`` ``(p,)`` on its weight and bias (a
    number where constant on the tensor)."""

    def weight(part: Tensor, shape: tuple[int, ...]) -> float | Tensor:
        first = part[:1]
        return float(first) if bool((part == first).all()) else part.reshape(shape)

    out: LayerWeights = {}
    for m in layers:
        w = weight(diagonal[m.weight], (m.out_features, m.in_features))
        b = None if m.bias is None else weight(diagonal[m.bias], (m.out_features,))
        out[m.name] = (w, b)
    return out


def linear_reason(structure: Structure, seed: int = 0) -> str | None:
    """Why the structured factor does not apply to ``structure``'s model (None: it does):
    the checks of :func:`task_layers` and :func:`_capture`, then the probe (see module
    docstring) on the first :data:`PROBE_EXAMPLES` training examples of every task."""
    fns = structure.fns
    try:
        per_task = task_layers(structure)
        gen = torch.Generator().manual_seed(seed)
        direction = torch.randn(fns.space.numel, generator=gen, dtype=fns.theta.dtype)
        for t, layers in enumerate(per_task):
            x = fns.train[t][0][:PROBE_EXAMPLES]
            if not len(x):
                continue
            width = int(fns.outputs(fns.theta, t, x[:1]).numel())
            coef = torch.eye(width, dtype=fns.theta.dtype).repeat(len(x), 1)
            example = torch.arange(len(x)).repeat_interleave(width)
            factor = LinearFactor.build(fns, t, layers, x, coef, example)
            coords = structure.local_coords(t)
            v = torch.zeros_like(direction)
            v[coords] = direction[coords]  # one random direction, on the task's parameters
            mine = factor.apply(v[:, None])[:, 0]
            try:
                expected = _jvps(fns, t, x, v)
            except RuntimeError as err:  # e.g. a forward that torch.func cannot transform
                return f"the probe's Jacobian-vector products failed ({err})"
            scale = max(float(expected.abs().max()), float(mine.abs().max()), 1e-300)
            error = float((mine - expected).abs().max()) / scale
            if error > PROBE_RTOL:
                return (
                    f"the network's Jacobians are not those of its nn.Linear layers (task "
                    f"{t}: relative difference {error:.2g} on a random direction)"
                )
    except NotStructured as err:
        return str(err)
    return None


def _jvps(fns: MTLFunctions, task: int, x: Tensor, v: Tensor) -> Tensor:
    """``J_n v`` of task ``task``'s outputs for each example of ``x`` ``(b, ...)`` on its
    own (``vmap``: a batch of one per example), flattened to ``(b C,)``; ``v`` ``(p,)``."""
    theta = fns.theta

    def one(xi: Tensor) -> Tensor:
        def outputs(th: Tensor) -> Tensor:
            return fns.outputs(th, task, xi.unsqueeze(0)).reshape(-1)

        return jvp(outputs, (theta,), (v,))[1]

    return vmap(one)(x).reshape(-1)
