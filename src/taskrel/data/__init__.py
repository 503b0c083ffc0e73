"""Datasets: the :class:`TaskSet` data model and loaders for built-in and user data.

``load(name, **options)`` returns a :class:`TaskSet`; ``DATASETS`` lists the built-in
names. A path to a ``.csv``/``.npz``/``.parquet`` file (or an SLU folder) loads the user's
own data (see :mod:`taskrel.data.tabular` and :mod:`taskrel.data.slu`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taskrel.data.taskset import PAD_TAG, Task, TaskKind, TaskSet
from taskrel.errors import DataError


@dataclass(frozen=True)
class DatasetInfo:
    """A built-in dataset: where its loader lives and fixed options for it."""

    name: str
    loader: str  # "module:function"
    description: str
    options: tuple[tuple[str, Any], ...] = ()


DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in (
        DatasetInfo(
            "synthetic",
            "taskrel.data.synthetic:load_synthetic",
            "8 generated classification tasks: 2 clusters of 3, 1 unrelated, 1 adversarial; "
            "ground-truth similarity in meta",
        ),
        DatasetInfo(
            "synthetic-regression",
            "taskrel.data.synthetic:load_synthetic",
            "the same structure as 'synthetic' with regression targets",
            (("kind", "regression"),),
        ),
        DatasetInfo(
            "rotated-digits",
            "taskrel.data.digits:load_rotated_digits",
            "scikit-learn digits rotated by 0..75 degrees, one 10-class task per angle",
        ),
        DatasetInfo(
            "rotated-digits-angle",
            "taskrel.data.digits:load_rotated_digits",
            "rotated digits, angle regression: one task per digit class",
            (("target", "angle"),),
        ),
        DatasetInfo(
            "office-caltech",
            "taskrel.data.office_caltech:load_office_caltech",
            "Office-Caltech-10 SURF features: 4 domains x 10 classes (train 5/10/20%)",
        ),
        DatasetInfo(
            "school",
            "taskrel.data.school:load_school",
            "ILEA school exam scores: 139 regression tasks (one per school)",
        ),
        DatasetInfo(
            "atis",
            "taskrel.data.slu:load_slu",
            "ATIS spoken language understanding: intent + slot tasks on shared utterances",
            (("name", "atis"),),
        ),
        DatasetInfo(
            "snips",
            "taskrel.data.slu:load_slu",
            "SNIPS spoken language understanding: intent + slot tasks on shared utterances",
            (("name", "snips"),),
        ),
        DatasetInfo(
            "landmine",
            "taskrel.data.landmine:load_landmine",
            "landmine detection: 29 binary tasks (9 features), two terrain clusters; "
            "ground-truth similarity in meta",
        ),
        DatasetInfo(
            "parkinsons",
            "taskrel.data.parkinsons:load_parkinsons",
            "UCI Parkinsons telemonitoring: 42 per-patient regression tasks (total UPDRS)",
        ),
    )
}

DEFAULT_DATASET = "synthetic"


def _resolve(spec: str) -> Any:
    module, func = spec.split(":")
    return getattr(importlib.import_module(module), func)


def load(name: str | Path, **options: Any) -> TaskSet:
    """Load a built-in dataset by name, or the user's own file/folder by path.

    Args:
        name: a key of :data:`DATASETS`, or a path to a ``.csv``, ``.npz`` or ``.parquet``
            file (tabular loader) or a folder in the seq.in/seq.out/label format (SLU).
        **options: passed to the loader (e.g. ``train=0.1, seed=3``).

    Raises:
        DataError: unknown name, missing file, or malformed data.
    """
    key = str(name)
    if key in DATASETS:
        info = DATASETS[key]
        return _resolve(info.loader)(**{**dict(info.options), **options})
    path = Path(key)
    if path.suffix.lower() in (".csv", ".npz", ".parquet"):
        return _resolve("taskrel.data.tabular:load_table")(path, **options)
    if path.is_dir():
        return _resolve("taskrel.data.slu:load_slu_folder")(path, **options)
    if path.suffix or path.exists() or "/" in key:
        raise DataError(
            f"{key}: no such dataset file (expected a .csv, .npz or .parquet file or an SLU folder)"
        )
    raise DataError(
        f"unknown dataset {key!r}; built-in datasets: {', '.join(DATASETS)} "
        "(or give a path to a .csv/.npz/.parquet file)"
    )


__all__ = [
    "DATASETS",
    "DEFAULT_DATASET",
    "PAD_TAG",
    "DatasetInfo",
    "Task",
    "TaskKind",
    "TaskSet",
    "load",
]
