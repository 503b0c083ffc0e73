"""compare(): agreement table, skipped methods, deterministic run folder, HTML report, and
the relate/compare/report commands."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest

from taskrel.cli import main
from taskrel.data import load
from taskrel.data.taskset import TaskSet
from taskrel.errors import ConfigError, NotApplicableError
from taskrel.pipelines.compare import Comparison, compare
from taskrel.pipelines.report import write_comparison
from taskrel.relatedness import METHODS, RelateContext, agreement
from taskrel.relatedness.result import Relatedness
from taskrel.training import TrainConfig

EXACT = TrainConfig(optimizer="lbfgs", lr=1.0, epochs=2, patience=None, dtype="float64")
LINEAR = {"hidden": [], "shared_head": True, "l2": 1e-2, "l2_task": 1e-1}
ADAM = {"epochs": 5, "batch_size": 16, "patience": None}


def not_for_regression(taskset: TaskSet, ctx: RelateContext) -> Relatedness:
    """A method that does not apply to regression tasks."""
    raise NotApplicableError("needs classification tasks")


@pytest.fixture(scope="module")
def small() -> TaskSet:
    """5 regression tasks: 2 clusters of 2 and an adversary."""
    return load(
        "synthetic-regression",
        clusters=2,
        cluster_size=2,
        n_unrelated=0,
        n_adversarial=1,
        n_per_task=50,
        n_features=5,
        seed=2,
    ).standardize()


@pytest.fixture(scope="module")
def comparison(small: TaskSet) -> Comparison:
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(METHODS, "needs-cls", "test_compare:not_for_regression")
        mp.setitem(METHODS, "missing", "taskrel.not_written_yet:fn")
        return compare(
            small,
            ["gradient", "needs-cls", "affinity", "missing", "ground-truth"],
            RelateContext(model_config=LINEAR, train_config=EXACT),
            {"gradient": {"train_config": ADAM}, "affinity": {"every": 2, "train_config": ADAM}},
        )


def test_agreement_table_scores_each_method_against_retraining_and_structure(
    comparison: Comparison, small: TaskSet
) -> None:
    assert list(comparison.results) == ["gradient", "affinity", "ground-truth"]
    assert comparison.skipped["needs-cls"] == "not applicable: needs classification tasks"
    assert comparison.skipped["missing"].startswith("not available")
    truth = comparison.results["ground-truth"]
    rows = {r["method"]: r for r in comparison.agreement_table()}
    assert rows["ground-truth"]["spearman_off"] == pytest.approx(1.0)
    assert rows["ground-truth"]["time_ratio"] == pytest.approx(1.0)
    for name in ("gradient", "affinity"):
        rel = comparison.results[name]
        assert rows[name]["spearman_off"] == pytest.approx(agreement(rel, truth, "off"))
        assert rows[name]["spearman_diag"] == pytest.approx(agreement(rel, truth, "diag"))
        assert rows[name]["pearson_off"] == pytest.approx(agreement(rel, truth, "off", "pearson"))
        assert rows[name]["structure_spearman_off"] == pytest.approx(
            agreement(rel, small.meta["similarity"], "off")
        )
        assert rows[name]["time_ratio"] == pytest.approx(
            rel.meta["wall_time_s"] / truth.meta["wall_time_s"]
        )
    assert comparison.results["affinity"].meta["every"] == 2
    assert set(comparison.metrics) == set(small.names)
    assert all("explained_variance" in m for m in comparison.metrics.values())
    md = comparison.to_markdown()
    assert "| needs-cls | skipped: not applicable" in md and md.count("\n") == 6


def test_run_folder_round_trips_and_is_deterministic(
    comparison: Comparison, tmp_path: Path
) -> None:
    first = write_comparison(comparison, tmp_path / "a")
    comparison.timings["gradient"]["wall_time_s"] += 1.0  # times vary between runs ...
    write_comparison(comparison, tmp_path / "b")
    for name in (
        "comparison.json",
        "relatedness/gradient.json",
        "relatedness/ground-truth.json",
    ):  # ... result files do not
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    saved = json.loads((tmp_path / "a" / "relatedness" / "gradient.json").read_text())
    assert "wall_time_s" not in saved["meta"]
    loaded = Comparison.load(tmp_path / "a")
    for name, rel in comparison.results.items():
        np.testing.assert_array_equal(loaded.results[name].matrix, rel.matrix)
    assert loaded.skipped == comparison.skipped and loaded.metrics == comparison.metrics
    np.testing.assert_array_equal(loaded.structure, comparison.structure)
    assert [r["spearman_off"] for r in loaded.agreement_table()] == [
        r["spearman_off"] for r in comparison.agreement_table()
    ]
    html = first.read_text()
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    assert len(images) == 4  # three methods and the known structure
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    spearman = comparison.agreement_table()[0]["spearman_off"]
    assert f"{spearman:.3g}" in html and "needs classification tasks" in html
    assert all(t in html for t in comparison.task_names)


def test_unknown_methods_and_options_fail_before_anything_runs(small: TaskSet) -> None:
    with pytest.raises(ConfigError, match="unknown relatedness method"):
        compare(small, ["gradient", "nope"])
    with pytest.raises(ConfigError, match="'gradient'.*bogus"):
        compare(small, ["gradient"], options={"gradient": {"bogus": 1}})
    with pytest.raises(ConfigError, match="not requested"):
        compare(small, ["gradient"], options={"affinity": {"every": 1}})


def test_cli_relate_compare_and_report(tmp_path: Path) -> None:
    common = [
        "--data",
        "synthetic-regression",
        "--set",
        "data.options.n_per_task=40",
        "--set",
        "data.options.n_features=5",
        "--set",
        "model.hidden=[]",
        "--set",
        "model.shared_head=true",
        "--set",
        "train.epochs=2",
        "--set",
        "train.patience=null",
    ]
    assert (
        main(
            [
                "relate",
                "--method",
                "gradient",
                "--option",
                "every=1",
                *common,
                "--out",
                str(tmp_path / "one"),
            ]
        )
        == 0
    )
    one = Relatedness.load(tmp_path / "one" / "relatedness" / "gradient")
    assert one.meta["every"] == 1 and one.matrix.shape == (8, 8)
    assert (tmp_path / "one" / "gradient.png").stat().st_size > 0
    assert (
        main(
            [
                "compare",
                "--methods",
                "gradient,affinity",
                *common,
                "--option",
                "affinity.lr=0.1",
                "--out",
                str(tmp_path / "cmp"),
            ]
        )
        == 0
    )
    report = tmp_path / "cmp" / "report.html"
    before = report.read_text()
    report.unlink()
    assert main(["report", str(tmp_path / "cmp")]) == 0
    assert report.read_text() == before
    assert main(["report", str(tmp_path / "one")]) == 2  # not a comparison folder


def test_compare_over_repeats_scores_the_mean_matrices_against_a_noise_ceiling(
    small: TaskSet, tmp_path: Path
) -> None:
    comparison = compare(
        small,
        ["gradient"],
        RelateContext(model_config=LINEAR, train_config=EXACT),
        {"gradient": {"train_config": ADAM}},
        repeats=2,
        seed=1,
    )
    assert list(comparison.results) == ["gradient", "ground-truth"]  # reference added
    grad, truth = comparison.results["gradient"], comparison.results["ground-truth"]
    assert grad.meta["per_repeat"].shape == truth.meta["per_repeat"].shape == (2, 5, 5)
    np.testing.assert_allclose(grad.matrix, grad.meta["per_repeat"].mean(0))
    assert not np.allclose(grad.meta["per_repeat"][0], grad.meta["per_repeat"][1])
    t = comparison.trust
    assert t["ground_truth"] == "loto" and t["repeats"] == 2 and t["methods"] == ["gradient"]
    assert t["agreement_gradient_vs_loto"] == pytest.approx(agreement(grad, truth))
    assert t["ceiling_loto"] == pytest.approx(np.sqrt(max(t["reliability_loto"], 0.0)))
    assert t["reliability_loto"] == pytest.approx(truth.meta["reliability"])
    low, high = t["agreement_gradient_vs_loto_ci_low"], t["agreement_gradient_vs_loto_ci_high"]
    assert low <= t["agreement_gradient_vs_loto"] <= high
    ceiling = t["ceiling_loto"]  # 0 when the split halves disagree (2 repeats, 20 entries)
    fraction = t["agreement_gradient_vs_loto"] / ceiling if ceiling > 0 else float("nan")
    assert t["fraction_of_ceiling_gradient_vs_loto"] == pytest.approx(fraction, nan_ok=True)
    [row] = comparison.trust_rows()
    assert row["verdict"] == t["verdict_gradient_vs_loto"]
    md = comparison.to_markdown()
    assert "noise ceiling" in md and f"| gradient | {row['agreement']:.3g} [" in md
    assert row["verdict"] in md and "Most helpful pairs of loto" in md
    comparison.save(tmp_path)
    loaded = Comparison.load(tmp_path)
    assert json.dumps(loaded.trust, sort_keys=True) == json.dumps(comparison.trust, sort_keys=True)
    assert loaded.to_markdown() == md
    assert loaded.config["repeats"] == 2 and loaded.config["ground_truth"] == "loto"


def test_ground_truth_choice_and_repeats_are_checked_before_anything_runs(
    small: TaskSet,
) -> None:
    with pytest.raises(ConfigError, match="ground_truth must be one of loto, pairwise, subsets"):
        compare(small, ["gradient"], ground_truth="nope")
    with pytest.raises(ConfigError, match="repeats must be an integer >= 1, got 0"):
        compare(small, ["gradient"], repeats=0)
    with pytest.raises(ConfigError, match="'pairwise': set repeats through compare's repeats"):
        compare(small, ["gradient"], options={"pairwise": {"repeats": 3}}, ground_truth="pairwise")
    assert main(["compare", "--ground-truth", "nope"]) == 2
    assert main(["compare", "--repeats", "0"]) == 2


def test_an_unknown_mtif_option_is_refused_before_any_method_runs(
    synthetic_reg: TaskSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    import taskrel.pipelines.compare as compare_module

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("a method ran before the options were checked")

    monkeypatch.setattr(compare_module, "relate", never)
    with pytest.raises(ConfigError, match="unknown option 'bogus'"):
        compare_module.compare(synthetic_reg, ["gradient", "mtif"], options={"mtif": {"bogus": 1}})
