"""The trainer: seeded mini-batch training across tasks with early stopping,
checkpoints and clean interruption.

One *step* draws one mini-batch from every task (the same rows for every task when the
task set has ``shared_inputs``) and takes one optimiser step on
:meth:`MTLModel.objective`. One *epoch* is ``ceil(max_t n_train_t / batch_size)`` steps,
so the largest task is seen about once per epoch. With ``optimizer='lbfgs'`` every step is
full-batch (deterministic, used for convex models that must reach the optimum).

Interruption (Ctrl-C or SIGTERM) writes the state of the last finished epoch to the
checkpoint and raises :class:`TrainingInterrupted`; ``resume=True`` continues from it to
the same final parameters as an uninterrupted run.
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import Tensor

from taskrel.data.taskset import TaskSet
from taskrel.errors import ConfigError, format_validation_error
from taskrel.models import build_model
from taskrel.models.base import Batch, ModelConfig, MTLModel
from taskrel.notices import notice
from taskrel.seeding import seed_everything
from taskrel.signals import interrupt_signals
from taskrel.training.checkpoint import load_checkpoint, save_checkpoint
from taskrel.training.convergence import gradient_check
from taskrel.training.metrics import as_model_input, task_losses
from taskrel.training.newton import (
    NEWTON_MAX_PARAMS,
    NEWTON_MAX_ROWS,
    newton_size,
    newton_step,
    sample_space_rows,
)
from taskrel.validation import check_options

OptimizerName = Literal["adam", "sgd", "lbfgs", "newton"]
EXACT_OPTIMIZERS = ("lbfgs", "newton")
"""Full-batch optimisers that run to the optimum (no early stopping, last iterate kept)."""

FIRST_ORDER_LR = 1e-2
"""Default learning rate of Adam and SGD."""


class TrainConfig(BaseModel):
    """How to train (every field has a default; unknown keys are rejected).

    The defaults adapt to the model (see :func:`resolve_train_config`): a model whose
    objective is convex in its parameters (``MTLModel.convex``, e.g. ``hidden=[]``) is
    trained to its optimum in float64 (Newton steps up to 4096 parameters, or 4096 per
    task for single-task models; above, Newton steps solved in the sample space up to
    4,608 sample rows where that form applies, :mod:`taskrel.training.newton`; full-batch
    L-BFGS otherwise); any other by Adam in float32 with validation-based early
    stopping."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(100, ge=1, description="maximum number of epochs")
    optimizer: Literal["auto"] | OptimizerName = Field(
        "auto",
        description="'auto': for models convex in their parameters Newton (up to 4096 "
        "parameters, per task for single-task models; above, in the sample space up to 4,608 "
        "rows where it applies) or full-batch L-BFGS, Adam otherwise",
    )
    lr: float | None = Field(
        None, gt=0.0, description="learning rate (default: 1.0 for L-BFGS, 1e-2 otherwise)"
    )
    batch_size: int = Field(32, ge=1, description="examples per task per step")
    patience: int | None = Field(
        20,
        ge=1,
        description="stop after this many epochs without a better validation "
        "score (needs a validation split; not used by L-BFGS and Newton, which run to the "
        "optimum); null disables early stopping",
    )
    selection_metric: str | None = Field(
        None,
        description="early stopping and best-epoch selection maximise this key of the "
        "model's validation metrics (e.g. 'overall_accuracy' of an SLU model) instead of "
        "minimising the validation loss",
    )
    grad_clip: float | None = Field(None, gt=0.0, description="clip the gradient norm")
    lbfgs_max_iter: int = Field(100, ge=1, description="L-BFGS iterations per epoch")
    stop_tol: float = Field(
        1e-9,
        gt=0.0,
        description="L-BFGS and Newton epochs stop once the relative gradient norm is below "
        "this (1e-9: the optimum to about machine precision in float64) or an epoch no "
        "longer lowers the objective",
    )
    grad_tol: float = Field(
        1e-3,
        gt=0.0,
        description="converged when ||grad J|| <= grad_tol * sqrt(sum_t ||grad L_t||^2) "
        "(taskrel.training.convergence); a run that ends above it gives a notice",
    )
    seed: int = 0
    checkpoint_every: int = Field(5, ge=1, description="epochs between checkpoint writes")
    dtype: Literal["auto", "float32", "float64"] = Field(
        "auto",
        description="parameter and feature precision ('auto': float64 with L-BFGS, for "
        "exact optima; float32 otherwise)",
    )


def resolve_train_config(
    config: TrainConfig, model: MTLModel, taskset: TaskSet | None = None
) -> TrainConfig:
    """``config`` with its ``'auto'``/unset fields made concrete for ``model``:
    ``optimizer`` (when ``model.convex``: Newton up to
    :data:`~taskrel.training.newton.NEWTON_MAX_PARAMS` parameters — per task for a separable
    model, :func:`~taskrel.training.newton.newton_size` — and, given ``taskset``, above it
    with the sample-space solve up to :data:`~taskrel.training.newton.NEWTON_MAX_ROWS`
    rows where that applies (:func:`~taskrel.training.newton.sample_space_rows`); else
    L-BFGS; Adam for other models), ``lr`` (1.0 for L-BFGS and Newton, 1e-2 otherwise) and
    ``dtype`` (float64 with L-BFGS and Newton, else float32)."""
    optimizer = config.optimizer
    if optimizer == "auto":
        optimizer = _auto_optimizer(model, taskset)
    exact = optimizer in EXACT_OPTIMIZERS
    lr = config.lr if config.lr is not None else (1.0 if exact else FIRST_ORDER_LR)
    dtype = config.dtype
    if dtype == "auto":
        dtype = "float64" if exact else "float32"
    return config.model_copy(update={"optimizer": optimizer, "lr": lr, "dtype": dtype})


def _auto_optimizer(model: MTLModel, taskset: TaskSet | None) -> OptimizerName:
    if not model.convex:
        return "adam"
    if newton_size(model) <= NEWTON_MAX_PARAMS:
        return "newton"
    rows = sample_space_rows(model, taskset) if taskset is not None else None
    return "newton" if rows is not None and rows <= NEWTON_MAX_ROWS else "lbfgs"


class TrainingInterrupted(KeyboardInterrupt):
    """Training was interrupted; the checkpoint (if any) holds the last finished epoch.

    A ``KeyboardInterrupt``, as the Ctrl-C or SIGTERM it stands for: code that catches
    ``Exception`` to skip a failed unit (a predictor, a method) lets it through, so an
    interruption stops the whole computation instead of being reported as a failure. It
    pickles with its fields, so it crosses process boundaries (worker pools, Ray)."""

    def __init__(self, checkpoint: Path | None, epoch: int) -> None:
        where = f"checkpoint {checkpoint} (epoch {epoch})" if checkpoint else "no checkpoint"
        super().__init__(f"training interrupted after epoch {epoch}; {where}")
        self.checkpoint = checkpoint
        self.epoch = epoch

    def __reduce__(self) -> tuple[type[TrainingInterrupted], tuple[Path | None, int]]:
        return type(self), (self.checkpoint, self.epoch)


@dataclass
class TrainResult:
    """What :func:`train` returns: the model (best epoch restored) and its history."""

    model: MTLModel
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    epochs_run: int = 0
    stopped_early: bool = False
    convergence: dict[str, float | bool] = field(default_factory=dict)
    """:meth:`Convergence.as_dict` of the returned parameters (relative gradient norm)."""
    config: TrainConfig | None = None
    """The training config with its defaults resolved for the model."""
    regularization: dict[str, Any] | None = None
    """What :func:`~taskrel.training.regularization.resolve_regularization` chose (values
    and validation curve) when the model config had ``'auto'`` fields; None otherwise."""


class TaskSampler:
    """Draws a mini-batch of training rows per task from shuffled passes over the data.

    All randomness comes from one ``torch.Generator`` whose state is checkpointed."""

    def __init__(
        self, taskset: TaskSet, batch_size: int, seed: int, dtype: torch.dtype = torch.float32
    ) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.shared = taskset.shared_inputs
        self.data = [
            (as_model_input(t.x[t.train_idx], dtype), as_model_input(t.y[t.train_idx], dtype))
            for t in taskset.tasks
        ]
        self.batch_size = batch_size
        sizes = [len(y) for _, y in self.data]
        self.steps_per_epoch = max(1, math.ceil(max(sizes) / batch_size))
        self._orders: list[Tensor] = [torch.empty(0, dtype=torch.long) for _ in sizes]
        self._pos = [0 for _ in sizes]

    def _take(self, slot: int, n: int) -> Tensor:
        if self._pos[slot] + self.batch_size > len(self._orders[slot]):
            self._orders[slot] = torch.randperm(n, generator=self.generator)
            self._pos[slot] = 0
        idx = self._orders[slot][self._pos[slot] : self._pos[slot] + self.batch_size]
        self._pos[slot] += self.batch_size
        return idx

    def batches(self) -> list[Batch]:
        """One batch per task (the same rows for all tasks when inputs are shared)."""
        if self.shared:
            idx = self._take(0, len(self.data[0][1]))
            return [Batch(t, x[idx], y[idx]) for t, (x, y) in enumerate(self.data)]
        out = []
        for t, (x, y) in enumerate(self.data):
            idx = self._take(t, len(y))
            out.append(Batch(t, x[idx], y[idx]))
        return out

    def full(self) -> list[Batch]:
        """All training data as one batch per task."""
        return [Batch(t, x, y) for t, (x, y) in enumerate(self.data)]

    def state(self) -> dict[str, Any]:
        return {"rng": self.generator.get_state(), "orders": self._orders, "pos": self._pos}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.generator.set_state(state["rng"])
        self._orders = list(state["orders"])
        self._pos = list(state["pos"])


def validation_loss(model: MTLModel, taskset: TaskSet) -> float | None:
    """Mean over tasks of the mean validation loss; None without validation data."""
    losses = task_losses(model, taskset, "val")
    return sum(losses.values()) / len(losses) if losses else None


def validation_metric(model: MTLModel, taskset: TaskSet, name: str) -> float:
    """``name`` of ``model.extra_metrics(taskset, "val")`` (higher is better).

    Raises:
        ConfigError: the model reports no such validation metric.
    """
    metrics = model.extra_metrics(taskset, "val")
    if name not in metrics:
        raise ConfigError(
            f"train.selection_metric={name!r}: model {model.name!r} reports "
            f"{sorted(metrics) or 'no'} validation metrics"
        )
    return metrics[name]


def _make_optimizer(model: MTLModel, cfg: TrainConfig) -> torch.optim.Optimizer | None:
    """The optimiser of a resolved config (:func:`resolve_train_config`); None for Newton
    steps (:mod:`taskrel.training.newton`, stateless)."""
    if cfg.optimizer == "newton":
        return None
    params = [p for p in model.parameters() if p.requires_grad]
    lr = float(cfg.lr or 0.0)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    return torch.optim.LBFGS(
        params,
        lr=lr,
        max_iter=cfg.lbfgs_max_iter,
        tolerance_grad=1e-10,
        tolerance_change=0.0,
        history_size=50,
        line_search_fn="strong_wolfe",
    )


def train(
    model: MTLModel,
    taskset: TaskSet,
    config: TrainConfig | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    progress: bool | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    on_step: Callable[[int, MTLModel, list[Batch]], None] | None = None,
    notify: bool = True,
) -> TrainResult:
    """Train ``model`` on the training splits of ``taskset``.

    First-order optimisers (Adam, SGD) keep the parameters of the best validation epoch
    and stop early after ``patience`` epochs without improvement. L-BFGS minimises the
    objective: every epoch is one full-batch L-BFGS run of ``lbfgs_max_iter`` iterations
    (or one Newton step), and epochs continue until the relative gradient norm (see
    :mod:`taskrel.training.convergence`) is below ``stop_tol`` or an epoch no longer
    lowers the objective; the last iterate is returned (validation data choose the
    regularisation, not the iterate).

    Args:
        model: any :class:`MTLModel` built for ``taskset``.
        taskset: the data; its ``val`` split (if any) drives early stopping.
        config: training options (defaults: :class:`TrainConfig`).
        checkpoint: file to write checkpoints to (every ``checkpoint_every`` epochs, at the
            end, and on interruption); None writes none.
        resume: continue from ``checkpoint`` instead of starting over.
        progress: show a progress bar (default: when stderr is a terminal).
        on_epoch: called with ``(epoch, record)`` after every epoch.
        on_step: called with ``(step, model, batches)`` before every optimiser step
            (``step`` counts from 0 over the whole run; ``batches`` are the mini-batches
            that step trains on). Probes that record quantities during training use it;
            they must not change the model's parameters.
        notify: give a one-line notice when the returned parameters have not converged
            (relative gradient norm above ``grad_tol`` and not chosen by early stopping).

    Returns:
        A :class:`TrainResult`; the model holds the parameters of the best validation
        epoch (the last epoch without validation data).

    Raises:
        TrainingInterrupted: on Ctrl-C/SIGTERM, after writing the checkpoint.
    """
    cfg = resolve_train_config(config or TrainConfig(), model, taskset)
    exact = cfg.optimizer in EXACT_OPTIMIZERS
    ckpt = Path(checkpoint) if checkpoint is not None else None
    dtype = getattr(torch, cfg.dtype)
    model.to(dtype)
    sampler = TaskSampler(taskset, cfg.batch_size, cfg.seed, dtype)
    optimizer = _make_optimizer(model, cfg)
    has_val = any(len(t.val_idx) for t in taskset.tasks)
    if cfg.selection_metric is not None and has_val and not resume:
        validation_metric(model, taskset, cfg.selection_metric)  # fail before training
    steps = 1 if exact else sampler.steps_per_epoch
    total_steps = cfg.epochs * steps

    state: dict[str, Any] = {
        "epoch": 0,
        "best_epoch": 0,
        "best_val": math.inf,
        "bad_epochs": 0,
        "history": [],
        "best_model": None,
        "last_objective": math.inf,
    }
    if resume:
        if ckpt is None:
            raise ValueError("resume=True needs a checkpoint path")
        saved = load_checkpoint(ckpt)
        model.load_state_dict(saved["model"])
        if optimizer is not None:
            optimizer.load_state_dict(saved["optimizer"])
        sampler.load_state(saved["sampler"])
        torch.set_rng_state(saved["torch_rng"])
        state = {k: saved.get(k, v) for k, v in state.items()}

    def snapshot() -> dict[str, Any]:
        return copy.deepcopy(
            {
                **state,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict() if optimizer is not None else {},
                "sampler": sampler.state(),
                "torch_rng": torch.get_rng_state(),
                "train_config": cfg.model_dump(),
            }
        )

    # the state at the end of the last finished epoch, written on interruption; only kept
    # when there is a checkpoint to write (a copy per epoch is costly for many tasks)
    last_good = snapshot() if ckpt is not None else None
    show = sys.stderr.isatty() if progress is None else progress
    stopped_early = False
    try:
        with interrupt_signals(), _progress(show, cfg.epochs, state["epoch"]) as advance:
            while state["epoch"] < cfg.epochs:
                epoch = state["epoch"] + 1
                model.train()
                objective_sum = 0.0
                for s in range(steps):
                    model.on_step((epoch - 1) * steps + s, total_steps)
                    batches = sampler.full() if exact else sampler.batches()
                    if on_step is not None:
                        on_step((epoch - 1) * steps + s, model, batches)
                    objective_sum += _step(model, optimizer, batches, cfg)
                record: dict[str, float] = {"epoch": epoch, "objective": objective_sum / steps}
                done = False
                if exact:
                    check = gradient_check(model, sampler.full(), cfg.grad_tol)
                    record.update(objective=check.objective, grad_rel=check.relative)
                    stalled = check.objective >= state["last_objective"] - 1e-15 * abs(
                        check.objective
                    )
                    done = check.relative <= cfg.stop_tol or stalled
                    state["last_objective"] = check.objective
                # exact optimisers do not select epochs: their validation loss is recorded
                # once, for the returned (last) iterate
                last = done or epoch == cfg.epochs
                val = validation_loss(model, taskset) if has_val and (last or not exact) else None
                if val is not None and exact:
                    record["val_loss"] = val
                elif val is not None:
                    record["val_loss"] = val
                    if cfg.selection_metric is not None:
                        score = validation_metric(model, taskset, cfg.selection_metric)
                        record[f"val_{cfg.selection_metric}"] = score
                        val = -score  # state["best_val"] is minimised
                    if val < state["best_val"] - 1e-12:
                        state.update(
                            best_val=val,
                            best_epoch=epoch,
                            bad_epochs=0,
                            best_model={
                                k: v.detach().clone() for k, v in model.state_dict().items()
                            },
                        )
                    else:
                        state["bad_epochs"] += 1
                state["history"].append(record)
                state["epoch"] = epoch
                if ckpt is not None:
                    last_good = snapshot()
                    if epoch % cfg.checkpoint_every == 0:
                        save_checkpoint(last_good, ckpt)
                if on_epoch is not None:
                    on_epoch(epoch, record)
                advance(record)
                if done:
                    break
                if (
                    not exact
                    and cfg.patience is not None
                    and has_val
                    and state["bad_epochs"] >= cfg.patience
                ):
                    stopped_early = True
                    break
    except KeyboardInterrupt:
        if ckpt is not None and last_good is not None:
            save_checkpoint(last_good, ckpt)
        raise TrainingInterrupted(ckpt, state["epoch"]) from None

    if ckpt is not None:
        save_checkpoint(snapshot(), ckpt)
    if state["best_model"] is not None:
        model.load_state_dict(state["best_model"])
    model.eval()
    best = state["best_epoch"] if state["best_model"] is not None else state["epoch"]
    convergence = gradient_check(model, sampler.full(), cfg.grad_tol)
    chosen_by_validation = state["best_model"] is not None and best < state["epoch"]
    if notify and not convergence.converged and not chosen_by_validation:
        notice(
            f"model {model.name!r} has not converged after {state['epoch']} epochs of "
            f"{cfg.optimizer}: ||grad J|| is {convergence.relative:.1e} of the per-task "
            f"gradient scale (threshold {cfg.grad_tol:g}); train longer"
            + (" or use optimizer='auto'" if model.convex and not exact else "")
        )
    return TrainResult(
        model=model,
        history=state["history"],
        best_epoch=best,
        epochs_run=state["epoch"],
        stopped_early=stopped_early,
        convergence=convergence.as_dict(),
        config=cfg,
    )


def as_train_config(value: TrainConfig | Mapping[str, Any] | None) -> TrainConfig:
    """``value`` as a :class:`TrainConfig` (``None``: the defaults).

    Raises:
        ConfigError: not a mapping, or invalid fields: one readable ``field: problem``
            per field (:func:`~taskrel.errors.format_validation_error`), unknown ones
            listed with the accepted names."""
    if isinstance(value, TrainConfig):
        return value
    if value is None:
        return TrainConfig()
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"train_config must be a TrainConfig or a mapping of its fields, "
            f"got {type(value).__name__}"
        )
    try:
        return TrainConfig(**value)
    except ValidationError as err:
        message = format_validation_error(err, accepted=TrainConfig.model_fields)
        raise ConfigError(f"train_config: {message}") from None


def fit(
    taskset: TaskSet | str | Path,
    model: str = "hard",
    model_config: ModelConfig | Mapping[str, Any] | None = None,
    train_config: TrainConfig | Mapping[str, Any] | None = None,
    **train_options: Any,
) -> TrainResult:
    """Seed, build model ``model`` for ``taskset`` and train it.

    ``taskset`` may also be a dataset name or a path to a data file (loaded with default
    options). Every argument is checked before training (non-finite training features
    included): errors are :class:`~taskrel.errors.TaskrelError` subclasses naming the
    argument.

    ``train_options`` (``checkpoint``, ``resume``, ``progress``, ``on_epoch``,
    ``on_step``) go to
    :func:`train`. The same ``train_config.seed`` gives the same numbers on CPU.

    ``"auto"`` regularisation fields of ``model_config`` are first chosen on validation
    data (:func:`~taskrel.training.regularization.resolve_regularization`); the result's
    ``regularization`` records the chosen values and the validation curves."""
    from taskrel.data import as_taskset
    from taskrel.data.taskset import check_features
    from taskrel.training.regularization import resolve_regularization

    taskset = as_taskset(taskset)
    cfg = as_train_config(train_config)
    if not isinstance(model, str):
        raise ConfigError(f"model must be a registered model name, got {type(model).__name__}")
    check_options("fit", train, train_options, skip=("model", "taskset", "config"))
    check_features(taskset)
    pinned, report = resolve_regularization(taskset, model, model_config, cfg)
    seed_everything(cfg.seed)
    built = build_model(model, taskset, pinned)
    result = train(built, taskset, cfg, **train_options)
    result.regularization = report.to_dict() if report is not None else None
    return result


def _step(
    model: MTLModel,
    optimizer: torch.optim.Optimizer | None,
    batches: list[Batch],
    cfg: TrainConfig,
) -> float:
    if optimizer is None:
        return newton_step(model, batches)
    if isinstance(optimizer, torch.optim.LBFGS):

        def closure() -> Tensor:
            optimizer.zero_grad()
            loss, _ = model.objective(batches)
            loss.backward()
            return loss

        return float(optimizer.step(closure).detach())
    optimizer.zero_grad()
    loss, _ = model.objective(batches)
    loss.backward()
    if cfg.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    return float(loss.detach())


@contextmanager
def _progress(show: bool, epochs: int, start: int) -> Iterator[Callable[[dict[str, float]], None]]:
    if not show:
        yield lambda record: None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("training"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        transient=True,
    ) as bar:
        job = bar.add_task("train", total=epochs, completed=start, info="")

        def advance(record: dict[str, float]) -> None:
            info = " ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "epoch")
            bar.update(job, advance=1, info=info)

        yield advance
