"""Command-line hardening (issue 14): interruptions exit 130 with one line saying how to
resume, resumable sweeps reuse their cached retrainings, a finished run is never
rewritten, results print as valid markdown when piped, and ``--help`` stays light."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from taskrel.cli import load_app, main, resume_command
from taskrel.config import load_run_config
from taskrel.execution import Job
from taskrel.registry import MODELS

ROOT = Path(__file__).parents[1]

# Three small convex tasks trained exactly (full-batch L-BFGS, float64): a LOTO sweep is
# 3 retrainings plus the full model and runs in about a second.
SMALL = [
    "--data", "synthetic-regression",
    "--set", 'data.options={"n_per_task": 60, "n_features": 4, "clusters": 1, '
    '"cluster_size": 2, "n_unrelated": 0, "n_adversarial": 1}',
    "--set", "model.hidden=[]", "--set", "model.shared_head=true",
    "--set", "model.l2=0.01", "--set", "model.l2_task=0.1",
    "--set", "train.optimizer=lbfgs", "--set", "train.lr=1", "--set", "train.epochs=1",
    "--set", "train.patience=null", "--set", "train.dtype=float64",
]  # fmt: skip
TRAIN = ["train", *SMALL[:2], "--set", "model.hidden=[4]", "--set", "model.l2=0.01",
         "--set", "model.l2_task=0.01", "--set", "train.epochs=2"]  # fmt: skip


def tree(path: Path) -> dict[str, str]:
    """Every file under ``path`` (relative name -> sha256) and every folder (-> "dir")."""
    return {
        p.relative_to(path).as_posix(): (
            "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        )
        for p in sorted(path.rglob("*"))
    }


# -- interruption ---------------------------------------------------------------------
def _default_sigint() -> None:
    """In the child before exec: Ctrl-C's default disposition, which a job started in the
    background of a non-interactive shell (``cmd &``) would otherwise inherit as ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "taskrel", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )


def _wait_for_torch_import(proc: subprocess.Popen[str], timeout: float = 60.0) -> None:
    """Return once ``proc`` has mapped torch's C library (its import is under way: the
    interpreter and taskrel's entry point are up), whatever the machine's load."""
    maps, deadline = Path(f"/proc/{proc.pid}/maps"), time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if "libtorch" in maps.read_text():
            return
        time.sleep(0.002)
    raise AssertionError("the CLI process never started importing torch")


def test_ctrl_c_during_a_computation_exits_130_with_one_resume_line(tmp_path: Path) -> None:
    proc = _start(["relate", "--method", "mtif", "--data", "synthetic", "--out", "r"], tmp_path)
    deadline = time.time() + 120
    while not (tmp_path / "r" / "config.json").exists() and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("taskrel relate: interrupted; finished work is kept in r;")
    assert lines[0].endswith("continue with: taskrel relate --method mtif --data synthetic "
                             "--out r --resume")  # fmt: skip
    assert (tmp_path / "r" / "config.json").exists()  # kept for --resume


def test_ctrl_c_while_importing_exits_130_without_traceback(tmp_path: Path) -> None:
    proc = _start(["compare", "--data", "synthetic"], tmp_path)
    _wait_for_torch_import(proc)  # the command modules are being imported
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_interruption_before_the_app_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("taskrel.cli.load_app", interrupted)
    assert main(["train"]) == 130
    err = capsys.readouterr().err
    assert err == "taskrel: interrupted before writing anything; run the command again\n"


def test_train_interrupted_outside_the_epoch_loop_exits_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before the fix typer turned this KeyboardInterrupt into a returned 130 that the
    entry point ignored: exit 0, no output."""

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("taskrel.pipelines.experiment.evaluate", interrupted)  # after training
    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out)]) == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("taskrel train: interrupted; finished work is kept in")
    assert err.endswith(f"--out {out} --resume") and len(err.splitlines()) == 1
    assert (out / "checkpoint.pt").exists() and not (out / "metrics.json").exists()
    monkeypatch.undo()
    assert main(["train", "--out", str(out), "--resume"]) == 0
    assert json.loads((out / "metrics.json").read_text())["epochs_run"] == 2


def test_resume_command_replaces_out_and_resume() -> None:
    argv = ["compare", "--out=a", "--data", "x y", "--resume", "--out", "b"]
    assert resume_command(argv, Path("runs/c")) == (
        "taskrel compare --data 'x y' --out runs/c --resume"
    )


# -- resume ---------------------------------------------------------------------------
def test_resume_of_a_finished_run_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out)]) == 0
    before = tree(out)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume"]) == 0
    assert tree(out) == before
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    err = capsys.readouterr().err
    assert "this run is complete" in err and "nothing changed" in err
    assert {"model.pt", "checkpoint.pt", "timings.json"} <= set(before)


def test_interrupted_sweep_resumes_from_its_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ground-truth` interrupted after two retrainings: `--resume` reruns only the
    missing ones and gives the same matrix as an uninterrupted run."""
    ran: list[str] = []
    original = Job.run

    def counting(self: Job) -> object:
        if len(ran) == 2 and stop:
            raise KeyboardInterrupt
        ran.append(self.key())
        return original(self)

    monkeypatch.setattr(Job, "run", counting)
    stop = True
    cut, ref = tmp_path / "cut", tmp_path / "ref"
    assert main(["ground-truth", *SMALL, "--out", str(cut)]) == 130
    assert "--resume" in capsys.readouterr().err
    stop, first = False, list(ran)
    assert main(["ground-truth", *SMALL, "--out", str(cut), "--resume"]) == 0
    resumed = ran[len(first) :]
    assert not set(resumed) & set(first)  # finished retrainings are not run again
    assert main(["ground-truth", *SMALL, "--out", str(ref)]) == 0
    full = ran[len(first) + len(resumed) :]
    assert len(first) == 2 and len(first) + len(resumed) == len(full)
    name = "relatedness/loto.json"
    assert (cut / name).read_bytes() == (ref / name).read_bytes()
    # a second --resume finds the run complete and leaves it as it is
    before = tree(cut)
    assert main(["ground-truth", *SMALL, "--out", str(cut), "--resume"]) == 0
    assert tree(cut) == before


@pytest.mark.parametrize("command", ["relate", "compare", "group", "ground-truth"])
def test_every_sweep_command_accepts_resume(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, "--help"]) == 0
    assert "--resume" in capsys.readouterr().out


def test_resume_refuses_a_run_of_another_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(["ground-truth", *SMALL, "--out", str(out)]) == 0
    before = tree(out)
    capsys.readouterr()
    assert main(["compare", "--out", str(out), "--resume"]) == 2
    assert "not a run of 'taskrel compare'" in capsys.readouterr().err
    assert main(["ground-truth", *SMALL, "--set", "seed=5", "--out", str(out), "--resume"]) == 2
    assert "saved config" in capsys.readouterr().err
    assert tree(out) == before


# -- output ---------------------------------------------------------------------------
def _markdown_tables(text: str) -> list[list[str]]:
    blocks: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("|"):
            if not blocks or not blocks[-1]:
                blocks.append([])
            blocks[-1].append(line)
        elif blocks and blocks[-1]:
            assert line == "", f"text right after a table joins it: {line!r}"
            blocks.append([])
    return [b for b in blocks if b]


def test_piped_output_is_valid_markdown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["relate", "--method", "ground-truth", *SMALL, "--out", str(tmp_path / "r")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "│" not in out and "─" not in out  # no rich box drawing when piped
    (table,) = _markdown_tables(out)
    cells = {len(line.strip("|").split("|")) for line in table}
    assert cells == {4} and len(table) == 2 + 3  # header, rule, one row per task
    assert set(table[1].replace("|", "")) == {"-"}
    saved = json.loads((tmp_path / "r" / "relatedness" / "ground-truth.json").read_text())
    first = [f"{v:.3g}" for v in saved["matrix"][0]]
    assert [c.strip() for c in table[2].strip("|").split("|")][1:] == first


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from taskrel import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"taskrel {__version__}\n"


def test_model_help_lists_the_registered_models(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "300")
    assert main(["train", "--help"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if "--model" in line)
    assert f"one of {', '.join(MODELS)}" in line


def test_top_level_help_keeps_each_summary_on_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "400")
    assert main(["--help"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for command in load_app().registered_commands:
        assert command.callback is not None
        summary = " ".join(inspect.getdoc(command.callback).split("\n\n")[0].split())  # type: ignore[union-attr]
        assert any(summary in line for line in lines), summary


def test_predict_usage_names_its_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", "--help"]) == 0
    assert "Usage: taskrel predict [OPTIONS] {RUN_DIR} {SENTENCE}" in capsys.readouterr().out


def test_help_imports_no_heavy_module() -> None:
    """`--help` must start fast: it may not import torch, numpy, scipy or sklearn (they
    take seconds to import; the commands import them when they run)."""
    code = (
        "import sys; from taskrel.cli import main; status = main(['--help']); "
        "main(['train', '--help']); "
        "print(status, sorted(m for m in ('torch', 'numpy', 'scipy', 'sklearn') "
        "if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert proc.stdout.splitlines()[-1] == "0 []"


def test_taskset_repr_is_one_short_line() -> None:
    from taskrel import load

    taskset = load("synthetic")
    n = [sum(v[s] for v in taskset.sizes().values()) for s in ("train", "val", "test")]
    assert (
        str(taskset)
        == repr(taskset)
        == (
            f"TaskSet('synthetic', 8 tasks [{', '.join(taskset.names[:4])}, ...], "
            f"train/val/test examples {n[0]}/{n[1]}/{n[2]})"
        )
    )
    assert n[0] > 0 and len(str(taskset)) < 120


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.toml")), ids=lambda p: p.name)
def test_every_example_config_validates(path: Path) -> None:
    config = load_run_config(path)
    assert config.data.name and config.model_name in MODELS


def test_readme_run_toml_trains(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`taskrel train --config examples/run.toml` (the README's command) runs; shortened
    to one epoch with fixed regularisation."""
    out = tmp_path / "run"
    args = ["train", "--config", str(ROOT / "examples" / "run.toml"), "--out", str(out)]
    fast = ["--set", "train.epochs=1", "--set", "model.l2=0.001", "--set", "model.l2_task=0.001"]
    assert main([*args, *fast]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["data"] == {"name": "office-caltech", "options": {"train": 0.1},
                             "standardize": "task"}  # fmt: skip
    assert saved["model"]["hidden"] == [64] and saved["train"]["lr"] == 0.01
    assert len(json.loads((out / "metrics.json").read_text())["tasks"]) == 4


def test_a_raw_validation_error_still_prints_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pydantic error that escaped the API's own checks: one line per field, no URL."""
    from taskrel.training.trainer import TrainConfig

    def invalid(*args: object, **kwargs: object) -> None:
        TrainConfig(lr=-1, epochs="many")

    monkeypatch.setattr("taskrel.pipelines.experiment.run_training", invalid)
    assert main([*TRAIN, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err == (
        "taskrel: error: epochs: input should be a valid integer, unable to parse string "
        "as an integer (got 'many'); lr: input should be greater than 0 (got -1)\n"
    )
    assert not (tmp_path / "run").exists()
