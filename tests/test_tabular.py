"""The tabular loader: CSV/NPZ parsing, kinds, labels, stable row ids, every bad input."""

from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskrel.data import load
from taskrel.data.tabular import load_table
from taskrel.data.taskset import TaskSet
from taskrel.errors import DataError

GOOD = """task,f1,f2,target
a,1.0,2,cat
b,0.5,-1,dog
a,2.0,3,dog

b,1.5,0,cat
a,3.0,4,cat
b,2.5,1,dog
a,4.0,5,dog
b,3.5,2,cat
"""


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_tasks_labels_and_source_rows(tmp_path: Path) -> None:
    ts = load_table(_write(tmp_path / "pets.csv", GOOD), train=2, seed=0)
    assert ts.name == "pets" and ts.names == ["a", "b"]
    a, b = ts
    assert a.labels == ("cat", "dog") and a.n_outputs == 2 and a.kind == "classification"
    np.testing.assert_array_equal(a.y, [0, 1, 0, 1])
    np.testing.assert_array_equal(a.x, [[1, 2], [2, 3], [3, 4], [4, 5]])
    assert a.x.dtype == np.float32 and a.y.dtype == np.int64
    # the blank line is not a data row: rows count data records only
    np.testing.assert_array_equal(ts.meta["source_rows"][0], [1, 3, 5, 7])
    np.testing.assert_array_equal(ts.meta["source_rows"][1], [2, 4, 6, 8])
    assert b.x[ts.meta["source_rows"][1].tolist().index(6), 0] == pytest.approx(2.5)
    assert ts.meta["feature_names"] == ["f1", "f2"] and ts.meta["classes"] == ["cat", "dog"]
    assert ts.sizes()["a"] == {"train": 2, "val": 0, "test": 2}


def test_csv_split_is_seeded(tmp_path: Path) -> None:
    rows = "\n".join(f"{'ab'[i % 2]},{i},{i % 3}" for i in range(60))
    path = _write(tmp_path / "reg.csv", "task,x,target\n" + rows + "\n")
    one, two = (
        load_table(path, train=0.3, val=0.2, seed=5),
        load_table(path, train=0.3, val=0.2, seed=5),
    )
    for t1, t2 in zip(one, two, strict=True):
        np.testing.assert_array_equal(t1.train_idx, t2.train_idx)
        np.testing.assert_array_equal(t1.val_idx, t2.val_idx)
    assert one.sizes()["a"] == {"train": 9, "val": 6, "test": 15}
    other = load_table(path, train=0.3, val=0.2, seed=6)
    assert not np.array_equal(one[0].train_idx, other[0].train_idx)


def test_kind_inference_and_declared_classes(tmp_path: Path) -> None:
    ints = _write(
        tmp_path / "ints.csv", "task,x,target\na,1,2\na,2,0\na,3,1\nb,1,2\nb,2,0\nb,3,1\n"
    )
    ts = load_table(ints, train=2)
    assert ts[0].kind == "classification" and ts.meta["classes"] == ["0", "1", "2"]
    reg = load_table(ints, kind="regression", train=2)
    assert reg[0].kind == "regression" and reg[0].y.dtype == np.float32 and reg[0].n_outputs == 1
    floats = _write(
        tmp_path / "floats.csv", "task,x,target\na,1,0.5\na,2,1\na,3,2\nb,1,0.1\nb,2,3\nb,3,4\n"
    )
    assert load_table(floats, train=2)[0].kind == "regression"
    many = "\n".join(f"{'ab'[i % 2]},{i},{i}" for i in range(30))
    wide = _write(tmp_path / "wide.csv", "task,x,target\n" + many + "\n")
    assert load_table(wide)[0].kind == "regression"  # > 20 distinct integers
    declared = load_table(ints, classes=[2, 1, 0, 3], train=2)
    assert declared[0].labels == ("2", "1", "0", "3") and declared[0].n_outputs == 4
    np.testing.assert_array_equal(declared[0].y, [0, 2, 1])


def test_feature_columns_and_custom_names(tmp_path: Path) -> None:
    rows = ["1,g1,0,5,x", "2,g1,1,6,y", "3,g1,2,7,x", "4,g2,3,8,y", "5,g2,4,9,x", "6,g2,5,1,y"]
    text = "id,group,a,b,label\n" + "\n".join(rows) + "\n"
    path = _write(tmp_path / "custom.csv", text)
    ts = load_table(
        path, task_column="group", target_column="label", feature_columns=["b", "a"], train=2
    )
    assert ts.names == ["g1", "g2"] and ts.meta["feature_names"] == ["b", "a"]
    np.testing.assert_array_equal(ts["g2"].x[0], [8, 3])


def test_npz_and_registry_dispatch(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "arrays.npz"
    np.savez(path, x=rng.normal(size=(12, 3)), y=rng.normal(size=12), task=np.array([7, 8, 9] * 4))
    ts = load(path, train=2, seed=1)
    assert ts.names == ["7", "8", "9"] and ts[0].kind == "regression"
    assert ts.meta["feature_names"] == ["x[0]", "x[1]", "x[2]"]
    np.testing.assert_array_equal(ts.meta["source_rows"][1], [2, 5, 8, 11])


# -- bad inputs ---------------------------------------------------------------------------
def _npz_without_task(path: Path) -> None:
    np.savez(path, x=np.zeros((4, 2)), y=np.zeros(4))


BAD_CSV = [
    # (file name, contents, load_table options, substrings the message must contain)
    ("empty.csv", "", {}, ["empty"]),
    ("blank.csv", "\n\n", {}, ["empty"]),
    ("header.csv", "task,f1,target\n", {}, ["no data rows"]),
    ("notask.csv", "group,f1,target\na,1,0\nb,2,1\n", {}, ["missing column 'task'"]),
    ("notarget.csv", "task,f1,y\na,1,0\nb,2,1\n", {}, ["missing column 'target'"]),
    ("nofeat.csv", GOOD, {"feature_columns": ["f1", "f9"]}, ["missing column 'f9'"]),
    ("onlycols.csv", "task,target\na,0\nb,1\n", {}, ["no feature columns"]),
    ("textfeat.csv", "task,f1,target\na,1,0\nb,abc,1\n", {}, ["row 2, column 'f1'", "'abc'"]),
    ("emptyfeat.csv", "task,f1,f2,target\na,1,,0\nb,2,3,1\n", {},
     ["row 1, column 'f2'", "empty value"]),
    ("nanfeat.csv", "task,f1,target\na,1,0\nb,2,1\na,nan,1\n", {},
     ["row 3, column 'f1'", "'nan'", "finite"]),
    ("inffeat.csv", "task,f1,target\na,1,0\nb,-inf,1\n", {}, ["row 2, column 'f1'", "finite"]),
    ("bigfeat.csv", "task,f1,target\na,1e39,0\nb,2,1\n", {}, ["row 1, column 'f1'", "float32"]),
    ("nantarget.csv", "task,f1,target\na,1,0.5\nb,2,NaN\n", {"kind": "regression"},
     ["row 2, column 'target'", "finite"]),
    ("undeclared.csv", "task,f1,target\na,1,0\nb,2,1\na,3,1\nb,4,7\n", {"classes": [0, 1]},
     ["row 4, column 'target'", "7", "declared classes"]),
    ("missinglabel.csv", "task,f1,target\na,1,x\nb,2,\n", {}, ["row 2, column 'target'"]),
    ("notaskname.csv", "task,f1,target\n,1,0\nb,2,1\n", {}, ["row 1, column 'task'"]),
    ("fewrows.csv", "task,f1,target\na,1,0\na,2,1\na,3,0\nb,4,1\nb,5,0\n", {},
     ["task 'b'", "2 training examples"]),
    ("onetask.csv", "task,f1,target\na,1,0\na,2,1\na,3,0\n", {}, ["column 'task'",
                                                                  "at least 2 tasks"]),
    ("oneclass.csv", "task,f1,target\na,1,0\na,2,0\nb,3,0\nb,4,0\n", {},
     ["column 'target'", "single class"]),
    ("ragged.csv", "task,f1,target\na,1,0\nb,2\n", {}, ["row 2", "2 values", "3 columns"]),
    ("dupes.csv", "task,f1,f1,target\na,1,1,0\nb,2,2,1\n", {}, ["duplicate column", "'f1'"]),
    ("leak.csv", GOOD, {"feature_columns": ["f1", "target"]}, ["'target'", "cannot be a feature"]),
    ("table.txt", GOOD, {}, ["unsupported file type '.txt'"]),
    ("same.csv", GOOD, {"target_column": "task"}, ["'task'", "both the task and the target"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "text", "options", "expected"), BAD_CSV, ids=[case[0] for case in BAD_CSV]
)
def test_bad_csv_is_rejected_with_file_and_location(
    tmp_path: Path, name: str, text: str, options: dict, expected: list[str]
) -> None:
    path = _write(tmp_path / name, text)
    with pytest.raises(DataError) as err:
        load_table(path, **options)
    message = str(err.value)
    assert str(path) in message
    for part in expected:
        assert part in message, message


@pytest.mark.parametrize(
    ("name", "make", "expected"),
    [
        ("missing.csv", lambda p: None, ["no such file"]),
        ("notask.npz", _npz_without_task, ["missing array 'task'"]),
        ("garbage.npz", lambda p: p.write_bytes(b"not a zip file"), ["cannot read as .npz"]),
        (
            "latin1.csv",
            lambda p: p.write_bytes("task,f\u00e9,target\n".encode("latin-1")),
            ["not UTF-8"],
        ),
    ],
    ids=["missing", "npz-missing-array", "npz-garbage", "not-utf8"],
)
def test_bad_files_are_rejected(
    tmp_path: Path, name: str, make: Callable[[Path], object], expected: list[str]
) -> None:
    path = tmp_path / name
    make(path)
    with pytest.raises(DataError) as err:
        load_table(path)
    assert str(path) in str(err.value)
    for part in expected:
        assert part in str(err.value)


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is not None, reason="pyarrow installed")
def test_parquet_without_pyarrow_says_what_to_install(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(DataError, match="pyarrow"):
        load_table(path)


# -- fuzzing ------------------------------------------------------------------------------
JUNK = st.sampled_from(["", " ", "nan", "-inf", "x y", "1e39", '"1,2"', "\u00e9", "1_0"])
GOOD_CELLS = {
    "task": st.sampled_from(["a", "b", "a", "b", "c"]),
    "f1": st.integers(-9, 9).map(str),
    "f2": st.floats(-1e3, 1e3).map(repr),
}
TARGETS = [
    st.sampled_from(["0", "1", "2"]),
    st.sampled_from(["cat", "dog", "7"]),
    st.floats(-10, 10).map(repr),
]


@st.composite
def csv_tables(draw: st.DrawFn) -> tuple[str, int]:
    """CSV text with columns task, f1, f2, target in random order and up to 16 data rows, in
    half the cases with one defect (a junk cell, a junk column name or a short row); and
    the number of data rows."""
    header = draw(st.permutations(["task", "f1", "f2", "target"]))
    cells = {**GOOD_CELLS, "target": draw(st.sampled_from(TARGETS))}
    n_rows = draw(st.integers(0, 16))
    rows = [[draw(cells[name]) for name in header] for _ in range(n_rows)]
    defect = draw(st.sampled_from(["none", "none", "none", "cell", "header", "short"]))
    column = draw(st.integers(0, 3))
    if defect == "cell" and rows:
        rows[draw(st.integers(0, n_rows - 1))][column] = draw(JUNK)
    elif defect == "header":
        header[column] = draw(JUNK | st.sampled_from(header))
    elif defect == "short" and rows:
        rows[-1].pop()
    lines = [",".join(header)] + [",".join(row) for row in rows]
    return "\n".join(lines) + "\n", n_rows


def _check_valid(ts: TaskSet, n_rows: int) -> None:
    assert len(ts) >= 2
    for task, rows in zip(ts, ts.meta["source_rows"], strict=True):
        assert task.x.dtype == np.float32 and np.all(np.isfinite(task.x))
        assert len(task.train_idx) >= 2 and len(rows) == task.n_examples
        if task.kind == "classification":
            assert task.y.dtype == np.int64 and task.y.max() < task.n_outputs
        else:
            assert task.y.dtype == np.float32 and np.all(np.isfinite(task.y))
    rows = np.sort(np.concatenate(ts.meta["source_rows"]))
    np.testing.assert_array_equal(rows, np.arange(1, n_rows + 1))


def _load_text(text: str) -> TaskSet | None:
    """``load_table`` on a CSV file holding ``text``; None when it raises DataError."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.csv"
        path.write_text(text, encoding="utf-8")
        try:
            return load_table(path)
        except DataError:
            return None


@settings(max_examples=200, deadline=None)
@given(table=csv_tables())
def test_fuzzed_csv_gives_a_valid_task_set_or_data_error(table: tuple[str, int]) -> None:
    text, n_rows = table
    ts = _load_text(text)
    if ts is not None:
        _check_valid(ts, n_rows)


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=80))
def test_fuzzed_raw_text_gives_a_task_set_or_data_error(text: str) -> None:
    _load_text(text)
