"""Plots shared by reports and commands (matplotlib, Agg backend, PNG files)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


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
