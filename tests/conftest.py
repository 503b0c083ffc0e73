"""Shared fixtures: small, fast task sets."""

from __future__ import annotations

import os

import pytest
import torch

from taskrel.data import load
from taskrel.data.taskset import TaskSet

# Small models run fastest (and identically) on one thread; subprocesses inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def synthetic_cls() -> TaskSet:
    """8 classification tasks with known structure, standardised."""
    return load("synthetic", n_per_task=120, seed=0).standardize()


@pytest.fixture(scope="session")
def synthetic_reg() -> TaskSet:
    """4 small regression tasks: 2 clusters of 2."""
    return load(
        "synthetic-regression",
        clusters=2,
        cluster_size=2,
        n_unrelated=0,
        n_adversarial=0,
        n_per_task=60,
        n_features=5,
        seed=1,
    ).standardize()


def three_class_tasks(n_features: int, seed: int) -> TaskSet:
    """3 three-class tasks (a related pair and an unrelated one), 12 training and 12 test
    rows each, no validation rows, standardised."""
    return load(
        "synthetic",
        n_per_task=24,
        n_features=n_features,
        n_classes=3,
        clusters=1,
        cluster_size=2,
        n_unrelated=1,
        n_adversarial=0,
        train=0.5,
        val=0.0,
        seed=seed,
    ).standardize()


@pytest.fixture(scope="module")
def wide() -> TaskSet:
    """:func:`three_class_tasks` with 60 features: R = 72 sample rows, p = 729 (convex)."""
    return three_class_tasks(60, seed=4)


@pytest.fixture(scope="module")
def small() -> TaskSet:
    """:func:`three_class_tasks` with 6 features."""
    return three_class_tasks(6, seed=5)


def four_binary_tasks(seed: int) -> TaskSet:
    """4 small classification tasks (a related pair, an unrelated and an adversarial one),
    40 rows each, 4 features, standardised."""
    return load(
        "synthetic",
        n_per_task=40,
        n_features=4,
        clusters=1,
        cluster_size=2,
        n_unrelated=1,
        n_adversarial=1,
        seed=seed,
    ).standardize()


def three_task_group_args(*options: str) -> list[str]:
    """``taskrel group`` arguments for a 3-task regression set (2 related tasks and 1
    unrelated, 40 rows each) with the linear model's L2 pinned (no search on validation),
    then ``--set`` for each extra option."""
    args = ["group", "--data", "synthetic-regression", "--predictor", "retrain"]
    for option in (
        "data.options.clusters=1",
        "data.options.cluster_size=2",
        "data.options.n_adversarial=0",
        "data.options.n_features=4",
        "data.options.n_per_task=40",
        "model.l2=0.01",
        "model.l2_task=0.1",
        *options,
    ):
        args += ["--set", option]
    return args
