"""Task grouping: planted clusters recovered, exhaustive search optimal, local search on
many tasks, and the evaluation by training."""

from __future__ import annotations

import json
from itertools import product
from pathlib import Path

import numpy as np
import pytest

from taskrel.cli import main
from taskrel.data.taskset import TaskSet
from taskrel.errors import ConfigError
from taskrel.execution import ResultCache
from taskrel.pipelines.grouping import evaluate_grouping, group_score, propose_groups
from taskrel.relatedness import RelateContext
from taskrel.relatedness.result import Relatedness
from taskrel.training import TrainConfig, evaluate, fit


def block_matrix(
    sizes: list[int], seed: int, noise: float = 0.3
) -> tuple[np.ndarray, list[list[int]]]:
    """+1 inside planted clusters, -0.5 between them, plus asymmetric noise."""
    labels = np.repeat(np.arange(len(sizes)), sizes)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(labels))  # clusters are not contiguous
    labels = labels[perm]
    m = np.where(labels[:, None] == labels[None, :], 1.0, -0.5)
    m = m + noise * rng.normal(size=m.shape)
    planted = sorted(sorted(np.flatnonzero(labels == k).tolist()) for k in range(len(sizes)))
    return m, planted


def test_planted_clusters_are_recovered() -> None:
    m, planted = block_matrix([3, 4, 2], seed=0)
    exact = propose_groups(m, 3)
    assert exact.search == "exhaustive" and exact.groups == planted
    m, planted = block_matrix([6, 5, 7, 6], seed=1)  # 24 tasks: local search
    local = propose_groups(m, 4)
    assert local.search == "local" and local.groups == planted
    assert local.score == pytest.approx(group_score(m, planted))


def test_exhaustive_search_is_optimal_and_scores_both_directions() -> None:
    rng = np.random.default_rng(5)
    for k in (1, 2, 3, 4):
        m = rng.normal(size=(6, 6))
        best = max(
            group_score(m, [np.flatnonzero(np.array(lab) == g).tolist() for g in range(k)])
            for lab in product(range(k), repeat=6)
            if len(set(lab)) == k
        )
        found = propose_groups(m, k)
        assert found.score == pytest.approx(best) and len(found.groups) == k
        assert propose_groups(m, k, search="local").score == pytest.approx(best)
    m = np.array([[9.0, 2.0, -1.0], [0.5, 9.0, 1.0], [-3.0, 4.0, 9.0]])
    assert group_score(m, [[0, 1], [2]]) == pytest.approx(2.5)  # R[0,1] + R[1,0]
    # pairs {0,1}: 2.5, {1,2}: 5, {0,2}: -4 -> keep 1 and 2 together
    assert propose_groups(m, 2, ["a", "b", "c"]).named() == [["a"], ["b", "c"]]


def test_bad_requests_are_refused() -> None:
    m = np.ones((3, 3))
    with pytest.raises(ConfigError, match="n_groups"):
        propose_groups(m, 4)
    m[0, 1] = np.nan
    with pytest.raises(ConfigError, match="NaN"):
        propose_groups(m, 2)
    m = np.full((3, 3), np.nan)  # a NaN diagonal (e.g. VMTL) is fine
    m[~np.eye(3, dtype=bool)] = 1.0
    assert len(propose_groups(m, 2).groups) == 2


def test_evaluation_trains_each_group_all_tasks_and_stl(
    synthetic_reg: TaskSet, tmp_path: Path
) -> None:
    cfg = TrainConfig(epochs=3, batch_size=8, patience=None)
    ctx = RelateContext(
        model_config={"hidden": [4], "shared_head": True}, train_config=cfg, cache_dir=tmp_path
    )
    proposal = propose_groups(Relatedness(np.eye(4), synthetic_reg.names, "x"), 2)
    result = evaluate_grouping(synthetic_reg, proposal, ctx)
    group = synthetic_reg.select_tasks(proposal.groups[0])
    by_hand = evaluate(fit(group, "hard", ctx.model_config, cfg).model, group)
    for task, metrics in by_hand.items():
        assert result.metrics["groups"][task] == metrics
    stl = fit(synthetic_reg, "stl", {"hidden": [4]}, cfg).model  # shared_head dropped
    assert result.metrics["stl"] == evaluate(stl, synthetic_reg)
    table = result.table()
    assert result.metric == "explained_variance" and set(table) == {*synthetic_reg.names, "average"}
    assert table["average"]["all"] == pytest.approx(
        np.mean([result.metrics["all"][t]["explained_variance"] for t in synthetic_reg.names])
    )
    assert len(ResultCache(tmp_path / "grouping")) == 4  # 2 groups, all, stl
    with pytest.raises(ConfigError, match="other tasks"):
        evaluate_grouping(synthetic_reg.select_tasks([0, 1]), proposal, ctx)


def test_cli_group_from_a_saved_matrix(tmp_path: Path) -> None:
    names = [f"t{i}-{g}" for i, g in enumerate(["c0", "c0", "c1", "c1", "unrelated", "adv-c0"])]
    m, _ = block_matrix([2, 2, 1, 1], seed=3, noise=0.0)
    Relatedness(m, names, "hand").save(tmp_path / "rel.json")
    args = [
        "group",
        "--data",
        "synthetic-regression",
        "--set",
        "data.options.clusters=2",
        "--set",
        "data.options.cluster_size=2",
        "--set",
        "data.options.n_features=4",
        "--set",
        "data.options.n_per_task=30",
        "--groups",
        "4",
        "--relatedness",
        str(tmp_path / "rel.json"),
        "--no-evaluate",
        "--out",
        str(tmp_path / "run"),
    ]
    assert main(args) == 0
    saved = json.loads((tmp_path / "run" / "grouping.json").read_text())
    assert saved["search"] == "exhaustive" and len(saved["groups"]) == 4
    assert sorted(map(sorted, saved["groups"])) == sorted(
        sorted(names[i] for i in g) for g in propose_groups(m, 4).groups
    )
    wrong = ["--set", "data.options.n_unrelated=0"]  # 5 tasks: not the matrix's tasks
    assert main([*args[:-2], *wrong, "--out", str(tmp_path / "bad")]) == 2
