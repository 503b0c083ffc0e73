"""The interface every multi-task model implements.

A model maps a batch of one task's inputs to that task's outputs, knows its per-example
loss, and partitions its parameters into a *shared* group and one group per task
(influence functions, gradient baselines and the Hessian structure rely on the partition).

Training objective (what the trainer minimises and what influence functions
differentiate)::

    J(theta) = sum_t  mean_{i in batch_t} loss_t(x_i, y_i; theta)  +  penalty(theta)

i.e. every task weighs equally, whatever its size, and ``penalty`` holds the L2 and
coupling terms. Models with extra terms (KL divergences, convergence losses) override
:meth:`MTLModel.objective`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from taskrel.data.taskset import PAD_TAG, TaskSet


class ModelConfig(BaseModel):
    """Base of every model's typed configuration; unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class TaskSpec:
    """What a model needs to know about one task."""

    name: str
    kind: str
    n_outputs: int

    @classmethod
    def from_taskset(cls, taskset: TaskSet) -> list[TaskSpec]:
        return [cls(t.name, t.kind, t.n_outputs) for t in taskset.tasks]


@dataclass
class Batch:
    """One task's mini-batch: inputs ``x`` ``(b, ...)``, targets ``y`` ``(b,)``/``(b, L)``
    and the task position."""

    task: int
    x: Tensor
    y: Tensor


def per_example_loss(output: Tensor, y: Tensor, kind: str) -> Tensor:
    """Loss of each example, shape ``(b,)``.

    - classification: cross-entropy of logits ``(b, C)`` (nats);
    - regression: squared error of predictions ``(b,)`` (target units squared);
    - sequence_labeling: token cross-entropy of logits ``(b, L, C)`` summed over the
      non-padding tokens and divided by their count (mean per token; nats).
    """
    if kind == "classification":
        return F.cross_entropy(output, y, reduction="none")
    if kind == "regression":
        return (output.reshape(-1) - y.reshape(-1)) ** 2
    if kind == "sequence_labeling":
        tok = F.cross_entropy(output.transpose(1, 2), y, reduction="none", ignore_index=PAD_TAG)
        mask = (y != PAD_TAG).to(tok.dtype)
        return (tok * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    raise ValueError(f"unknown task kind {kind!r}")


def hard_predictions(output: Tensor, kind: str) -> Tensor:
    """Class ids ``(b,)`` / ``(b, L)`` (argmax of the logits) or regression values ``(b,)``."""
    return output.reshape(-1) if kind == "regression" else output.argmax(-1)


class MTLModel(nn.Module):
    """Base class of every multi-task model.

    Subclasses implement :meth:`forward` and :meth:`task_parameter_names`, and may add
    a :meth:`penalty`, or change how outputs become losses (:meth:`output_loss`) and hard
    predictions (:meth:`output_predictions`). ``Config`` is the model's pydantic
    configuration class.
    """

    Config: ClassVar[type[ModelConfig]] = ModelConfig
    name: ClassVar[str] = "base"
    auto_fields: ClassVar[dict[str, Any]] = {}
    """Config fields that accept ``"auto"``, in tuning order, each with the value it takes
    in a model that is not convex. A convex model's auto fields are chosen on validation
    data by :func:`taskrel.training.regularization.resolve_regularization`; a non-convex
    one (an MLP) is regularised by validation-based early stopping and keeps these."""
    auto_ties: ClassVar[dict[str, Any]] = {}
    """Value an auto field takes while an earlier one is being tuned (e.g. ``l2_task:
    None``, "follow l2")."""

    def __init__(self, tasks: Sequence[TaskSpec]) -> None:
        super().__init__()
        self.tasks = list(tasks)

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_taskset(
        cls,
        taskset: TaskSet,
        config: ModelConfig | Mapping[str, Any] | None = None,
    ) -> MTLModel:
        """Build the model for ``taskset`` from a config (object or mapping)."""
        cfg = config if isinstance(config, ModelConfig) else cls.Config(**(config or {}))
        return cls.build(taskset, cfg)

    @classmethod
    def build(cls, taskset: TaskSet, config: Any) -> MTLModel:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- the interface ------------------------------------------------------------------
    def forward(self, x: Tensor, task: int) -> Tensor:  # pragma: no cover - abstract
        """Outputs of task ``task`` for inputs ``x``: logits ``(b, C)`` for classification,
        predictions ``(b,)`` for regression, logits ``(b, L, C)`` for sequence labelling."""
        raise NotImplementedError

    def loss(self, x: Tensor, y: Tensor, task: int) -> Tensor:
        """Per-example data loss of task ``task``, shape ``(b,)``."""
        return self.output_loss(self(x, task), y, task)

    def output_loss(self, output: Tensor, y: Tensor, task: int) -> Tensor:
        """Per-example loss ``(b,)`` of task ``task`` from its outputs (as returned by
        :meth:`forward`) and targets ``y``. Every loss of the model — training objective,
        validation loss for early stopping, evaluation, read-outs — goes through this hook.
        Default: :func:`per_example_loss` of the task's kind; models whose outputs are not
        plain logits of the loss (e.g. a CRF slot decoder) override it."""
        return per_example_loss(output, y, self.tasks[task].kind)

    @property
    def convex(self) -> bool:
        """True when the training objective is convex in the parameters (e.g. a linear
        model with an L2 penalty); the trainer's ``'auto'`` settings then minimise it
        exactly (full-batch L-BFGS in float64). False by default."""
        return False

    @property
    def separable(self) -> bool:
        """True when the objective is a sum of per-task terms, each depending only on its
        task's parameters (no shared parameters, no coupling: single-task models). The
        Newton trainer then steps each task's parameters on their own. False by default."""
        return False

    def penalty(self) -> Tensor:
        """Regularisation term of the objective (a scalar); zero by default."""
        return torch.zeros((), device=self._device())

    dropped_tasks: frozenset[int] = frozenset()
    """Tasks whose data terms the training objective leaves out (their parameters then feel
    only the penalty), as set by a retraining without them
    (:func:`taskrel.relatedness.ground_truth.train_model`); the sample-space Newton step
    (:mod:`taskrel.training.newton`) gives their rows weight 0."""

    row_mean_objective: bool = True
    """Whether :meth:`objective` is, per task, the mean over the batch's rows of a per-row
    term, plus a term of the parameters alone. Then, when every task's batch holds the same
    rows, the objective of all rows is the row-weighted mean of its values on chunks of
    rows, and the convergence check evaluates it chunk by chunk
    (:func:`taskrel.training.convergence.gradient_check`). False for objectives that
    couple rows (e.g. VMTL's, whose priors read batch statistics)."""

    def objective(self, batches: Sequence[Batch]) -> tuple[Tensor, dict[str, float]]:
        """Training objective on one mini-batch per task (see module docstring).

        Returns the scalar to minimise and a dict of named components for logging."""
        data = torch.stack([self.loss(b.x, b.y, b.task).mean() for b in batches]).sum()
        pen = self.penalty()
        return data + pen, {"data_loss": float(data.detach()), "penalty": float(pen.detach())}

    def on_step(self, step: int, total_steps: int) -> None:
        """Called by the trainer before each optimisation step (annealing schedules)."""

    def write_artifacts(self, run_dir: Path, taskset: TaskSet) -> list[Path]:
        """Write model-specific results (e.g. a learned relatedness heatmap) into a run
        folder; returns the files written. None by default."""
        return []

    def extra_metrics(self, taskset: TaskSet, split: str) -> dict[str, float]:
        """Metrics that involve several tasks at once (e.g. SLU sentence accuracy);
        empty by default."""
        return {}

    def predict(self, x: Tensor, task: int) -> Tensor:
        """Hard predictions: class ids ``(b,)``/``(b, L)`` or regression values ``(b,)``."""
        return self.output_predictions(self(x, task), x, task)

    def output_predictions(self, output: Tensor, x: Tensor, task: int) -> Tensor:
        """Hard predictions of task ``task`` from its outputs on inputs ``x`` (see
        :meth:`predict`). Default: :func:`hard_predictions` of the task's kind (argmax)."""
        return hard_predictions(output, self.tasks[task].kind)

    # -- parameter partition ------------------------------------------------------------
    def task_parameter_names(self, task: int) -> list[str]:  # pragma: no cover - abstract
        """Names (as in ``named_parameters``) of the parameters owned by task ``task``."""
        raise NotImplementedError

    def task_parameters(self, task: int) -> dict[str, nn.Parameter]:
        params = dict(self.named_parameters())
        return {n: params[n] for n in self.task_parameter_names(task)}

    def shared_parameters(self) -> dict[str, nn.Parameter]:
        """Parameters that belong to no single task."""
        owned = {n for t in range(len(self.tasks)) for n in self.task_parameter_names(t)}
        return {n: p for n, p in self.named_parameters() if n not in owned}

    def _device(self) -> torch.device:
        return next(self.parameters()).device
