"""A self-contained HTML report of a :class:`~taskrel.compare.Comparison`: heatmaps side
by side (PNG embedded as base64), the agreement table, per-task metrics of the trained
model, skipped methods, the configuration and the library versions. One file, no
external assets, so it can be mailed or attached to an issue."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

from taskrel.compare import Comparison
from taskrel.relatedness.result import Relatedness

REPORT_FILE = "report.html"

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; }
.grid figure { margin: 0; width: 420px; }
.grid img { width: 100%; }
figcaption { font-size: 0.9em; text-align: center; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 0.85em; }
.note { color: #555; font-size: 0.9em; max-width: 60em; }
"""

_AGREEMENT_COLUMNS = (
    ("wall_time_s", "wall time (s)"),
    ("time_ratio", "time / ground truth"),
    ("spearman_off", "Spearman vs ground truth, off-diagonal"),
    ("pearson_off", "Pearson vs ground truth, off-diagonal"),
    ("spearman_diag", "Spearman vs ground truth, diagonal"),
    ("structure_spearman_off", "Spearman vs known structure, off-diagonal"),
)


def heatmap_png(rel: Relatedness, title: str) -> str:
    """The heatmap of ``rel`` as a base64-encoded PNG."""
    import matplotlib.pyplot as plt

    fig = rel.plot(title=title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _number(value: Any) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "–"
    return f"{value:.3g}" if isinstance(value, float) else html.escape(str(value))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{_number(v)}</td>" for v in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def render_report(comparison: Comparison, environment: dict[str, Any] | None = None) -> str:
    """The HTML text of the report (``environment``: versions, as in
    ``environment.json``)."""
    c = comparison
    data = html.escape(str(c.config.get("data", "")))
    figures = [(rel, f"{name}: R[i, j] > 0 means j helps i") for name, rel in c.results.items()]
    if c.structure is not None:
        figures.append(
            (
                Relatedness(c.structure, c.task_names, "known structure"),
                "known structure: similarity of the generating weights",
            )
        )
    grid = "".join(
        f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,'
        f'{heatmap_png(rel, title)}"><figcaption>{html.escape(title)}</figcaption></figure>'
        for rel, title in figures
    )
    rows = [[r["method"], *(r[k] for k, _ in _AGREEMENT_COLUMNS)] for r in c.agreement_table()]
    agreement = _table(["method", *(label for _, label in _AGREEMENT_COLUMNS)], rows)
    skipped = "".join(
        f"<li><b>{html.escape(m)}</b>: {html.escape(why)}</li>" for m, why in c.skipped.items()
    )
    metric_names = sorted({k for m in c.metrics.values() for k in m})
    metrics = _table(
        ["task", *metric_names],
        [[t, *(m.get(k, math.nan) for k in metric_names)] for t, m in c.metrics.items()],
    )
    sections = [
        f"<h1>Task relatedness on {data}</h1>",
        f"<p class='note'>{len(c.task_names)} tasks. Every matrix is read the same way: "
        "row i is the target task, column j the source; a positive entry means task j's "
        "training data help task i. Agreement is the rank (Spearman) or linear (Pearson) "
        f"correlation with the reference <b>{html.escape(c.reference)}</b> (retraining "
        "without each task), computed separately on the off-diagonal entries (transfer "
        "between tasks) and on the diagonal (a task's own data). Times are wall-clock "
        "seconds on this machine.</p>",
        "<h2>Agreement</h2>",
        agreement,
        f"<ul>{skipped}</ul>" if skipped else "",
        "<h2>Relatedness matrices</h2>",
        f"<div class='grid'>{grid}</div>",
        f"<h2>Per-task test metrics of {html.escape(str(c.config.get('model', '')))} "
        "trained on all tasks</h2>",
        metrics,
        "<h2>Configuration</h2>",
        f"<pre>{html.escape(json.dumps(c.config, indent=2, sort_keys=True))}</pre>",
        "<h2>Versions</h2>",
        f"<pre>{html.escape(json.dumps(environment or {}, indent=2, sort_keys=True))}</pre>",
    ]
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>taskrel: {data}"
        f"</title><style>{_STYLE}</style></head><body>{''.join(sections)}</body></html>"
    )


def write_comparison(comparison: Comparison, run_dir: str | Path) -> Path:
    """Save ``comparison`` into ``run_dir`` (:meth:`Comparison.save`) and write its
    report; returns the report's path."""
    comparison.save(run_dir)
    return write_report(comparison, run_dir)


def write_report(comparison: Comparison, run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` (versions from ``run_dir/environment.json`` when
    present); returns its path."""
    run_dir = Path(run_dir)
    env_file = run_dir / "environment.json"
    environment = json.loads(env_file.read_text()) if env_file.is_file() else None
    out = run_dir / REPORT_FILE
    out.write_text(render_report(comparison, environment))
    return out
