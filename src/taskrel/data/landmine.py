"""Landmine detection: 29 binary classification tasks with a known two-cluster structure.

Each task is one landmine field; each example a radar-detected object with 9 features
(as stored, already roughly zero-mean unit-variance) and label 1 for a landmine, 0 for
clutter. 14,820 examples in all, 445 to 690 per task, about 6% positives, so report AUC as
well as accuracy. Fields 1-15 (tasks ``landmine-01`` ... ``landmine-15``) are highly
foliated and fields 16-29 bare earth or desert (Xue et al., 2007): ``meta['groups']`` holds
the terrain (0 or 1) of each task and ``meta['similarity']`` is 1 for two tasks of the same
terrain, 0 otherwise — the structure relatedness methods should recover.
"""

from __future__ import annotations

import numpy as np

from taskrel.data.files import load_mat
from taskrel.data.taskset import Task, TaskSet

N_FIELDS = 29
FIRST_BARE_FIELD = 16  # 1-based: fields 1..15 are foliated, 16..29 bare earth / desert


def load_landmine(train: float | int = 0.2, val: float | int = 0.0, seed: int = 0) -> TaskSet:
    """Load the landmine data (see module docstring).

    Args:
        train, val: split sizes per task (fractions or counts; stratified by class); the
            rest is the test split.
        seed: seed of the split.

    Returns:
        A :class:`TaskSet` of 29 tasks, ``x`` float32 ``(n_t, 9)``, ``y`` int64 in ``{0, 1}``;
        ``meta['groups']`` (list of 29 ints) and ``meta['similarity']`` (float ``(29, 29)``).
    """
    mat = load_mat("landmine", "LandmineData.mat")
    features, labels = mat["feature"].reshape(-1), mat["label"].reshape(-1)
    tasks = tuple(_field_task(t, features[t], labels[t]) for t in range(N_FIELDS))
    groups = [int(t + 1 >= FIRST_BARE_FIELD) for t in range(N_FIELDS)]
    g = np.asarray(groups)
    meta = {"groups": groups, "similarity": (g[:, None] == g[None, :]).astype(np.float64)}
    return TaskSet(name="landmine", tasks=tasks, meta=meta).split(train, val, seed=seed)


def _field_task(t: int, x: np.ndarray, y: np.ndarray) -> Task:
    return Task(
        name=f"landmine-{t + 1:02d}",
        kind="classification",
        x=x.astype(np.float32),
        y=y.reshape(-1).astype(np.int64),
        n_outputs=2,
        train_idx=np.arange(len(y)),
        labels=("clutter", "landmine"),
    )
