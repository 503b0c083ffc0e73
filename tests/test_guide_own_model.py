"""The guide docs/guides/own-model.md runs as written: its ```python blocks execute in
order in one namespace, and the matrix it prints is the first-order influence
``grad L_i^T H^-1 grad G_j`` computed here independently from the dense Hessian of the
guide's network and objective (``sum_t mean CE_t + (l2/2)||theta||^2``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_readme import python_blocks
from torch.func import functional_call, grad, hessian

import taskrel

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guides" / "own-model.md"


def test_guide_runs_and_its_matrix_is_the_dense_influence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocks = python_blocks(GUIDE.read_text(encoding="utf-8"))
    assert len(blocks) == 3
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "__guide__"}
    for i, code in enumerate(blocks):
        exec(compile(code, f"own-model.md python block {i + 1}", "exec"), namespace)
    printed = capsys.readouterr().out
    result, net, tasks = namespace["R"], namespace["net"], namespace["tasks"]
    assert isinstance(result, taskrel.Relatedness)
    assert "| target \\ source |" in printed and "**Diagnostics**" in printed
    assert isinstance(namespace["multi"], taskrel.ModuleAdapter)

    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for _, p in net.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for _, p in net.named_parameters()])
    assert theta.numel() == result.meta["n_params"] == 216

    def params(flat: torch.Tensor) -> dict[str, torch.Tensor]:
        sizes = [int(np.prod(s)) for s in shapes]
        parts = torch.split(flat, sizes)
        return {n: p.reshape(s) for n, p, s in zip(names, parts, shapes, strict=True)}

    def mean_loss(flat: torch.Tensor, task: int, split: str) -> torch.Tensor:
        x, y = tasks.tasks[task].arrays(split)
        out = functional_call(net, params(flat), (torch.as_tensor(x, dtype=flat.dtype), task))
        return F.cross_entropy(out, torch.as_tensor(y))

    def objective(flat: torch.Tensor) -> torch.Tensor:
        data = sum(mean_loss(flat, t, "train") for t in range(len(tasks)))
        return data + 0.5 * 0.1 * flat.pow(2).sum()

    h = hessian(objective)(theta)
    h = h + result.meta["diagnostics"]["damping"] * torch.eye(len(theta), dtype=theta.dtype)
    test = torch.stack([grad(mean_loss)(theta, i, "test") for i in range(len(tasks))], 1)
    train = torch.stack([grad(mean_loss)(theta, j, "train") for j in range(len(tasks))], 1)
    dense = (torch.linalg.solve(h, test).T @ train).numpy()
    scale = np.abs(dense).max()
    np.testing.assert_allclose(result.matrix, dense, rtol=1e-6, atol=1e-8 * scale)
    np.testing.assert_allclose(
        result.meta["first_order_matrix"], dense, rtol=1e-6, atol=1e-8 * scale
    )
    assert result.meta["diagnostics"]["stationarity"]["stationary"]  # what the guide shows
