"""The model of a task subset, seen from the model of all tasks.

Training on a subset ``G`` (what :func:`~taskrel.relatedness.ground_truth.task_subset_losses`
does) builds the registered model for the tasks of ``G`` alone. Its parameters are the
shared parameters of the full model plus the task parameters of the tasks of ``G``, and
its penalty is that of the smaller model: with soft sharing the coupling then ties only
the tasks of ``G``, which is not the full model's penalty with some data left out. Group
predictors use this class to step or fit on exactly the subset objective.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from taskrel.data.taskset import TaskSet
from taskrel.errors import NotApplicableError
from taskrel.models import build_model
from taskrel.relatedness import RelateContext
from taskrel.relatedness.mtif import MTLFunctions


class SubsetModel:
    """The model of ``subset`` built as retraining would build it, with its parameters
    read from the full model's flat vector.

    Args:
        full: the model of all tasks as functions of its flat parameters.
        taskset: all tasks.
        ctx: the model name and config (as used for retraining).
        subset: task positions, in the order of the subset model's tasks.

    Attributes:
        fns: the subset model as functions of its own flat vector (at the full model's
            values; task ``k`` of it is task ``subset[k]``).
        coords: ``(p_G,)`` position in the full vector of each of its parameters.

    Raises:
        NotApplicableError: the subset model's parameters do not correspond one to one
            to shared and task parameters of the full model.
    """

    def __init__(
        self,
        full: MTLFunctions,
        taskset: TaskSet,
        ctx: RelateContext,
        subset: Sequence[int],
    ) -> None:
        tasks = taskset.select_tasks(list(subset))
        with torch.random.fork_rng(devices=[]):  # its initial values are overwritten
            model = build_model(ctx.model, tasks, ctx.model_config).to(full.theta.dtype)
        names = {n: n for n in full.model.shared_parameters()}
        for k, t in enumerate(subset):
            mine = model.task_parameter_names(k)
            theirs = full.model.task_parameter_names(t)
            names.update(zip(mine, theirs, strict=True))
        own = [n for n, _ in model.named_parameters()]
        if set(own) != set(names):
            raise NotApplicableError(
                f"model {ctx.model!r}: the parameters of a model of tasks {list(subset)} do "
                "not map onto the shared and task parameters of the model of all tasks"
            )
        self.coords = full.space.indices([names[n] for n in own])
        values = full.space.unflatten(full.theta)
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(values[names[n]])
        self.fns = MTLFunctions(model, tasks, full.theta.dtype)

    def penalty(self, theta: Tensor) -> Tensor:
        """The subset model's penalty at the full parameter vector ``theta`` ``(p,)``."""
        return self.fns.penalty(theta[self.coords])
