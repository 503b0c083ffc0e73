"""Training a convex model to its optimum: full-batch L-BFGS against damped Newton steps
solved in the sample space (the default above 4,096 parameters since 2026-12-01).

Protocol (per case and seed; the seed draws the split and the initialisation): the same
model is trained twice from the same initialisation, once with ``optimizer="lbfgs"`` (the
former default above the dense Newton bound: epochs of 100 iterations until the relative
gradient is below ``stop_tol = 1e-9`` or an epoch no longer lowers the objective, at most
100 epochs) and once with ``optimizer="auto"`` (which resolves to Newton in the sample
space, :mod:`taskrel.training.newton`). Regularisation is pinned (``l2 = 1e-2``, and
``l2_task = 1e-1`` on hard sharing's heads, as ``benchmarks/mtif_accuracy.py``), so the
time is the training's alone. Reported per case: wall and CPU seconds, epochs, the final
relative gradient norm (``TrainResult.convergence``), the objective gap of L-BFGS over
Newton relative to the objective, and the time ratio L-BFGS / Newton within each seed
(mean ± sample std over seeds). One torch thread; the machine load is recorded beside the figures.

    python benchmarks/convex_training.py --quick --out quick.json
    nice -n 10 python benchmarks/convex_training.py --out convex_training.json
"""

from __future__ import annotations

import time
from typing import Any

from _harness import (
    cached,
    machine_load,
    markdown,
    mean_std,
    parser,
    pm,
    run_main,
    setup,
    write_out,
)
from _harness import progress as bench_progress

from taskrel.relatedness.ground_truth import load_data
from taskrel.training.trainer import TrainConfig, fit

MODEL_CONFIG = {"hidden": [], "l2": 1e-2, "l2_task": 1e-1}
CASES: dict[str, dict[str, Any]] = {
    "office-caltech 5% / hard": {"data": ("office-caltech", 0.05), "model": "hard"},
    "office-caltech 10% / hard": {"data": ("office-caltech", 0.1), "model": "hard"},
    "office-caltech 20% / hard": {"data": ("office-caltech", 0.2), "model": "hard"},
    "office-caltech 10% / stl": {"data": ("office-caltech", 0.1), "model": "stl"},
}
QUICK = ("office-caltech 5% / hard",)
OPTIMIZERS = ("lbfgs", "auto")


def run_one(case: str, seed: int, optimizer: str) -> dict[str, Any]:
    """Train ``case`` once; time, epochs and convergence of the returned parameters."""
    name, train = CASES[case]["data"]
    model = CASES[case]["model"]
    config = {k: v for k, v in MODEL_CONFIG.items() if model == "hard" or k != "l2_task"}
    taskset = load_data({"name": name, "options": {"train": train, "seed": seed}})
    start, cpu = time.perf_counter(), time.process_time()
    result = fit(taskset, model, config, TrainConfig(optimizer=optimizer, seed=seed))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert result.config is not None
    return {
        "optimizer": result.config.optimizer,
        "wall_s": wall,
        "cpu_s": cpu,
        "epochs": result.epochs_run,
        "relative_grad": float(result.convergence["relative"]),
        "objective": float(result.convergence["objective"]),
        "params": sum(p.numel() for p in result.model.parameters()),
    }


def main() -> int:
    p = parser(__doc__ or "", default_seeds=3)
    args = p.parse_args()
    cache = setup(args, "convex_training")
    started = time.perf_counter()
    cases = list(QUICK if args.quick else CASES)
    seeds = list(range(1 if args.quick else args.seeds))
    runs: dict[str, list[dict[str, Any]]] = {case: [] for case in cases}
    with bench_progress("trainings", len(cases) * len(seeds) * len(OPTIMIZERS)) as report:
        for case in cases:
            for seed in seeds:
                pair = {}
                for opt in OPTIMIZERS:
                    pair[opt] = cached(
                        cache,
                        ("convex_training", 1, case, seed, opt),
                        lambda c=case, s=seed, o=opt: run_one(c, s, o),
                    )
                    report.advance()
                runs[case].append({"seed": seed, **pair})
    summary: dict[str, dict[str, Any]] = {}
    rows = []
    for case, pairs in runs.items():
        lb = [r["lbfgs"] for r in pairs]
        nt = [r["auto"] for r in pairs]
        stats = {
            "params": nt[0]["params"],
            "auto_resolves_to": sorted({r["optimizer"] for r in nt}),
            **{
                f"{k}_{o}": mean_std([r[k] for r in rs])
                for o, rs in (("lbfgs", lb), ("newton", nt))
                for k in ("wall_s", "cpu_s", "epochs")
            },
            "relative_grad_lbfgs_max": max(r["relative_grad"] for r in lb),
            "relative_grad_newton_max": max(r["relative_grad"] for r in nt),
            "objective_gap_rel_lbfgs_minus_newton": mean_std(
                [
                    (a["objective"] - b["objective"]) / abs(b["objective"])
                    for a, b in zip(lb, nt, strict=True)
                ]
            ),
            "time_ratio_lbfgs_over_newton": mean_std(
                [a["wall_s"] / b["wall_s"] for a, b in zip(lb, nt, strict=True)]
            ),
            "cpu_ratio_lbfgs_over_newton": mean_std(
                [a["cpu_s"] / b["cpu_s"] for a, b in zip(lb, nt, strict=True)]
            ),
        }
        summary[case] = stats
        rows.append(
            [
                case,
                f"{stats['params']:,}",
                "/".join(stats["auto_resolves_to"]),
                pm(stats["wall_s_lbfgs"], 1),
                pm(stats["wall_s_newton"], 1),
                pm(stats["time_ratio_lbfgs_over_newton"], 1),
                pm(stats["cpu_ratio_lbfgs_over_newton"], 1),
                f"{stats['epochs_lbfgs']['mean']:.0f} / {stats['epochs_newton']['mean']:.0f}",
                f"{stats['relative_grad_lbfgs_max']:.1e}",
                f"{stats['relative_grad_newton_max']:.1e}",
                f"{stats['objective_gap_rel_lbfgs_minus_newton']['mean']:.1e}",
            ]
        )
    header = [
        "case",
        "params",
        "auto",
        "L-BFGS s",
        "Newton s",
        "time L-BFGS / Newton",
        "CPU L-BFGS / Newton",
        "epochs L-BFGS / Newton",
        "rel. grad L-BFGS (max)",
        "rel. grad Newton (max)",
        "objective gap (L-BFGS − Newton) / objective",
    ]
    print(f"seeds: {len(seeds)}; load {machine_load()}")
    print(markdown(header, rows))
    write_out(
        args,
        {"seeds": seeds, "runs": runs, "summary": summary, "machine_load": machine_load()},
        started,
    )
    return 0


if __name__ == "__main__":
    run_main(main)
