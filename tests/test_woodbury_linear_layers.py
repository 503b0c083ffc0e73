"""The exact (linear-model) Woodbury solver holds its factors per ``nn.Linear`` layer by
default, as the Gauss-Newton one does: the same scores as the per-example Jacobian factors
and as the explicit solve; above ``RITZ_MAX_ROWS`` sample-space rows its eigenvalue
estimates come from Lanczos on the cheap layered products, bounded as documented."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from taskrel.data.taskset import TaskSet
from taskrel.models import build_model
from taskrel.relatedness import woodbury
from taskrel.relatedness.mtif import MTIF
from taskrel.relatedness.woodbury import LinearKernelOperator, SampleSpace

CONVEX = {"hidden": [], "shared_head": True, "l2": 1e-2, "l2_task": 1e-1}


def test_linear_woodbury_uses_layer_factors_and_equals_explicit(wide: TaskSet) -> None:
    torch.manual_seed(0)
    model = build_model("hard", wide, CONVEX)  # untrained: any point, damping keeps it PD
    layered = MTIF(model, wide, solver="woodbury", damping=0.5)
    assert layered.sample_space is not None and layered.sample_space.linear_layers
    assert layered.plan.gn_kernel == woodbury.LINEAR_PATH
    assert isinstance(layered.operator(), LinearKernelOperator)
    jacobians = MTIF(model, wide, solver="woodbury", damping=0.5)
    jacobians.sample_space = SampleSpace(jacobians.structure, linear_layers=False)
    assert type(jacobians.operator()) is woodbury.KernelOperator
    explicit = MTIF(model, wide, solver="explicit", damping=0.5)
    expected = explicit.task_matrix()
    scale = np.abs(expected).max()
    for engine in (layered, jacobians):
        np.testing.assert_allclose(engine.task_matrix(), expected, rtol=1e-8, atol=1e-10 * scale)


def test_many_rows_take_the_kernel_operators_estimate(
    wide: TaskSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above ``RITZ_MAX_ROWS`` rows (here 0) the layered operator hands its eigenvalue
    estimate to :meth:`KernelOperator.extreme_eigenvalues` (Lanczos on the layered
    products; exact at this size) and never forms the R x R Gram eigenproblem."""
    torch.manual_seed(0)
    model = build_model("hard", wide, CONVEX)
    op = MTIF(model, wide, solver="woodbury").operator()
    ev = torch.linalg.eigvalsh(op.dense())
    monkeypatch.setattr(woodbury, "EXACT_SPECTRUM_DIM", 0)
    monkeypatch.setattr(woodbury, "RITZ_MAX_ROWS", 0)
    calls: list[int] = []
    inner = woodbury.KernelOperator.extreme_eigenvalues

    def spy(self: woodbury.KernelOperator, seed: int = 0) -> tuple[float, float]:
        calls.append(seed)
        return inner(self, seed)

    def refuse(*_: object) -> None:
        raise AssertionError("the R x R Gram eigenproblem ran")

    monkeypatch.setattr(woodbury.KernelOperator, "extreme_eigenvalues", spy)
    monkeypatch.setattr(LinearKernelOperator, "weighted_gram", refuse)
    lo, hi = op.extreme_eigenvalues()
    assert calls == [0]
    assert (lo, hi) == pytest.approx((float(ev[0]), float(ev[-1])), rel=1e-8)
