"""The pooled baseline: one model for every task.

:class:`Pooled` is a single network (an MLP body, or the identity when ``hidden=[]``, then
one linear output layer) trained on the training data of all tasks together and used
unchanged for every task: ``f_t(x) = f(x)`` for all ``t``. It needs tasks with one output
space (the same kind and number of outputs, e.g. a shared label set such as
Office-Caltech's 10 classes).

The objective is the project's ``sum_t mean_{i in task t} loss(f(x_i), y_i) + penalty``:
the data are pooled, but every task still weighs equally, whatever its size. The penalty is
``(l2/2) ||w||^2`` over every weight and ``(BIAS_PENALTY * l2/2) b^2`` over every bias, as
in :mod:`taskrel.models.sharing`; ``l2="auto"`` is chosen on validation when the model is
linear (convex) and ``1e-4`` otherwise. No parameter belongs to a single task.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from torch import Tensor, nn

from taskrel.data.taskset import TaskSet
from taskrel.errors import NotApplicableError
from taskrel.models.base import ModelConfig, MTLModel, TaskSpec
from taskrel.models.sharing import (
    BIAS_PENALTY,
    NetworkConfig,
    _check_flat,
    _check_pinned,
    _n_outputs,
    _squeeze_regression,
    l2_penalty,
    mlp,
)


class PooledConfig(NetworkConfig):
    """One MLP for every task (the :class:`NetworkConfig` fields as they are)."""


class Pooled(MTLModel):
    """One network shared by every task, output layer included (see module docstring)."""

    Config: ClassVar[type[ModelConfig]] = PooledConfig
    name: ClassVar[str] = "pooled"
    auto_fields: ClassVar[dict[str, Any]] = {"l2": 1e-4}
    auto_ties: ClassVar[dict[str, Any]] = {}

    def __init__(self, tasks: Sequence[TaskSpec], in_features: int, config: PooledConfig) -> None:
        super().__init__(tasks)
        spaces = {(t.kind, _n_outputs(t)) for t in tasks}
        if len(spaces) != 1:
            raise NotApplicableError(
                "model 'pooled' predicts every task with one output layer: the tasks need "
                f"one kind and one number of outputs; got {sorted(spaces)}"
            )
        self.config = config
        self.body = mlp(in_features, config.hidden, config.activation, config.dropout)
        width = config.hidden[-1] if config.hidden else in_features
        self.head = nn.Linear(width, _n_outputs(tasks[0]))

    @classmethod
    def build(cls, taskset: TaskSet, config: PooledConfig) -> Pooled:
        _check_pinned(config, cls.name)
        return cls(TaskSpec.from_taskset(taskset), _check_flat(taskset, cls.name), config)

    @property
    def convex(self) -> bool:
        return not self.config.hidden

    def forward(self, x: Tensor, task: int) -> Tensor:
        """The same outputs for every ``task``: logits ``(b, C)`` or predictions ``(b,)``."""
        return _squeeze_regression(self.head(self.body(x)), self.tasks[task].kind)

    def penalty(self) -> Tensor:
        return l2_penalty(self, float(self.config.l2), BIAS_PENALTY)

    def task_parameter_names(self, task: int) -> list[str]:
        """None: every parameter is shared."""
        return []
