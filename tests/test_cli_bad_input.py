"""Bad input through the CLI: one clear line on stderr, exit status 2, no traceback, and
earlier results untouched."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from taskrel.cli import main
from taskrel.errors import ConfigError, RunDirError, TaskrelError
from taskrel.relatedness import relate
from taskrel.relatedness.result import Relatedness

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
    assert main(["train", "--out", str(out), "--set", "train.epochs=1"]) == 2
    assert "already holds results" in capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text()) == {"keep": True}
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]


def test_corrupt_checkpoint_on_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--set", "train.epochs=1"]) == 0
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
