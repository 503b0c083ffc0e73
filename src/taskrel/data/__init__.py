"""Datasets: the :class:`TaskSet` data model and loaders for built-in and user data.

``load(name, **options)`` returns a :class:`TaskSet`; ``DATASETS`` lists the built-in
names. A path to a ``.csv``/``.npz``/``.parquet`` file (or an SLU folder) loads the user's
own data (see :mod:`taskrel.data.tabular` and :mod:`taskrel.data.slu`).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taskrel.data.taskset import PAD_TAG, Task, TaskKind, TaskSet
from taskrel.errors import DataError
from taskrel.validation import check_options

FILE_SUFFIXES = (".csv", ".npz", ".parquet")
SUPPORTED = ".csv, .npz or .parquet file, or an SLU folder (train/, dev/, test/)"


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


def load(name: str | os.PathLike[str], **options: Any) -> TaskSet:
    """Load a built-in dataset by name, or the user's own file/folder by path.

    Args:
        name: a key of :data:`DATASETS`, or a path to a ``.csv``, ``.npz`` or ``.parquet``
            file (tabular loader) or a folder in the seq.in/seq.out/label format (SLU).
        **options: passed to the loader (e.g. ``train=0.1, seed=3``); names and value
            types are checked against the loader's signature first.

    Raises:
        DataError: unknown name, missing or unsupported file, or malformed data.
        ConfigError: an option the loader does not take (the accepted ones are listed)
            or a value of the wrong type.
    """
    if not isinstance(name, str | os.PathLike):
        raise DataError(
            f"load: name must be a dataset name or a path, got {type(name).__name__} {name!r}"
        )
    key = os.fspath(name)
    if key in DATASETS:
        info = DATASETS[key]
        fn = _resolve(info.loader)
        check_options(f"load({key!r})", fn, options, skip=dict(info.options))
        return fn(**{**dict(info.options), **options})
    path = Path(key)
    if path.suffix.lower() in FILE_SUFFIXES:
        fn = _resolve("taskrel.data.tabular:load_table")
    elif path.is_dir():
        fn = _resolve("taskrel.data.slu:load_slu_folder")
    elif path.exists():
        raise DataError(
            f"{key}: unsupported file type {path.suffix or '(no extension)'!r}; "
            f"expected a {SUPPORTED}"
        )
    elif path.suffix or "/" in key or os.sep in key:
        raise DataError(f"{key}: no such file (expected a {SUPPORTED})")
    else:
        raise DataError(
            f"unknown dataset {key!r}; built-in datasets: {', '.join(DATASETS)} "
            "(or give a path to a .csv/.npz/.parquet file)"
        )
    check_options(f"load({key!r})", fn, options, skip=("path",))
    return fn(path, **options)


def as_taskset(value: Any, argument: str = "taskset") -> TaskSet:
    """``value`` if it is a :class:`TaskSet`; a dataset name or path is loaded with
    :func:`load` (default options).

    Raises:
        DataError: anything else (the message names ``argument`` and the type given)."""
    if isinstance(value, TaskSet):
        return value
    if isinstance(value, str | os.PathLike):
        return load(value)
    raise DataError(
        f"{argument} must be a TaskSet (see taskrel.load) or a dataset name or path, "
        f"got {type(value).__name__}"
    )


__all__ = [
    "DATASETS",
    "DEFAULT_DATASET",
    "PAD_TAG",
    "DatasetInfo",
    "Task",
    "TaskKind",
    "TaskSet",
    "as_taskset",
    "load",
]
