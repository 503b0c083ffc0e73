"""Reliability, noise ceiling, agreement CIs and verdicts on constructed stacks of
per-repeat matrices (signal + independent noise, where the answers are known)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from taskrel.errors import ConfigError
from taskrel.relatedness.reliability import (
    AGREES,
    DISAGREES,
    NOISE,
    TOO_NOISY,
    Reliability,
    agreement_ci,
    self_agreement,
    spearman_rows,
    split_half_reliability,
    top_pairs,
    trust_summary,
    verdict,
)


def _stack(signal: np.ndarray, noise: float, repeats: int, rng: np.random.Generator) -> np.ndarray:
    return signal + noise * rng.normal(size=(repeats, *signal.shape))


def _gaussian_spearman(rho: float) -> float:
    """Spearman's correlation of a bivariate normal with Pearson correlation ``rho``."""
    return 6.0 / math.pi * math.asin(rho / 2.0)


@pytest.mark.parametrize(("repeats", "noise"), [(4, 1.0), (5, 2.0), (10, 3.0)])
def test_split_half_reliability_recovers_signal_over_signal_plus_noise(
    repeats: int, noise: float
) -> None:
    """Signal variance 1, noise variance n^2 per repeat: the mean of R repeats has
    reliability 1 / (1 + n^2 / R). With Spearman on Gaussian entries, the half-means
    (h = R // 2 repeats) correlate at 6/pi asin(rho_h / 2), rho_h = 1 / (1 + n^2 / h),
    and Spearman-Brown with k = R / h maps that to the estimate's expected value."""
    rng = np.random.default_rng(0)
    t = 40  # 1560 off-diagonal entries
    estimates = [
        split_half_reliability(_stack(rng.normal(size=(t, t)), noise, repeats, rng), seed=k).value
        for k in range(8)
    ]
    h = repeats // 2
    half = _gaussian_spearman(1.0 / (1.0 + noise**2 / h))
    k = repeats / h
    expected_spearman = k * half / (1 + (k - 1) * half)
    assert np.mean(estimates) == pytest.approx(expected_spearman, abs=0.015)
    assert np.mean(estimates) == pytest.approx(1.0 / (1.0 + noise**2 / repeats), abs=0.03)


def test_reliability_ci_covers_the_expected_value() -> None:
    rng = np.random.default_rng(1)
    expected = 1.0 / (1.0 + 4.0 / 6)
    hits = 0
    for k in range(40):
        rel = split_half_reliability(_stack(rng.normal(size=(8, 8)), 2.0, 6, rng), seed=k)
        hits += rel.ci_low <= expected <= rel.ci_high
        assert rel.ceiling == pytest.approx(math.sqrt(max(rel.value, 0.0)))
    assert hits >= 34  # nominal 95% of 40


def test_a_perfect_method_reaches_the_ceiling() -> None:
    """The noise-free signal correlates with the noisy mean at sqrt(reliability): the
    fraction of the ceiling of a perfect method is 1."""
    rng = np.random.default_rng(2)
    t, repeats = 30, 6
    signal = rng.normal(size=(t, t))
    truth = _stack(signal, 1.5, repeats, rng)
    perfect = np.broadcast_to(signal, truth.shape)
    trust = trust_summary(truth, "loto", {"perfect": perfect}, [f"t{i}" for i in range(t)])
    assert trust["fraction_of_ceiling_perfect_vs_loto"] == pytest.approx(1.0, abs=0.04)
    assert trust["ceiling_loto"] == pytest.approx(math.sqrt(trust["reliability_loto"]))
    assert trust["verdict_perfect_vs_loto"] == AGREES
    assert trust["methods"] == ["perfect"] and trust["repeats"] == repeats


def test_agreement_bootstrap_ci_covers_the_true_correlation() -> None:
    """Method and ground truth share a signal at correlation 0.8, each with its own
    per-repeat noise; the CI of the R-repeat agreement covers its expected value (by
    Monte Carlo) in at least 85% of 100 replications (nominal 95%)."""
    rng = np.random.default_rng(3)
    t, repeats = 8, 5
    a = rng.normal(size=(t, t))
    b = 0.8 * a + 0.6 * rng.normal(size=(t, t))

    def draw() -> tuple[np.ndarray, np.ndarray]:
        return _stack(a, 1.0, repeats, rng), _stack(b, 1.0, repeats, rng)

    def stat(m: np.ndarray, g: np.ndarray) -> float:
        mask = ~np.eye(t, dtype=bool)
        return float(spearman_rows(m.mean(0)[mask][None], g.mean(0)[mask][None])[0])

    truth = np.mean([stat(*draw()) for _ in range(2000)])
    covered = 0
    for k in range(100):
        value, low, high = agreement_ci(*draw(), n_boot=300, seed=k)
        assert low <= value <= high
        covered += low <= truth <= high
    assert covered >= 85


def test_agreement_ci_is_exact_for_identical_stacks() -> None:
    rng = np.random.default_rng(4)
    stack = _stack(rng.normal(size=(6, 6)), 0.5, 4, rng)
    value, low, high = agreement_ci(stack, stack)
    assert value == pytest.approx(1.0) and low == pytest.approx(1.0) and high == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("ci", "rel", "expected"),
    [
        ((0.1, 0.5), Reliability(0.8, 0.6, 0.9, 0.67, 6, 100), AGREES),
        ((-0.6, -0.2), Reliability(0.8, 0.6, 0.9, 0.67, 6, 100), DISAGREES),
        ((-0.1, 0.5), Reliability(0.8, 0.6, 0.9, 0.67, 6, 100), NOISE),
        ((0.1, 0.5), Reliability(0.45, 0.2, 0.6, 0.3, 6, 100), TOO_NOISY),  # below 0.5
        ((0.1, 0.5), Reliability(0.6, -0.1, 0.8, 0.4, 6, 100), TOO_NOISY),  # CI reaches 0
        ((0.1, 0.5), Reliability(math.nan, math.nan, math.nan, math.nan, 2, 1), TOO_NOISY),
    ],
)
def test_verdict_rules(ci: tuple[float, float], rel: Reliability, expected: str) -> None:
    assert verdict(ci, rel) == expected


def test_top_pairs_report_means_with_normal_cis() -> None:
    names = ["a", "b", "c"]
    stack = np.zeros((4, 3, 3))
    stack[:, 0, 1] = [1.0, 2.0, 3.0, 4.0]  # b helps a: mean 2.5, se = std / 2
    stack[:, 2, 0] = [-3.0, -3.0, -5.0, -5.0]  # a harms c: mean -4
    pairs = top_pairs(stack, names, k=1)
    best, worst = pairs["helpful"][0], pairs["harmful"][0]
    se = np.std([1.0, 2.0, 3.0, 4.0], ddof=1) / 2.0
    assert (best["target"], best["source"]) == ("a", "b")
    assert best["mean"] == pytest.approx(2.5) and best["stderr"] == pytest.approx(se)
    assert best["ci_low"] == pytest.approx(2.5 - 1.959964 * se, rel=1e-5)
    assert (worst["target"], worst["source"], worst["mean"]) == ("c", "a", -4.0)


def test_self_agreement_is_the_mean_pairwise_spearman() -> None:
    a = np.arange(9.0).reshape(3, 3)
    assert self_agreement(np.stack([a, a, a])) == pytest.approx(1.0)
    assert self_agreement(np.stack([a, -a])) == pytest.approx(-1.0)
    assert self_agreement(np.stack([a, a, -a])) == pytest.approx((1 - 1 - 1) / 3)


def test_fewer_than_two_repeats_cannot_give_a_ceiling() -> None:
    one = np.zeros((1, 3, 3))
    with pytest.raises(ConfigError, match="repeats: .*at least 2 repeats, got 1"):
        split_half_reliability(one)
    with pytest.raises(ConfigError, match="at least 2 repeats"):
        agreement_ci(one, one)
