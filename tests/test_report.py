"""The HTML report: readable cell numbers (contrast, font size), the off-diagonal on its
own colour scale with the diagonal hatched, units and caveats shown, every "–" explained,
and the trust figures (ceiling, agreement with its CI, verdicts, top pairs)."""

from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np
import pytest
from report_fixtures import CAVEAT, NAMES, UNITS_GT, UNITS_MTIF, hand_made

from taskrel.pipelines.compare import Comparison
from taskrel.pipelines.report import format_value, render_report
from taskrel.plots import (
    contrast_ratio,
    diverging_rgb,
    hex_colour,
    off_diagonal_limit,
    relatedness_heatmap,
    relative_luminance,
    rgb_of_hex,
    text_colour,
)
from taskrel.relatedness.result import Relatedness


@pytest.fixture(scope="module")
def comparison() -> Comparison:
    return hand_made()


@pytest.fixture(scope="module")
def page(comparison: Comparison) -> str:
    return render_report(comparison, {"taskrel": "0"})


def text_of(page: str) -> str:
    """The page's text as a browser lays it out on one line: inline tags removed, the
    others replaced by a space, entities decoded, whitespace collapsed."""
    inline = re.sub(r"</?(?:sup|span|b|code)\b[^>]*>", "", page)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", inline)).split())


def matrix_cells(page: str, title: str) -> list[list[str]]:
    """The ``<td>`` elements (whole tags with content) of the numbers table of the matrix
    under the heading ``title``, row by row."""
    block = page.split(f"<h3>{title}</h3>", 1)[1]
    table = re.search(r'<table class="matrix">(.*?)</table>', block, re.S)
    assert table is not None
    rows = re.findall(r"<tr>(.*?)</tr>", table.group(1), re.S)[1:]
    return [re.findall(r"<td[^>]*>.*?</td>", r, re.S) for r in rows]


def test_contrast_ratio_matches_wcag_reference_values() -> None:
    black, white = rgb_of_hex("#000000"), rgb_of_hex("#ffffff")
    assert contrast_ratio(black, white) == pytest.approx(21.0)
    assert contrast_ratio(white, white) == pytest.approx(1.0)
    # WCAG's own examples: #767676 is the lightest grey with 4.5:1 on white
    assert contrast_ratio(rgb_of_hex("#767676"), white) == pytest.approx(4.54, abs=0.01)
    assert contrast_ratio(rgb_of_hex("#777777"), white) == pytest.approx(4.48, abs=0.01)
    assert text_colour(rgb_of_hex("#202060")) == "#ffffff"
    assert text_colour(rgb_of_hex("#f0f0b0")) == "#000000"
    worst = min(
        contrast_ratio(bg, rgb_of_hex(text_colour(bg)))
        for bg in diverging_rgb(np.linspace(-1, 1, 401), 1.0)
    )
    assert worst >= 4.5  # any cell colour of the scale has readable text


def test_every_coloured_cell_has_readable_text(comparison: Comparison, page: str) -> None:
    styled = re.findall(r'style="background:(#[0-9a-f]{6});color:(#[0-9a-f]{6})"', page)
    assert len(styled) >= 3 * 11  # three matrices, 12 off-diagonal cells each (one NaN)
    for bg, fg in styled:
        assert contrast_ratio(rgb_of_hex(bg), rgb_of_hex(fg)) >= 4.5, (bg, fg)
    assert {fg for _, fg in styled} == {"#000000", "#ffffff"}  # light and dark cells
    # numbers are never set smaller than the body text
    sizes = re.findall(r"(?:^|\n)(th, td|td|table\.matrix td)\s*\{[^}]*font-size:\s*([^;]+);", page)
    assert ("th, td", "1rem") in sizes
    assert all(size in ("1rem", "1em", "16px") for _, size in sizes)


def test_off_diagonal_has_its_own_scale_and_the_diagonal_is_hatched(
    comparison: Comparison, page: str
) -> None:
    truth = comparison.results["ground-truth"].matrix
    assert np.diag(truth).min() > 100 * np.abs(truth[~np.eye(4, dtype=bool)]).max()
    lim = off_diagonal_limit(truth)
    cells = matrix_cells(page, "ground-truth")
    off = np.where(np.eye(4, dtype=bool), 0.0, truth)
    i, j = np.unravel_index(np.argmax(np.abs(off)), truth.shape)
    # the strongest transfer gets the end colour of the map (dark red: it harms) ...
    end = hex_colour(diverging_rgb(np.sign(truth[i, j]) * 1e9, 1.0))
    assert f"background:{end};color:#ffffff" in cells[i][j]
    # ... where one scale for the whole matrix would give it a near-white
    assert relative_luminance(diverging_rgb(truth[i, j], np.abs(truth).max())) > 0.8
    assert f">{format_value(truth[i, j])}<" in cells[i][j]
    for k in range(4):
        assert cells[k][k] == f'<td class="diag">{format_value(truth[k, k])}</td>'
    fig = relatedness_heatmap(truth, NAMES, "ground-truth")
    image = fig.axes[0].images[0]
    assert image.norm.vmin == -lim and image.norm.vmax == lim
    assert np.array_equal(np.ma.getmaskarray(image.get_array()), np.eye(4, dtype=bool))
    assert sum(p.get_hatch() == "///" for p in fig.axes[0].patches) == 4


def test_units_caveats_and_dashes_are_explained(comparison: Comparison, page: str) -> None:
    text = text_of(page)
    assert f"Units: {UNITS_GT}" in text and f"Units: {UNITS_MTIF}" in text
    assert text.count(CAVEAT) == 2  # in the caveats section and above the matrix
    mtif = matrix_cells(page, "mtif")
    letter = re.search(r'<sup class="fn">(\w+)</sup>', mtif[2][3])
    assert letter is not None and "–" in mtif[2][3]  # the NaN entry
    assert f"–{letter.group(1)}: no value: the method gives no estimate here" in text
    # every footnote letter used in the page is explained in the legend
    used = set(re.findall(r'<sup class="fn">(\w+)</sup>', page))
    explained = set(re.findall(r"<dd>–<sup class='fn'>(\w+)</sup>: ", page))
    assert used == explained and len(used) >= 3
    assert "no known structure" not in text  # the structure is known here
    assert "metric not defined for this task's kind" in text  # accuracy of regression


def test_trust_figures_are_shown(comparison: Comparison, page: str) -> None:
    text = text_of(page)
    t = comparison.trust
    (row,) = comparison.trust_rows()
    shown = (
        f"{format_value(row['agreement'])} [{format_value(row['ci_low'])}, "
        f"{format_value(row['ci_high'])}]"
    )
    assert f"mtif {shown} {format_value(row['ceiling'])} " in text
    assert f"{format_value(row['fraction_of_ceiling'])} {row['verdict']}" in text
    assert row["verdict"] == "agrees beyond the noise"
    assert f"noise ceiling (square root of the reliability): {format_value(t['ceiling_loto'])}" in (
        text
    )
    best = t["top_pairs_loto"]["helpful"][0]
    assert best["source"] == "school-b" and best["target"] == "school-a"
    assert (
        f"school-b → school-a {format_value(best['mean'])} [{format_value(best['ci_low'])}, "
        f"{format_value(best['ci_high'])}] {format_value(best['stderr'])}"
    ) in text
    worst = t["top_pairs_loto"]["harmful"][0]
    assert (worst["source"], worst["target"]) == ("school-b", "school-d")


def test_without_repeats_the_report_says_it_cannot_tell(comparison: Comparison) -> None:
    plain = Comparison(
        comparison.task_names,
        comparison.results,
        metrics=comparison.metrics,
        config=comparison.config,
        reference=comparison.reference,
    )
    text = text_of(render_report(plain))
    assert "no noise ceiling and no confidence interval" in text
    assert "taskrel compare --repeats R" in text
    assert "no known structure: only synthetic data" in text  # its agreement column
    rows = {r["method"]: r for r in plain.agreement_table()}
    assert "–a: time not recorded" in text  # no timings in this comparison
    assert format_value(rows["mtif"]["spearman_diag"]) in text


def test_report_rebuilt_from_the_run_folder_is_identical(
    comparison: Comparison, page: str, tmp_path: Path
) -> None:
    """``taskrel report RUN`` gives the page ``compare`` wrote (JSON files sort keys, so
    nothing may depend on the order of a loaded dict)."""
    comparison.save(tmp_path)
    assert render_report(Comparison.load(tmp_path), {"taskrel": "0"}) == page


def test_diagnostics_of_an_indefinite_newton_step_and_a_large_gradient_are_shown(
    comparison: Comparison,
) -> None:
    """A constructed MTIF result (no caveats recorded: the readings come from the numbers)
    whose model is far from an optimum and whose H - H_j is indefinite for one task: the
    report and the relate command's markdown show both problems, with their numbers."""
    from taskrel.relatedness.diagnostics import to_markdown

    diagnostics = {
        "stationarity": {
            "grad_norm": 0.4,
            "task_grad_scale": 1.6,
            "relative": 0.25,
            "stationary": False,
        },
        "damping": 0.0,
        "positive_definite": True,
        "min_eig": 0.02,
        "max_eig": 2.0,
        "iterations": 37,
        "max_iter_hit": False,
        "newton": {
            "min_eig": [0.01, 0.02, -0.23, 0.015],
            "max_eig": [2.0, 2.0, 1.9, 2.0],
            "positive_definite": [True, True, False, True],
            "damping": [0.0, 0.0, 0.231, 0.0],
            "iterations": [30, 31, 40, 29],
            "held": [0, 0, 1, 0],
        },
    }
    meta = {"diagnostics": diagnostics, "solver_plan": {"requested": "auto", "solver": "cg"}}
    mtif = Relatedness(comparison.results["mtif"].matrix, NAMES, "mtif", meta=meta)
    built = Comparison(NAMES, {"mtif": mtif}, reference="mtif")
    text = text_of(render_report(built))
    section = text.split("Diagnostics", 1)[1].split("Relatedness matrices", 1)[0]
    assert "‖∇J(θ̂)‖ / per-example gradient scale 0.25 (‖∇J‖ = 0.4, scale 1.6) NOT at an " in (
        section
    )
    assert (
        "H − H_j positive definite (Newton step) 3 of 4 tasks NOT positive definite without "
        "school-c (smallest eigenvalue -0.23); damped up to 0.231"
    ) in section
    assert "school-c -0.23 1.9 NO 0.231 40 1" in section  # the per-task row
    assert "iterations of the iterative solver 37 reached its tolerance" in section
    assert section.count("NOT") == 2  # H itself is positive definite here
    markdown = to_markdown({**meta, "caveats": ["one line", "another line"]}, NAMES)
    assert "| 0.25 (‖∇J‖ = 0.4, scale 1.6) | NOT at an optimum" in markdown
    assert "NOT positive definite without school-c" in markdown
    assert markdown.endswith("**Caveats**\n\n- one line\n- another line")
    # a healthy result reads healthy, and methods without diagnostics add no section
    fine = {**diagnostics, "stationarity": {**diagnostics["stationarity"], "stationary": True}}
    fine["newton"] = {**diagnostics["newton"], "positive_definite": [True] * 4}
    assert "NOT" not in to_markdown({**meta, "diagnostics": fine}, NAMES)
    damped = to_markdown({**meta, "diagnostics": {**fine, "damping": 0.2}}, NAMES)
    assert "| damping added to H | 0.2 (0.1 λ_max) | H + damping·I is solved" in damped
    assert "<h2>Diagnostics</h2>" not in render_report(comparison)
    # an ensemble: the first member's rows, and a count over all members
    members = [fine, diagnostics, {**fine, "min_eig": -0.1}]
    ensemble = to_markdown({**meta, "diagnostics": fine, "member_diagnostics": members}, NAMES)
    assert "| ensemble members | 3 | rows above: member 1; 1 of 3 members not at an " in ensemble
    assert "optimum, 1 with H not positive definite |" in ensemble
