"""The HTML report rendered by a real headless browser (chromium, installed by
``.ci/run``): every image loads, nothing is logged to the console, the key numbers are in
the page text as laid out, and the numbers in the matrix cells are as large as the body
text with readable contrast in the computed styles.

A copy of the report gets a small probe script at the top of its ``<head>``: it records
``console.error`` calls and error events (a broken image, a script error), and on
``load`` writes the images' natural widths, the page's text, the body's and every matrix
cell's computed font size and colours into a ``<pre>`` that ``--dump-dom`` prints. The
test is skipped, with that notice, only when no browser can be found."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from report_fixtures import CAVEAT, UNITS_GT, hand_made

from taskrel.pipelines.report import format_value, write_report
from taskrel.plots import contrast_ratio

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")

PROBE = """<script>
(function () {
  var errors = [];
  var original = console.error;
  console.error = function () {
    errors.push(Array.prototype.join.call(arguments, " "));
    original.apply(console, arguments);
  };
  window.addEventListener("error", function (e) {
    var t = e.target || {};
    errors.push("error event: " + (e.message || t.src || t.tagName || "unknown"));
  }, true);
  window.addEventListener("load", function () {
    var px = function (el) { return parseFloat(getComputedStyle(el).fontSize); };
    var cells = Array.prototype.map.call(
      document.querySelectorAll("table.matrix td"), function (td) {
        var s = getComputedStyle(td);
        return {font: px(td), color: s.color, background: s.backgroundColor,
                diagonal: td.classList.contains("diag")};
      });
    var out = document.createElement("pre");
    out.id = "taskrel-probe";
    out.textContent = JSON.stringify({
      images: Array.prototype.map.call(document.images, function (i) {
        return {complete: i.complete, width: i.naturalWidth};
      }),
      errors: errors,
      body_font: px(document.body),
      cells: cells,
      text: document.body.innerText
    });
    document.body.appendChild(out);
  });
})();
</script>"""


def find_browser() -> str | None:
    """A chromium-family browser: ``$TASKREL_BROWSER`` or the first on the PATH."""
    for name in (os.environ.get("TASKREL_BROWSER"), *BROWSERS):
        path = shutil.which(name) if name else None
        if path:
            return path
    return None


def rgb(css: str) -> tuple[float, float, float]:
    """Channels in [0, 1] of a computed ``rgb(r, g, b)`` colour."""
    r, g, b = (int(v) / 255 for v in re.findall(r"\d+", css)[:3])
    return r, g, b


def test_report_renders_in_a_headless_browser(tmp_path: Path) -> None:
    browser = find_browser()
    if browser is None:
        pytest.skip(
            "no headless browser found (chromium; .ci/run installs it with apt-get): the "
            "HTML report was not rendered"
        )
    comparison = hand_made()
    report = write_report(comparison, tmp_path).read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(report.replace("<head>", "<head>" + PROBE, 1))
    run = subprocess.run(
        [
            browser,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",  # CI runs as root
            "--no-first-run",
            "--disable-dev-shm-usage",  # containers often have a small /dev/shm
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=10000",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    found = re.search(r'<pre id="taskrel-probe">(.*?)</pre>', run.stdout, re.S)
    assert found, f"the browser printed no probe result (exit {run.returncode}): {run.stderr}"
    probe_out = json.loads(html.unescape(found.group(1)))

    images = probe_out["images"]
    assert len(images) == len(comparison.results) + 1  # each method and the structure
    assert all(i["complete"] and i["width"] > 0 for i in images), images
    assert probe_out["errors"] == []
    console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
    assert console == []  # the page itself logs nothing

    text = probe_out["text"]
    (row,) = comparison.trust_rows()
    agreement = (
        f"{format_value(row['agreement'])} [{format_value(row['ci_low'])}, "
        f"{format_value(row['ci_high'])}]"
    )
    truth = comparison.results["ground-truth"].matrix
    structure_agreement = comparison.agreement_table()[1]["structure_spearman_off"]
    for key in (
        agreement,
        row["verdict"],
        format_value(structure_agreement),
        format_value(truth[0, 1]),  # a matrix entry
        format_value(truth[2, 2]),  # a diagonal one
        UNITS_GT,
        CAVEAT,
        "–a: ",  # the legend of the dashes
    ):
        assert key in text, key

    cells = probe_out["cells"]
    assert len(cells) == 3 * 16  # two methods and the structure, 4 x 4 each
    body = probe_out["body_font"]
    assert body >= 12 and all(c["font"] >= body for c in cells)
    coloured = [c for c in cells if not c["diagonal"] and "rgba(0, 0, 0, 0)" not in c["background"]]
    assert len(coloured) == 3 * 12 - 1  # one missing entry is left white
    for c in coloured:
        assert contrast_ratio(rgb(c["background"]), rgb(c["color"])) >= 4.5, c
