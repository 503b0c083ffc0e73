"""Parameter-sharing baselines: hard sharing, soft sharing and single-task learning.

- :class:`HardSharing`: one shared encoder ``phi`` (an MLP, or the identity when
  ``hidden=[]``) and a linear head per task; optionally a shared linear head added to every
  task's head, ``f_t(x) = (w + v_t)^T phi(x)``. With ``hidden=[]``, ``shared_head=True``
  and L2 regularisation the whole model is convex in its parameters (linear or logistic
  regression with a shared and a task-specific weight vector).
- :class:`SoftSharing`: one network per task; the penalty
  ``(coupling/2) * sum_{j<k} ||theta_j - theta_k||^2`` ties corresponding parameters of
  different tasks together.
- :class:`SingleTask`: soft sharing with ``coupling = 0``: every task learns alone.

All three add ``(l2/2) * ||w||^2`` over every weight and ``(BIAS_PENALTY * l2/2) * b^2``
over every bias (``BIAS_PENALTY = 1e-3``) to the objective: every optimum stays unique (a
task whose data leave the objective, as in leave-one-task-out, still has one), while an
intercept is not pulled towards zero (raw targets such as exam scores keep their mean).

Defaults fit small tasks: ``hidden=[]`` (a linear model, convex, so the trainer's defaults
minimise it exactly with full-batch L-BFGS) and every regularisation coefficient ``"auto"``
(chosen on validation data by
:func:`taskrel.training.regularization.resolve_regularization`, which :func:`taskrel.fit`
and ``relate``/``compare`` call; a number pins it). A model is built from numbers only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from taskrel.data.taskset import TaskSet
from taskrel.errors import ConfigError, NotApplicableError
from taskrel.models.base import ModelConfig, MTLModel, TaskSpec

Activation = Literal["relu", "tanh", "none"]
Coefficient = Annotated[float, Field(ge=0.0)]
Auto = Literal["auto"]


def mlp(
    in_features: int,
    hidden: Sequence[int],
    activation: Activation,
    dropout: float,
) -> nn.Sequential:
    """An MLP body ``in_features -> hidden[0] -> ... -> hidden[-1]`` (identity if empty)."""
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers.append(nn.Linear(width, h))
        if activation == "relu":
            layers.append(nn.ReLU())
        elif activation == "tanh":
            layers.append(nn.Tanh())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = h
    return nn.Sequential(*layers)


def _check_flat(taskset: TaskSet, model: str) -> int:
    shape = taskset.input_shape
    if len(shape) != 1 or taskset.tasks[0].x.dtype.kind != "f":
        raise NotApplicableError(
            f"model {model!r} needs flat float feature vectors; dataset {taskset.name!r} has "
            f"inputs of shape {shape} and dtype {taskset.tasks[0].x.dtype}"
        )
    if any(t.kind == "sequence_labeling" for t in taskset.tasks):
        raise NotApplicableError(f"model {model!r} does not handle sequence labelling tasks")
    return shape[0]


def _check_pinned(config: ModelConfig, model: str) -> None:
    auto = [k for k, v in config.model_dump().items() if v == "auto"]
    if auto:
        raise ConfigError(
            f"model {model!r}: {', '.join(auto)}='auto' is chosen on validation data by "
            "taskrel.fit (taskrel.training.resolve_regularization); give numbers to build "
            f"the model directly, e.g. {auto[0]}=1e-3"
        )


def _squeeze_regression(out: Tensor, kind: str) -> Tensor:
    return out.squeeze(-1) if kind == "regression" else out


def _n_outputs(task: TaskSpec) -> int:
    """Width of a task's output layer (1 for regression)."""
    return 1 if task.kind == "regression" else task.n_outputs


BIAS_PENALTY = 1e-3
"""Biases carry this fraction of the L2 coefficient: enough to make every optimum unique
(a task whose data leave the objective still has one), too little to pull an intercept
towards zero (raw targets such as exam scores keep their mean)."""


def l2_penalty(module: nn.Module, l2: float, bias_scale: float = 1.0) -> Tensor:
    """``(l2/2) * sum of squared parameters`` (a scalar), biases weighted by
    ``bias_scale``."""
    total = torch.zeros(())
    for name, p in module.named_parameters():
        scale = bias_scale if name.rsplit(".", 1)[-1] == "bias" else 1.0
        total = total + scale * p.pow(2).sum()
    return 0.5 * l2 * total


class NetworkConfig(ModelConfig):
    """The fields of every model built from :func:`mlp` bodies: widths, activation,
    dropout and the L2 coefficient (subclasses restate a field only to say what it covers
    in that model)."""

    hidden: list[int] = Field(default_factory=list, description="MLP widths ([]: linear model)")
    activation: Activation = "relu"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    l2: Coefficient | Auto = Field(
        "auto", description="L2 coefficient on all parameters ('auto': on validation)"
    )


class HardSharingConfig(NetworkConfig):
    hidden: list[int] = Field(
        default_factory=list, description="encoder widths ([]: a linear model)"
    )
    shared_head: bool | None = Field(
        None,
        description="add a shared linear head to every task (default: for a linear model "
        "whose tasks have equal output sizes, since its tasks would share nothing otherwise)",
    )
    l2: Coefficient | Auto = Field(
        "auto", description="L2 coefficient on shared parameters ('auto': on validation)"
    )
    l2_task: Coefficient | Auto | None = Field(
        "auto",
        description="L2 coefficient on task heads ('auto': on validation after l2 when l2 "
        "is 'auto' too, else the same as l2; null: same as l2)",
    )

    @model_validator(mode="after")
    def _head_follows_pinned_l2(self) -> HardSharingConfig:
        if self.l2 != "auto" and self.l2_task == "auto":
            self.l2_task = None
        return self


class HardSharing(MTLModel):
    """Shared encoder + per-task linear heads (see module docstring)."""

    Config = HardSharingConfig
    name = "hard"
    auto_fields: ClassVar[dict[str, Any]] = {"l2": 1e-4, "l2_task": None}
    auto_ties: ClassVar[dict[str, Any]] = {"l2_task": None}

    def __init__(
        self, tasks: Sequence[TaskSpec], in_features: int, config: HardSharingConfig
    ) -> None:
        super().__init__(tasks)
        self.config = config
        self.encoder = mlp(in_features, config.hidden, config.activation, config.dropout)
        width = config.hidden[-1] if config.hidden else in_features
        self.heads = nn.ModuleList(nn.Linear(width, _n_outputs(t)) for t in tasks)
        self.shared_head: nn.Linear | None = None
        outs = {_n_outputs(t) for t in tasks}
        shared_head = config.shared_head
        if shared_head is None:  # default: a linear model shares its head when it can
            shared_head = not config.hidden and len(outs) == 1
        if shared_head:
            if len(outs) != 1:
                raise ConfigError(
                    "hard sharing: shared_head needs every task to have the same "
                    f"number of outputs, got {sorted(outs)}"
                )
            self.shared_head = nn.Linear(width, outs.pop(), bias=False)

    @classmethod
    def build(cls, taskset: TaskSet, config: HardSharingConfig) -> HardSharing:
        _check_pinned(config, cls.name)
        return cls(TaskSpec.from_taskset(taskset), _check_flat(taskset, cls.name), config)

    @property
    def convex(self) -> bool:
        return not self.config.hidden

    def features(self, x: Tensor) -> Tensor:
        """Shared representation ``phi(x)``, shape ``(b, width)``."""
        return self.encoder(x)

    def forward(self, x: Tensor, task: int) -> Tensor:
        h = self.features(x)
        out = self.heads[task](h)
        if self.shared_head is not None:
            out = out + self.shared_head(h)
        return _squeeze_regression(out, self.tasks[task].kind)

    def penalty(self) -> Tensor:
        cfg = self.config
        l2 = float(cfg.l2)
        l2_task = l2 if cfg.l2_task is None else float(cfg.l2_task)
        shared = l2_penalty(self.encoder, l2, BIAS_PENALTY)
        if self.shared_head is not None:
            shared = shared + l2_penalty(self.shared_head, l2, BIAS_PENALTY)
        return shared + l2_penalty(self.heads, l2_task, BIAS_PENALTY)

    def task_parameter_names(self, task: int) -> list[str]:
        return [f"heads.{task}.{n}" for n, _ in self.heads[task].named_parameters()]


class SoftSharingConfig(NetworkConfig):
    hidden: list[int] = Field(
        default_factory=list, description="per-task MLP widths ([]: linear models)"
    )
    coupling: Coefficient | Auto = Field(
        "auto",
        description="lambda of the pairwise coupling penalty ('auto': on validation, after l2)",
    )
    couple_heads: bool = Field(True, description="couple output layers too (same shapes only)")


class SoftSharing(MTLModel):
    """One network per task with a pairwise coupling penalty (see module docstring)."""

    Config: ClassVar[type[ModelConfig]] = SoftSharingConfig
    name: ClassVar[str] = "soft"
    auto_fields: ClassVar[dict[str, Any]] = {"l2": 1e-4, "coupling": 1e-2}
    auto_ties: ClassVar[dict[str, Any]] = {"coupling": 0.0}

    def __init__(
        self, tasks: Sequence[TaskSpec], in_features: int, config: SoftSharingConfig
    ) -> None:
        super().__init__(tasks)
        self.config = config
        width = config.hidden[-1] if config.hidden else in_features
        self.bodies = nn.ModuleList(
            mlp(in_features, config.hidden, config.activation, config.dropout) for _ in tasks
        )
        self.heads = nn.ModuleList(nn.Linear(width, _n_outputs(t)) for t in tasks)

    @classmethod
    def build(cls, taskset: TaskSet, config: SoftSharingConfig) -> SoftSharing:
        _check_pinned(config, cls.name)
        return cls(TaskSpec.from_taskset(taskset), _check_flat(taskset, cls.name), config)

    @property
    def convex(self) -> bool:
        return not self.config.hidden

    @property
    def separable(self) -> bool:
        return float(self.config.coupling) == 0.0

    def forward(self, x: Tensor, task: int) -> Tensor:
        out = self.heads[task](self.bodies[task](x))
        return _squeeze_regression(out, self.tasks[task].kind)

    def coupled_groups(self) -> list[list[Tensor]]:
        """Lists of corresponding parameters (one tensor per task) tied by the coupling."""
        groups = [list(ps) for ps in zip(*(b.parameters() for b in self.bodies), strict=True)]
        if self.config.couple_heads and len({h.weight.shape for h in self.heads}) == 1:
            groups += [list(ps) for ps in zip(*(h.parameters() for h in self.heads), strict=True)]
        return groups

    def coupling_penalty(self) -> Tensor:
        """``(lambda/2) sum_{j<k} ||theta_j - theta_k||^2``, computed in O(T) as
        ``(lambda/2) (T sum_j ||theta_j||^2 - ||sum_j theta_j||^2)``."""
        lam = float(self.config.coupling)
        total = torch.zeros(())
        if lam == 0.0:
            return total
        n = len(self.tasks)
        for group in self.coupled_groups():
            stacked = torch.stack(group)
            total = total + n * stacked.pow(2).sum() - stacked.sum(0).pow(2).sum()
        return 0.5 * lam * total

    def penalty(self) -> Tensor:
        return l2_penalty(self, float(self.config.l2), BIAS_PENALTY) + self.coupling_penalty()

    def task_parameter_names(self, task: int) -> list[str]:
        return [f"bodies.{task}.{n}" for n, _ in self.bodies[task].named_parameters()] + [
            f"heads.{task}.{n}" for n, _ in self.heads[task].named_parameters()
        ]


class SingleTaskConfig(NetworkConfig):
    hidden: list[int] = Field(
        default_factory=list, description="per-task MLP widths ([]: linear models)"
    )


class SingleTask(SoftSharing):
    """Single-task learning: one independent network per task (soft sharing, coupling 0)."""

    Config: ClassVar[type[ModelConfig]] = SingleTaskConfig
    name: ClassVar[str] = "stl"
    auto_fields: ClassVar[dict[str, Any]] = {"l2": 1e-4}
    auto_ties: ClassVar[dict[str, Any]] = {}

    @classmethod
    def build(cls, taskset: TaskSet, config: SingleTaskConfig) -> SingleTask:  # type: ignore[override]
        _check_pinned(config, cls.name)
        soft = SoftSharingConfig(**config.model_dump(), coupling=0.0, couple_heads=False)
        return cls(TaskSpec.from_taskset(taskset), _check_flat(taskset, cls.name), soft)
