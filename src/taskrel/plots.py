"""Plots shared by reports and commands (matplotlib, Agg backend, PNG files), and the
colour scale of relatedness matrices, shared by the PNG heatmaps and the HTML report.

Relatedness matrices are drawn with the off-diagonal entries (transfer between tasks) on
their own symmetric diverging scale ``[-lim, lim]``, ``lim`` the largest absolute
off-diagonal value: the diagonal (a task's own data) is usually an order of magnitude
larger and would wash every off-diagonal colour out to white. Diagonal cells are hatched
and not coloured.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

DIVERGING = "RdBu"
"""Colour map of relatedness: red = the source harms the target, blue = it helps."""
DIAGONAL_FACE = "#e6e6e6"
"""Face colour of the hatched diagonal cells."""
BLACK, WHITE = "#000000", "#ffffff"


def off_diagonal_limit(matrix: np.ndarray) -> float:
    """``lim`` of the off-diagonal colour scale of a ``(T, T)`` matrix: the largest finite
    absolute off-diagonal value (1.0 when there is none or it is 0)."""
    m = np.asarray(matrix, dtype=np.float64)
    off = m[~np.eye(len(m), dtype=bool)]
    off = np.abs(off[np.isfinite(off)])
    lim = float(off.max()) if off.size else 0.0
    return lim if lim > 0 else 1.0


def diverging_rgb(values: np.ndarray | float, lim: float) -> np.ndarray:
    """RGB in ``[0, 1]`` (shape ``values.shape + (3,)``) of values on the scale
    ``[-lim, lim]`` of :data:`DIVERGING` (clipped at the ends)."""
    pos = np.clip(np.asarray(values, dtype=np.float64) / (2.0 * lim) + 0.5, 0.0, 1.0)
    return np.asarray(plt.get_cmap(DIVERGING)(pos))[..., :3]


def relative_luminance(rgb: Sequence[float] | np.ndarray) -> float:
    """WCAG 2 relative luminance of an sRGB colour with channels in ``[0, 1]``."""
    c = np.asarray(rgb, dtype=np.float64)[:3]
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return float(lin @ np.array([0.2126, 0.7152, 0.0722]))


def contrast_ratio(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """WCAG 2 contrast ratio of two sRGB colours, from 1 (none) to 21 (black on white)."""
    la, lb = sorted((relative_luminance(a), relative_luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def hex_colour(rgb: Sequence[float] | np.ndarray) -> str:
    """``#rrggbb`` of an sRGB colour with channels in ``[0, 1]``."""
    return "#" + "".join(f"{round(float(v) * 255):02x}" for v in np.asarray(rgb)[:3])


def rgb_of_hex(colour: str) -> np.ndarray:
    """Channels in ``[0, 1]`` of ``#rrggbb``."""
    return np.array([int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)])


def text_colour(background: Sequence[float] | np.ndarray) -> str:
    """Black or white, whichever contrasts more with ``background`` (at least 4.58:1 for
    any background: dark text on light cells, light text on dark ones)."""
    black = contrast_ratio(background, rgb_of_hex(BLACK))
    white = contrast_ratio(background, rgb_of_hex(WHITE))
    return BLACK if black >= white else WHITE


def relatedness_heatmap(matrix: np.ndarray, names: Sequence[str], title: str) -> Any:
    """Heatmap of a ``(T, T)`` relatedness matrix (rows = targets, columns = sources):
    off-diagonal on its own scale (:func:`off_diagonal_limit`), diagonal hatched, NaN
    entries white. Returns the matplotlib Figure (the caller saves and closes it)."""
    m = np.asarray(matrix, dtype=np.float64)
    t = len(names)
    lim = off_diagonal_limit(m)
    shown = np.ma.masked_invalid(np.where(np.eye(t, dtype=bool), np.nan, m))
    cmap = plt.get_cmap(DIVERGING).with_extremes(bad=WHITE)
    size = min(0.45 * t + 2.5, 12.0)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    im = ax.imshow(shown, cmap=cmap, vmin=-lim, vmax=lim)
    for i in range(t):
        ax.add_patch(
            Rectangle(
                (i - 0.5, i - 0.5), 1, 1, facecolor=DIAGONAL_FACE, hatch="///", edgecolor="#888888"
            )
        )
    ticks = list(range(t) if t <= 40 else range(0, t, max(1, t // 20)))
    ax.set_xticks(ticks, [names[i] for i in ticks], rotation=60, ha="right", fontsize=9)
    ax.set_yticks(ticks, [names[i] for i in ticks], fontsize=9)
    ax.set_xlabel("source task j")
    ax.set_ylabel("target task i")
    ax.set_title(title)
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("off-diagonal R[i, j] (diagonal hatched)")
    fig.tight_layout()
    return fig


def metric_bars(
    values: Mapping[str, Mapping[str, float]],
    metric: str,
    path: str | Path,
    title: str | None = None,
) -> Path:
    """Grouped bar chart: one group per task, one bar per model.

    Args:
        values: ``{model: {task: value}}``.
        metric: the metric's name (y-axis label).
        path: PNG file to write.
    """
    models = list(values)
    tasks = list(next(iter(values.values())))
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(tasks) + 2), 4))
    pos = np.arange(len(tasks))
    for k, m in enumerate(models):
        ax.bar(pos + k * width, [values[m][t] for t in tasks], width, label=m)
    ax.set_xticks(pos + width * (len(models) - 1) / 2, tasks, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title(title or f"test {metric} per task")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
