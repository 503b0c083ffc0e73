"""Interruption of a real process and byte-identical reruns."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from taskrel.cli import main

TRAIN = [
    "train",
    "--model",
    "hard",
    "--set",
    "model.hidden=[16]",
    "--set",
    "train.epochs=40",
    "--set",
    "train.patience=null",
    "--set",
    "train.checkpoint_every=1",
]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taskrel", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_sigterm_leaves_a_checkpoint_and_resume_matches(tmp_path: Path) -> None:
    ref = _run([*TRAIN, "--out", "ref"], tmp_path)
    assert ref.returncode == 0, ref.stderr

    proc = subprocess.Popen(
        [sys.executable, "-m", "taskrel", *TRAIN, "--out", "cut"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ckpt = tmp_path / "cut" / "checkpoint.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("training finished before the signal arrived")
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not (tmp_path / "cut" / "metrics.json").exists()

    resumed = _run(["train", "--out", "cut", "--resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    ref_metrics = (tmp_path / "ref" / "metrics.json").read_bytes()
    assert (tmp_path / "cut" / "metrics.json").read_bytes() == ref_metrics


def test_resume_refuses_different_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*TRAIN[:-2], "--set", "train.epochs=2", "--out", str(tmp_path / "r")]) == 0
    capsys.readouterr()
    assert main(["train", "--out", str(tmp_path / "r"), "--resume", "--set", "train.lr=0.5"]) == 2
    assert "saved config" in capsys.readouterr().err


def test_same_command_twice_gives_identical_result_files(tmp_path: Path) -> None:
    args = ["train", "--model", "soft", "--set", "train.epochs=5", "--set", "model.dropout=0.1"]
    args += ["--set", "model.hidden=[64]"]  # an MLP, so dropout draws random numbers
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    for name in ("metrics.json", "history.json", "config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    env = json.loads((tmp_path / "a" / "environment.json").read_text())
    assert env["packages"]["torch"] and env["python"] and "git_revision" in env
