"""UCI Parkinsons Telemonitoring: one regression task per patient.

5,875 voice recordings of 42 patients with early-stage Parkinson's disease (101 to 168 per
patient). Task ``subject-NN`` holds the recordings of patient ``subject# = NN``; the
19 features are ``age``, ``sex`` (0 male, 1 female), ``test_time`` (days since
recruitment) and the 16 voice measures (jitter, shimmer, NHR, HNR, RPDE, DFA, PPE); the
target is the clinician's ``total_UPDRS`` or ``motor_UPDRS`` score (UPDRS points, linearly
interpolated between visits). Age and sex are constant within a task, so they only
distinguish patients.
"""

from __future__ import annotations

from dataclasses import replace
from importlib.resources import as_file
from typing import Literal

from taskrel.data.files import bundled
from taskrel.data.tabular import load_table
from taskrel.data.taskset import TaskSet
from taskrel.errors import DataError

FILE = ("parkinsons", "parkinsons_updrs.csv")
TARGETS = ("total_UPDRS", "motor_UPDRS")
VOICE_MEASURES = (
    "Jitter(%)",
    "Jitter(Abs)",
    "Jitter:RAP",
    "Jitter:PPQ5",
    "Jitter:DDP",
    "Shimmer",
    "Shimmer(dB)",
    "Shimmer:APQ3",
    "Shimmer:APQ5",
    "Shimmer:APQ11",
    "Shimmer:DDA",
    "NHR",
    "HNR",
    "RPDE",
    "DFA",
    "PPE",
)
FEATURES = ("age", "sex", "test_time", *VOICE_MEASURES)


def load_parkinsons(
    target: Literal["total_UPDRS", "motor_UPDRS"] = "total_UPDRS",
    train: float | int = 0.3,
    val: float | int = 0.0,
    seed: int = 0,
    standardize: bool = True,
) -> TaskSet:
    """Load Parkinsons Telemonitoring as 42 per-patient regression tasks.

    Args:
        target: ``total_UPDRS`` or ``motor_UPDRS``.
        train, val: split sizes per patient (fractions or counts); the rest is the test split.
        seed: seed of the split.
        standardize: z-score every feature with the mean/std of the training rows of *all*
            patients pooled (per-patient scaling would erase age and sex); the raw features
            differ in scale by up to seven orders of magnitude.

    Returns:
        A :class:`TaskSet` of 42 tasks, ``x`` float32 ``(n_t, 19)`` (columns as
        ``meta['feature_names']``), ``y`` float32 UPDRS scores; ``meta['source_rows']`` maps
        each example to its 1-based data row in ``parkinsons_updrs.csv``.
    """
    if target not in TARGETS:
        raise DataError(f"parkinsons: target must be one of {TARGETS}, got {target!r}")
    with as_file(bundled(*FILE)) as path:
        table = load_table(
            path,
            task_column="subject#",
            target_column=target,
            feature_columns=FEATURES,
            kind="regression",
            train=train,
            val=val,
            seed=seed,
        )
    tasks = [replace(task, name=f"subject-{int(task.name):02d}") for task in table]
    meta = {**table.meta, "source": "/".join(FILE), "target": target}
    taskset = table.with_tasks(tasks, name="parkinsons", meta=meta)
    return taskset.standardize(scope="pooled") if standardize else taskset
