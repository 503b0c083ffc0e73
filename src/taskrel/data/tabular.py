"""The user's own tabular data: one file, one row per example, a column naming the task.

Formats
-------
- ``.csv``: a header row with the column names, then one data row per example (UTF-8,
  comma-separated unless ``delimiter`` says otherwise, standard quoting; blank lines are
  skipped). A file whose header only splits on another delimiter (``;``, tab, ``|``) is
  refused with the option to pass.
- ``.npz``: arrays ``x`` ``(n, d)`` numeric, ``y`` ``(n,)`` and ``task`` ``(n,)``. Their roles
  are fixed: ``task`` is the task column, ``y`` the target column and the columns of ``x``
  are the features ``x[0]``, ``x[1]``, ... (``task_column``/``target_column`` are ignored).
- ``.parquet``: like a CSV file; needs the optional ``pyarrow`` package.

Rows and ids
------------
"Row ``r``" in messages and in ``meta['source_rows']`` is the 1-based number of a data row:
the header and blank lines are not counted, so in a file without blank lines row ``r`` is on
line ``r + 1``. Each task's examples keep the file order, and ``meta['source_rows'][t][i]``
is the row of example ``i`` of task ``t``: instance-level scores map back to the file.

Tasks are ordered by their first appearance in the file and named by their value in the
task column. Features are float32 (non-numeric, missing, NaN or infinite values are
rejected). Targets are float32 for regression; for classification the labels (numbers or
strings) are mapped to int64 ids in sorted order (numbers before strings) unless
``classes`` declares them, in which case the id of a label is its position in ``classes``.
"""

from __future__ import annotations

import csv
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from taskrel.data.taskset import Task, TaskSet
from taskrel.errors import DataError
from taskrel.notices import notice

SUFFIXES = (".csv", ".npz", ".parquet")
MAX_INFERRED_CLASSES = 20
_FLOAT32_MAX = float(np.finfo(np.float32).max)

Label = int | float | str
TableKind = Literal["classification", "regression"]


def load_table(
    path: str | os.PathLike[str],
    task_column: str = "task",
    target_column: str = "target",
    feature_columns: Sequence[str] | None = None,
    kind: TableKind | None = None,
    classes: Sequence[Label] | None = None,
    train: float | int = 0.5,
    val: float | int = 0.0,
    seed: int = 0,
    delimiter: str = ",",
) -> TaskSet:
    """Load a multi-task data set from a ``.csv``, ``.npz`` or ``.parquet`` file.

    Args:
        path: the file.
        task_column: the column naming each row's task.
        target_column: the column holding each row's target (label or value).
        feature_columns: the feature columns, in order; ``None`` takes every other column.
        kind: ``classification`` or ``regression``; ``None`` infers it: a target column of
            integer values with at most 20 distinct values, or of non-numeric labels, is
            classification, any other numeric column regression.
        classes: the declared class labels (classification); a label outside them is an
            error, and a class may have no example.
        train, val: split sizes per task (fractions or counts); the rest is the test split.
            Splits are stratified by class for classification.
        seed: seed of the split.
        delimiter: the CSV field separator (one character).

    Returns:
        A :class:`TaskSet` named after the file stem; ``x`` float32 ``(n_t, d)``, ``y`` int64
        class ids or float32 values. ``meta`` holds ``source_rows`` (one int64 array of
        1-based data rows per task), ``feature_names``, ``kind``, ``source`` and, for
        classification, ``classes`` (also each task's ``labels``).

    Raises:
        DataError: a missing, empty or unreadable file; a missing column; a non-numeric,
            missing, NaN or infinite feature value; a missing or undeclared label; a single
            task; a task with fewer than 2 training examples. The message names the file
            and the column, row or task.
    """
    path = Path(path)
    columns, task_column, target_column = _read(path, task_column, target_column, delimiter)
    table = _Table(path, columns)
    features = _feature_names(table, task_column, target_column, feature_columns)
    x = np.column_stack([table.numbers(name) for name in features]).astype(np.float32)
    _check_magnitude(path, x, features)
    task_of_row = table.task_names(task_column)
    kind = _check_kind(kind, classes) or _infer_kind(table.column(target_column))
    if kind == "classification":
        y, labels = _class_ids(table, target_column, classes)
    else:
        y, labels = table.numbers(target_column).astype(np.float32), None
    tasks, rows = _tasks(table, task_column, task_of_row, x, y, kind, labels)
    meta = {
        "source": str(path),
        "source_rows": rows,
        "feature_names": features,
        "kind": kind,
        "task_column": task_column,
        "target_column": target_column,
        **({"classes": list(labels)} if labels is not None else {}),
    }
    taskset = TaskSet(name=path.stem, tasks=tuple(tasks), meta=meta)
    try:
        return taskset.split(train, val, seed=seed, min_train=2)
    except DataError as e:
        raise DataError(f"{path}: {e}") from e


class _Table:
    """Named columns of equal length ``n`` (str, object or numeric arrays) read from ``path``;
    position ``i`` of every column is data row ``i + 1``."""

    def __init__(self, path: Path, columns: dict[str, np.ndarray]) -> None:
        self.path = path
        self.columns = columns

    def column(self, name: str) -> np.ndarray:
        if name not in self.columns:
            raise DataError(
                f"{self.path}: missing column {name!r} (the file has columns {list(self.columns)})"
            )
        return self.columns[name]

    def error(self, row: int, column: str, what: str) -> DataError:
        """An error about the value at 0-based position ``row`` of ``column``."""
        return DataError(f"{self.path}: row {row + 1}, column {column!r}: {what}")

    def numbers(self, name: str) -> np.ndarray:
        """The column as float64 ``(n,)``; every value must be a finite float32 number."""
        values = self.column(name)
        out = np.empty(len(values), dtype=np.float64)
        for i, value in enumerate(values):
            number = _parse_number(value)
            if number is None:
                raise self.error(i, name, f"expected a number, got {_show(value)}")
            if not abs(number) <= _FLOAT32_MAX:  # also catches NaN
                raise self.error(i, name, f"expected a finite float32 number, got {_show(value)}")
            out[i] = number
        return out

    def task_names(self, name: str) -> np.ndarray:
        """The task column as str ``(n,)``; integer numbers are written without decimals."""
        values = self.column(name)
        names = []
        for i, value in enumerate(values):
            key = value.strip() if isinstance(value, str) else _label_key(value)
            if key is None or key == "":
                raise self.error(i, name, f"expected a task name, got {_show(value)}")
            names.append(str(key))
        return np.array(names, dtype=str)

    def labels(self, name: str) -> list[Label]:
        """The target column as canonical labels (see :func:`_label_key`)."""
        values = self.column(name)
        keys = []
        for i, value in enumerate(values):
            key = None if _is_missing(value) else _label_key(value)
            if key is None:
                raise self.error(i, name, f"expected a class label, got {_show(value)}")
            keys.append(key)
        return keys


# -- reading ------------------------------------------------------------------------------
def _read(
    path: Path, task_column: str, target_column: str, delimiter: str = ","
) -> tuple[dict[str, np.ndarray], str, str]:
    """The file's columns, and the task and target column names (fixed for ``.npz``)."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{path}: unsupported file type {suffix!r} (expected one of {SUFFIXES})")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty (expected a header and data rows)")
    if suffix == ".npz":
        return _read_npz(path), "task", "y"
    columns = _read_csv(path, delimiter) if suffix == ".csv" else _read_parquet(path)
    return columns, task_column, target_column


def _read_csv(path: Path, delimiter: str = ",") -> dict[str, np.ndarray]:
    if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in '\r\n"':
        raise DataError(f"{path}: delimiter must be one character, got {delimiter!r}")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            records = [row for row in csv.reader(f, delimiter=delimiter) if not _blank(row)]
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except csv.Error as e:
        raise DataError(f"{path}: malformed CSV ({e})") from e
    if not records:
        raise DataError(f"{path}: the file is empty (expected a header and data rows)")
    header = [name.strip() for name in records[0]]
    if len(header) == 1:
        _suggest_delimiter(path, header[0], delimiter)
    _check_header(path, header)
    body = records[1:]
    if not body:
        raise DataError(f"{path}: no data rows after the header")
    for i, row in enumerate(body, start=1):
        if len(row) != len(header):
            raise DataError(
                f"{path}: row {i} has {len(row)} values but the header has {len(header)} columns"
            )
    cells = np.array([[cell.strip() for cell in row] for row in body], dtype=object)
    return {name: cells[:, j] for j, name in enumerate(header)}


OTHER_DELIMITERS = (";", "\t", "|", ",")
HUGE_FEATURE = 1e9  # larger features risk float32 overflow in training unless standardised


def _suggest_delimiter(path: Path, header: str, delimiter: str) -> None:
    """Refuse a one-column header that another common delimiter would split."""
    for other in OTHER_DELIMITERS:
        if other != delimiter and other in header:
            raise DataError(
                f"{path}: the header is one column {header!r}; the file looks "
                f"{other!r}-delimited: pass delimiter={other!r} "
                f"(command line: --set data.options.delimiter='{other}')"
            )


def _check_magnitude(path: Path, x: np.ndarray, features: Sequence[str]) -> None:
    """A notice when a feature's magnitude exceeds :data:`HUGE_FEATURE`."""
    peak = np.abs(x).max(axis=0) if x.size else np.zeros(0)
    huge = [(name, float(v)) for name, v in zip(features, peak, strict=True) if v > HUGE_FEATURE]
    if huge:
        name, value = max(huge, key=lambda item: item[1])
        notice(
            f"{path}: feature {name!r} reaches {value:.3g} in magnitude; float32 training "
            "overflows on such values: standardise the task set (TaskSet.standardize()) "
            "or rescale the column"
        )


def _blank(row: list[str]) -> bool:
    return not row or (len(row) == 1 and not row[0].strip())


def _check_header(path: Path, header: list[str]) -> None:
    for j, name in enumerate(header, start=1):
        if not name:
            raise DataError(f"{path}: the header has an empty column name (column {j})")
    dupes = sorted({n for n in header if header.count(n) > 1})
    if dupes:
        raise DataError(f"{path}: duplicate column names {dupes} in the header")


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in ("x", "y", "task") if k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: cannot read as .npz ({e})") from e
    for name in ("x", "y", "task"):
        if name not in arrays:
            raise DataError(
                f"{path}: missing array {name!r} (a .npz file needs arrays "
                "'x' (n, d), 'y' (n,) and 'task' (n,))"
            )
    x, y, task = arrays["x"], arrays["y"], arrays["task"]
    if x.ndim != 2 or y.ndim != 1 or task.shape != y.shape or len(x) != len(y):
        raise DataError(
            f"{path}: expected arrays x (n, d), y (n,), task (n,); got shapes "
            f"x {x.shape}, y {y.shape}, task {task.shape}"
        )
    if len(y) == 0:
        raise DataError(f"{path}: no data rows (the arrays are empty)")
    return {"task": task, "y": y, **{f"x[{j}]": x[:, j] for j in range(x.shape[1])}}


def _read_parquet(path: Path) -> dict[str, np.ndarray]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            f"{path}: reading .parquet files needs the pyarrow package "
            "(pip install pyarrow), or save the table as .csv"
        ) from None
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as e:  # pyarrow.ArrowInvalid is a ValueError
        raise DataError(f"{path}: cannot read as .parquet ({e})") from e
    _check_header(path, list(table.column_names))
    if table.num_rows == 0:
        raise DataError(f"{path}: no data rows")
    return {name: _object_array(table.column(name).to_pylist()) for name in table.column_names}


def _object_array(values: list[object]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        out[i] = value
    return out


# -- values -------------------------------------------------------------------------------
def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _parse_number(value: object) -> float | None:
    """``value`` as a float, or None if it is not a number (NaN/inf parse as floats)."""
    if isinstance(value, (str, int, float, np.number)):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _label_key(value: object) -> Label | None:
    """A canonical class label: integer-valued numbers (``1``, ``"1"``, ``1.0``) become int,
    other finite numbers float, other strings themselves (stripped); None if not a label
    (NaN, infinite, not a number or string)."""
    number = _parse_number(value)
    if number is None:
        return value.strip() if isinstance(value, str) else None
    if not np.isfinite(number):
        return None
    return int(number) if number.is_integer() else number


def _sort_key(label: Label) -> tuple[bool, Label]:
    return isinstance(label, str), label


def _show(value: object) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    return "an empty value" if _is_missing(value) else repr(value)


# -- columns, kind, labels, tasks ---------------------------------------------------------
def _feature_names(
    table: _Table, task_column: str, target_column: str, requested: Sequence[str] | None
) -> list[str]:
    for name in (task_column, target_column):
        table.column(name)
    if task_column == target_column:
        raise DataError(
            f"{table.path}: column {task_column!r} cannot be both the task and the target column"
        )
    if requested is None:
        names = [n for n in table.columns if n not in (task_column, target_column)]
        if not names:
            raise DataError(
                f"{table.path}: no feature columns (the file has only {list(table.columns)})"
            )
        return names
    names = [requested] if isinstance(requested, str) else list(requested)
    if not names:
        raise DataError(f"{table.path}: feature_columns is empty")
    for name in names:
        table.column(name)
        if name in (task_column, target_column):
            raise DataError(
                f"{table.path}: column {name!r} is the task or target column and "
                "cannot be a feature"
            )
    if len(set(names)) != len(names):
        raise DataError(f"{table.path}: feature_columns lists a column twice: {names}")
    return names


def _check_kind(kind: TableKind | None, classes: Sequence[Label] | None) -> TableKind | None:
    if kind not in (None, "classification", "regression"):
        raise DataError(f"kind must be 'classification', 'regression' or None, got {kind!r}")
    if classes is not None and kind == "regression":
        raise DataError("classes can only be declared for classification targets")
    return "classification" if classes is not None else kind


def _infer_kind(values: np.ndarray) -> TableKind:
    """Classification for non-numeric labels or few integer values, else regression; missing
    values are ignored here (they are reported when the column is parsed)."""
    numbers = [_parse_number(v) for v in values if not _is_missing(v)]
    if any(n is None for n in numbers):
        return "classification"
    arr = np.asarray(numbers)
    integral = bool(np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)))
    few = len(np.unique(arr)) <= MAX_INFERRED_CLASSES
    return "classification" if integral and few else "regression"


def _class_ids(
    table: _Table, column: str, classes: Sequence[Label] | None
) -> tuple[np.ndarray, tuple[str, ...]]:
    """int64 class ids ``(n,)`` and the class names, in id order."""
    keys = table.labels(column)
    declared = (
        _declared(table.path, classes) if classes is not None else sorted(set(keys), key=_sort_key)
    )
    if len(declared) < 2:
        raise DataError(
            f"{table.path}: column {column!r} has a single class {declared}; "
            "classification needs at least 2 (or pass kind='regression')"
        )
    index = {key: i for i, key in enumerate(declared)}
    for i, key in enumerate(keys):
        if key not in index:
            raise table.error(
                i, column, f"label {key!r} is not one of the declared classes {list(classes or [])}"
            )
    return np.array([index[k] for k in keys], dtype=np.int64), tuple(str(k) for k in declared)


def _declared(path: Path, classes: Sequence[Label]) -> list[Label]:
    keys = [_label_key(c) for c in classes]
    valid = [k for k in keys if k is not None and k != ""]
    if len(valid) != len(keys) or len(set(valid)) != len(valid):
        raise DataError(
            f"{path}: the declared classes {list(classes)} must be distinct "
            "numbers or non-empty strings"
        )
    return valid


def _tasks(
    table: _Table,
    task_column: str,
    task_of_row: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    kind: TableKind,
    labels: tuple[str, ...] | None,
) -> tuple[list[Task], list[np.ndarray]]:
    """One task per distinct task name (first-appearance order) and each task's 1-based
    source rows."""
    names, first = np.unique(task_of_row, return_index=True)
    names = names[np.argsort(first)]
    if len(names) < 2:
        raise DataError(
            f"{table.path}: column {task_column!r} names a single task "
            f"{str(names[0])!r}; multi-task data needs at least 2 tasks"
        )
    tasks, rows = [], []
    for name in names:
        idx = np.flatnonzero(task_of_row == name)
        tasks.append(
            Task(
                name=str(name),
                kind=kind,
                x=x[idx],
                y=y[idx],
                n_outputs=len(labels) if labels is not None else 1,
                train_idx=np.arange(len(idx)),
                labels=labels,
            )
        )
        rows.append(idx.astype(np.int64) + 1)
    return tasks, rows
