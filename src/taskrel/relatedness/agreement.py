"""Agreement between relatedness matrices (and with a known structure).

``part`` selects which entries are compared: ``off`` (i != j, the cross-task transfer),
``diag`` (i == j) or ``all``. Correlations are computed on the flattened entries."""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import stats

from taskrel.relatedness.result import Relatedness

Part = Literal["off", "diag", "all"]
Correlation = Literal["spearman", "pearson"]


def _entries(m: np.ndarray, part: Part) -> np.ndarray:
    n = m.shape[0]
    if part == "off":
        return m[~np.eye(n, dtype=bool)]
    if part == "diag":
        return np.diag(m).copy()
    if part == "all":
        return m.ravel()
    raise ValueError(f"part must be 'off', 'diag' or 'all', got {part!r}")


def _matrix(x: Relatedness | np.ndarray) -> np.ndarray:
    return x.matrix if isinstance(x, Relatedness) else np.asarray(x, dtype=np.float64)


def correlate(a: np.ndarray, b: np.ndarray, method: Correlation = "spearman") -> float:
    """Spearman or Pearson correlation of two equally long vectors (NaN if either is
    constant)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    fn = stats.spearmanr if method == "spearman" else stats.pearsonr
    return float(fn(a, b)[0])


def agreement(
    a: Relatedness | np.ndarray,
    b: Relatedness | np.ndarray,
    part: Part = "off",
    method: Correlation = "spearman",
) -> float:
    """Correlation between the ``part`` entries of two ``(T, T)`` matrices."""
    ma, mb = _matrix(a), _matrix(b)
    if ma.shape != mb.shape:
        raise ValueError(f"matrices differ in shape: {ma.shape} vs {mb.shape}")
    return correlate(_entries(ma, part), _entries(mb, part), method)


def row_agreement(
    a: Relatedness | np.ndarray, b: Relatedness | np.ndarray, method: Correlation = "spearman"
) -> np.ndarray:
    """Per target task i: correlation of row i of both matrices over sources j != i,
    shape ``(T,)``."""
    ma, mb = _matrix(a), _matrix(b)
    n = ma.shape[0]
    out = np.empty(n)
    for i in range(n):
        keep = np.arange(n) != i
        out[i] = correlate(ma[i, keep], mb[i, keep], method)
    return out
