"""Benchmark: MTIF data selection vs all data, random removal and single-task learning.

For each dataset and seed (the seed changes the data split and the training seed):
train the model on all training rows, score every training example with MTIF on the
average **validation** loss over tasks (:func:`taskrel.select_data`'s default: the test
split is never read before the removal set is fixed), remove the examples with a negative
score (at most ``--max-fraction`` of each task), retrain, and compare per-task **test**
metrics with (a) all data, (b) removing as many random examples of each task, (c)
single-task learning. Every dataset is loaded with a validation split (10% of each task),
so nothing is carved. ``--score-split test`` reproduces the optimistic protocol of much of
the influence-selection literature (selected on the test split it reports); its rows are
marked "optimistic (selected on test)".

Reported: the primary metric (accuracy / RMSE) and the test loss averaged over tasks,
mean ± sample std (ddof=1) over seeds, the number of removed examples, the number of seeds
where MTIF beats all data, and per-task means (JSON).

Model: the convex hard-sharing model (``hidden=[]``, ``shared_head=True``, L2 1e-2 shared /
1e-1 heads) trained exactly (``EXACT``: full-batch L-BFGS in float64), so every retraining
reaches the optimum of its data. Datasets: ``synthetic`` (one adversarial task: negative
transfer exists), ``school (20)`` (20 schools, regression) and ``office-caltech`` (4
domains, 10 classes).

    python benchmarks/selection.py --quick --out quick.json     # synthetic, 1 seed, < 60 s
    python benchmarks/selection.py --out full.json
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import numpy as np
from _harness import (
    EXACT,
    cached,
    markdown,
    mean_std,
    parser,
    pm,
    progress,
    run_main,
    setup,
    write_out,
)

from taskrel.pipelines.selection import OPTIMISTIC, SETTINGS, select_data
from taskrel.relatedness import RelateContext
from taskrel.relatedness.ground_truth import load_data
from taskrel.training.trainer import TrainConfig

CONVEX = {"hidden": [], "shared_head": True, "l2": 1e-2, "l2_task": 1e-1}
DATASETS: dict[str, dict[str, Any]] = {
    "synthetic": {
        "name": "synthetic",
        "options": {"n_per_task": 200, "train": 0.3, "val": 0.1},
        "standardize": "task",
        "metric": "accuracy",
        "solver": "explicit",
    },
    "school (20)": {
        "name": "school",
        "options": {"n_tasks": 20, "train": 0.3, "val": 0.1},
        "standardize": "pooled",
        "metric": "rmse",
        "solver": "explicit",
    },
    "office-caltech": {
        "name": "office-caltech",
        "options": {"train": 0.2, "val": 0.1},
        "standardize": "none",
        "metric": "accuracy",
        "solver": "cg",
    },
}


def run(dataset: dict[str, Any], seed: int, max_fraction: float, score_split: str) -> dict:
    """One selection: test metrics of every setting and the removal counts."""
    spec = {k: dataset[k] for k in ("name", "standardize")}
    spec["options"] = {**dataset["options"], "seed": seed}
    ctx = RelateContext(
        model="hard", model_config=CONVEX, train_config=TrainConfig(**EXACT, seed=seed)
    )
    options = {"solver": dataset["solver"], "structured": dataset["solver"] == "explicit"}
    result = select_data(
        load_data(spec),
        ctx,
        max_fraction=max_fraction,
        seed=seed,
        mtif_options=options,
        score_split="test" if score_split == "test" else "val",
    )
    return {
        "metrics": result.metrics,
        "summary": result.summary,
        "n_removed": len(result.removed),
        "n_train": len(result.ids),
        "evaluation": result.caption(),
    }


def aggregate(runs: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """Mean ± sample std over seeds of every setting's metric and loss."""
    out: dict[str, Any] = {
        "n_removed": [r["n_removed"] for r in runs],
        "n_train": runs[0]["n_train"],
        "evaluation": runs[0]["evaluation"],
    }
    for setting in SETTINGS:
        for key in (metric, "loss"):
            values = [r["summary"][setting][key] for r in runs]
            out[f"{setting}_{key}"] = {**mean_std(values), "values": values}
        tasks = runs[0]["metrics"][setting]
        out[f"{setting}_per_task_{metric}"] = {
            t: float(np.mean([r["metrics"][setting][t][metric] for r in runs])) for t in tasks
        }
    sign = -1.0 if metric == "rmse" else 1.0
    out["seeds_mtif_better_than_all"] = sum(
        sign * (r["summary"]["mtif"][metric] - r["summary"]["all"][metric]) > 0 for r in runs
    )
    return out


def main() -> None:
    p = parser(__doc__.split("\n")[0], default_seeds=5)
    p.add_argument("--max-fraction", type=float, default=0.3)
    p.add_argument(
        "--score-split",
        choices=("val", "test"),
        default="val",
        help="val (default) or test: OPTIMISTIC, selects on the split it reports",
    )
    p.add_argument("--datasets", default=None, help="comma-separated dataset keys")
    args = p.parse_args()
    cache = setup(args, "selection")
    names = ["synthetic"] if args.quick else list(DATASETS)
    if args.datasets:
        names = [n.strip() for n in args.datasets.split(",")]
    seeds = [0] if args.quick else list(range(args.seeds))
    start = time.perf_counter()
    results = {}
    with progress("selection benchmark", len(names) * len(seeds), "selections") as report:
        for name in names:
            ds = DATASETS[name]
            runs = []
            for s in seeds:
                key = ["selection", name, ds, s, args.max_fraction, args.score_split, CONVEX]
                one = partial(run, ds, s, args.max_fraction, args.score_split)
                runs.append(cached(cache, key, one))
                report.advance()
            results[name] = aggregate(runs, ds["metric"])
    rows = []
    for name, r in results.items():
        for key in (DATASETS[name]["metric"], "loss"):
            rows.append(
                [name, key, *(pm(r[f"{s}_{key}"], 4) for s in SETTINGS)]
                + [
                    f"{np.mean(r['n_removed']):.0f} / {r['n_train']}",
                    f"{r['seeds_mtif_better_than_all']}/{len(seeds)}",
                ]
            )
    header = ["dataset", "metric", *SETTINGS, "removed / train", "seeds mtif > all"]
    note = OPTIMISTIC if args.score_split == "test" else "selected on validation"
    print(f"test metrics, mean ± std over {len(seeds)} seed(s); {note}\n")
    print(markdown(header, rows))
    write_out(
        args,
        {
            "seeds": seeds,
            "score_split": args.score_split,
            "evaluation": note,
            "model": CONVEX,
            "train": EXACT,
            "results": results,
        },
        started=start,
    )


if __name__ == "__main__":
    run_main(main)
