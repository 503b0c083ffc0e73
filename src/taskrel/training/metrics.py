"""Per-task evaluation metrics.

- classification: ``accuracy`` (fraction), ``macro_f1`` (scikit-learn), ``loss`` (mean
  cross-entropy, nats);
- regression: ``rmse`` and ``mse`` (target units), ``explained_variance`` (scikit-learn),
  ``loss`` (mean squared error);
- sequence_labeling: ``slot_f1`` (span-level CoNLL F1 with seqeval), ``token_accuracy``,
  ``loss``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.metrics import explained_variance_score, f1_score

from taskrel.data.taskset import PAD_TAG, SplitName, TaskSet
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
    y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]
) -> dict[str, float]:
    from seqeval.metrics import f1_score as span_f1

    mask = y_true != PAD_TAG
    return {
        "slot_f1": float(
            span_f1(tag_sequences(y_true, y_true, labels), tag_sequences(y_pred, y_true, labels))
        ),
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
    was_training = model.training
    model.eval()
    dtype = next(model.parameters()).dtype
    outs, preds = [], []
    for start in range(0, len(x), batch_size):
        xb = as_model_input(x[start : start + batch_size], dtype)
        outs.append(model(xb, task))
        preds.append(model.output_predictions(outs[-1], xb, task))
    model.train(was_training)
    return torch.cat(outs).numpy(), torch.cat(preds).numpy()


@torch.no_grad()
def evaluate(
    model: MTLModel,
    taskset: TaskSet,
    split: SplitName = "test",
) -> dict[str, dict[str, float]]:
    """Metrics of every task on ``split`` (tasks with an empty split are skipped); ``loss``
    is the model's own (:meth:`MTLModel.output_loss`, e.g. a CRF loss)."""
    results: dict[str, dict[str, float]] = {}
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
            m = sequence_metrics(y, pred, labels)
        m["loss"] = float(loss.mean())
        results[task.name] = m
    return results


@torch.no_grad()
def task_losses(model: MTLModel, taskset: TaskSet, split: SplitName = "val") -> dict[str, float]:
    """Mean per-example loss (:meth:`MTLModel.output_loss`) of every task on ``split``
    (tasks with no rows skipped); early stopping watches it on ``val``."""
    losses = {}
    for t, task in enumerate(taskset.tasks):
        x, y = task.arrays(split)
        if len(x):
            out, _ = predict_task(model, x, t)
            target = as_model_input(y, torch.float64)
            losses[task.name] = float(model.output_loss(torch.as_tensor(out), target, t).mean())
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
