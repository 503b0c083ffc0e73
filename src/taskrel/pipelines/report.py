"""A self-contained HTML report of a :class:`~taskrel.pipelines.compare.Comparison`: how far the
ground truth can be trusted (noise ceiling, each method's agreement with its confidence
interval and verdict, the most helpful and harmful pairs), the agreement table, every
matrix as a heatmap image (PNG embedded as base64) next to a table of its numbers, units
and caveats, the solver diagnostics of influence methods, per-task metrics of the
trained model, skipped methods, the configuration and the library versions. One file,
no scripts and no external assets, so it can be mailed or attached to an issue.

Reading aids, all explained in the page's legend: the off-diagonal entries of a matrix
(transfer between tasks) are coloured on their own scale, the diagonal (a task's own
data, usually far larger) is hatched and left out of it (:mod:`taskrel.plots`); numbers in
coloured cells are black or white, whichever contrasts more with the cell (WCAG ratio at
least 4.5), at the body's font size; every "–" carries a footnote saying why there is no
value.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import string
from pathlib import Path
from typing import Any

import numpy as np

from taskrel.pipelines.compare import Comparison
from taskrel.plots import (
    DIAGONAL_FACE,
    diverging_rgb,
    hex_colour,
    off_diagonal_limit,
    relatedness_heatmap,
    text_colour,
)
from taskrel.relatedness.diagnostics import NEWTON_HEADER, diagnostic_rows, newton_rows
from taskrel.relatedness.result import Relatedness

REPORT_FILE = "report.html"
DASH = "–"
STRUCTURE = "known structure"

_STYLE = f"""
body {{ font-family: system-ui, sans-serif; font-size: 16px; line-height: 1.45;
  margin: 2em; color: #222; background: #fff; }}
h2 {{ margin-top: 1.6em; }}
table {{ border-collapse: collapse; margin: 0.6em 0; }}
th, td {{ border: 1px solid #bbb; padding: 4px 8px; text-align: right; font-size: 1rem; }}
th:first-child, td:first-child {{ text-align: left; }}
td {{ font-variant-numeric: tabular-nums; }}
.block {{ display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }}
.block figure {{ margin: 0; }}
.block img {{ width: 420px; max-width: 100%; }}
.matrix-numbers {{ overflow-x: auto; max-width: 100%; }}
table.matrix th {{ font-weight: normal; color: #444; }}
table.matrix td {{ min-width: 3.2em; text-align: center; }}
td.diag, span.diag {{ background: repeating-linear-gradient(45deg, {DIAGONAL_FACE} 0 6px,
  #cfcfcf 6px 8px); color: #000; }}
.scale {{ display: flex; align-items: center; gap: 0.5em; margin: 0.4em 0; }}
.scale .bar {{ display: inline-block; width: 16em; height: 1em; border: 1px solid #888; }}
.swatch {{ display: inline-block; width: 2.5em; height: 1em; border: 1px solid #888;
  vertical-align: middle; }}
.units {{ color: #333; }}
.caveats {{ background: #fff4e0; border-left: 4px solid #c77700; padding: 0.3em 0.8em;
  margin: 0.5em 0; }}
table.trust td:last-child, table.trust th:last-child {{ text-align: left; }}
sup.fn {{ font-size: 0.8em; }}
pre {{ background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 0.9em; }}
.note {{ color: #333; max-width: 60em; }}
dl.legend dt {{ font-weight: bold; margin-top: 0.4em; }}
dl.legend dd {{ margin-left: 1.5em; }}
"""

_AGREEMENT_COLUMNS = (
    ("wall_time_s", "wall time (s)"),
    ("time_ratio", "time / ground truth"),
    ("spearman_off", "Spearman vs ground truth, off-diagonal"),
    ("pearson_off", "Pearson vs ground truth, off-diagonal"),
    ("spearman_diag", "Spearman vs ground truth, diagonal"),
    ("structure_spearman_off", "Spearman vs known structure, off-diagonal"),
)


def format_value(value: Any) -> str:
    """How the report writes a number: 3 significant digits (``f"{v:.3g}"``)."""
    return f"{value:.3g}"


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float | np.floating) and not math.isfinite(value))


class _Footnotes:
    """Lettered reasons for "–" cells, listed in the legend."""

    def __init__(self) -> None:
        self.letters: dict[str, str] = {}

    def dash(self, reason: str) -> str:
        """A "–" with the footnote letter of ``reason`` (and the reason as a tooltip)."""
        if reason not in self.letters:
            k = len(self.letters)
            self.letters[reason] = string.ascii_lowercase[k % 26] + (
                str(k // 26) if k >= 26 else ""
            )
        letter = self.letters[reason]
        return f'<span title="{html.escape(reason)}">{DASH}<sup class="fn">{letter}</sup></span>'

    def cell(self, value: Any, reason: str) -> str:
        """``value`` formatted, or a footnoted dash when it is missing (None, NaN)."""
        if _missing(value):
            return self.dash(reason)
        if isinstance(value, float | np.floating):
            return format_value(float(value))
        return html.escape(str(value))

    def items(self) -> list[tuple[str, str]]:
        return [(letter, reason) for reason, letter in self.letters.items()]


def _table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    """An HTML table of already formatted cells (the header is escaped here)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{v}</td>" for v in row) + "</tr>" for row in rows)
    attr = f' class="{cls}"' if cls else ""
    return f"<table{attr}><tr>{head}</tr>{body}</table>"


def _png(fig: Any) -> str:
    """``fig`` as a base64-encoded PNG (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def heatmap_png(rel: Relatedness, title: str) -> str:
    """The heatmap of ``rel`` (:func:`taskrel.plots.relatedness_heatmap`) as a
    base64-encoded PNG."""
    return _png(relatedness_heatmap(rel.matrix, rel.task_names, title))


def matrix_table(rel: Relatedness, notes: _Footnotes) -> str:
    """The numbers of ``rel`` as an HTML table coloured like its heatmap: off-diagonal
    cells on the off-diagonal scale with black or white text, diagonal cells hatched."""
    m, names = rel.matrix, rel.task_names
    lim = off_diagonal_limit(m)
    rows = []
    for i, target in enumerate(names):
        cells = [f"<th>{html.escape(target)}</th>"]
        for j in range(len(names)):
            value = notes.cell(float(m[i, j]), "no value: the method gives no estimate here")
            if i == j:
                cells.append(f'<td class="diag">{value}</td>')
            elif not math.isfinite(m[i, j]):
                cells.append(f"<td>{value}</td>")
            else:
                bg = diverging_rgb(m[i, j], lim)
                cells.append(
                    f'<td style="background:{hex_colour(bg)};color:{text_colour(bg)}">{value}</td>'
                )
        rows.append("<tr>" + "".join(cells) + "</tr>")
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    return (
        f'<div class="matrix-numbers"><table class="matrix"><tr><th>target i \\ source j</th>'
        f"{head}</tr>{''.join(rows)}</table></div>"
    )


def _scale(m: np.ndarray) -> str:
    """The off-diagonal colour bar of ``m`` with its end values, and the diagonal's
    range."""
    lim = off_diagonal_limit(m)
    stops = ", ".join(hex_colour(diverging_rgb(v, lim)) for v in np.linspace(-lim, lim, 11))
    diag = np.diag(m)[np.isfinite(np.diag(m))]
    diag_range = (
        f"{format_value(float(diag.min()))} to {format_value(float(diag.max()))}"
        if diag.size
        else DASH
    )
    return (
        f'<div class="scale">off-diagonal: {format_value(-lim)} '
        f'<span class="bar" style="background:linear-gradient(to right, {stops})"></span> '
        f"{format_value(lim)}; "
        f'<span class="swatch diag"></span> diagonal (hatched, not coloured): {diag_range}</div>'
    )


def _matrix_block(rel: Relatedness, title: str, units: str, notes: _Footnotes) -> str:
    caveats = [str(c) for c in rel.meta.get("caveats", [])]
    caveat_html = (
        "<div class='caveats'><b>Caveats</b><ul>"
        + "".join(f"<li>{html.escape(c)}</li>" for c in caveats)
        + "</ul></div>"
        if caveats
        else ""
    )
    return (
        f"<h3>{html.escape(title)}</h3>"
        f"<p class='units'><b>Units:</b> {html.escape(units)}</p>{caveat_html}"
        f"{_scale(rel.matrix)}"
        "<div class='block'>"
        f'<figure><img alt="heatmap of {html.escape(title)}" src="data:image/png;base64,'
        f'{heatmap_png(rel, title)}"></figure>'
        f"{matrix_table(rel, notes)}</div>"
    )


def _agreement_section(c: Comparison, notes: _Footnotes) -> str:
    ref_done = c.reference in c.results
    undefined = "undefined: a matrix is constant or has missing entries off the diagonal"
    reasons = {
        "wall_time_s": "time not recorded",
        "time_ratio": "time not recorded (for this method or the ground truth)",
        "spearman_off": undefined if ref_done else "no ground truth was computed",
        "pearson_off": undefined if ref_done else "no ground truth was computed",
        "spearman_diag": "undefined: the diagonal is constant in this matrix or in the "
        "ground truth (pairwise retraining: 0 by definition)",
        "structure_spearman_off": "no known structure: only synthetic data record how "
        "similar their generating weights are"
        if c.structure is None
        else undefined,
    }
    rows = [
        [html.escape(r["method"]), *(notes.cell(r[k], reasons[k]) for k, _ in _AGREEMENT_COLUMNS)]
        for r in c.agreement_table()
    ]
    skipped = "".join(
        f"<li><b>{html.escape(m)}</b> skipped: {html.escape(why)}</li>"
        for m, why in c.skipped.items()
    )
    return (
        "<h2>Agreement with the ground truth</h2>"
        + _table(["method", *(label for _, label in _AGREEMENT_COLUMNS)], rows)
        + (f"<ul>{skipped}</ul>" if skipped else "")
    )


def _ci(value: Any, low: Any, high: Any, notes: _Footnotes, reason: str) -> str:
    if _missing(value):
        return notes.dash(reason)
    if _missing(low) or _missing(high):
        return f"{format_value(float(value))} [{notes.dash(reason)}]"
    return f"{format_value(float(value))} [{format_value(float(low))}, {format_value(float(high))}]"


def _trust_section(c: Comparison, notes: _Footnotes) -> str:
    """Reliability, noise ceiling, agreement ± CI, fraction of the ceiling, verdicts and
    top pairs (``c.trust``), or a note that one split cannot say how sure it is."""
    t = c.trust
    if not t:
        return (
            "<h2>How sure</h2><p class='note'>Computed on one split with one training seed: "
            "the ground truth's own noise is unknown, so there is no noise ceiling and no "
            "confidence interval. Run <code>taskrel compare --repeats R</code> with R &ge; 2 "
            "(new split and seed per repeat) to measure them.</p>"
        )
    gt = t["ground_truth"]
    level = f"{100 * t['level']:.0f}%"
    undefined = "undefined: a matrix is constant or has missing entries off the diagonal"
    reliability = _ci(
        t[f"reliability_{gt}"],
        t[f"reliability_{gt}_ci_low"],
        t[f"reliability_{gt}_ci_high"],
        notes,
        undefined,
    )
    ceiling = _ci(
        t[f"ceiling_{gt}"], t[f"ceiling_{gt}_ci_low"], t[f"ceiling_{gt}_ci_high"], notes, undefined
    )
    seed_only = notes.cell(
        t.get(f"seed_only_agreement_{gt}", math.nan),
        "not measured: needs repeats that change only the training seed",
    )
    summary = (
        f"<p class='note'>Ground truth <b>{html.escape(str(gt))}</b> over {t['repeats']} "
        "repeats (a new split and training seed each). Split-half reliability of its mean "
        f"matrix off the diagonal: <b>{reliability}</b>; noise ceiling (square root of the "
        f"reliability): <b>{ceiling}</b>; seed-only self-agreement: {seed_only}. No method "
        "can agree with this noisy ground truth better than the ceiling, so each agreement "
        f"is also given as a fraction of it. Brackets: {level} confidence intervals. A "
        f"ground truth with reliability below {format_value(t['min_reliability'])} is too "
        "noisy to judge methods by.</p>"
    )
    rows = [
        [
            html.escape(r["method"]),
            _ci(r["agreement"], r["ci_low"], r["ci_high"], notes, undefined),
            notes.cell(r["ceiling"], undefined),
            notes.cell(r["fraction_of_ceiling"], "undefined: the noise ceiling is 0"),
            html.escape(str(r["verdict"])),
        ]
        for r in c.trust_rows()
    ]
    table = _table(
        [
            "method",
            f"agreement vs {gt}, off-diagonal Spearman [{level} CI]",
            "noise ceiling",
            "fraction of ceiling",
            "verdict",
        ],
        rows,
        "trust",
    )
    ref = c.results.get(c.reference)
    units = _units(ref) if ref is not None else "as the ground truth"
    pairs = ""
    top = t.get(f"top_pairs_{gt}", {})
    for kind in sorted(top, key=lambda k: (k != "helpful", k != "harmful", k)):  # any saved order
        entries = top[kind]
        pair_rows = [
            [
                f"{html.escape(str(p['source']))} &rarr; {html.escape(str(p['target']))}",
                _ci(p["mean"], p["ci_low"], p["ci_high"], notes, undefined),
                notes.cell(p["stderr"], "undefined: a single repeat"),
            ]
            for p in entries
        ]
        pairs += f"<h3>Most {html.escape(kind)} pairs of the ground truth</h3>" + _table(
            ["source → target", f"mean effect [{level} CI]", "standard error"], pair_rows
        )
    return (
        "<h2>How sure: noise ceiling and verdicts</h2>"
        + summary
        + table
        + pairs
        + (f"<p class='units'><b>Units of the pairs:</b> {html.escape(units)}</p>" if pairs else "")
    )


def _units(rel: Relatedness) -> str:
    return str(rel.meta.get("units") or "not recorded by this method")


def _caveats_section(c: Comparison) -> str:
    found = [
        (name, str(cav)) for name, rel in c.results.items() for cav in rel.meta.get("caveats", [])
    ]
    if not found:
        return "<h2>Caveats</h2><p class='note'>No method recorded a caveat.</p>"
    items = "".join(
        f"<li><b>{html.escape(name)}</b>: {html.escape(cav)}</li>" for name, cav in found
    )
    return f"<h2>Caveats</h2><div class='caveats'><ul>{items}</ul></div>"


def _diagnostics_section(c: Comparison) -> str:
    """Per method with solver diagnostics (MTIF): a table of the numbers, each with its
    reading (:mod:`taskrel.relatedness.diagnostics`), and the Newton step's per-task
    table when it was computed."""
    blocks = []
    for name, rel in c.results.items():
        rows = diagnostic_rows(rel.meta, rel.task_names)
        if not rows:
            continue
        cells = [
            [
                html.escape(r.quantity),
                html.escape(r.value),
                html.escape(r.reading) if r.ok else f"<b>{html.escape(r.reading)}</b>",
            ]
            for r in rows
        ]
        blocks.append(
            f"<h3>{html.escape(name)}</h3>"
            + _table(["quantity", "value", "reading"], cells, "trust")
        )
        newton = newton_rows(rel.meta, rel.task_names)
        if newton:
            escaped = [[html.escape(v) for v in row] for row in newton]
            blocks.append(
                f"<p class='note'>{html.escape(name)}: task-removed Newton step, per task</p>"
                + _table(NEWTON_HEADER, escaped)
            )
    if not blocks:
        return ""
    return (
        "<h2>Diagnostics</h2><p class='note'>How far the influence computation can be "
        "taken at face value: whether the trained model is at an optimum, whether the "
        "Hessian (and, for the Newton step, H − H<sub>j</sub>) is positive definite, the "
        "damping and the solver. Problems are in bold.</p>" + "".join(blocks)
    )


def _legend(notes: _Footnotes) -> str:
    dashes = "".join(
        f"<dd>{DASH}<sup class='fn'>{letter}</sup>: {html.escape(reason)}</dd>"
        for letter, reason in notes.items()
    )
    return (
        "<h2>Legend</h2><dl class='legend'>"
        "<dt>Matrices</dt><dd>Row i is the target task, column j the source; a positive "
        "entry (blue) means task j's training data help task i, a negative one (red) that "
        "they harm it. The colours of the off-diagonal entries (transfer between tasks) "
        "span their own range, given above each matrix.</dd>"
        "<dt><span class='swatch diag'></span> Hatched cells</dt><dd>The diagonal: a task's "
        "own data. It is usually far larger than any transfer and would wash the "
        "off-diagonal colours out, so it is not coloured; its values are printed and its "
        "range is given separately.</dd>"
        f"<dt>{DASH} (no value)</dt>"
        + (dashes or "<dd>No cell of this report lacks a value.</dd>")
        + "</dl>"
    )


def _matrices_section(c: Comparison, notes: _Footnotes) -> str:
    blocks = [
        _matrix_block(rel, name, _units(rel), notes)
        + ("<p class='note'>The ground truth.</p>" if name == c.reference else "")
        for name, rel in c.results.items()
    ]
    if c.structure is not None:
        known = Relatedness(c.structure, c.task_names, STRUCTURE)
        units = "similarity of the generating weights of the synthetic tasks (no unit)"
        blocks.append(_matrix_block(known, STRUCTURE, units, notes))
    return "<h2>Relatedness matrices</h2>" + "".join(blocks)


def _metrics_section(c: Comparison, notes: _Footnotes) -> str:
    names = sorted({k for m in c.metrics.values() for k in m})
    reason = "metric not defined for this task's kind"
    rows = [
        [html.escape(t), *(notes.cell(m.get(k, math.nan), reason) for k in names)]
        for t, m in c.metrics.items()
    ]
    return (
        f"<h2>Per-task test metrics of {html.escape(str(c.config.get('model', '')))} "
        f"trained on all tasks</h2>{_table(['task', *names], rows)}"
    )


def render_report(comparison: Comparison, environment: dict[str, Any] | None = None) -> str:
    """The HTML text of the report (``environment``: versions, as in
    ``environment.json``)."""
    c = comparison
    notes = _Footnotes()  # filled in page order, listed in the legend at the top
    data = html.escape(str(c.config.get("data", "")))
    body = [
        _trust_section(c, notes),
        _agreement_section(c, notes),
        _caveats_section(c),
        _diagnostics_section(c),
        _matrices_section(c, notes),
        _metrics_section(c, notes),
        "<h2>Configuration</h2>",
        f"<pre>{html.escape(json.dumps(c.config, indent=2, sort_keys=True))}</pre>",
        "<h2>Versions</h2>",
        f"<pre>{html.escape(json.dumps(environment or {}, indent=2, sort_keys=True))}</pre>",
    ]
    intro = (
        f"<h1>Task relatedness on {data}</h1>"
        f"<p class='note'>{len(c.task_names)} tasks. Agreement is the rank (Spearman) or "
        "linear (Pearson) correlation with the ground truth "
        f"<b>{html.escape(c.reference)}</b> (retraining), computed separately on the "
        "off-diagonal entries (transfer between tasks) and on the diagonal (a task's own "
        "data). Times are wall-clock seconds on this machine.</p>"
    )
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>taskrel: {data}"
        f"</title><style>{_STYLE}</style></head><body>{intro}{_legend(notes)}"
        f"{''.join(body)}</body></html>"
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
