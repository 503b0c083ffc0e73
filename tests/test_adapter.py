"""The nn.Module adapter: a plain PyTorch network with the same weights and objective as a
built-in hard-sharing model gets the same MTIF scores; bad parameter groups are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from taskrel.data import load
from taskrel.data.taskset import TaskSet
from taskrel.errors import ConfigError
from taskrel.models import build_model
from taskrel.models.sharing import HardSharing
from taskrel.relatedness.adapter import ModuleAdapter, mtif
from taskrel.relatedness.mtif import MTIF


class Plain(nn.Module):
    """A user's network: a tanh body and one linear head per task, forward(x, task)."""

    def __init__(self, d: int, width: int, outs: list[int]) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d, width), nn.Tanh())
        self.towers = nn.ModuleList(nn.Linear(width, c) for c in outs)

    def forward(self, x: Tensor, task: int) -> Tensor:
        return self.towers[task](self.body(x))


class MultiHead(Plain):
    """The same network with forward(x) returning every task's outputs."""

    def forward(self, x: Tensor) -> list[Tensor]:  # type: ignore[override]
        h = self.body(x)
        return [tower(h) for tower in self.towers]


@pytest.fixture(scope="module")
def tasks() -> TaskSet:
    return load(
        "synthetic",
        n_per_task=40,
        n_features=4,
        n_classes=3,
        clusters=1,
        cluster_size=2,
        n_unrelated=1,
        n_adversarial=0,
        seed=7,
    ).standardize()


class _PenaltyOf(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self) -> Tensor:
        return self.model.penalty()


def _mirror(builtin: HardSharing, cls: type[Plain], tasks: TaskSet) -> Plain:
    plain = cls(4, 5, [3] * len(tasks))
    with torch.no_grad():
        plain.body[0].weight.copy_(builtin.encoder[0].weight)
        plain.body[0].bias.copy_(builtin.encoder[0].bias)
        for tower, head in zip(plain.towers, builtin.heads, strict=True):
            tower.weight.copy_(head.weight)
            tower.bias.copy_(head.bias)
    return plain


@pytest.mark.parametrize("cls", [Plain, MultiHead])
def test_adapter_gives_the_scores_of_the_builtin_model(tasks: TaskSet, cls: type[Plain]) -> None:
    torch.manual_seed(0)
    config = {"hidden": [5], "activation": "tanh", "l2": 1e-2, "l2_task": 1e-1}
    builtin = build_model("hard", tasks, config)
    assert isinstance(builtin, HardSharing)
    plain = _mirror(builtin, cls, tasks)

    def penalty(m: nn.Module) -> Tensor:  # the built-in model's penalty, on the mirror
        assert isinstance(m, Plain)
        params = {
            "model.encoder.0.weight": m.body[0].weight,
            "model.encoder.0.bias": m.body[0].bias,
        }
        for t, tower in enumerate(m.towers):
            params[f"model.heads.{t}.weight"] = tower.weight
            params[f"model.heads.{t}.bias"] = tower.bias
        return functional_call(_PenaltyOf(builtin), params, ())

    adapter = ModuleAdapter(
        plain,
        tasks,
        task_params=["towers.{t}.*"],
        shared=["body.*"],
        loss_fn=lambda out, y: F.cross_entropy(out, y, reduction="none"),
        penalty=penalty,
        heads=cls is MultiHead,
    )
    ours = MTIF(adapter, tasks, damping=0.5).relatedness(task_level="newton", newton=True)
    theirs = MTIF(builtin, tasks, damping=0.5).relatedness(task_level="newton", newton=True)
    assert ours.meta["structure"] == theirs.meta["structure"] == "hard"
    assert ours.meta["n_params"] == theirs.meta["n_params"]
    for key in ("first_order_matrix", "newton_matrix"):
        np.testing.assert_allclose(ours.meta[key], theirs.meta[key], rtol=1e-9, atol=1e-14)
    assert ours.instance_scores is not None and theirs.instance_scores is not None
    np.testing.assert_allclose(ours.instance_scores, theirs.instance_scores, rtol=1e-9, atol=1e-14)
    # the one-call form gives the same first-order matrix
    direct = mtif(
        plain,
        tasks,
        task_params="towers.{t}.*",
        loss_fn=lambda out, y: F.cross_entropy(out, y, reduction="none"),
        penalty=penalty,
        heads=cls is MultiHead,
        damping=0.5,
        instance=False,
    )
    np.testing.assert_allclose(direct.matrix, theirs.meta["first_order_matrix"], rtol=1e-9)


def test_linear_adapter_uses_the_woodbury_solver(tasks: TaskSet) -> None:
    """A linear module declared ``linear=True`` (default losses by task kind, L2 penalty):
    the Woodbury solve applies and equals the explicit one."""

    class Linear(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.shared = nn.Linear(4, 3, bias=False)
            self.own = nn.ModuleList(nn.Linear(4, 3) for _ in range(len(tasks)))

        def forward(self, x: Tensor, task: int) -> Tensor:
            return self.shared(x) + self.own[task](x)

    torch.manual_seed(0)
    adapter = ModuleAdapter(Linear(), tasks, task_params=["own.{t}.*"], l2=1e-2, linear=True)
    wood = MTIF(adapter, tasks, solver="woodbury", damping=0.0)
    exact = MTIF(adapter, tasks, solver="explicit", damping=0.0)
    np.testing.assert_allclose(wood.task_matrix(), exact.task_matrix(), rtol=1e-8, atol=1e-13)


def test_bad_parameter_groups_are_refused(tasks: TaskSet) -> None:
    plain = Plain(4, 5, [3] * len(tasks))
    with pytest.raises(ConfigError, match=r"\{t\}"):
        ModuleAdapter(plain, tasks, task_params=["towers.0.*"])
    with pytest.raises(ConfigError, match="match no parameter of task"):
        ModuleAdapter(plain, tasks, task_params=["heads.{t}.*"])
    with pytest.raises(ConfigError, match="neither shared"):
        ModuleAdapter(plain, tasks, task_params=["towers.{t}.*"], shared=["body.0.weight"])
    with pytest.raises(ConfigError, match="both shared and task_params"):
        ModuleAdapter(plain, tasks, task_params=["towers.{t}.*"], shared=["*"])
    with pytest.raises(ConfigError, match="unknown mtif options"):
        mtif(plain, tasks, task_params=["towers.{t}.*"], bogus=1)
