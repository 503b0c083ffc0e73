"""Baseline relatedness methods: two recorded while a model with shared parameters trains,
and one read from fitted parameters.

The first two train ``ctx.model`` once (through the trainer's ``on_step`` hook, no second
training loop) and, every ``every`` steps, look at the mini-batches of that step. With
``theta_s`` the shared parameters and ``L_t`` task t's mean data loss on its batch
(the penalty is left out: it is no task's loss):

- **gradient cosine**: ``g_t = dL_t/dtheta_s`` and ``R[i, j] = cos(g_i, g_j)``; positive
  when a step that lowers j's loss also lowers i's to first order (symmetric, diagonal 1).
- **lookahead affinity** (inter-task affinity of Fifty et al., 2021, "Efficiently
  Identifying Task Groupings for Multi-Task Learning"): one SGD step of size ``lr`` on
  task j's loss alone, ``theta_s' = theta_s - lr * g_j``, and
  ``R[i, j] = 1 - L_i(theta_s') / L_i(theta_s)``, the relative drop of task i's loss;
  positive when the step on j helps i.

Each matrix is the mean over the recorded steps. The probes run in evaluation mode (no
dropout) under a forked random state, so recording never changes the training trajectory.

- **parameter similarity** (:func:`parameter_similarity`): ``R[i, j] = cos(theta_i,
  theta_j)``, the cosine between the tasks' fitted parameter vectors: single-task linear
  models (weights and biases, flattened), or, for a model with a non-linear shared
  representation, the tasks' heads on it. Tasks whose optimal predictors point the same
  way score near 1, opposite ones near -1 (symmetric, diagonal 1, dimensionless).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

from taskrel.data.taskset import TaskSet
from taskrel.errors import ConfigError, NotApplicableError
from taskrel.models import build_model
from taskrel.models.base import Batch, MTLModel
from taskrel.relatedness import RelateContext
from taskrel.relatedness.result import Relatedness
from taskrel.training.trainer import FIRST_ORDER_LR, TrainConfig, TrainResult, as_train_config, fit

Probe = Callable[[MTLModel, list[Batch]], Tensor]
"""Maps the model and one step's batches (one per task) to a ``(T, T)`` matrix."""


class _TaskLosses(nn.Module):
    """``batches -> (T,)`` mean data loss of each task on its batch (no penalty); a
    module so :func:`torch.func.functional_call` can swap the parameters."""

    def __init__(self, model: MTLModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, batches: list[Batch]) -> Tensor:
        return torch.stack([self.model.loss(b.x, b.y, b.task).mean() for b in batches])


def shared_task_gradients(
    model: MTLModel,
    batches: list[Batch],
) -> tuple[Callable[[dict[str, Tensor]], Tensor], dict[str, Tensor], dict[str, Tensor], Tensor]:
    """Gradients of every task's batch loss w.r.t. the shared parameters.

    One reverse pass vectorised over the ``T`` task losses (:func:`torch.func.jacrev`).

    Returns:
        ``(losses_at, shared, grads, losses)``: ``losses_at(shared') -> (T,)`` evaluates the
        task losses with the shared parameters replaced (task parameters unchanged);
        ``shared`` maps each shared parameter name to its current value; ``grads`` maps it
        to the stacked gradients ``(T, *shape)`` (row t = gradient of task t's loss);
        ``losses`` are the current task losses ``(T,)`` (loss units, e.g. nats).

    Raises:
        NotApplicableError: the model has no shared parameters.
    """
    shared = {f"model.{n}": p.detach() for n, p in model.shared_parameters().items()}
    if not shared:
        raise NotApplicableError(
            f"model {model.name!r} has no shared parameters; gradient-based "
            "relatedness needs a model that shares some (e.g. 'hard')"
        )
    wrapper = _TaskLosses(model)
    fixed = {n: p.detach() for n, p in wrapper.named_parameters() if n not in shared}
    fixed.update(dict(wrapper.named_buffers()))

    def losses_at(params: dict[str, Tensor]) -> Tensor:
        return functional_call(wrapper, {**fixed, **params}, (batches,))

    def with_aux(params: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        out = losses_at(params)
        return out, out.detach()

    grads, losses = jacrev(with_aux, has_aux=True)(shared)
    return losses_at, shared, grads, losses


def gradient_cosine_step(model: MTLModel, batches: list[Batch]) -> Tensor:
    """``(T, T)`` cosine similarity of the tasks' shared-parameter gradients on one step's
    batches (dimensionless, in [-1, 1]; a zero gradient gives 0)."""
    _, _, grads, losses = shared_task_gradients(model, batches)
    flat = torch.cat([g.reshape(len(losses), -1) for g in grads.values()], dim=1)
    unit = flat / flat.norm(dim=1, keepdim=True).clamp_min(torch.finfo(flat.dtype).tiny)
    return unit @ unit.T


def lookahead_affinity_step(model: MTLModel, batches: list[Batch], lr: float) -> Tensor:
    """``(T, T)`` lookahead affinity on one step's batches: entry ``[i, j]`` is
    ``1 - L_i(theta_s - lr * g_j) / L_i(theta_s)`` (a fraction of task i's loss; the
    ``T`` candidate steps are evaluated with one :func:`torch.func.vmap`)."""
    losses_at, shared, grads, losses = shared_task_gradients(model, batches)
    stepped = {n: shared[n] - lr * grads[n] for n in shared}  # (T_source, *shape)
    after = vmap(losses_at)(stepped)  # (T_source, T_target)
    return 1.0 - after.T / losses[:, None]


def record_during_training(
    taskset: TaskSet,
    ctx: RelateContext,
    probe: Probe,
    every: int,
    train_config: TrainConfig | None = None,
) -> tuple[np.ndarray, int, TrainResult]:
    """Train ``ctx.model`` on ``taskset`` (with ``train_config``, default
    ``ctx.train_config``) and average ``probe`` over every ``every``-th step (steps 0,
    every, 2*every, ...).

    Returns:
        The mean ``(T, T)`` matrix, the number of recorded steps and the training result
        (the same model as training without recording)."""
    if every < 1:
        raise ConfigError(f"every must be >= 1 (steps between recordings), got {every}")
    total = torch.zeros(len(taskset), len(taskset), dtype=torch.float64)
    count = 0

    def on_step(step: int, model: MTLModel, batches: list[Batch]) -> None:
        nonlocal total, count
        if step % every:
            return
        was_training = model.training
        model.eval()
        with torch.random.fork_rng(devices=[]):
            total += probe(model, batches).detach().to(torch.float64)
        model.train(was_training)
        count += 1

    result = fit(
        taskset,
        ctx.model,
        ctx.model_config,
        train_config or ctx.train_config,
        on_step=on_step,
        progress=ctx.progress,
        notify=False,  # training is the probe's vehicle; its optimum is not the point
    )
    return (total / max(count, 1)).numpy(), count, result


def _train_config(
    ctx: RelateContext,
    override: TrainConfig | Mapping[str, Any] | None,
) -> TrainConfig:
    """The config to train with while recording: ``override``, else ``ctx.train_config``;
    either way an ``'auto'`` optimiser is made first-order (Adam, mini-batches: the methods
    are defined on stochastic training, not on the few full-batch steps of the exact
    optimiser that ``'auto'`` picks for a convex model). An optimiser named explicitly is
    kept."""
    cfg = ctx.train_config if override is None else as_train_config(override)
    return cfg.model_copy(update={"optimizer": "adam"}) if cfg.optimizer == "auto" else cfg


def gradient_cosine(
    taskset: TaskSet,
    ctx: RelateContext,
    every: int = 5,
    train_config: TrainConfig | Mapping[str, Any] | None = None,
) -> Relatedness:
    """Task-gradient cosine similarity on the shared parameters, averaged over training.

    Args:
        taskset: the tasks (``T`` of them).
        ctx: the model to train (must have shared parameters) and how to train it.
        every: record every ``every``-th optimiser step.
        train_config: how to train while recording (default ``ctx.train_config``); the
            method is defined on stochastic first-order training, so a mini-batch config
            suits it even when ``ctx`` trains with full-batch L-BFGS.

    Returns:
        A ``(T, T)`` symmetric :class:`Relatedness` in [-1, 1] with diagonal 1.
    """
    cfg = _train_config(ctx, train_config)
    matrix, count, _ = record_during_training(taskset, ctx, gradient_cosine_step, every, cfg)
    return Relatedness(
        matrix,
        taskset.names,
        "gradient",
        meta={
            "units": "cosine of shared-parameter gradients",
            "every": every,
            "recorded_steps": count,
            "model": ctx.model,
            "train_config": cfg.model_dump(),
        },
    )


def lookahead_affinity(
    taskset: TaskSet,
    ctx: RelateContext,
    every: int = 5,
    lr: float | None = None,
    train_config: TrainConfig | Mapping[str, Any] | None = None,
) -> Relatedness:
    """Lookahead inter-task affinity, averaged over training.

    Args:
        taskset: the tasks (``T`` of them).
        ctx: the model to train (must have shared parameters) and how to train it.
        every: record every ``every``-th optimiser step.
        lr: size of the lookahead SGD step on the shared parameters (default: the
            training learning rate).
        train_config: how to train while recording (default ``ctx.train_config``; see
            :func:`gradient_cosine`).

    Returns:
        A ``(T, T)`` :class:`Relatedness`: ``[i, j]`` is the mean relative drop of task
        i's batch loss after one step on task j (a fraction; rows = targets).
    """
    cfg = _train_config(ctx, train_config)
    step = lr if lr is not None else (cfg.lr if cfg.lr is not None else FIRST_ORDER_LR)
    if step <= 0:
        raise ConfigError(f"lookahead lr must be > 0, got {step}")
    matrix, count, _ = record_during_training(
        taskset,
        ctx,
        lambda model, batches: lookahead_affinity_step(model, batches, step),
        every,
        cfg,
    )
    return Relatedness(
        matrix,
        taskset.names,
        "affinity",
        meta={
            "units": "relative drop of the target's batch loss",
            "every": every,
            "lr": step,
            "recorded_steps": count,
            "model": ctx.model,
            "train_config": cfg.model_dump(),
        },
    )


def task_vectors(model: MTLModel) -> Tensor:
    """``(T, P)``: each task's own parameters (:meth:`MTLModel.task_parameters`),
    flattened in name order.

    Raises:
        NotApplicableError: the tasks' parameter vectors differ in length (e.g. different
            numbers of classes), so no cosine is defined.
    """
    rows = [
        torch.cat([p.detach().reshape(-1) for _, p in sorted(model.task_parameters(t).items())])
        for t in range(len(model.tasks))
    ]
    sizes = sorted({len(r) for r in rows})
    if len(sizes) != 1:
        raise NotApplicableError(
            f"parameter similarity needs parameter vectors of one length; tasks have {sizes} "
            "(e.g. different numbers of classes)"
        )
    return torch.stack(rows).double()


def parameter_similarity(
    taskset: TaskSet,
    ctx: RelateContext,
    model: MTLModel | None = None,
    l2: float | Literal["auto"] = "auto",
) -> Relatedness:
    """Cosine similarity between the tasks' fitted parameters.

    Args:
        taskset: the tasks (``T`` of them).
        ctx: when ``ctx.model`` has shared parameters and is not convex (a non-linear
            shared representation, e.g. ``hard`` with hidden layers), it is trained and
            its task heads are compared; otherwise single-task linear models
            (``stl``, ``hidden=[]``) are fitted with ``ctx.train_config``.
        model: a trained model whose task parameters to compare instead (no training).
        l2: L2 coefficient of the single-task models (``"auto"``: chosen on validation
            data).

    Returns:
        A ``(T, T)`` symmetric :class:`Relatedness` in [-1, 1] with diagonal 1 (0 for a
        task whose parameters are all zero).

    Raises:
        NotApplicableError: the tasks' parameter vectors differ in length.
    """
    source = "given model"
    if model is None:
        pinned = ctx.pinned(taskset)
        probe = build_model(pinned.model, taskset, pinned.model_config)
        if probe.shared_parameters() and not probe.convex:
            source = f"task heads of {pinned.model!r}"
            model = fit(taskset, pinned.model, pinned.model_config, pinned.train_config).model
        else:
            source = "single-task linear models"
            stl: dict[str, Any] = {"hidden": [], "l2": l2}
            model = fit(taskset, "stl", stl, ctx.train_config, progress=ctx.progress).model
    vectors = task_vectors(model)
    unit = vectors / vectors.norm(dim=1, keepdim=True).clamp_min(torch.finfo(vectors.dtype).tiny)
    return Relatedness(
        (unit @ unit.T).numpy(),
        taskset.names,
        "param-similarity",
        meta={
            "units": "cosine of the tasks' fitted parameter vectors",
            "source": source,
            "model": model.name,
        },
    )
