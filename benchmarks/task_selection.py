"""Benchmark: dropping whole source tasks for each target (``taskrel select --drop tasks``),
chosen on one validation split (``--folds 1``) or on cross-fitted folds of the training +
validation rows (``--folds 3``), proved on test (the library default is ``--folds 1``).

For each dataset and seed (the seed changes the data split, the training seed and the fold
assignment) and each choice of folds, :func:`taskrel.pipelines.task_selection.select_tasks`
runs with every task in turn as the target (predictor ``mtif-newton``, the library's default
``hard`` model, training and validated regularisation). Reported per setting: the mean over
targets of the target's test loss (``all``: every task; ``chosen``: the target with the kept
sources; ``random``: as many random sources dropped, median of 5 draws; ``single-task``),
mean ± std over seeds, and the paired difference ``chosen - all`` and ``chosen - random``
per seed with a paired t 95% CI (negative = the choice helps). Example-level removal is
left out (``examples=False``): it does not depend on the folds.

    python benchmarks/task_selection.py --quick --out task-selection-quick.json
    nice -n 10 python benchmarks/task_selection.py --out task-selection.json
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from _harness import cached, markdown, mean_std, parser, pm, run_main, setup, write_out

from taskrel.decisions.evaluate import t_interval
from taskrel.pipelines.task_selection import select_tasks
from taskrel.relatedness import RelateContext
from taskrel.relatedness.ground_truth import load_data

VERSION = 1
SETTINGS = ("all", "chosen", "random", "single-task")
DATASETS: dict[str, dict[str, Any]] = {
    "synthetic": {"name": "synthetic", "options": {}, "standardize": "task"},
    "synthetic-regression": {"name": "synthetic-regression", "options": {}, "standardize": "task"},
}
QUICK = {
    "synthetic (4 tasks)": {
        "name": "synthetic",
        "options": {"clusters": 1, "cluster_size": 2, "n_per_task": 80, "n_features": 8},
        "standardize": "task",
    }
}


def one_run(spec: dict[str, Any], seed: int, folds: int) -> dict[str, Any]:
    """Mean over targets of each setting's test loss, and what was dropped."""
    taskset = load_data({**spec, "options": {**spec["options"], "seed": seed}})
    start = time.perf_counter()
    result = select_tasks(
        taskset, RelateContext(model="hard"), n_random=5, examples=False, seed=seed, folds=folds
    )
    losses = {
        s: float(np.mean([c.metrics[s]["loss"] for c in result.targets.values()])) for s in SETTINGS
    }
    return {
        "mean_test_loss": losses,
        "dropped": {t: c.dropped for t, c in result.targets.items()},
        "seconds": time.perf_counter() - start,
    }


def summarise(runs: dict[int, list[dict[str, Any]]]) -> list[list[Any]]:
    """Table rows: per choice of folds, each setting's mean ± std over seeds, then the
    paired differences of ``chosen``."""
    rows = []
    for folds, per_seed in runs.items():
        loss = {s: [r["mean_test_loss"][s] for r in per_seed] for s in SETTINGS}
        diff = {
            ref: t_interval(np.subtract(loss["chosen"], loss[ref])) for ref in ("all", "random")
        }
        rows.append(
            [folds, *(pm(mean_std(loss[s]), 4) for s in SETTINGS)]
            + [f"{d['mean']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]" for d in diff.values()]
            + [f"{np.mean([r['seconds'] for r in per_seed]):.0f}"]
        )
    return rows


def main() -> None:
    p = parser(__doc__.split("\n")[0], default_seeds=5)
    p.add_argument("--folds", default="1,3", help="comma-separated choices of folds to compare")
    args = p.parse_args()
    cache = setup(args, "task-selection")
    if args.quick:
        args.seeds, args.folds = 2, "1,3"
    datasets = QUICK if args.quick else DATASETS
    choices = [int(f) for f in args.folds.split(",")]
    start = time.perf_counter()
    figures: dict[str, Any] = {}
    for name, spec in datasets.items():
        runs = {
            folds: [
                cached(
                    cache,
                    ["task-selection", VERSION, spec, seed, folds],
                    lambda spec=spec, seed=seed, folds=folds: one_run(spec, seed, folds),
                )
                for seed in range(args.seeds)
            ]
            for folds in choices
        }
        figures[name] = {str(k): v for k, v in runs.items()}
        header = ["folds", *(f"{s} (test loss)" for s in SETTINGS)]
        header += ["chosen - all [95% CI]", "chosen - random [95% CI]", "seconds / run"]
        print(f"**{name}** ({args.seeds} seeds; mean over targets)\n")
        print(markdown(header, summarise(runs)) + "\n", flush=True)
        write_out(args, {"datasets": figures}, start)
    print(f"wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    run_main(main)
