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

Every (case, seed) is one cached unit (``--cache``, default
``.bench-cache/relatedness_recovery``): an interrupted run resumes where it stopped, and a
cached unit keeps the timings it was measured with.

Usage::

    python benchmarks/relatedness_recovery.py --quick --out recovery-quick.json
    python benchmarks/relatedness_recovery.py --out recovery.json
"""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _harness import EXACT, cached, mean_std, parser, pm, run_main, setup, write_out

from taskrel.data import load
from taskrel.errors import TaskrelError
from taskrel.execution import ResultCache
from taskrel.pipelines.compare import Comparison, durations
from taskrel.relatedness import RelateContext, relate
from taskrel.relatedness.result import Relatedness
from taskrel.training.trainer import TrainConfig

REFERENCE = "ground-truth"
MODEL = {"hidden": [], "shared_head": True, "l2": 1e-2, "l2_task": 1e-1}
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
    """``{column: {"mean", "std", "n"}}`` over runs (sample std, ddof=1), ignoring NaN."""
    return {col: mean_std([r[col] for r in rows]) for col in COLUMNS}


def markdown(
    title: str, table: dict[str, dict[str, dict[str, dict[str, float]]]], structure: bool
) -> str:
    head = ["case", "method", "Spearman off-diag vs LOTO", "Spearman diag vs LOTO"]
    head += ["Spearman vs structure"] if structure else []
    head += ["time / LOTO", "wall time (s)"]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for case, methods in table.items():
        for label, s in methods.items():
            cells = [case, label, pm(s["spearman_off"], 2), pm(s["spearman_diag"], 2)]
            cells += [pm(s["structure_spearman_off"], 2)] if structure else []
            cells += [pm(s["time_ratio"], 3), pm(s["wall_time_s"], 1)]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_unit(
    case: str,
    data: str,
    options: dict[str, Any],
    overrides: dict[str, Any],
    labels: tuple[str, ...],
    seed: int,
) -> dict[str, Any]:
    """One case and seed: its agreement rows and the methods it skipped (JSON-able)."""
    start = time.perf_counter()
    taskset = load(data, **options, seed=seed).standardize()
    comparison = run_case(taskset, labels, seed, overrides)
    rows = [
        {**row, "case": case, "seed": seed, "n_tasks": len(taskset)}
        for row in comparison.agreement_table()
    ]
    print(f"  {case} seed {seed}: {time.perf_counter() - start:.1f} s", flush=True)
    return {"rows": rows, "skipped": comparison.skipped}


def run_table(
    cases: dict[str, tuple[str, dict[str, Any], dict[str, Any]]],
    labels: tuple[str, ...],
    seeds: int,
    cache: ResultCache | None,
    runs: list[dict[str, Any]],
    skipped: dict[str, str],
) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """Every case x seed (cached units), summarised per case and method; appends the
    per-seed rows to ``runs`` and the skipped methods to ``skipped``."""
    table: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for case, (data, options, overrides) in cases.items():
        per_method: dict[str, list[dict[str, Any]]] = {}
        for seed in range(seeds):
            key = ["relatedness_recovery", case, data, options, overrides, labels, seed]
            compute = functools.partial(run_unit, case, data, options, overrides, labels, seed)
            unit = cached(cache, key, compute)
            for row in unit["rows"]:
                runs.append(row)
                per_method.setdefault(row["method"], []).append(row)
            skipped.update({f"{case}/{k}": v for k, v in unit["skipped"].items()})
        table[case] = {label: summarize(rows) for label, rows in per_method.items()}
    return table


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n\n")[0], default_seeds=3)
    args = p.parse_args(argv)
    cache = setup(args, "relatedness_recovery")
    seeds = 2 if args.quick else args.seeds
    labels = QUICK_METHODS if args.quick else tuple(METHODS)
    synthetic: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
        k: ("synthetic", v, {}) for k, v in SYNTHETIC.items() if not args.quick or k == "cls-8"
    }
    real = {"school-5": ("school", {"n_tasks": 5, "train": 0.1}, {})} if args.quick else REAL
    runs: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    warm_up(labels)
    start = time.perf_counter()
    print("synthetic task sets ...", flush=True)
    table1 = run_table(synthetic, labels, seeds, cache, runs, skipped)
    print("real data ...", flush=True)
    table2 = run_table(real, labels, seeds, cache, runs, skipped)
    total = time.perf_counter() - start
    text = [
        markdown("Synthetic tasks with known structure", table1, structure=True),
        "",
        markdown("Real data (retraining is the only ground truth)", table2, structure=False),
    ]
    if skipped:
        text += ["", "Skipped: " + "; ".join(f"{k}: {v}" for k, v in skipped.items())]
    print("\n".join(text))
    print(f"\ntotal {total:.1f} s (cached units count 0 s; their timings are from their run)")
    figures = {
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
        "std": "sample std over seeds (ddof=1)",
        "synthetic": table1,
        "real": table2,
        "runs": runs,
        "skipped": skipped,
        "total_s": total,
    }
    write_out(args, figures)
    return 0


if __name__ == "__main__":
    run_main(main)
