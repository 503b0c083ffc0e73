"""How the cost of each relatedness method grows with the number of tasks and the amount
of data, and what parallel backends give for retraining ground truth.

1. Tasks: synthetic classification task sets of T = 4, 16, 64 tasks (clusters of 4 plus
   unrelated and adversarial tasks), 200 examples per task, 30% for training.
2. Data: T = 8 tasks with 100, 400 and 1600 examples per task.
3. Executors: leave-one-task-out retraining (T + 1 independent trainings) of 16 tasks
   run in-process, on a local process pool of 2 workers, and on a local Ray instance
   with 2 CPUs (Ray's start-up time is reported apart).

Same model and protocol as ``relatedness_recovery.py`` (convex hard sharing, L-BFGS in
float64; gradient cosine and lookahead affinity record mini-batch Adam). One torch thread
per process; wall seconds on a shared 2-core machine, mean ± std over seeds; compare times
as ratios within one run.

Usage::

    python benchmarks/scaling.py --quick --out scaling-quick.json
    python benchmarks/scaling.py --out scaling.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from relatedness_recovery import ADAM, EXACT, FEEDBACK_MAX_TASKS, MODEL, pm, warm_up

from taskrel.data import load
from taskrel.execution import Executor, LocalExecutor
from taskrel.relatedness import RelateContext, relate
from taskrel.training.trainer import TrainConfig

METHODS: dict[str, dict[str, Any]] = {
    "mtif": {},
    "gradient": {"train_config": ADAM},
    "affinity": {"train_config": ADAM},
    "vmtl": {},
    "feedback": {},
    "ground-truth": {},
}


def synthetic(n_tasks: int, n_per_task: int, seed: int) -> Any:
    """``n_tasks`` classification tasks: clusters of 4, the rest split between unrelated
    and adversarial tasks."""
    clusters = max(1, (n_tasks - 2) // 4)
    rest = n_tasks - 4 * clusters
    return load(
        "synthetic",
        clusters=clusters,
        cluster_size=4,
        n_unrelated=rest - rest // 2,
        n_adversarial=rest // 2,
        n_per_task=n_per_task,
        seed=seed,
    ).standardize()


def context(seed: int, executor: Executor | None = None) -> RelateContext:
    return RelateContext(
        model_config=MODEL,
        train_config=TrainConfig(**EXACT, seed=seed),
        executor=executor or LocalExecutor(1),
    )


def time_method(taskset: Any, method: str, seed: int) -> float:
    options = dict(METHODS[method])
    if "train_config" in options:
        options["train_config"] = {**options["train_config"], "seed": seed}
    return float(relate(taskset, method, context(seed), **options).meta["wall_time_s"])


def grid(
    points: list[tuple[int, int]],
    methods: list[str],
    seeds: int,
    key: str,
    feedback_max_tasks: int = FEEDBACK_MAX_TASKS,
) -> dict[str, dict[str, dict[str, float]]]:
    """``{point: {method: {"mean", "std", "n", "ratio_to_loto"}}}`` over ``(T, n)``
    points, ``key`` naming the varied quantity; feedback MTL is skipped beyond
    ``feedback_max_tasks`` tasks."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for n_tasks, n_per_task in points:
        label = f"{key}={n_tasks if key == 'T' else n_per_task}"
        times: dict[str, list[float]] = {m: [] for m in methods}
        for seed in range(seeds):
            taskset = synthetic(n_tasks, n_per_task, seed)
            for m in methods:
                if m == "feedback" and n_tasks > feedback_max_tasks:
                    continue
                times[m].append(time_method(taskset, m, seed))
            print(f"  {label} seed {seed} done", flush=True)
        loto = np.mean(times["ground-truth"])
        out[label] = {
            m: {
                "mean": float(np.mean(v)),
                "std": float(np.std(v)),
                "n": len(v),
                "ratio_to_loto": float(np.mean(v) / loto),
            }
            for m, v in times.items()
            if v
        }
    return out


def executors(n_tasks: int, seeds: int, ray: bool) -> dict[str, dict[str, float]]:
    """LOTO wall time per backend (``ray_startup_s`` apart), mean over seeds."""
    backends: dict[str, Any] = {
        "local-1": lambda: LocalExecutor(1),
        "local-pool-2": lambda: LocalExecutor(2),
    }
    out: dict[str, dict[str, float]] = {}
    if ray:
        from taskrel.execution import RayExecutor

        start = time.perf_counter()
        ray_executor = RayExecutor(num_cpus=2)
        out["ray_startup_s"] = {"mean": time.perf_counter() - start, "std": 0.0, "n": 1}
        backends["ray-2"] = lambda: ray_executor
    for name, make in backends.items():
        times = []
        for seed in range(seeds):
            taskset = synthetic(n_tasks, 200, seed)
            rel = relate(taskset, "ground-truth", context(seed, make()))
            times.append(float(rel.meta["wall_time_s"]))
        out[name] = {"mean": float(np.mean(times)), "std": float(np.std(times)), "n": len(times)}
        print(f"  LOTO on {name}: {out[name]['mean']:.1f} s", flush=True)
    if ray:
        ray_executor.shutdown()
    base = out["local-1"]["mean"]
    for name in backends:
        out[name]["speedup_vs_local_1"] = base / out[name]["mean"]
    return out


def markdown(title: str, table: dict[str, dict[str, dict[str, float]]]) -> str:
    methods = list(next(iter(table.values())))
    lines = [
        f"### {title}",
        "",
        "| | " + " | ".join(methods) + " |",
        "|---" * (len(methods) + 1) + "|",
    ]
    for point, row in table.items():
        cells = [
            f"{pm(row[m], 1)} s ({row[m]['ratio_to_loto']:.3f})" if m in row else "–"
            for m in methods
        ]
        lines.append(f"| {point} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nwall seconds, mean ± std; in brackets: ratio to LOTO"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small run (< 60 s)")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray backend")
    parser.add_argument(
        "--feedback-max-tasks",
        type=int,
        default=FEEDBACK_MAX_TASKS,
        help="skip feedback MTL on task sets with more tasks (T(T-1) edges)",
    )
    parser.add_argument("--out", type=Path, default=None, help="write every figure as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seeds = args.seeds or 2
    methods = ["mtif", "gradient", "affinity", "ground-truth"] if args.quick else list(METHODS)
    warm_up(tuple(methods))
    start = time.perf_counter()
    if args.quick:  # no executor comparison: worker start-up alone exceeds the budget
        tasks = grid([(4, 100), (8, 100)], methods, seeds, "T")
        data = grid([(4, 50), (4, 200)], methods, seeds, "n")
        backends: dict[str, dict[str, float]] = {}
    else:
        tasks = grid([(4, 200), (16, 200), (64, 200)], methods, seeds, "T", args.feedback_max_tasks)
        data = grid([(8, 100), (8, 400), (8, 1600)], methods, seeds, "n")
        backends = executors(16, seeds, ray=not args.no_ray)
    total = time.perf_counter() - start
    print(markdown("Time vs number of tasks (200 examples per task)", tasks))
    print()
    print(markdown("Time vs examples per task", data))
    print("\n### LOTO retraining by backend (16 tasks)\n")
    print("| backend | wall time (s) | speedup |\n|---|---|---|")
    for name, row in backends.items():
        speed = f"{row['speedup_vs_local_1']:.2f}" if "speedup_vs_local_1" in row else "–"
        print(f"| {name} | {pm(row, 1)} | {speed} |")
    print(f"\ntotal {total:.1f} s")
    if args.out is not None:
        doc = {
            "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
            "mode": "quick" if args.quick else "full",
            "seeds": seeds,
            "methods": {m: METHODS[m] for m in methods},
            "model": MODEL,
            "train_config": EXACT,
            "feedback_max_tasks": args.feedback_max_tasks,
            "units": "wall seconds; ratio_to_loto = method / LOTO",
            "tasks": tasks,
            "data": data,
            "executors": backends,
            "total_s": total,
        }
        args.out.write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
