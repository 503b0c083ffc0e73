"""The Gauss-Newton factor held per nn.Linear layer (issue 15): on small MLPs with biases,
hidden layers and per-task heads (softmax classification and regression) its factor,
kernel, ``G v`` and ``G^T z`` equal those formed from per-example Jacobians to ~1e-12,
MTIF's task matrices and stationarity scale equal the Jacobian path's, its eigenvalue
estimates bracket the exact ones (and are exact for a scalar penalty), and models it
cannot structure fall back to the Jacobian path with the reason recorded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from taskrel.data.taskset import TaskSet
from taskrel.errors import ConfigError
from taskrel.models import build_model
from taskrel.relatedness import gn_kernel, woodbury
from taskrel.relatedness.adapter import ModuleAdapter
from taskrel.relatedness.influence import GB
from taskrel.relatedness.mtif import MTIF, MTLFunctions, structure_for
from taskrel.relatedness.woodbury import KernelOperator, LinearKernelOperator, SampleSpace

MLP = {"hidden": [5, 4], "activation": "tanh", "l2": 1e-2, "l2_task": 1e-1}


def _tasks(kind: str, small: TaskSet, synthetic_reg: TaskSet) -> TaskSet:
    return small if kind == "classification" else synthetic_reg


def _spaces(model: nn.Module, taskset: TaskSet) -> tuple[SampleSpace, SampleSpace]:
    """The layer-factored and the Jacobian sample spaces of one model."""
    structure = structure_for(MTLFunctions(model, taskset))
    layered = SampleSpace(structure, gauss_newton=True)
    dense = SampleSpace(structure, gauss_newton=True, linear_layers=False)
    assert layered.linear_layers and not dense.linear_layers
    return layered, dense


def _close(got: Tensor, expected: Tensor, rtol: float = 1e-12) -> None:
    scale = max(float(expected.abs().max()), 1e-300)
    assert float((got - expected).abs().max()) <= rtol * scale


@pytest.mark.parametrize("kind", ["classification", "regression"])
def test_layer_factor_equals_the_jacobian_factor(
    small: TaskSet, synthetic_reg: TaskSet, kind: str
) -> None:
    """For H, H - H_1 and a reweighted H: the whole factor G (applied to the identity),
    G^T z, the Woodbury kernel with the penalty's inverse (constant per tensor: the
    factored products) and with a random diagonal (the rows formed explicitly) equal the
    Jacobian path's to 1e-12."""
    taskset = _tasks(kind, small, synthetic_reg)
    torch.manual_seed(0)
    model = build_model("hard", taskset, MLP)
    layered, dense = _spaces(model, taskset)
    gen = torch.Generator().manual_seed(1)
    n_tasks = len(taskset)
    for weights in ([1.0] * n_tasks, [1.0, 0.0] + [1.0] * (n_tasks - 2), [0.5, 2.0, 1.0, 3.0]):
        weights = weights[:n_tasks]
        mine, theirs = layered.operator(weights), dense.operator(weights)
        assert isinstance(mine, LinearKernelOperator) and type(theirs) is KernelOperator
        assert mine.rows == theirs.rows
        eye = torch.eye(mine.dim, dtype=torch.float64)
        _close(mine._apply(eye), theirs._apply(eye))  # G itself, (R, p)
        z = torch.randn(mine.rows, 3, generator=gen, dtype=torch.float64)
        _close(mine._apply_t(z), theirs._apply_t(z))
        inverse = 1.0 / (mine.penalty + 0.1)
        layers = {p.layer.name: p.layer for f in mine.factors for p in f.parts.values()}
        weights_of = gn_kernel.layer_weights(list(layers.values()), inverse)
        assert all(isinstance(w, float) for w, _ in weights_of.values())
        _close(mine.kernel(inverse), theirs.kernel(inverse))
        varying = torch.rand(mine.dim, generator=gen, dtype=torch.float64)
        _close(mine.weighted_gram(varying), theirs.weighted_gram(varying))
        _close(mine.matvec(eye[:, :7]), theirs.matvec(eye[:, :7]))


@pytest.mark.parametrize("kind", ["classification", "regression"])
def test_mtif_matrices_equal_the_jacobian_path(
    small: TaskSet, synthetic_reg: TaskSet, kind: str
) -> None:
    """``woodbury-gn`` holds the factor per layer (recorded in the plan, with its memory
    estimate); its first-order
    and Newton task matrices and the stationarity scale (per-example gradient norms from
    the layer factors) equal the Jacobian path's."""
    taskset = _tasks(kind, small, synthetic_reg)
    torch.manual_seed(0)
    model = build_model("hard", taskset, MLP)
    layered = MTIF(model, taskset, solver="woodbury-gn", damping=0.0)
    assert layered.plan.gn_kernel == woodbury.LINEAR_PATH
    assert layered.plan.woodbury_gb == woodbury.linear_bytes(layered.structure) / GB
    assert isinstance(layered.operator(), LinearKernelOperator)
    dense = MTIF(model, taskset, solver="woodbury-gn", damping=0.0)
    dense.sample_space = SampleSpace(dense.structure, gauss_newton=True, linear_layers=False)
    assert type(dense.operator()) is KernelOperator
    for name in ("task_matrix", "newton_task_matrix"):
        expected = getattr(dense, name)()
        np.testing.assert_allclose(
            getattr(layered, name)(), expected, rtol=0, atol=1e-10 * np.abs(expected).max()
        )
    mine, theirs = layered.stationarity, dense.stationarity
    assert mine["task_grad_scale"] == pytest.approx(theirs["task_grad_scale"], rel=1e-12)


def test_eigenvalue_estimates_from_the_sample_space(
    small: TaskSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ritz values on the range of G^T: exact extremes for a scalar penalty c
    (c + the largest eigenvalue of G G^T, and c); otherwise a lower bound of lambda_max
    within 1% here and an upper bound of lambda_min."""
    torch.manual_seed(0)
    model = build_model("hard", small, MLP)
    layered, _ = _spaces(model, small)
    monkeypatch.setattr(woodbury, "EXACT_SPECTRUM_DIM", 0)
    op = layered.operator()
    exact = torch.linalg.eigvalsh(op.dense())
    lo, hi = op.extreme_eigenvalues()
    assert float(exact[0]) - 1e-12 <= lo and hi <= float(exact[-1]) + 1e-12
    assert hi >= 0.99 * float(exact[-1])
    scalar = LinearKernelOperator(
        torch.full_like(op.penalty, 0.3),
        layered.linear_factors,
        [layered.structure.local_coords(t) for t in range(len(small))],
        [1.0] * len(small),
    )
    exact = torch.linalg.eigvalsh(scalar.dense())
    lo, hi = scalar.extreme_eigenvalues()
    assert lo == pytest.approx(0.3, rel=1e-12) and float(exact[0]) == pytest.approx(0.3)
    assert hi == pytest.approx(float(exact[-1]), rel=1e-10)


class _Plain(nn.Module):
    """A tanh body and one linear head per task; ``kind`` breaks it on purpose."""

    def __init__(self, d: int, outs: list[int], kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.body = nn.Linear(d, d)
        self.towers = nn.ModuleList(nn.Linear(d, c) for c in outs)
        if kind == "gain":
            self.gain = nn.Parameter(torch.tensor(1.5))

    def forward(self, x: Tensor, task: int) -> Tensor:
        h = self.body(x).relu_() if self.kind == "inplace" else torch.tanh(self.body(x))
        if self.kind == "gain":  # a parameter outside any nn.Linear
            h = self.gain * h
        elif self.kind == "twice":  # one layer applied twice
            h = torch.tanh(self.body(h))
        elif self.kind == "mixing":  # examples interact through the batch mean
            h = h - h.mean(0, keepdim=True)
        return self.towers[task](h)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("plain", None),
        ("inplace", None),  # an in-place activation on a layer's output: still exact
        ("gain", "parameter 'module.gain' is not the weight or bias of an nn.Linear"),
        ("twice", "the layer 'module.body' runs 2 times per forward"),
        ("mixing", "the network's Jacobians are not those of its nn.Linear layers"),
    ],
)
def test_models_it_cannot_structure_fall_back(
    small: TaskSet, kind: str, reason: str | None
) -> None:
    """A plain module: structured when it is a chain of nn.Linear layers (also with an
    in-place activation; the probe passing means its sensitivities are right); a parameter
    outside them, a layer run twice and examples mixed in the batch fall back to the
    Jacobian path (the reason in ``solver_plan['gn_kernel']``); asking for the layer
    factor there is refused."""
    torch.manual_seed(0)
    module = _Plain(6, [3] * len(small), kind).double()
    adapter = ModuleAdapter(module, small, task_params=["towers.{t}.*"], l2=1e-2)
    engine = MTIF(adapter, small, solver="woodbury-gn", damping=0.0)
    assert engine.sample_space is not None
    if reason is None:
        assert engine.plan.gn_kernel == woodbury.LINEAR_PATH
        assert isinstance(engine.operator(), LinearKernelOperator)
        return
    assert engine.plan.gn_kernel is not None and engine.plan.gn_kernel.startswith("jacobians (")
    assert reason in engine.plan.gn_kernel
    assert not engine.sample_space.linear_layers
    assert type(engine.operator()) is KernelOperator
    assert np.isfinite(engine.task_matrix()).all()
    with pytest.raises(ConfigError, match="linear_layers=True does not apply"):
        SampleSpace(engine.structure, gauss_newton=True, linear_layers=True)
