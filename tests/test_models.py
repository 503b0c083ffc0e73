from __future__ import annotations

import itertools

import pytest
import torch

from taskrel.data.taskset import TaskSet
from taskrel.errors import ConfigError
from taskrel.models import build_model
from taskrel.models.sharing import HardSharing, SoftSharing


def test_hard_sharing_partition_and_gradient_support(synthetic_cls: TaskSet) -> None:
    model = build_model("hard", synthetic_cls, {"hidden": [8], "l2": 1e-4, "l2_task": None})
    assert isinstance(model, HardSharing)
    shared = model.shared_parameters()
    assert set(shared) == {"encoder.0.weight", "encoder.0.bias"}
    assert set(model.task_parameters(2)) == {"heads.2.weight", "heads.2.bias"}
    x, y = (torch.as_tensor(a[:5]) for a in synthetic_cls[2].arrays("train"))
    model.loss(x, y, 2).sum().backward()
    for t in range(len(synthetic_cls)):
        grad = model.heads[t].weight.grad
        assert (grad is not None and grad.abs().sum() > 0) == (t == 2)
    assert model.encoder[0].weight.grad.abs().sum() > 0


def test_convex_hard_sharing_is_shared_plus_task_linear(synthetic_reg: TaskSet) -> None:
    model = build_model("hard", synthetic_reg, {"hidden": [], "l2": 1e-4, "l2_task": None})
    x = torch.randn(7, synthetic_reg.in_features)
    w = model.shared_head.weight
    v, b = model.heads[1].weight, model.heads[1].bias
    torch.testing.assert_close(model(x, 1), (x @ (w + v).T + b).squeeze(-1))
    assert set(model.shared_parameters()) == {"shared_head.weight"}


def test_hard_sharing_penalty_uses_separate_l2(synthetic_reg: TaskSet) -> None:
    model = build_model(
        "hard", synthetic_reg, {"hidden": [], "shared_head": True, "l2": 0.5, "l2_task": 2.0}
    )
    shared = model.shared_head.weight.pow(2).sum()
    heads = sum(h.weight.pow(2).sum() + 1e-3 * h.bias.pow(2).sum() for h in model.heads)
    torch.testing.assert_close(model.penalty(), 0.25 * shared + 1.0 * heads)


def test_soft_coupling_penalty_equals_pairwise_sum(synthetic_cls: TaskSet) -> None:
    model = build_model("soft", synthetic_cls, {"hidden": [4], "coupling": 0.3, "l2": 0.0})
    assert isinstance(model, SoftSharing)
    brute = torch.zeros(())
    for group in model.coupled_groups():
        for a, b in itertools.combinations(group, 2):
            brute = brute + (a - b).pow(2).sum()
    torch.testing.assert_close(model.penalty(), 0.15 * brute)
    assert model.shared_parameters() == {}


def test_single_task_objective_is_separable(synthetic_cls: TaskSet) -> None:
    model = build_model("stl", synthetic_cls, {"hidden": [4], "l2": 0.0})
    assert model.penalty().item() == 0.0
    x, y = (torch.as_tensor(a[:6]) for a in synthetic_cls[0].arrays("train"))
    model.loss(x, y, 0).mean().backward()
    touched = {n for n, p in model.named_parameters() if p.grad is not None}
    assert touched == set(model.task_parameter_names(0))


@pytest.mark.parametrize(
    ("name", "config", "message"),
    [
        ("hard", {"hiden": [3]}, "hiden"),
        ("hard", {"dropout": 1.5}, "dropout"),
        ("soft", {"coupling": "strong"}, "coupling"),
        ("mlp", {}, "unknown model 'mlp'"),
    ],
)
def test_bad_model_config_is_a_config_error(
    synthetic_cls: TaskSet, name: str, config: dict, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        build_model(name, synthetic_cls, config)
