"""Benchmark: MTIF data selection vs all data, random removal and single-task learning.

For each dataset and seed (the seed changes the data split and the training seed):
train the model on all data, score every training example with MTIF on the average test
loss over tasks, remove the examples with a negative score (at most ``--max-fraction`` of
each task), retrain, and compare per-task test metrics with (a) all data, (b) removing as
many random examples of each task, (c) single-task learning. Reported: the primary metric
(accuracy / RMSE) and the test loss averaged over tasks, mean ± std over seeds, the number
of removed examples, and per-task means.

Model: the convex hard-sharing model (``hidden=[]``, ``shared_head=True``, L2 1e-2 shared
/ 1e-1 heads, L-BFGS in float64), so every retraining reaches the optimum of its data.
Datasets: ``synthetic`` (one adversarial task: negative transfer exists), ``school``
(20 schools, regression) and ``office-caltech`` (4 domains, 10 classes). Note: the scores
are computed on the *test* loss they are then evaluated on (as in the influence-based
selection literature); ``--holdout`` scores on the validation split instead.

    python benchmarks/selection.py --quick --out quick.json
    python benchmarks/selection.py --out full.json
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from taskrel.data.taskset import TaskSet
from taskrel.relatedness import RelateContext
from taskrel.relatedness.ground_truth import load_data
from taskrel.relatedness.influence import NotPositiveDefiniteWarning
from taskrel.selection import SETTINGS, select_data
from taskrel.training.trainer import TrainConfig

CONVEX = {"hidden": [], "shared_head": True, "l2": 1e-2, "l2_task": 1e-1}
TRAIN = TrainConfig(
    optimizer="lbfgs", lr=1.0, epochs=1, lbfgs_max_iter=300, patience=None, dtype="float64"
)
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


def scoring_view(taskset: TaskSet, holdout: bool) -> TaskSet:
    """The task set whose *test* split MTIF scores against: the validation split with
    ``holdout`` (so selection never sees test data), else the test split itself."""
    if not holdout:
        return taskset
    return taskset.with_tasks(
        [replace(t, test_idx=t.val_idx, val_idx=t.val_idx[:0]) for t in taskset.tasks]
    )


def run(
    dataset: dict[str, Any],
    seed: int,
    max_fraction: float,
    holdout: bool,
) -> dict[str, Any]:
    spec = {k: dataset[k] for k in ("name", "standardize")}
    spec["options"] = {**dataset["options"], "seed": seed}
    taskset = load_data(spec)
    ctx = RelateContext(
        model="hard", model_config=CONVEX, train_config=TRAIN.model_copy(update={"seed": seed})
    )
    options = {"solver": dataset["solver"], "structured": dataset["solver"] == "explicit"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotPositiveDefiniteWarning)
        if holdout:  # scores from the validation split, metrics on test
            view = scoring_view(taskset, True)
            result = select_data(
                view, ctx, max_fraction=max_fraction, seed=seed, mtif_options=options
            )
            return _evaluate_on_test(result, taskset, ctx, seed)
        result = select_data(
            taskset, ctx, max_fraction=max_fraction, seed=seed, mtif_options=options
        )
    return {
        "metrics": result.metrics,
        "summary": result.summary,
        "n_removed": len(result.removed),
        "n_train": len(result.ids),
    }


def _evaluate_on_test(
    result: Any,
    taskset: TaskSet,
    ctx: RelateContext,
    seed: int,
) -> dict[str, Any]:
    """Retrain each setting of a holdout-scored selection and evaluate on the test split."""
    from taskrel.relatedness.ground_truth import Retrainer
    from taskrel.selection import stl_config
    from taskrel.training.metrics import summarize

    with Retrainer(taskset, ctx) as rt:
        runs = rt.run(
            [
                {},
                {"drop_ids": result.removed.tolist()},
                {"drop_ids": result.random_removed.tolist()},
            ]
        )
    stl_ctx = replace(ctx, model="stl", model_config=stl_config(ctx.model_config))
    with Retrainer(taskset, stl_ctx) as rt:
        (stl,) = rt.run([{}])
    metrics = dict(zip(SETTINGS, [r["metrics"] for r in (*runs, stl)], strict=True))
    return {
        "metrics": metrics,
        "summary": {s: summarize(m) for s, m in metrics.items()},
        "n_removed": len(result.removed),
        "n_train": len(result.ids),
    }


def aggregate(runs: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "n_removed": [r["n_removed"] for r in runs],
        "n_train": runs[0]["n_train"],
    }
    for setting in SETTINGS:
        for key in (metric, "loss"):
            values = [r["summary"][setting][key] for r in runs]
            out[f"{setting}_{key}"] = {
                "mean": float(np.mean(values)),
                "std": float(np.std(values)),
                "values": values,
            }
        tasks = runs[0]["metrics"][setting]
        out[f"{setting}_per_task_{metric}"] = {
            t: float(np.mean([r["metrics"][setting][t][metric] for r in runs])) for t in tasks
        }
    mtif_better = [r["summary"]["mtif"][metric] > r["summary"]["all"][metric] for r in runs]
    if metric == "rmse":
        mtif_better = [not b for b in mtif_better]
    out["seeds_mtif_better_than_all"] = int(sum(mtif_better))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="synthetic, one seed (<60 s)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--max-fraction", type=float, default=0.3)
    parser.add_argument(
        "--holdout",
        action="store_true",
        help="score on the validation split instead of the test split",
    )
    parser.add_argument("--datasets", default=None, help="comma-separated dataset keys")
    parser.add_argument("--out", type=Path, default=None, help="write every figure as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = ["synthetic"] if args.quick else list(DATASETS)
    if args.datasets:
        names = [n.strip() for n in args.datasets.split(",")]
    seeds = [0] if args.quick else list(range(args.seeds))
    start = time.perf_counter()
    results = {}
    for name in names:
        ds = DATASETS[name]
        runs = [run(ds, s, args.max_fraction, args.holdout) for s in seeds]
        results[name] = aggregate(runs, ds["metric"])
        print(f"{name}: done ({time.perf_counter() - start:.0f} s)", flush=True)
    lines = [
        "| dataset | metric | " + " | ".join(SETTINGS) + " | removed / train | seeds mtif > all |",
        "|---" * (len(SETTINGS) + 4) + "|",
    ]
    for name, r in results.items():
        metric = DATASETS[name]["metric"]
        for key in (metric, "loss"):
            cells = [
                f"{r[f'{s}_{key}']['mean']:.4f} ± {r[f'{s}_{key}']['std']:.4f}" for s in SETTINGS
            ]
            lines.append(
                f"| {name} | {key} | "
                + " | ".join(cells)
                + f" | {np.mean(r['n_removed']):.0f} / {r['n_train']} | "
                + f"{r['seeds_mtif_better_than_all']}/{len(seeds)} |"
            )
    print("\n".join(lines))
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "mode": "quick" if args.quick else "full",
                    "seeds": seeds,
                    "max_fraction": args.max_fraction,
                    "holdout": args.holdout,
                    "model": CONVEX,
                    "wall_time_s": time.perf_counter() - start,
                    "results": results,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
