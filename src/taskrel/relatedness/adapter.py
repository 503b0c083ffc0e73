"""MTIF for any PyTorch module: an adapter that presents a plain ``nn.Module`` as a
hard-sharing :class:`MTLModel`.

The module's forward takes ``(x, task)`` (a task index) and returns that task's outputs,
or (``heads=True``) takes ``x`` and returns one output per task. Its parameters are split
into groups by name patterns (:func:`fnmatch.fnmatchcase`, on ``named_parameters`` names):

- ``task_params``: patterns containing ``{t}``, filled in with each task index (e.g.
  ``"heads.{t}.*"``); the parameters only task t's loss touches;
- ``shared``: patterns of the parameters every task uses (default: all the others).

Every parameter must fall in exactly one group. The objective is MTIF's
``sum_t mean loss_t + penalty`` with per-example losses ``loss_fn(outputs, y)`` (default:
cross-entropy / squared error by task kind) and ``penalty(module)`` (default
``(l2/2) ||theta||^2``). The penalty must not couple different tasks' parameters (an L2
penalty does not): the block-arrow structure of hard sharing relies on it.

Use it as any model: ``MTIF(adapter, taskset)``, or in one call :func:`mtif`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import Tensor, nn

from taskrel.data.taskset import TaskSet
from taskrel.errors import ConfigError
from taskrel.models.base import MTLModel, TaskSpec
from taskrel.relatedness.result import Relatedness

LossFn = Callable[[Tensor, Tensor], Tensor]  # (outputs, targets) -> (b,) losses


class ModuleAdapter(MTLModel):
    """A plain module as a hard-sharing multi-task model (see module docstring).

    Args:
        module: the (trained) network.
        taskset: the tasks it was trained on (kinds and output sizes).
        task_params: name patterns with ``{t}`` for each task's own parameters.
        shared: name patterns of the shared parameters (default: every other one).
        loss_fn: per-example loss ``(outputs, y) -> (b,)``; default by task kind.
        l2: coefficient of the default penalty ``(l2/2) ||theta||^2``.
        penalty: ``penalty(module) -> scalar`` instead of the L2 default.
        heads: the forward takes ``x`` only and returns a sequence of per-task outputs.
        linear: the outputs are linear in the parameters (enables the Woodbury solver).

    Raises:
        ConfigError: a parameter in no group or in two, a pattern without ``{t}``, or a
            task group that is empty.
    """

    name = "module"

    def __init__(
        self,
        module: nn.Module,
        taskset: TaskSet,
        task_params: Sequence[str],
        shared: Sequence[str] | None = None,
        loss_fn: LossFn | None = None,
        l2: float = 0.0,
        penalty: Callable[[nn.Module], Tensor] | None = None,
        heads: bool = False,
        linear: bool = False,
    ) -> None:
        super().__init__(TaskSpec.from_taskset(taskset))
        if isinstance(task_params, str):
            task_params = [task_params]
        if not task_params or not all("{t}" in p for p in task_params):
            raise ConfigError(
                f"task_params must be name patterns containing '{{t}}' (e.g. 'heads.{{t}}.*'), "
                f"got {list(task_params)!r}"
            )
        self.module = module
        self.loss_fn = loss_fn
        self.l2 = float(l2)
        self.custom_penalty = penalty
        self.heads = heads
        self.linear = linear
        self._groups = self._partition(list(task_params), shared)

    def _partition(self, task_params: list[str], shared: Sequence[str] | None) -> list[list[str]]:
        """Per task, the module's parameter names it owns; checks every parameter lands
        in exactly one group."""
        names = [n for n, _ in self.module.named_parameters()]
        groups: list[list[str]] = []
        owner: dict[str, int] = {}
        for t in range(len(self.tasks)):
            pats = [p.replace("{t}", str(t)) for p in task_params]
            mine = [n for n in names if any(fnmatchcase(n, p) for p in pats)]
            if not mine:
                raise ConfigError(
                    f"task_params {task_params!r} match no parameter of task {t}; "
                    f"parameters: {', '.join(names[:8])}{' ...' if len(names) > 8 else ''}"
                )
            for n in mine:
                if n in owner:
                    raise ConfigError(
                        f"parameter {n!r} matches task_params of tasks {owner[n]} and {t}"
                    )
                owner[n] = t
            groups.append(mine)
        if shared is not None:
            pats = [shared] if isinstance(shared, str) else list(shared)
            for n in names:
                hit = any(fnmatchcase(n, p) for p in pats)
                if hit and n in owner:
                    raise ConfigError(f"parameter {n!r} matches both shared and task_params")
                if not hit and n not in owner:
                    raise ConfigError(
                        f"parameter {n!r} matches neither shared {pats!r} nor task_params"
                    )
        return groups

    @property
    def convex(self) -> bool:
        return self.linear

    def forward(self, x: Tensor, task: int) -> Tensor:
        return self.module(x)[task] if self.heads else self.module(x, task)

    def output_loss(self, output: Tensor, y: Tensor, task: int) -> Tensor:
        if self.loss_fn is not None:
            return self.loss_fn(output, y)
        return super().output_loss(output, y, task)

    def penalty(self) -> Tensor:
        if self.custom_penalty is not None:
            return self.custom_penalty(self.module)
        total = sum((p.pow(2).sum() for p in self.module.parameters()), torch.zeros(()))
        return 0.5 * self.l2 * total

    def task_parameter_names(self, task: int) -> list[str]:
        return [f"module.{n}" for n in self._groups[task]]


def mtif(
    module: nn.Module,
    taskset: TaskSet,
    task_params: Sequence[str],
    shared: Sequence[str] | None = None,
    loss_fn: LossFn | None = None,
    l2: float = 0.0,
    penalty: Callable[[nn.Module], Tensor] | None = None,
    heads: bool = False,
    linear: bool = False,
    **options: Any,
) -> Relatedness:
    """MTIF relatedness of a trained plain ``module``: wraps it in a
    :class:`ModuleAdapter` (arguments as there) and runs
    :meth:`taskrel.relatedness.mtif.MTIF.relatedness`. ``options``: the engine's
    (``solver``, ``damping``, ``memory_budget_gb``, ...) and ``relatedness``'s
    (``task_level``, ``instance``, ``weighting``, ``newton``).

    Returns:
        The :class:`Relatedness` (task matrix ``(T, T)``, instance scores ``(N, T)``)."""
    from taskrel.relatedness.mtif import ENGINE_OPTIONS, MTIF

    result_options = ("task_level", "instance", "weighting", "newton")
    unknown = sorted(set(options) - set(ENGINE_OPTIONS) - set(result_options))
    if unknown:
        raise ConfigError(
            f"unknown mtif options {unknown}; accepted: "
            f"{', '.join((*ENGINE_OPTIONS, *result_options))}"
        )
    adapter = ModuleAdapter(
        module, taskset, task_params, shared, loss_fn, l2, penalty, heads, linear
    )
    engine = MTIF(adapter, taskset, **{k: v for k, v in options.items() if k in ENGINE_OPTIONS})
    rest = {k: v for k, v in options.items() if k not in ENGINE_OPTIONS}
    return engine.relatedness(**rest)
