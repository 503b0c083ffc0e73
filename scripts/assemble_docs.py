"""Assemble docs/methods.md and docs/benchmarks.md from their per-method parts.

    python scripts/assemble_docs.py

Parts live in docs/methods/*.md and docs/bench/*.md (one file per method, each written
next to its code); headings are demoted one level under a page title."""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"
ORDER = (
    "mtif",
    "vmtl",
    "feedback",
    "baselines",
    "ground-truth",
    "relatedness",
    "trust",
    "defaults",
    "grouping",
)
PAGES = {
    "methods.md": (
        "methods",
        "# Methods\n\nThe mathematics of every method, in our words. "
        "Sign convention everywhere: `R[i, j] > 0` means source task j helps "
        "target task i.\n",
    ),
    "benchmarks.md": (
        "bench",
        "# Benchmarks\n\nMeasured on the development machine (2 CPU "
        "cores, no GPU) unless a section says otherwise. Every table names the "
        "command that produced it; model selection always uses a validation "
        "split carved from the training data, never the test split.\n",
    ),
}


LINK = re.compile(r"\]\(([^)#:\s]+)(#[^)]*)?\)")
"""A markdown link target without a scheme: relative to the part's own folder."""


def _demote(text: str) -> str:
    return "\n".join("#" + line if line.startswith("#") else line for line in text.splitlines())


def _rebase(text: str, folder: str) -> str:
    """Relative link targets of a part in ``docs/folder`` rewritten relative to ``docs``
    (the assembled page's folder), e.g. ``x.json`` -> ``bench/x.json``."""

    def fix(match: re.Match[str]) -> str:
        target = posixpath.normpath(posixpath.join(folder, match.group(1)))
        return f"]({target}{match.group(2) or ''})"

    return LINK.sub(fix, text)


def main() -> None:
    for page, (folder, header) in PAGES.items():
        parts = sorted(
            (DOCS / folder).glob("*.md"),
            key=lambda p: (ORDER.index(p.stem) if p.stem in ORDER else 99, p.stem),
        )
        body = "\n\n".join(_rebase(_demote(p.read_text().strip()), folder) for p in parts)
        (DOCS / page).write_text(f"{header}\n{body}\n")
        print(f"{page}: {len(parts)} parts")


if __name__ == "__main__":
    main()
