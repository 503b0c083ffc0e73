"""Partition search on group-additive objectives: the exact search is the optimum of a
brute-force enumeration, finds a planted partition from hand-made predicted group losses,
and the local search agrees with it on small random cases."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import product

import numpy as np
import pytest

from taskrel.data.taskset import TaskSet
from taskrel.decisions.predictors import GroupOutcomePredictor
from taskrel.decisions.search import (
    MemoCost,
    choose_groups,
    pair_weight_cost,
    predicted_loss_cost,
    search_partition,
)
from taskrel.errors import ConfigError
from taskrel.relatedness import RelateContext


class PlantedPredictor(GroupOutcomePredictor):
    """Hand-made group losses: ``L_i(G) = 1 - 0.3 * (same-cluster partners in G) + 0.2 *
    (other-cluster tasks in G)``; tasks of one cluster help each other, others hurt, so
    the planted clusters are the unique optimum for a free number of groups."""

    name = "planted"

    def __init__(self, clusters: Sequence[int] = ()) -> None:
        super().__init__()
        self.clusters = np.asarray(clusters)
        self.n_tasks = len(clusters)  # fitted by construction
        self.calls: list[int] = []

    def _fit(self, taskset: TaskSet, ctx: RelateContext) -> None:
        pass

    def _subset_losses(self, subsets: list[tuple[int, ...]]) -> np.ndarray:
        self.calls.append(len(subsets))
        out = np.full((len(subsets), len(self.clusters)), np.nan)
        for m, s in enumerate(subsets):
            for i in s:
                same = sum(self.clusters[j] == self.clusters[i] for j in s if j != i)
                out[m, i] = 1.0 - 0.3 * same + 0.2 * (len(s) - 1 - same)
        return out


def brute_force(cost: np.ndarray, t: int, k: int | None, penalty: float = 0.0) -> float:
    """Best objective over every labelling (``cost[mask]`` = group cost of bitmask)."""
    best = np.inf
    for labels in product(range(t), repeat=t):
        used = sorted(set(labels))
        if used != list(range(len(used))) or (k is not None and len(used) != k):
            continue  # each partition once: labels in order of first use
        masks = [sum(1 << i for i in range(t) if labels[i] == g) for g in used]
        best = min(best, sum(cost[m] for m in masks) + penalty * (len(used) - 1))
    return float(best)


def table_cost(cost: np.ndarray):  # noqa: ANN201 - a GroupCost
    def f(groups: Sequence[tuple[int, ...]]) -> np.ndarray:
        return np.array([cost[sum(1 << i for i in g)] for g in groups])

    return f


def test_exhaustive_search_is_the_brute_force_optimum() -> None:
    rng = np.random.default_rng(0)
    t = 5
    for trial in range(3):
        cost = rng.normal(size=1 << t)
        for k, penalty in [(None, 0.0), (None, 0.7), (1, 0.0), (2, 0.0), (3, 0.0), (5, 0.0)]:
            found = search_partition(table_cost(cost), t, k, penalty, search="exhaustive")
            assert found.objective == pytest.approx(brute_force(cost, t, k, penalty)), (trial, k)
            assert k is None or len(found.groups) == k
            assert sorted(x for g in found.groups for x in g) == list(range(t))
            assert found.n_queried == (1 << t) - 1  # every subset once, in one batch


def test_exhaustive_search_finds_the_planted_partition_in_one_batch() -> None:
    clusters = [0, 1, 0, 2, 1, 0, 2, 1]
    planted = [[0, 2, 5], [1, 4, 7], [3, 6]]
    predictor = PlantedPredictor(clusters)
    names = [f"t{i}" for i in range(8)]
    chosen = choose_groups(predictor, names)  # free number of groups, no penalty
    assert chosen.search == "exhaustive" and chosen.groups == planted
    assert predictor.calls[0] == 2**8 - 1  # all subsets asked for in one call
    # planted loss of a task in a cluster of size c: 1 - 0.3 (c - 1)
    expected = np.array([0.4 if c < 2 else 0.7 for c in clusters])
    np.testing.assert_allclose(chosen.predicted, expected)
    assert chosen.score == pytest.approx(expected.sum())
    two = choose_groups(predictor, names, n_groups=2)
    assert len(two.groups) == 2
    assert two.score == pytest.approx(
        min(
            predictor.predict_group_loss(p).sum()
            for p in ([[0, 2, 5, 3, 6], [1, 4, 7]], [[0, 2, 5], [1, 4, 7, 3, 6]])
        )
    )
    # a large penalty per extra group leaves all tasks in one model
    one = choose_groups(predictor, names, penalty=100.0)
    assert one.groups == [list(range(8))]


def test_local_search_agrees_with_exhaustive_on_small_random_cases() -> None:
    for seed in range(8):
        rng = np.random.default_rng(seed)
        t = int(rng.integers(5, 8))
        clusters = rng.integers(0, 3, size=t)
        noise = rng.normal(scale=0.1, size=(t, t))
        pair = np.where(clusters[:, None] == clusters[None, :], 1.0, -0.6) + noise
        predictor = PlantedPredictor(clusters)
        for cost in (pair_weight_cost(pair), predicted_loss_cost(predictor)):
            for k in (None, 2, 3):
                exact = search_partition(cost, t, k, 0.1 if k is None else 0.0, "exhaustive")
                local = search_partition(cost, t, k, 0.1 if k is None else 0.0, "local", seed=seed)
                assert local.search == "local"
                assert local.objective == pytest.approx(exact.objective), (seed, k)


def test_local_search_on_many_tasks_recovers_planted_clusters_within_budget() -> None:
    rng = np.random.default_rng(3)
    clusters = rng.permutation(np.repeat(np.arange(4), 6))  # 24 tasks
    predictor = PlantedPredictor(clusters)
    found = search_partition(predicted_loss_cost(predictor), 24, seed=0)
    assert found.search == "local"
    assert found.groups == sorted(np.flatnonzero(clusters == c).tolist() for c in range(4))
    memo = MemoCost(predicted_loss_cost(predictor))
    start = [list(range(24))]
    capped = search_partition(memo, 24, greedy=False, restarts=0, starts=[start], budget=50)
    assert 50 <= capped.n_queried < 50 + 24 * 26  # stops after the step that crossed it
    assert capped.objective <= memo([range(24)]).sum()  # never worse than its start


def test_memo_cost_asks_each_group_once() -> None:
    asked: list[list[tuple[int, ...]]] = []

    def cost(groups: Sequence[tuple[int, ...]]) -> np.ndarray:
        asked.append(list(groups))
        return np.array([float(sum(g)) for g in groups])

    memo = MemoCost(cost)
    np.testing.assert_array_equal(memo([[2, 0], [1], (0, 2)]), [2.0, 1.0, 2.0])
    np.testing.assert_array_equal(memo([[1], [3]]), [1.0, 3.0])
    assert asked == [[(0, 2), (1,)], [(3,)]] and memo.n_queried == 3


def test_bad_requests_are_refused_on_one_line() -> None:
    cost = pair_weight_cost(np.zeros((3, 3)))
    for k in (0, 4, -1):
        with pytest.raises(ConfigError, match=r"n_groups must lie in \[1, 3\]") as err:
            search_partition(cost, 3, k)
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="penalty"):
        search_partition(cost, 3, None, penalty=-1.0)
    with pytest.raises(ConfigError, match="use search='local'"):
        search_partition(cost, 30, search="exhaustive")
    with pytest.raises(ConfigError, match="search must be"):
        search_partition(cost, 3, 2, search="beam")  # type: ignore[arg-type]

    def broken(groups: Sequence[tuple[int, ...]]) -> np.ndarray:
        return np.full(len(groups), np.nan)

    with pytest.raises(ConfigError, match="not finite"):
        search_partition(broken, 3)
