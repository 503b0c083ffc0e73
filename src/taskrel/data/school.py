"""The ILEA school data: the classic multi-task regression benchmark, one task per school.

139 schools (tasks ``school-001`` ... ``school-139``, in the file's order), 15,362 students
in all, 22 to 251 per school. Each student has 27 features as stored in the MALSAR copy:
25 binary indicators (one-hot codes of exam year, gender, VR band, ethnic group, school
gender and denomination, per the benchmark's description) and two integer school-level
percentages (columns 4 and 5, values 3..91); the file's constant 28th column is dropped
because the models have biases. The
target is the student's exam score (integers 1..70), as float32. Features are left as
stored (not standardised).

Standard protocol: random 10%..30% of each school's students for training, the rest for
testing, several seeds; metric RMSE or explained variance.
"""

from __future__ import annotations

import numpy as np

from taskrel.data.files import load_mat
from taskrel.data.taskset import Task, TaskSet
from taskrel.errors import DataError

N_SCHOOLS = 139


def load_school(
    train: float | int = 0.2,
    val: float | int = 0.0,
    seed: int = 0,
    n_tasks: int | None = None,
) -> TaskSet:
    """Load the school data as regression tasks (see module docstring).

    Args:
        train, val: split sizes per school (fractions or counts); the rest is the test
            split. Every school keeps at least 2 training students whatever ``train``.
        seed: seed of the split.
        n_tasks: keep only the first ``n_tasks`` schools (2..139; ``None`` keeps all).

    Returns:
        A :class:`TaskSet` with ``x`` float32 ``(n_t, 27)`` and ``y`` float32 ``(n_t,)`` exam
        scores.
    """
    if n_tasks is not None and not 2 <= n_tasks <= N_SCHOOLS:
        raise DataError(f"school: n_tasks must lie in [2, {N_SCHOOLS}] or be None, got {n_tasks}")
    mat = load_mat("school", "school.mat")
    xs, ys = mat["X"].reshape(-1), mat["Y"].reshape(-1)
    tasks = tuple(_school_task(t, xs[t], ys[t]) for t in range(n_tasks or N_SCHOOLS))
    taskset = TaskSet(name="school", tasks=tasks, meta={"target": "exam score"})
    return taskset.split(train, val, seed=seed, min_train=2)


def _school_task(t: int, x: np.ndarray, y: np.ndarray) -> Task:
    return Task(
        name=f"school-{t + 1:03d}",
        kind="regression",
        x=x[:, :-1].astype(np.float32),
        y=y.reshape(-1).astype(np.float32),
        n_outputs=1,
        train_idx=np.arange(len(y)),
    )
