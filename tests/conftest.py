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
