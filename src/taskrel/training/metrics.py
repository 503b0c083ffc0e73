"""Per-task evaluation metrics.

- classification: ``accuracy`` (fraction), ``macro_f1`` (scikit-learn), ``loss`` (mean
  cross-entropy, nats);
- regression: ``rmse`` and ``mse`` (target units), ``explained_variance`` (scikit-learn),
  ``loss`` (mean squared error);
- sequence_labeling: ``slot_f1`` (span-level CoNLL F1 with seqeval), ``token_accuracy``,
  ``loss``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from sklearn.metrics import explained_variance_score, f1_score
from torch import nn

from taskrel.data.slu import gold_tag_names
from taskrel.data.taskset import PAD_TAG, SplitName, TaskSet
from taskrel.errors import ConfigError, DataError
from taskrel.models.base import MTLModel


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    return {
        "accuracy": float(np.mean(y_true == y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
    }


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    mse = float(np.mean((y_true - y_pred) ** 2))
    return {
        "rmse": float(np.sqrt(mse)),
        "mse": mse,
        "explained_variance": float(explained_variance_score(y_true, y_pred)),
    }


def tag_sequences(tags: np.ndarray, gold: np.ndarray, labels: Sequence[str]) -> list[list[str]]:
    """Tag-name sequences of ``tags`` ``(n, L)`` keeping positions where ``gold`` is not
    padding."""
    return [
        [labels[int(t)] for t, g in zip(row, grow, strict=True) if g != PAD_TAG]
        for row, grow in zip(tags, gold, strict=True)
    ]


def sequence_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    labels: Sequence[str],
    gold: list[list[str]] | None = None,
) -> dict[str, float]:
    """Span F1 and token accuracy of tag ids ``y_pred`` against ``y_true`` ``(n, L)``;
    ``gold`` (tag strings of the real tokens per row, default ``labels[y_true]``) names
    the gold spans, e.g. with the original strings of tags unseen in training
    (:func:`taskrel.data.slu.gold_tag_names`)."""
    from seqeval.metrics import f1_score as span_f1

    mask = y_true != PAD_TAG
    truth = tag_sequences(y_true, y_true, labels) if gold is None else gold
    return {
        "slot_f1": float(span_f1(truth, tag_sequences(y_pred, y_true, labels))),
        "token_accuracy": float(np.mean(y_true[mask] == y_pred[mask])),
    }


def as_model_input(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """``a`` as a tensor; floating arrays are cast to ``dtype`` (ids/labels keep theirs)."""
    t = torch.as_tensor(a)
    return t.to(dtype) if t.is_floating_point() else t


@torch.no_grad()
def predict_task(
    model: MTLModel,
    x: np.ndarray,
    task: int,
    batch_size: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Raw outputs and hard predictions (:meth:`MTLModel.output_predictions` of those
    outputs: one forward pass) of ``model`` for one task, batched."""
    with evaluation_mode(model):
        dtype = next(model.parameters()).dtype
        outs, preds = [], []
        for start in range(0, len(x), batch_size):
            xb = as_model_input(x[start : start + batch_size], dtype)
            outs.append(model(xb, task))
            preds.append(model.output_predictions(outs[-1], xb, task))
    return torch.cat(outs).numpy(), torch.cat(preds).numpy()


@contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode inside the block, its previous mode restored after (the
    module tree is walked only when the mode changes: per-task loops over many tasks)."""
    was_training = model.training
    if was_training:
        model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


@torch.no_grad()
def evaluate(
    model: MTLModel,
    taskset: TaskSet,
    split: SplitName = "test",
) -> dict[str, dict[str, float]]:
    """Metrics of every task on ``split`` (tasks with an empty split are skipped); ``loss``
    is the model's own (:meth:`MTLModel.output_loss`, e.g. a CRF loss).

    Raises:
        ConfigError: ``model`` is not an :class:`MTLModel` or ``split`` is unknown.
        DataError: ``taskset`` is not the kind of task set the model was built for
            (:func:`check_compatible`)."""
    check_compatible(model, taskset)
    if split not in ("train", "val", "test"):
        raise ConfigError(f"split must be 'train', 'val' or 'test', got {split!r}")
    results: dict[str, dict[str, float]] = {}
    with evaluation_mode(model):
        for t, task in enumerate(taskset.tasks):
            x, y = task.arrays(split)
            if len(x) == 0:
                continue
            out, pred = predict_task(model, x, t)
            loss = model.output_loss(torch.as_tensor(out), as_model_input(y, torch.float64), t)
            if task.kind == "classification":
                m = classification_metrics(y, pred)
            elif task.kind == "regression":
                m = regression_metrics(y, pred)
            else:
                labels = task.labels or tuple(str(i) for i in range(task.n_outputs))
                m = sequence_metrics(y, pred, labels, gold_tag_names(taskset, t, split))
            m["loss"] = float(loss.mean())
            results[task.name] = m
    return results


@torch.no_grad()
def check_compatible(model: MTLModel, taskset: TaskSet) -> None:
    """Check that ``model`` was built for tasks like those of ``taskset``: the same
    number of tasks with the same names, kinds and output sizes, and inputs it accepts
    (one example of each task is pushed through it).

    Raises:
        ConfigError: ``model`` is not an :class:`MTLModel`.
        DataError: the first mismatch, naming the task and both values."""
    from taskrel.data import as_taskset

    if not isinstance(model, MTLModel):
        raise ConfigError(f"model must be a trained MTLModel, got {type(model).__name__}")
    taskset = as_taskset(taskset)
    have = [(t.name, t.kind, t.n_outputs) for t in model.tasks]
    want = [(t.name, t.kind, t.n_outputs) for t in taskset.tasks]
    if len(have) != len(want):
        raise DataError(
            f"taskset {taskset.name!r} has {len(want)} tasks but the model was built for "
            f"{len(have)} ({', '.join(n for n, _, _ in have)})"
        )
    for t, (h, w) in enumerate(zip(have, want, strict=True)):
        if h != w:
            raise DataError(
                f"taskset {taskset.name!r}: task {t} is {w[0]!r} ({w[1]}, {w[2]} outputs) but "
                f"the model was built for {h[0]!r} ({h[1]}, {h[2]} outputs)"
            )
    for t, task in enumerate(taskset.tasks):
        if task.n_examples == 0:
            continue
        try:
            predict_task(model, task.x[:1], t)
        except (RuntimeError, IndexError) as err:
            raise DataError(
                f"taskset {taskset.name!r}: task {task.name!r} has inputs of shape "
                f"{task.input_shape} that the model does not accept "
                f"({' '.join(str(err).split())[:120]})"
            ) from None


@torch.no_grad()
def task_losses(model: MTLModel, taskset: TaskSet, split: SplitName = "val") -> dict[str, float]:
    """Mean per-example loss (:meth:`MTLModel.output_loss`) of every task on ``split``
    (tasks with no rows skipped); early stopping watches it on ``val``."""
    losses = {}
    with evaluation_mode(model):
        for t, task in enumerate(taskset.tasks):
            x, y = task.arrays(split)
            if len(x):
                out, _ = predict_task(model, x, t)
                target = as_model_input(y, torch.float64)
                loss = model.output_loss(torch.as_tensor(out), target, t)
                losses[task.name] = float(loss.mean())
    return losses


PRIMARY_METRIC = {
    "classification": "accuracy",
    "regression": "explained_variance",
    "sequence_labeling": "slot_f1",
}


def summarize(metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    """Average of each metric over the tasks that report it."""
    keys = sorted({k for m in metrics.values() for k in m})
    return {k: float(np.mean([m[k] for m in metrics.values() if k in m])) for k in keys}
