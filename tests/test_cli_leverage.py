"""``--instance`` on the command line: ``taskrel relate --instance leverage`` saves the
leverage-corrected instance scores the library computes on the same data and seed, and
``taskrel ground-truth --kind loo --instance leverage`` agrees with exact leave-one-out
retraining of a least-squares model (where the per-example Newton step is exact)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from taskrel.cli import main
from taskrel.config import load_run_config
from taskrel.pipelines.experiment import load_taskset
from taskrel.relatedness import RelateContext, Relatedness, relate

SETTINGS = [
    "data.name=synthetic-regression",
    "data.options.n_per_task=30",
    "data.options.n_features=4",
    "data.options.clusters=1",
    "data.options.n_unrelated=1",
    "data.options.n_adversarial=0",
    "data.options.train=0.5",
    "data.options.val=0.0",
    "model.hidden=[]",
    "model.l2=0.01",
    "model.l2_task=0.1",
    "train.optimizer=newton",
    "train.epochs=2",
    "train.patience=null",
    "train.dtype=float64",
    "seed=3",
]


def _args(*items: str) -> list[str]:
    return [part for item in items for part in ("--set", item)]


def test_relate_saves_the_leverage_scores_of_the_library(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(["relate", "--instance", "leverage", *_args(*SETTINGS), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    saved = Relatedness.load(out / "relatedness" / "mtif")
    assert saved.meta["instance"] == "leverage"
    cfg = load_run_config(None, SETTINGS)
    taskset = load_taskset(cfg)
    ctx = RelateContext(
        model=cfg.model_name,
        model_config=cfg.model_options,
        train_config=cfg.train.model_copy(update={"seed": cfg.seed}),
    )
    expected = relate(taskset, "mtif", ctx, instance="leverage")
    first = relate(taskset, "mtif", ctx, instance="first-order")
    assert saved.instance_scores is not None and expected.instance_scores is not None
    assert first.instance_scores is not None
    np.testing.assert_array_equal(saved.instance_ids, expected.instance_ids)
    np.testing.assert_allclose(saved.instance_scores, expected.instance_scores, rtol=1e-8)
    # the flag matters: 20 training rows per task, so leverage is high and the scores differ
    gap = np.abs(saved.instance_scores - first.instance_scores).max()
    assert gap > 1e-2 * np.abs(first.instance_scores).max()
    # the diagnostics are printed with the matrix (a converged convex model: no caveat)
    assert "**Diagnostics**" in printed
    assert "at an optimum (tolerance 0.001)" in printed and "NOT" not in printed


def test_ground_truth_loo_with_leverage_is_exact_for_least_squares(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scores = {}
    for kind in ("leverage", "first-order"):
        out = tmp_path / kind
        args = ["ground-truth", "--kind", "loo", "--examples", "6", "--instance", kind]
        args += ["--option", "weighting=renormalized", *_args(*SETTINGS), "--out", str(out)]
        assert main(args) == 0
        scores[kind] = json.loads((out / "metrics.json").read_text())
        saved = Relatedness.load(out / "relatedness" / "mtif")
        assert saved.meta["instance"] == kind
    capsys.readouterr()
    assert scores["leverage"]["pearson"] > 0.99999  # exact leave-one-out
    assert scores["first-order"]["pearson"] < scores["leverage"]["pearson"] - 1e-4


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["relate", "--instance", "second-order"], ["--instance", "second-order"]),
        (["relate", "--method", "gradient", "--instance", "leverage"], ["mtif only"]),
        (
            ["relate", "--instance", "leverage", "--option", "instance=first-order"],
            ["contradicts"],
        ),
        (["ground-truth", "--kind", "loto", "--instance", "leverage"], ["loo or lds"]),
        (["ground-truth", "--kind", "loo", "--instance", "none"], ["need instance scores"]),
    ],
)
def test_bad_instance_flags_give_one_line(
    args: list[str], words: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*args, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(w in err for w in words), err
    assert not (tmp_path / "run").exists()  # refused before a run folder is made
