"""Bad input to the Python API (issue 14): every case raises a TaskrelError subclass whose
one-line message names the offending input, before any training, and changes nothing that
existed before (files in the working folder, the task set passed in)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import taskrel
from taskrel.data.taskset import Task, TaskSet
from taskrel.errors import ConfigError, DataError, NotApplicableError, TaskrelError
from taskrel.notices import collect
from taskrel.relatedness import RelateContext

Case = Callable[[dict[str, Any]], Any]
MLP = {"hidden": [3], "l2": 1e-2, "l2_task": 1e-2}


@pytest.fixture(scope="module")
def small() -> taskrel.TaskSet:
    return taskrel.load("synthetic", n_per_task=30, n_features=4, seed=0)


@pytest.fixture(scope="module")
def trained(small: taskrel.TaskSet) -> taskrel.MTLModel:
    return taskrel.fit(small, "hard", MLP, {"epochs": 1, "patience": None}).model


@pytest.fixture
def world(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    small: taskrel.TaskSet,
    trained: taskrel.MTLModel,
) -> dict[str, Any]:
    """The inputs every case may use; the working folder is ``tmp_path``."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "semicolon.csv").write_text("task;x;target\na;1;0\na;2;1\nb;3;0\nb;4;1\n")
    (tmp_path / "notes.txt").write_text("task,x,target\n")
    (tmp_path / "ok.csv").write_text(
        "task,x,target\n" + "".join(f"{'ab'[i % 2]},{i},{i % 3}\n" for i in range(12))
    )
    bad = small.tasks[0]
    x = bad.x.copy()
    x[bad.train_idx[0], 1] = np.inf
    return {
        "tasks": small,
        "model": trained,
        "inf_tasks": small.with_tasks([replace(bad, x=x), *small.tasks[1:]]),
        "other": taskrel.load("synthetic", n_per_task=30, n_features=6, seed=0),
        "landmine": taskrel.load("landmine"),
        "three_class": taskrel.load("synthetic", n_per_task=30, n_features=4, n_classes=3),
    }


def _relate(w: dict[str, Any], method: str = "mtif", **options: Any) -> Any:
    ctx = RelateContext(model="hard", model_config=MLP, train_config={"epochs": 1})
    return taskrel.relate(w["tasks"], method, ctx, **options)


CASES: list[tuple[str, Case, type[TaskrelError], tuple[str, ...]]] = [
    # load: names, options and files
    ("load-train-str", lambda w: taskrel.load("synthetic", train="abc"), ConfigError,
     ("train='abc'", "float")),
    ("load-unknown-option", lambda w: taskrel.load("synthetic", bogus=1), ConfigError,
     ("'bogus'", "n_per_task")),
    ("load-seed-float", lambda w: taskrel.load("synthetic", seed=1.5), ConfigError,
     ("seed=1.5", "int")),
    ("load-kind-literal", lambda w: taskrel.load("synthetic", kind="x"), ConfigError,
     ("kind='x'", "'regression'")),
    ("load-fixed-option", lambda w: taskrel.load("synthetic-regression", kind="regression"),
     ConfigError, ("'kind'",)),
    ("load-unknown-name", lambda w: taskrel.load("no-such-set"), DataError,
     ("'no-such-set'", "synthetic")),
    ("load-not-a-name", lambda w: taskrel.load(3), DataError, ("int",)),
    ("load-txt", lambda w: taskrel.load("notes.txt"), DataError,
     ("notes.txt", "'.txt'", ".csv")),
    ("load-missing-file", lambda w: taskrel.load("gone.csv"), DataError,
     ("gone.csv", "no such file")),
    ("load-semicolon", lambda w: taskrel.load("semicolon.csv"), DataError,
     ("semicolon.csv", "delimiter=';'")),
    ("load-csv-option", lambda w: taskrel.load("ok.csv", bogus=1), ConfigError,
     ("'bogus'", "task_column")),
    ("load-train-zero", lambda w: taskrel.load("synthetic", train=0), DataError,
     ("train=0", "count >= 2")),
    ("load-train-one", lambda w: taskrel.load("synthetic", train=1.0), DataError,
     ("train=1.0", "val=0.1", "e.g. train=0.8")),
    ("load-negative-val", lambda w: taskrel.load("synthetic", val=-1), DataError, ("val",)),
    # fit
    ("fit-lr", lambda w: taskrel.fit(w["tasks"], "hard", MLP, {"lr": -1}), ConfigError,
     ("lr", "greater than 0", "-1")),
    ("fit-train-fields", lambda w: taskrel.fit(w["tasks"], "hard", MLP,
                                               {"epochs": "x", "bogus": 1}),
     ConfigError, ("epochs", "bogus", "unknown option", "accepted")),
    ("fit-train-config-type", lambda w: taskrel.fit(w["tasks"], "hard", MLP, [1]),
     ConfigError, ("train_config", "list")),
    ("fit-missing-path", lambda w: taskrel.fit("file.csv", "hard"), DataError, ("file.csv",)),
    ("fit-taskset-type", lambda w: taskrel.fit(3, "hard"), DataError, ("taskset", "int")),
    ("fit-model-name", lambda w: taskrel.fit(w["tasks"], "nomodel"), ConfigError,
     ("'nomodel'", "hard")),
    ("fit-model-config", lambda w: taskrel.fit(w["tasks"], "hard", {"hidden": "x"}),
     ConfigError, ("hidden", "list")),
    ("fit-model-unknown", lambda w: taskrel.fit(w["tasks"], "hard", {"bogus": 1}),
     ConfigError, ("bogus", "accepted")),
    ("fit-option", lambda w: taskrel.fit(w["tasks"], "hard", MLP, bogus=1), ConfigError,
     ("'bogus'", "checkpoint")),
    ("fit-infinite-feature", lambda w: taskrel.fit(w["inf_tasks"], "hard", MLP), DataError,
     ("t0-c0", "inf")),
    # relate
    ("relate-option", lambda w: _relate(w, bogus=1), ConfigError,
     ("'bogus'", "solver", "damping")),
    ("relate-method", lambda w: _relate(w, "nomethod"), ConfigError, ("'nomethod'", "mtif")),
    ("relate-damping", lambda w: _relate(w, damping=-1), ConfigError, ("damping", "-1")),
    ("relate-damping-type", lambda w: _relate(w, damping="x"), ConfigError,
     ("damping='x'", "'auto'")),
    ("relate-task-level", lambda w: _relate(w, task_level="bogus"), ConfigError,
     ("task_level='bogus'", "'newton'")),
    ("relate-solver", lambda w: _relate(w, solver="foo"), ConfigError, ("'foo'", "cg")),
    ("relate-solver-options", lambda w: _relate(w, solver_options={"tl": 1}), ConfigError,
     ("'tl'", "tol")),
    ("relate-chunk", lambda w: _relate(w, chunk_size=0), ConfigError, ("chunk_size", "0")),
    ("relate-budget", lambda w: _relate(w, solver="explicit", memory_budget_gb=1e-9),
     ConfigError, ("solver='explicit'", "GB", "memory_budget_gb")),
    ("relate-context", lambda w: taskrel.relate(w["tasks"], "mtif", "ctx"), ConfigError,
     ("context", "str")),
    ("relate-gradient-option", lambda w: _relate(w, "gradient", bogus=1), ConfigError,
     ("'bogus'", "every")),
    ("relate-not-applicable", lambda w: taskrel.relate(
        w["tasks"], "mtif", RelateContext(model="vmtl")), NotApplicableError,
     ("mtif", "VMTL")),
    # evaluate
    ("evaluate-features", lambda w: taskrel.evaluate(w["model"], w["other"]), DataError,
     ("shape (6,)", "t0-c0")),
    ("evaluate-tasks", lambda w: taskrel.evaluate(w["model"], w["landmine"]), DataError,
     ("'landmine'", "29 tasks", "8")),
    ("evaluate-classes", lambda w: taskrel.evaluate(w["model"], w["three_class"]), DataError,
     ("3 outputs", "2 outputs")),
    ("evaluate-model", lambda w: taskrel.evaluate("model.pt", w["tasks"]), ConfigError,
     ("model", "str")),
    ("evaluate-split", lambda w: taskrel.evaluate(w["model"], w["tasks"], "bogus"),
     ConfigError, ("'bogus'", "'test'")),
]  # fmt: skip


def _digest(taskset: taskrel.TaskSet) -> str:
    h = hashlib.sha256()
    for t in taskset.tasks:
        for a in (t.x, t.y, t.train_idx, t.val_idx, t.test_idx):
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    ("case", "error", "needles"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_api_input(
    world: dict[str, Any],
    tmp_path: Path,
    case: Case,
    error: type[TaskrelError],
    needles: tuple[str, ...],
) -> None:
    files = _files(tmp_path)
    digests = {k: _digest(v) for k, v in world.items() if isinstance(v, taskrel.TaskSet)}
    params = [p.detach().clone() for p in world["model"].parameters()]
    with pytest.raises(error) as caught:
        case(world)
    message = str(caught.value)
    assert type(caught.value) is error or issubclass(type(caught.value), error)
    assert "\n" not in message and "Traceback" not in message
    assert "errors.pydantic.dev" not in message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    assert _files(tmp_path) == files  # nothing written, changed or removed
    assert {k: _digest(v) for k, v in world.items() if isinstance(v, taskrel.TaskSet)} == digests
    for before, after in zip(params, world["model"].parameters(), strict=True):
        assert bool((before == after).all())


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 25
    assert len({c[0] for c in CASES}) == len(CASES)


# -- silent acceptance that now warns (one line, recorded by notices.collect) ----------------
def _task(name: str, kind: str, x: np.ndarray, y: np.ndarray, n_out: int) -> Task:
    return Task(name, kind, x, y, n_out, train_idx=np.arange(len(y)))  # type: ignore[arg-type]


def test_one_class_and_constant_targets_give_one_notice_each() -> None:
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    ts = TaskSet(
        "odd",
        (
            _task("one-class", "classification", x, np.zeros(10, dtype=np.int64), 2),
            _task("flat", "regression", x, np.full(10, 3.0, dtype=np.float32), 1),
            _task("fine", "regression", x, np.arange(10, dtype=np.float32), 1),
        ),
    )
    with collect() as caveats:
        ts.split(0.5, seed=0)
    assert len(caveats) == 2
    assert "'one-class'" in caveats[0] and "single class" in caveats[0]
    assert "'flat'" in caveats[1] and "constant" in caveats[1]
    assert not any("'fine'" in c for c in caveats)


def test_tiny_train_fraction_is_raised_to_the_minimum_with_a_notice() -> None:
    with collect() as caveats:
        ts = taskrel.load("synthetic", train=0.001, n_per_task=30)
    assert [s["train"] for s in ts.sizes().values()] == [2] * len(ts)
    assert "train=0.001" in caveats[0] and "minimum" in caveats[0]
    assert sum("train=0.001" in c for c in caveats) == 1  # one line for all 8 tasks


def test_huge_features_standardise_exactly_and_non_finite_are_refused(tmp_path: Path) -> None:
    big = np.array([[1e30], [2e30], [4e30], [8e30]], dtype=np.float32)
    ts = TaskSet("big", (_task("t", "regression", big, np.arange(4.0, dtype=np.float32), 1),))
    z = ts.standardize().tasks[0].x[:, 0]
    x64 = big[:, 0].astype(np.float64)
    np.testing.assert_allclose(z, (x64 - x64.mean()) / x64.std(), rtol=1e-6)  # not 0 or NaN
    bad = big.copy()
    bad[2, 0] = np.inf
    broken = TaskSet("bad", (_task("t", "regression", bad, np.arange(4.0, dtype=np.float32), 1),))
    with pytest.raises(DataError, match=r"task 't'.*row 2.*inf"):
        broken.standardize()
    path = tmp_path / "big.csv"
    path.write_text(
        "task,x,size,target\n" + "".join(f"{'ab'[i % 2]},{i}e30,{i},{i}.5\n" for i in range(1, 9))
    )
    before = path.read_bytes()
    with collect() as caveats:
        taskrel.load(str(path), kind="regression")
    assert len(caveats) == 1 and "'x'" in caveats[0] and "8e+30" in caveats[0]
    assert "standardise" in caveats[0]
    assert path.read_bytes() == before
