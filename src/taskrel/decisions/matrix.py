"""Matrix heuristics: rank groups by a task x task relatedness matrix.

From a relatedness matrix ``S`` (rows targets, columns sources, positive = the source
helps; computed with :func:`taskrel.relatedness.relate`), the score of target ``i`` in
group ``G`` aggregates ``S[i, j]`` over the other members ``j in G \\ {i}``: their sum
(``gradient-cosine``, ``affinity-sum``, ``param-similarity``) or their mean (TAG, see
:mod:`taskrel.decisions.tag`). A task alone scores 0. The predictor returns minus the
score: a proxy that is lower when the group is predicted to serve the task better, not a
loss (the units say so). Summed over a partition it is minus the within-group
relatedness, the objective of matrix-based grouping.

The probing methods (``gradient``, ``affinity``) record while training with mini-batches;
when ``ctx`` trains with an exact full-batch optimiser (L-BFGS or Newton: the convex
presets, a handful of steps) they train with :data:`PROBE_TRAINING` instead, keeping the
seed and precision.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from taskrel.data.taskset import TaskSet
from taskrel.decisions.predictors import GroupOutcomePredictor, Subset
from taskrel.errors import ConfigError
from taskrel.models import build_model
from taskrel.relatedness import RelateContext, relate
from taskrel.relatedness import method_function as relatedness_method
from taskrel.training.trainer import EXACT_OPTIMIZERS, TrainConfig, resolve_train_config

PROBE_TRAINING: dict[str, Any] = {
    "optimizer": "adam",
    "lr": 1e-2,
    "epochs": 50,
    "batch_size": 32,
    "patience": None,
}
"""Mini-batch training of the probing methods when ``ctx`` uses L-BFGS."""


def probe_train_config(taskset: TaskSet, ctx: RelateContext) -> TrainConfig:
    """``ctx.train_config`` made concrete for the model (``"auto"`` fields resolved), or
    :data:`PROBE_TRAINING` (same seed and precision) if that is an exact full-batch
    optimiser (L-BFGS, Newton), whose few steps leave nothing to record."""
    with torch.random.fork_rng(devices=[]):
        model = build_model(ctx.model, taskset, ctx.model_config)
    cfg = resolve_train_config(ctx.train_config, model, taskset)
    if cfg.optimizer not in EXACT_OPTIMIZERS:
        return cfg
    return TrainConfig(**PROBE_TRAINING, seed=cfg.seed, dtype=cfg.dtype)


class MatrixHeuristic(GroupOutcomePredictor):
    """Group score from a relatedness matrix (see module docstring).

    Args:
        options: keyword options of the relatedness method (e.g. ``every``, ``lr``).
        matrix: a ``(T, T)`` matrix to use instead of computing one (rows targets,
            positive = the column task helps the row task).
    """

    method: ClassVar[str] = "gradient"
    aggregate: ClassVar[Literal["sum", "mean"]] = "sum"
    units = (
        "minus the summed relatedness of the task to the other members of its group "
        "(a proxy monotone in the predicted loss, not a loss; 0 alone)"
    )

    def __init__(
        self, options: dict[str, Any] | None = None, matrix: np.ndarray | None = None
    ) -> None:
        super().__init__()
        self.options = dict(options or {})
        self.given = None if matrix is None else np.asarray(matrix, dtype=np.float64)
        self.matrix = np.zeros((0, 0))

    def _fit(self, taskset: TaskSet, ctx: RelateContext) -> None:
        n = len(taskset)
        if self.given is not None:
            self.matrix = self.given
        else:
            options = dict(self.options)
            accepted = inspect.signature(relatedness_method(self.method)).parameters
            if "train_config" in accepted and "train_config" not in options:
                options["train_config"] = probe_train_config(taskset, ctx)
            result = relate(taskset, self.method, ctx, **options)
            self.matrix = result.matrix
            self.meta["relatedness_meta"] = {
                k: v for k, v in result.meta.items() if np.isscalar(v) or isinstance(v, dict)
            }
            self.trainings = int(result.meta.get("trainings", result.meta.get("retrainings", 1)))
        if self.matrix.shape != (n, n) or not np.all(np.isfinite(self.matrix)):
            raise ConfigError(
                f"{self.name}: the relatedness matrix must be a finite ({n}, {n}) array for "
                f"{n} tasks, got shape {self.matrix.shape}"
            )
        self.meta["method"] = self.method

    def _subset_losses(self, subsets: list[Subset]) -> np.ndarray:
        out = np.full((len(subsets), self.n_tasks), np.nan)
        for m, s in enumerate(subsets):
            rows = np.asarray(s, dtype=np.int64)
            block = self.matrix[np.ix_(rows, rows)]
            others = block.sum(1) - np.diag(block)
            if self.aggregate == "mean":
                others = others / max(len(rows) - 1, 1)
            out[m, rows] = 0.0 - others
        return out


class GradientCosineSum(MatrixHeuristic):
    """Summed gradient cosine on the shared parameters (registry ``gradient-cosine``)."""

    name = "gradient-cosine"
    method = "gradient"


class AffinitySum(MatrixHeuristic):
    """Summed lookahead affinity, the objective of ``taskrel group`` (``affinity-sum``)."""

    name = "affinity-sum"
    method = "affinity"


class ParamSimilaritySum(MatrixHeuristic):
    """Summed similarity of single-task parameters (registry ``param-similarity``, when the
    relatedness method of that name is installed)."""

    name = "param-similarity"
    method = "param-similarity"
