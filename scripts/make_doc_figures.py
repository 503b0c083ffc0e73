"""Regenerate the heatmaps shown in the guides (docs/img/*.png).

    python scripts/make_doc_figures.py [METHOD ...]

(no argument: every method). Each method runs on the built-in synthetic task set
(seed 0) with its defaults."""

from __future__ import annotations

import sys
from pathlib import Path

import taskrel
from taskrel.relatedness import RelateContext

OUT = Path(__file__).resolve().parents[1] / "docs" / "img"
METHODS = ("ground-truth", "mtif", "gradient", "affinity", "vmtl", "feedback")


def main(methods: list[str]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    tasks = taskrel.load("synthetic").standardize()
    ctx = RelateContext(model="hard", model_config={"hidden": [32]})
    for method in methods or METHODS:
        result = taskrel.relate(tasks, method, ctx)
        result.plot(OUT / f"{method}.png", title=f"{method} on synthetic (R[i, j] > 0: j helps i)")
        print(f"{method}: {result.meta.get('wall_time_s', 0):.1f} s -> {OUT / (method + '.png')}")


if __name__ == "__main__":
    main(sys.argv[1:])
