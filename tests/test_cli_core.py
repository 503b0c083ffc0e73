from __future__ import annotations

import json
from pathlib import Path

import pytest

from taskrel.cli import main
from taskrel.data import DATASETS


def test_datasets_lists_every_builtin_with_its_task_count(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    for name in DATASETS:
        assert name in out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.count("|") > 3}
    assert rows["school"].split("|")[3].strip() == "139"
    assert rows["office-caltech"].split("|")[3].strip() == "4"
    assert rows["atis"].split("|")[3].strip() == "2"


def test_train_writes_a_complete_run_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "run.toml"
    config.write_text(
        'seed = 3\n[data]\nname = "synthetic-regression"\n'
        '[model]\nname = "soft"\nhidden = [8]\n[train]\nepochs = 4\n'
    )
    out = tmp_path / "run"
    assert (
        main(["train", "--config", str(config), "--set", "train.lr=0.02", "--out", str(out)]) == 0
    )
    printed = capsys.readouterr().out
    files = {p.name for p in out.iterdir()}
    assert {
        "config.json",
        "environment.json",
        "metrics.json",
        "history.json",
        "timings.json",
        "model.pt",
        "checkpoint.pt",
    } <= files
    saved = json.loads((out / "config.json").read_text())
    assert saved["seed"] == 3 and saved["train"]["lr"] == 0.02
    assert saved["model"] == {"name": "soft", "hidden": [8]}
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["tasks"]) == 8 and metrics["epochs_run"] == 4
    avg = metrics["average"]["rmse"]
    assert f"{avg:.4f}" in printed
    assert len(json.loads((out / "history.json").read_text())) == 4
