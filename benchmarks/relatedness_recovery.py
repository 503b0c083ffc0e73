"""How well does each relatedness method recover (a) the ground truth by retraining and
(b) the known generating structure, and at what cost?

Table 1, synthetic task sets with known structure (clusters of related tasks, unrelated
tasks, adversarial tasks that oppose a cluster; several sizes, both task kinds, several
seeds): Spearman correlation of each method's task x task matrix with leave-one-task-out
(LOTO) retraining, off the diagonal (transfer between tasks) and on the diagonal (a task's
own data) separately, Spearman with the generating similarity off the diagonal, and each
method's wall time as a ratio to LOTO retraining (T + 1 trainings, one process).
Table 2, real data where only retraining is ground truth: school (first 20 schools) and
Office-Caltech-10.

Protocol: every method sees the same model, the convex hard-sharing ``x.(w + v_t)``
(``hidden=[]``, shared head, L2 1e-2 shared / 1e-1 per task), trained by full-batch L-BFGS
in float64 (so MTIF's Hessian is taken at the optimum and every retraining differs from
the full model by its data only). Gradient cosine and lookahead affinity record mini-batch
Adam training of the same model (they are defined on stochastic first-order training).
VMTL and feedback MTL train their own models with their defaults. Mean ± std over seeds.
One torch thread per process; times are wall seconds on a shared machine, so compare
them as ratios within one run.

Usage::

    python benchmarks/relatedness_recovery.py --quick --out recovery-quick.json
    python benchmarks/relatedness_recovery.py --out recovery.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from taskrel.data import load
from taskrel.errors import TaskrelError
from taskrel.pipelines.compare import Comparison, durations
from taskrel.relatedness import RelateContext, relate
from taskrel.relatedness.result import Relatedness
from taskrel.training.trainer import TrainConfig

REFERENCE = "ground-truth"
MODEL = {"hidden": [], "shared_head": True, "l2": 1e-2, "l2_task": 1e-1}
EXACT = {"optimizer": "lbfgs", "lr": 1.0, "epochs": 2, "patience": None, "dtype": "float64"}
ADAM = {"epochs": 30, "lr": 1e-2, "batch_size": 32, "patience": None}
COLUMNS = ("spearman_off", "spearman_diag", "structure_spearman_off", "time_ratio", "wall_time_s")

# label -> (registered method, options); ``{seed}`` in a train_config is filled per run
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "mtif": ("mtif", {}),
    "mtif-newton": ("mtif", {"task_level": "newton", "instance": False}),
    "gradient": ("gradient", {"train_config": ADAM}),
    "affinity": ("affinity", {"train_config": ADAM}),
    "vmtl": ("vmtl", {}),
    "feedback": ("feedback", {}),
    REFERENCE: (REFERENCE, {}),
}
QUICK_METHODS = ("mtif", "gradient", "affinity", REFERENCE)
OWN_MODEL = ("vmtl", "feedback")
"""Methods that train a model of their own (not the shared convex one): they get the
library's default training (``TrainConfig(seed=seed)``), not the convex model's L-BFGS."""
FEEDBACK_MAX_TASKS = 16  # T (T - 1) feedback edges: beyond this it dominates the run

# name -> loader options (synthetic: known structure)
SYNTHETIC = {
    "cls-8": {
        "kind": "classification",
        "clusters": 2,
        "cluster_size": 3,
        "n_unrelated": 1,
        "n_adversarial": 1,
    },
    "reg-8": {
        "kind": "regression",
        "clusters": 2,
        "cluster_size": 3,
        "n_unrelated": 1,
        "n_adversarial": 1,
    },
    "cls-16": {
        "kind": "classification",
        "clusters": 3,
        "cluster_size": 4,
        "n_unrelated": 2,
        "n_adversarial": 2,
    },
    "reg-16": {
        "kind": "regression",
        "clusters": 3,
        "cluster_size": 4,
        "n_unrelated": 2,
        "n_adversarial": 2,
    },
}
REAL = {
    "school-20": ("school", {"n_tasks": 20, "train": 0.3}, {}),
    "office-caltech": (
        "office-caltech",
        {"train": 0.2},
        {"mtif": {"solver": "cg"}, "mtif-newton": {"solver": "cg"}},
    ),
}


def warm_up(labels: tuple[str, ...]) -> None:
    """Run every method once on a tiny task set so first-call costs (imports, torch.func
    set-up) stay out of the timings."""
    taskset = load("synthetic", clusters=1, cluster_size=2, n_per_task=20).standardize()
    run_case(taskset, labels, 0, {})


def run_case(
    taskset: Any, labels: tuple[str, ...], seed: int, overrides: dict[str, dict[str, Any]]
) -> Comparison:
    """Every method of ``labels`` on one task set; agreement via :class:`Comparison`."""
    ctx = RelateContext(model_config=MODEL, train_config=TrainConfig(**EXACT, seed=seed))
    own_ctx = RelateContext(train_config=TrainConfig(seed=seed))
    results: dict[str, Relatedness] = {}
    skipped: dict[str, str] = {}
    for label in labels:
        method, options = METHODS[label]
        if method == "feedback" and len(taskset) > FEEDBACK_MAX_TASKS:
            skipped[label] = f"not run beyond {FEEDBACK_MAX_TASKS} tasks (cost)"
            continue
        options = {**options, **overrides.get(label, {})}
        if "train_config" in options:
            options["train_config"] = {**options["train_config"], "seed": seed}
        try:
            context = own_ctx if label in OWN_MODEL else ctx
            results[label] = relate(taskset, method, context, **options)
        except TaskrelError as err:
            skipped[label] = str(err)
    similarity = taskset.meta.get("similarity")
    return Comparison(
        taskset.names,
        results,
        skipped,
        structure=None if similarity is None else np.asarray(similarity),
        timings={k: durations(r) for k, r in results.items()},
        reference=REFERENCE,
    )


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """``{column: {"mean", "std", "n"}}`` over runs, ignoring NaN."""
    out = {}
    for col in COLUMNS:
        values = np.array([r[col] for r in rows], dtype=float)
        values = values[~np.isnan(values)]
        out[col] = {
            "mean": float(values.mean()) if len(values) else math.nan,
            "std": float(values.std()) if len(values) else math.nan,
            "n": len(values),
        }
    return out


def pm(stat: dict[str, float], digits: int = 2) -> str:
    if stat["n"] == 0:
        return "–"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def markdown(
    title: str, table: dict[str, dict[str, dict[str, dict[str, float]]]], structure: bool
) -> str:
    head = ["case", "method", "Spearman off-diag vs LOTO", "Spearman diag vs LOTO"]
    head += ["Spearman vs structure"] if structure else []
    head += ["time / LOTO", "wall time (s)"]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for case, methods in table.items():
        for label, s in methods.items():
            cells = [case, label, pm(s["spearman_off"]), pm(s["spearman_diag"])]
            cells += [pm(s["structure_spearman_off"])] if structure else []
            cells += [pm(s["time_ratio"], 3), pm(s["wall_time_s"], 1)]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_table(
    cases: dict[str, tuple[str, dict[str, Any], dict[str, Any]]],
    labels: tuple[str, ...],
    seeds: int,
    runs: list[dict[str, Any]],
    skipped: dict[str, str],
) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    table: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for case, (data, options, overrides) in cases.items():
        per_method: dict[str, list[dict[str, Any]]] = {}
        for seed in range(seeds):
            start = time.perf_counter()
            taskset = load(data, **options, seed=seed).standardize()
            comparison = run_case(taskset, labels, seed, overrides)
            for row in comparison.agreement_table():
                row.update(case=case, seed=seed, n_tasks=len(taskset))
                runs.append(row)
                per_method.setdefault(row["method"], []).append(row)
            skipped.update({f"{case}/{k}": v for k, v in comparison.skipped.items()})
            print(f"  {case} seed {seed}: {time.perf_counter() - start:.1f} s", flush=True)
        table[case] = {label: summarize(rows) for label, rows in per_method.items()}
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small run (< 60 s)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per case")
    parser.add_argument("--out", type=Path, default=None, help="write every figure as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seeds = args.seeds or (2 if args.quick else 3)
    labels = QUICK_METHODS if args.quick else tuple(METHODS)
    synthetic = {
        k: ("synthetic", v, {}) for k, v in SYNTHETIC.items() if not args.quick or k == "cls-8"
    }
    real = {"school-5": ("school", {"n_tasks": 5, "train": 0.1}, {})} if args.quick else REAL
    runs: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    warm_up(labels)
    start = time.perf_counter()
    print("synthetic task sets ...", flush=True)
    table1 = run_table(synthetic, labels, seeds, runs, skipped)
    print("real data ...", flush=True)
    table2 = run_table(real, labels, seeds, runs, skipped)
    total = time.perf_counter() - start
    text = [
        markdown("Synthetic tasks with known structure", table1, structure=True),
        "",
        markdown("Real data (retraining is the only ground truth)", table2, structure=False),
    ]
    if skipped:
        text += ["", "Skipped: " + "; ".join(f"{k}: {v}" for k, v in skipped.items())]
    print("\n".join(text))
    print(f"\ntotal {total:.1f} s")
    if args.out is not None:
        doc = {
            "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
            "mode": "quick" if args.quick else "full",
            "seeds": seeds,
            "methods": {k: METHODS[k] for k in labels},
            "model": MODEL,
            "train_config": EXACT,
            "baseline_train_config": ADAM,
            "synthetic_cases": {k: v[1] for k, v in synthetic.items()},
            "real_cases": {k: [v[0], v[1]] for k, v in real.items()},
            "columns": {
                "spearman_off": "Spearman with LOTO retraining, i != j",
                "spearman_diag": "Spearman with LOTO retraining, i == j",
                "structure_spearman_off": "Spearman with the generating similarity, i != j",
                "time_ratio": "wall time / LOTO retraining wall time",
                "wall_time_s": "wall seconds",
            },
            "synthetic": table1,
            "real": table2,
            "runs": runs,
            "skipped": skipped,
            "total_s": total,
        }
        args.out.write_text(json.dumps(doc, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
