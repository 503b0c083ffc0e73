"""Bad input through the CLI: one clear line on stderr, exit status 2, no traceback, and
earlier results untouched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from taskrel.cli import main
from taskrel.errors import ConfigError, RunDirError, TaskrelError
from taskrel.relatedness import relate
from taskrel.relatedness.result import Relatedness

FIXED_L2 = ["--set", "model.l2=0.01", "--set", "model.l2_task=0.01"]  # no validation search
GOOD_ROWS = "task,f1,f2,target\n" + "".join(
    f"{t},{i * 0.1:.2f},{(i % 3) * 1.0:.1f},{i % 2}\n" for t in ("a", "b") for i in range(8)
)


def _csv(tmp: Path, text: str, name: str = "data.csv") -> str:
    path = tmp / name
    path.write_text(text)
    return str(path)


def _slu_folder(tmp: Path, seq_in: str, seq_out: str, label: str) -> str:
    for split in ("train", "dev", "test"):
        d = tmp / "slu" / split
        d.mkdir(parents=True)
        (d / "seq.in").write_text(seq_in)
        (d / "seq.out").write_text(seq_out)
        (d / "label").write_text(label)
    return str(tmp / "slu")


# Each case: (id, builder(tmp) -> argv, fragments the message must contain)
CASES: list[tuple[str, Callable[[Path], list[str]], list[str]]] = [
    ("unknown dataset", lambda t: ["train", "--data", "nope"], ["unknown dataset 'nope'"]),
    (
        "missing csv",
        lambda t: ["train", "--data", str(t / "absent.csv")],
        ["absent.csv", "no such file"],
    ),
    (
        "missing column",
        lambda t: ["train", "--data", _csv(t, "task,f1,label\na,1,0\n")],
        ["data.csv", "target"],
    ),
    (
        "non-numeric feature",
        lambda t: ["train", "--data", _csv(t, GOOD_ROWS.replace("a,0.30,0.0,1", "a,abc,0.0,1"))],
        ["data.csv", "f1", "abc"],
    ),
    (
        "nan feature",
        lambda t: ["train", "--data", _csv(t, GOOD_ROWS.replace("a,0.30,0.0,1", "a,nan,0.0,1"))],
        ["data.csv", "f1"],
    ),
    (
        "inf feature",
        lambda t: ["train", "--data", _csv(t, GOOD_ROWS.replace("b,0.40,1.0,0", "b,0.40,inf,0"))],
        ["data.csv", "f2"],
    ),
    (
        "single task",
        lambda t: [
            "train",
            "--data",
            _csv(
                t, "".join(line for line in GOOD_ROWS.splitlines(True) if not line.startswith("b"))
            ),
        ],
        ["data.csv", "2 tasks"],
    ),
    (
        "label outside classes",
        lambda t: ["train", "--data", _csv(t, GOOD_ROWS), "--set", "data.options.classes=[0]"],
        ["data.csv", "target"],
    ),
    (
        "too few examples",
        lambda t: ["train", "--data", _csv(t, GOOD_ROWS + "c,0.1,0.2,1\n")],
        ["data.csv", "'c'"],
    ),
    ("empty csv", lambda t: ["train", "--data", _csv(t, "")], ["data.csv", "empty"]),
    (
        "seq.in/seq.out length mismatch",
        lambda t: ["train", "--model", "hard", "--data", _slu_folder(t, "a b c\n", "O O\n", "x\n")],
        ["seq.out", "line 1"],
    ),
    (
        "empty line in seq.in",
        lambda t: ["train", "--data", _slu_folder(t, "a b\n\n", "O O\nO\n", "x\ny\n")],
        ["seq.in", "line 2"],
    ),
    ("unknown config key", lambda t: ["train", "--set", "train.lrr=0.1"], ["train.lrr"]),
    ("wrong config type", lambda t: ["train", "--set", "train.epochs=many"], ["train.epochs"]),
    ("override without value", lambda t: ["train", "--set", "train.lr"], ["train.lr", "KEY=VALUE"]),
    (
        "missing config file",
        lambda t: ["train", "--config", str(t / "run.toml")],
        ["run.toml", "not found"],
    ),
    (
        "invalid toml",
        lambda t: ["train", "--config", _csv(t, "[train\nlr=1", "run.toml")],
        ["run.toml", "TOML"],
    ),
    ("unknown model", lambda t: ["train", "--model", "mlp"], ["unknown model 'mlp'"]),
    ("unknown model option", lambda t: ["train", "--set", "model.hiden=[3]"], ["hiden"]),
    (
        "model does not fit the data",
        lambda t: ["train", "--model", "hard", "--data", _slu_folder(t, "a b\n", "O O\n", "x\n")],
        ["hard", "flat float feature"],
    ),
    (
        "resume a folder that is not a run",
        lambda t: ["train", "--out", str(t), "--resume"],
        ["no config.json", "not a taskrel training run"],
    ),
]


@pytest.mark.parametrize(
    ("argv_for", "fragments"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_cli_reports_bad_input_on_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv_for: Callable[[Path], list[str]],
    fragments: list[str],
) -> None:
    argv = argv_for(tmp_path)
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "run")]
    status = main(argv)
    err = capsys.readouterr().err.strip()
    assert status == 2, err
    assert len(err.splitlines()) <= 2, err
    assert err.startswith("taskrel: error:")
    for fragment in fragments:
        assert fragment in err


def test_existing_results_are_never_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text('{"keep": true}')
    assert main(["train", "--out", str(out), *FIXED_L2, "--set", "train.epochs=1"]) == 2
    assert "already holds results" in capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text()) == {"keep": True}
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]


def test_corrupt_checkpoint_on_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *FIXED_L2, "--set", "train.epochs=1"]) == 0
    (run / "metrics.json").unlink()  # as if interrupted after the last epoch
    (run / "checkpoint.pt").write_bytes(b"\x00garbage")
    assert main(["train", "--out", str(run), "--resume"]) == 2
    assert "corrupt checkpoint" in capsys.readouterr().err


def test_incompatible_relatedness_file(tmp_path: Path) -> None:
    path = Relatedness([[1.0]], ["a"], "x").save(tmp_path / "r")
    doc = json.loads(path.read_text())
    doc["format_version"] = 99
    path.write_text(json.dumps(doc))
    with pytest.raises(RunDirError, match="version 99"):
        Relatedness.load(path)
    path.write_text("{broken")
    with pytest.raises(RunDirError, match="not a relatedness JSON"):
        Relatedness.load(path)


def test_unknown_relatedness_method(synthetic_cls) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="unknown relatedness method 'nope'"):
        relate(synthetic_cls, "nope")


def test_every_user_error_is_a_value_error() -> None:
    assert issubclass(TaskrelError, ValueError)


def test_real_process_prints_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "taskrel", "train", "--data", "nope"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        "taskrel: error: unknown dataset 'nope'; built-in datasets: "
        + proc.stderr.split("built-in datasets: ")[1].strip()
    )


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["demo", "--bogus"], "No such option: --bogus"),
        (["relate", "--workers", "abc"], "'--workers'"),
        (["relate", "--method"], "requires an argument"),
        (["nosuchcommand"], "No such command"),
    ],
    ids=["unknown option", "wrong type", "missing value", "unknown command"],
)
def test_usage_errors_exit_2_without_traceback(
    capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err
    assert "Traceback" not in err


# -- bad input that must leave the working folder exactly as it was -------------------
def _file(tmp: Path, name: str, text: str) -> str:
    (tmp / name).write_text(text)
    return str(tmp / name)


def _run_folder(tmp: Path, record: dict[str, object]) -> str:
    """A finished-looking run folder with ``config.json`` = ``record``."""
    folder = tmp / "old"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(record))
    (folder / "results.json").write_text('{"keep": true}')
    return str(folder)


OUT_COMMANDS = ("train", "relate", "compare", "group", "ground-truth", "demo")

# Each case: (id, builder(tmp) -> argv, fragments the one-line message must contain)
UNCHANGED: list[tuple[str, Callable[[Path], list[str]], list[str]]] = [
    ("unknown loader option", lambda t: ["train", "--set", "data.options.bogus=1"], ["bogus"]),
    (
        "loader option of the wrong type",
        lambda t: ["train", "--set", "data.options.train=abc"],
        ["train", "abc"],
    ),
    (
        "config json whose top level is a list",
        lambda t: ["train", "--config", _file(t, "run.json", "[1, 2]")],
        ["run.json", "top level", "list"],
    ),
    (
        "config json whose top level is a string",
        lambda t: ["relate", "--config", _file(t, "run.json", '"hard"')],
        ["run.json", "top level", "str"],
    ),
    (
        "config yaml",
        lambda t: ["train", "--config", _file(t, "run.yaml", "seed: 1")],
        ["run.yaml", ".toml or .json"],
    ),
    (
        "config invalid json",
        lambda t: ["compare", "--config", _file(t, "run.json", "{")],
        ["run.json", "not valid JSON"],
    ),
    (
        "config section of the wrong type",
        lambda t: ["train", "--config", _file(t, "run.toml", "train = 3")],
        ["run.toml", "train:"],
    ),
    (
        "negative learning rate",
        lambda t: ["train", "--set", "train.lr=-1"],
        ["train.lr", "greater than 0", "-1"],
    ),
    (
        "two invalid fields named on one line",
        lambda t: ["ground-truth", "--set", "train.lr=-1", "--set", "train.epochs=x"],
        ["train.lr: input should be greater than 0", "train.epochs: input should be a valid"],
    ),
    (
        "override below a value",
        lambda t: ["train", "--config", _file(t, "run.toml", "seed = 1"), "--set", "seed.x=1"],
        ["seed.x=1", "'seed' is not a section"],
    ),
    (
        "unknown standardisation",
        lambda t: ["group", "--set", "data.standardize=maybe"],
        ["data.standardize", "'maybe'"],
    ),
    ("zero epochs", lambda t: ["ground-truth", "--set", "train.epochs=0"], ["train.epochs"]),
    (
        "negative number of loo examples",
        lambda t: ["ground-truth", "--kind", "loo", "--examples", "-3"],
        ["--examples", "-3"],
    ),
    (
        "zero lds subsets",
        lambda t: ["ground-truth", "--kind", "lds", "--subsets", "0"],
        ["--subsets", "0"],
    ),
    (
        "lds fraction above 1",
        lambda t: ["ground-truth", "--kind", "lds", "--fraction", "1.5"],
        ["--fraction", "1.5"],
    ),
    ("unknown ground-truth kind", lambda t: ["ground-truth", "--kind", "bogus"], ["bogus"]),
    ("unknown method", lambda t: ["relate", "--method", "nope"], ["nope"]),
    ("unknown method option", lambda t: ["relate", "--option", "bogus=1"], ["bogus"]),
    ("unknown method in a list", lambda t: ["compare", "--methods", "mtif,nope"], ["nope"]),
    ("zero workers", lambda t: ["relate", "--workers", "0"], ["workers", "0"]),
    ("unknown executor", lambda t: ["relate", "--executor", "nope"], ["nope"]),
    ("resume without --out", lambda t: ["train", "--resume"], ["--resume needs --out"]),
    (
        "resume a missing folder",
        lambda t: ["compare", "--resume", "--out", str(t / "missing")],
        ["missing", "no run folder to resume"],
    ),
    (
        "resume a run of another command",
        lambda t: ["compare", "--resume", "--out", _run_folder(t, {"seed": 0})],
        ["old", "not a run of 'taskrel compare'"],
    ),
    (
        "resume with other options",
        lambda t: [
            "ground-truth",
            "--set",
            "seed=3",
            "--resume",
            "--out",
            _run_folder(t, {"command": "ground-truth-loto", "run": {}}),
        ],
        ["old", "saved config"],
    ),
    (
        "out is a file",
        lambda t: ["train", "--out", _file(t, "out.txt", "keep")],
        ["out.txt", "already holds results"],
    ),
    (
        "out holds results",
        lambda t: ["relate", "--out", _run_folder(t, {"seed": 0})],
        ["old", "already holds results"],
    ),
    (
        "missing relatedness file",
        lambda t: ["group", "--relatedness", str(t / "nope.json")],
        ["nope.json"],
    ),
    (
        "report of a folder without a comparison",
        lambda t: ["report", _run_folder(t, {"seed": 0})],
        ["old"],
    ),
    ("predict without a model", lambda t: ["predict", str(t), "hi"], ["no model.pt"]),
    ("demo of an unknown dataset", lambda t: ["demo", "--data", "nope"], ["'nope'"]),
    ("seed that is not a number", lambda t: ["train", "--seed", "abc"], ["--seed", "abc"]),
    ("unknown option", lambda t: ["compare", "--bogus"], ["--bogus"]),
]


@pytest.mark.parametrize(
    ("argv_for", "fragments"), [c[1:] for c in UNCHANGED], ids=[c[0] for c in UNCHANGED]
)
def test_bad_input_changes_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv_for: Callable[[Path], list[str]],
    fragments: list[str],
) -> None:
    """Exit 2, one line naming the input (no traceback, no pydantic URL), and the folder
    the command ran in exactly as before: no run folder left behind."""
    monkeypatch.chdir(tmp_path)
    argv = argv_for(tmp_path)
    if argv[0] in OUT_COMMANDS and "--out" not in argv and "--resume" not in argv:
        argv += ["--out", str(tmp_path / "new")]
    before = tree(tmp_path)
    status = main(argv)
    err = capsys.readouterr().err.strip()
    assert status == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("taskrel: error:"), err
    assert "Traceback" not in err and "https://" not in err
    for fragment in fragments:
        assert fragment in err, fragment
    assert tree(tmp_path) == before


def tree(path: Path) -> dict[str, bytes | None]:
    """Every file under ``path`` with its bytes (folders: None)."""
    return {
        p.relative_to(path).as_posix(): None if p.is_dir() else p.read_bytes()
        for p in sorted(path.rglob("*"))
    }


def test_unwritable_output_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder that cannot be created (read-only parent): one line naming it, exit 2."""

    def denied(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", denied)
    out = tmp_path / "locked" / "run"
    assert main(["relate", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"taskrel: error: {out}: cannot create the run folder (Permission denied); "
        "choose another --out\n"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(["train", "--out", str(locked / "run")]) == 2
        assert f"{locked / 'run'}: cannot create the run folder" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)
