"""Benchmark: MTIF against actual retraining, and what it saves in time.

For each case (dataset x model) and seed: train the model, compute MTIF (task level
first-order and task-removed Newton; instance level), then retrain for ground truth:

- LOTO (T + 1 trainings): Spearman/Pearson of MTIF vs actual over the off-diagonal
  (i != j) and the diagonal (i == j) entries separately;
- LOO for ``--loo`` sampled training examples: Pearson/Spearman of instance scores vs the
  actual change of every task's test loss (scores with ``fixed`` weights, the paper's
  convention, and ``renormalized`` weights, which model what dropping an example does);
- LDS over ``--subsets`` random 50% subsets (per task): per-task Spearman between the
  summed scores of the removed examples and the retrained test loss, averaged over tasks;
- time ratio: T LOTO retrainings / MTIF task-level time (Hessian + solve + matrix), and
  LOO retraining per example x N / MTIF instance time. Both measured in this process;
  MTIF times are steady state: the one-off ``torch.func`` warm-up of the first call in a
  process (scripted decompositions, ~0.5 s) is reported apart as ``mtif_first_call_s``.

Convex model: hard sharing with ``hidden=[]``, ``shared_head=True``, L2 1e-2 (shared) and
1e-1 (heads), L-BFGS to convergence in float64. MLP: hard sharing, one hidden layer,
L-BFGS in float64 too (deterministic, so retraining differs only by the data); its
retrainings start from the trained model (warm start: the nearby local optimum, which is
what influence functions predict), and one case repeats it with cold-start retraining. Everything
runs single-threaded in one process; other jobs on the machine make absolute times noisy,
ratios less so.

    python benchmarks/mtif_accuracy.py --quick --out quick.json
    python benchmarks/mtif_accuracy.py --out full.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from taskrel.notices import collect
from taskrel.relatedness import RelateContext
from taskrel.relatedness.agreement import Correlation, agreement, correlate
from taskrel.relatedness.ground_truth import (
    linear_datamodeling_score,
    load_data,
    loo_effects,
    loto_relatedness,
    random_subsets,
    sample_train_ids,
    subset_losses,
    train_model,
)
from taskrel.relatedness.mtif import MTIF
from taskrel.training.trainer import TrainConfig

CONVEX = {"hidden": [], "shared_head": True, "l2": 1e-2, "l2_task": 1e-1}
MLP = {"hidden": [16], "activation": "tanh", "l2": 1e-2, "l2_task": 1e-2}
LBFGS = {
    "optimizer": "lbfgs",
    "lr": 1.0,
    "epochs": 1,
    "lbfgs_max_iter": 300,
    "patience": None,
    "dtype": "float64",
}
CORRELATIONS: tuple[Correlation, ...] = ("spearman", "pearson")
SYN = {"n_per_task": 200, "train": 0.3, "val": 0.0}


@dataclass(frozen=True)
class Case:
    """One dataset x model configuration."""

    data: str
    options: dict[str, Any]
    model: dict[str, Any]
    standardize: str = "task"
    solver: str = "explicit"
    loo: int | None = None  # overrides --loo
    subsets: int | None = None  # overrides --subsets
    seeds: int | None = None  # at most this many seeds (expensive cases)
    warm_start: bool = False  # retrain from the trained model (non-convex models)
    train: dict[str, Any] = field(default_factory=lambda: dict(LBFGS))

    def spec(self, seed: int) -> dict[str, Any]:
        return {
            "name": self.data,
            "options": {**self.options, "seed": seed},
            "standardize": self.standardize,
        }


CASES: dict[str, Case] = {
    "synthetic-regression / convex": Case("synthetic-regression", SYN, CONVEX),
    "synthetic / convex": Case("synthetic", SYN, CONVEX),
    "school (20) / convex": Case("school", {"n_tasks": 20, "train": 0.3}, CONVEX, "pooled"),
    "office-caltech / convex": Case(
        "office-caltech", {"train": 0.1}, CONVEX, "none", solver="cg", loo=12, subsets=20, seeds=1
    ),
    "synthetic-regression / mlp": Case(
        "synthetic-regression", SYN, MLP, loo=12, subsets=20, seeds=1, warm_start=True
    ),
    "synthetic / mlp": Case("synthetic", SYN, MLP, loo=12, subsets=20, seeds=1, warm_start=True),
    "synthetic / mlp (cold retrain)": Case("synthetic", SYN, MLP, loo=12, subsets=20, seeds=1),
}
QUICK = ("synthetic / convex",)


def run_case(case: Case, seed: int, n_loo: int, n_subsets: int) -> dict[str, float]:
    """Every figure of one case and seed (see module docstring)."""
    taskset = load_data(case.spec(seed))
    train_cfg = TrainConfig(**{**case.train, "seed": seed})
    ctx = RelateContext(model="hard", model_config=case.model, train_config=train_cfg)
    n_tasks = len(taskset)
    out: dict[str, float] = {"tasks": n_tasks, "train_examples": len(taskset.train_ids())}

    start = time.perf_counter()
    model = train_model(taskset, "hard", case.model, train_cfg)
    out["train_s"] = time.perf_counter() - start
    with collect() as caught:
        start = time.perf_counter()
        MTIF(model, taskset, solver=case.solver).task_matrix()  # torch.func warm-up
        out["mtif_first_call_s"] = time.perf_counter() - start
        engine = MTIF(model, taskset, solver=case.solver)
        start = time.perf_counter()
        first = engine.task_matrix()
        out["mtif_task_s"] = time.perf_counter() - start
        start = time.perf_counter()
        newton = engine.newton_task_matrix()
        out["mtif_newton_s"] = time.perf_counter() - start
        start = time.perf_counter()
        fixed, ids = engine.instance_scores("fixed")
        out["mtif_instance_s"] = time.perf_counter() - start
        renorm, _ = engine.instance_scores("renormalized")
    out["hessian_positive_definite"] = float(not any("positive definite" in c for c in caught))
    out["damping"] = engine.report.damping
    out["n_params"] = engine.fns.space.numel

    start = time.perf_counter()
    warm = model if case.warm_start else False
    loto = loto_relatedness(taskset, ctx, warm_start=warm).matrix
    loto_s = time.perf_counter() - start
    out["retrain_s_per_model"] = loto_s / (n_tasks + 1)
    out["speedup_task_level"] = n_tasks * out["retrain_s_per_model"] / out["mtif_task_s"]
    out["speedup_task_level_newton"] = (
        n_tasks * out["retrain_s_per_model"] / (out["mtif_task_s"] + out["mtif_newton_s"])
    )
    for name, pred in (("first_order", first), ("newton", newton)):
        for part in ("off", "diag"):
            for method in CORRELATIONS:
                out[f"loto_{name}_{part}_{method}"] = agreement(pred, loto, part, method)

    if n_loo:
        loo_ids = sample_train_ids(taskset, n_loo, seed)
        actual = loo_effects(taskset, ctx, loo_ids, warm_start=warm).ravel()
        index = {tuple(i): n for n, i in enumerate(ids.tolist())}
        rows = [index[tuple(i)] for i in loo_ids.tolist()]
        for name, scores in (("fixed", fixed), ("renormalized", renorm)):
            for method in CORRELATIONS:
                out[f"loo_{name}_{method}"] = correlate(scores[rows].ravel(), actual, method)
        out["loo_slope_renormalized"] = float(
            renorm[rows].ravel() @ actual / (renorm[rows].ravel() @ renorm[rows].ravel())
        )
        out["speedup_instance_level"] = (
            len(ids) * out["retrain_s_per_model"] / (out["mtif_task_s"] + out["mtif_instance_s"])
        )
    if n_subsets:
        removed = random_subsets(taskset, n_subsets, 0.5, seed)
        losses = subset_losses(taskset, ctx, removed, warm_start=warm)
        out["lds_mean"] = float(np.nanmean(linear_datamodeling_score(fixed, ids, removed, losses)))
    return out


def summarize(values: list[dict[str, float]]) -> dict[str, dict[str, Any]]:
    keys = [k for k in values[0] if all(k in v for v in values)]
    return {
        k: {
            "mean": float(np.nanmean([v[k] for v in values])),
            "std": float(np.nanstd([v[k] for v in values])),
            "values": [v[k] for v in values],
        }
        for k in keys
    }


COLUMNS = (
    ("params", "n_params", 0),
    ("LOTO off ρ (1st)", "loto_first_order_off_spearman", 3),
    ("LOTO diag ρ (1st)", "loto_first_order_diag_spearman", 3),
    ("LOTO off ρ (Newton)", "loto_newton_off_spearman", 3),
    ("LOTO diag ρ (Newton)", "loto_newton_diag_spearman", 3),
    ("LOO r (fixed)", "loo_fixed_pearson", 3),
    ("LOO r (renorm.)", "loo_renormalized_pearson", 3),
    ("LOO slope (renorm.)", "loo_slope_renormalized", 2),
    ("LDS", "lds_mean", 3),
    ("MTIF task s", "mtif_task_s", 3),
    ("retrain s/model", "retrain_s_per_model", 2),
    ("speed-up task level", "speedup_task_level", 0),
    ("speed-up task (1st+Newton)", "speedup_task_level_newton", 0),
)


def table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    head = "| case | " + " | ".join(c[0] for c in COLUMNS) + " |"
    lines = [head, "|---" * (len(COLUMNS) + 1) + "|"]
    for case, stats in results.items():
        cells = []
        for _, key, digits in COLUMNS:
            if key not in stats:
                cells.append("–")
                continue
            m, s, n = stats[key]["mean"], stats[key]["std"], len(stats[key]["values"])
            cells.append(f"{m:.{digits}f} ± {s:.{digits}f}" if n > 1 else f"{m:.{digits}f}")
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 convex case, 1 seed (<60 s)")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--loo", type=int, default=20, help="LOO examples per case and seed")
    parser.add_argument("--subsets", type=int, default=20, help="LDS subsets per case/seed")
    parser.add_argument("--cases", default=None, help="comma-separated case names")
    parser.add_argument("--out", type=Path, default=None, help="write every figure as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = list(QUICK if args.quick else CASES)
    if args.cases:
        names = [c.strip() for c in args.cases.split(",")]
    seeds = [0] if args.quick else list(range(args.seeds))
    results: dict[str, dict[str, dict[str, Any]]] = {}
    start = time.perf_counter()
    for name in names:
        case = CASES[name]
        n_loo = 8 if args.quick else (case.loo or args.loo)
        n_subsets = 8 if args.quick else (case.subsets or args.subsets)
        runs = [run_case(case, s, n_loo, n_subsets) for s in seeds[: case.seeds or len(seeds)]]
        results[name] = summarize(runs)
        print(f"{name}: done ({time.perf_counter() - start:.0f} s)", flush=True)
    doc = {
        "mode": "quick" if args.quick else "full",
        "seeds": seeds,
        "wall_time_s": time.perf_counter() - start,
        "results": results,
        "cases": {
            n: {
                "data": CASES[n].spec(0),
                "model": CASES[n].model,
                "solver": CASES[n].solver,
                "train": CASES[n].train,
            }
            for n in names
        },
    }
    print(table(results))
    if args.out:
        args.out.write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
