"""How the cost of each relatedness method grows with the number of tasks and the amount
of data, and what parallel backends give for retraining ground truth.

1. Tasks: synthetic classification task sets of T = 4, 16, 64 tasks (clusters of 4 plus
   unrelated and adversarial tasks), 200 examples per task, 30% for training.
2. Data: T = 8 tasks with 100, 400 and 1600 examples per task.
3. Executors: leave-one-task-out retraining (T + 1 independent trainings) of 16 tasks
   run in-process, on a local process pool of 2 workers, and on a local Ray instance
   with 2 CPUs (Ray's start-up time is reported apart).
4. Sample-space solves at scale (``--part scale``), each unit in a fresh process so that
   its peak RSS is its own:

   - *subset Newton* (issue 13): ``mtif-newton`` fitted on office-caltech at train=0.2
     (convex hard sharing, 40,040 parameters, whose block-arrow solve would need 31.8 GB:
     ``solver="auto"`` solves in the sample space) and asked all 15 subsets of its 4
     tasks, against retraining those 15 subsets (regularisation pinned to the value chosen
     on validation for all tasks); predicted vs retrained losses are compared too.
   - *network* (issue 15): the MTIF task matrix of an MLP with hidden=[1024, 1024]
     (1.09M parameters) on synthetic (8 tasks, 30 training rows each; the Gauss-Newton
     sample-space solve ``woodbury-gn``, R = 240 rows, its factor held per nn.Linear
     layer; the task matrix itself from sample-space Gram blocks, no solve over the p
     parameters) against one leave-one-task-out retraining times T, with the library's
     default training of networks (Adam, early stopping). The process's first torch.func
     calls (one-time imports of torch._dynamo and the forward-mode decompositions, ~1.8 s)
     run before anything is timed and are reported apart. The same solve with the factor formed
     from per-example Jacobians over all parameters (the path for models that are not
     chains of nn.Linear layers) runs next, after the peak RSS is read: its time and how
     far its matrix is from the layer path's.

   ``--unit`` runs one of the two alone.

   ``--quick`` runs both on small stand-ins (a 4-task synthetic convex model whose
   sample space is small; an MLP with hidden=[128, 128]).

Same model and protocol as ``relatedness_recovery.py`` (convex hard sharing, L-BFGS in
float64; gradient cosine and lookahead affinity record mini-batch Adam). One torch thread
per process; wall seconds on a shared 2-core machine, mean ± std over seeds; compare times
as ratios within one run.

Every timed unit (a method on one task set and seed, a backend's LOTO on one seed, a
scale unit on one seed) is cached (``--cache``, default ``.bench-cache/scaling``): an
interrupted run resumes where it stopped, and a cached unit keeps the timing it was
measured with (so a resumed table mixes loads; the JSON records the load at the end).

Usage::

    python benchmarks/scaling.py --quick --out scaling-quick.json
    python benchmarks/scaling.py --out scaling.json
    python benchmarks/scaling.py --part scale --seeds 1 --out scaling-scale.json
"""

from __future__ import annotations

import functools
import itertools
import multiprocessing
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _harness import EXACT, cached, mean_std, parser, pm, run_main, setup, write_out
from relatedness_recovery import ADAM, FEEDBACK_MAX_TASKS, MODEL, OWN_MODEL, warm_up
from scipy.stats import spearmanr

from taskrel.data import load
from taskrel.execution import Executor, LocalExecutor, ResultCache
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
    """The shared convex model, trained to its optimum (full-batch L-BFGS, float64)."""
    return RelateContext(
        model_config=MODEL,
        train_config=TrainConfig(**EXACT, seed=seed),
        executor=executor or LocalExecutor(1),
    )


def time_method(taskset: Any, method: str, seed: int) -> float:
    """Wall seconds of one ``relate`` call; VMTL and feedback MTL train their own models
    with the library's default training, not the convex model's L-BFGS."""
    options = dict(METHODS[method])
    if "train_config" in options:
        options["train_config"] = {**options["train_config"], "seed": seed}
    ctx = RelateContext(train_config=TrainConfig(seed=seed)) if method in OWN_MODEL else None
    result = relate(taskset, method, ctx or context(seed), **options)
    return float(result.meta["wall_time_s"])


def grid(
    points: list[tuple[int, int]],
    methods: list[str],
    seeds: int,
    key: str,
    cache: ResultCache | None,
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
                unit = ["grid", n_tasks, n_per_task, seed, m, METHODS[m]]
                compute = functools.partial(time_method, taskset, m, seed)
                times[m].append(cached(cache, unit, compute))
            print(f"  {label} seed {seed} done", flush=True)
        loto = np.mean(times["ground-truth"])
        out[label] = {
            m: {**mean_std(v), "ratio_to_loto": float(np.mean(v) / loto)}
            for m, v in times.items()
            if v
        }
    return out


def executors(
    n_tasks: int, seeds: int, ray: bool, cache: ResultCache | None
) -> dict[str, dict[str, float]]:
    """LOTO wall time per backend (``ray_startup_s`` apart, not cached), mean over seeds."""
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

            def loto(seed: int = seed, make: Callable[[], Executor] = make) -> float:
                taskset = synthetic(n_tasks, 200, seed)
                rel = relate(taskset, "ground-truth", context(seed, make()))
                return float(rel.meta["wall_time_s"])

            times.append(cached(cache, ["executor", name, n_tasks, seed], loto))
        out[name] = mean_std(times)
        print(f"  LOTO on {name}: {out[name]['mean']:.1f} s", flush=True)
    if ray:
        ray_executor.shutdown()
    base = out["local-1"]["mean"]
    for name in backends:
        out[name]["speedup_vs_local_1"] = base / out[name]["mean"]
    return out


# -- sample-space solves at scale (each unit in a fresh process: its own peak RSS) ----------
SUBSET_DATA: dict[bool, dict[str, Any]] = {
    False: {"name": "office-caltech", "options": {"train": 0.2, "val": 0.1}},
    True: {  # 4 tasks, p = 1,512 parameters >= 4 R = 576 rows: the sample space is chosen
        "name": "synthetic",
        "options": {
            "clusters": 1,
            "cluster_size": 2,
            "n_unrelated": 2,
            "n_adversarial": 0,
            "n_features": 100,
            "n_classes": 3,
            "n_per_task": 60,
        },
        "standardize": True,
    },
}
SUBSET_CONFIG: dict[bool, dict[str, Any]] = {False: {}, True: MODEL}
"""Model options of the subset case: chosen on validation (full run), pinned (quick)."""
NETWORK_DATA = {"name": "synthetic", "options": {"n_per_task": 100}, "standardize": True}
NETWORK_HIDDEN = {False: [1024, 1024], True: [128, 128]}
NETWORK_L2 = 1e-4  # HardSharing's fixed value for networks (not tuned on validation)


def _load(spec: dict[str, Any], seed: int) -> Any:
    taskset = load(spec["name"], **spec["options"], seed=seed)
    return taskset.standardize() if spec.get("standardize") else taskset


def _in_process(fn: Callable[..., dict[str, Any]], args: tuple[Any, ...]) -> dict[str, Any]:
    """``fn(*args)`` with one torch thread, plus its wall seconds (``seconds``) and the
    process's peak resident memory (``peak_rss_gb``, GB = 1e9 bytes; Linux reports KiB)."""
    torch.set_num_threads(1)
    start = time.perf_counter()
    out = fn(*args)
    out["seconds"] = time.perf_counter() - start
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    return out


def measured(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run ``fn(*args)`` in a fresh (spawned) process; see :func:`_in_process`."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        result: dict[str, Any] = pool.apply(_in_process, (fn, args))
    return result


def subset_newton(spec: dict[str, Any], options: dict[str, Any], seed: int) -> dict[str, Any]:
    """Train the convex model on all tasks (``"auto"`` regularisation in ``options`` chosen
    on validation), fit ``mtif-newton`` and predict every subset of the tasks."""
    from taskrel.decisions.predictors import make_predictor
    from taskrel.relatedness.ground_truth import train_model
    from taskrel.training.regularization import resolve_regularization

    taskset = _load(spec, seed)
    train = TrainConfig(seed=seed)
    start = time.perf_counter()
    config, _ = resolve_regularization(taskset, "hard", options, train)
    model = train_model(taskset, "hard", config, train)
    train_s = time.perf_counter() - start
    ctx = RelateContext(model="hard", model_config=config, train_config=train)
    n = len(taskset)
    subsets = [s for k in range(1, n + 1) for s in itertools.combinations(range(n), k)]
    predictor = make_predictor("mtif-newton", model=model).fit(taskset, ctx)
    losses = predictor.subset_losses(subsets)
    return {
        "config": config,
        "subsets": [list(s) for s in subsets],
        "losses": losses.tolist(),
        "train_s": train_s,
        "fit_s": predictor.fit_time_s,
        "predict_s": predictor.predict_time_s,
        "solver_plan": predictor.meta["solver_plan"],
        "damped_solves": predictor.meta["damped_solves"],
    }


def subset_retrain(
    spec: dict[str, Any], seed: int, config: dict[str, Any], subsets: list[list[int]]
) -> dict[str, Any]:
    """Train one model per subset (the exact answer), with the pinned ``config``."""
    from taskrel.relatedness.ground_truth import task_subset_losses

    taskset = _load(spec, seed)
    ctx = RelateContext(model="hard", model_config=config, train_config=TrainConfig(seed=seed))
    return {"losses": task_subset_losses(taskset, ctx, subsets).tolist()}


def network_mtif(spec: dict[str, Any], hidden: list[int], seed: int) -> dict[str, Any]:
    """Train the MLP on all tasks, then its first-order MTIF task matrix (``solver="auto"``:
    the Gauss-Newton sample-space solve over nn.Linear layers); then, after reading the
    peak RSS, the same solve from per-example Jacobians and the difference of the two
    matrices (largest absolute difference over the largest absolute entry)."""
    from taskrel.relatedness import woodbury
    from taskrel.relatedness.ground_truth import train_model
    from taskrel.relatedness.mtif import MTIF

    taskset = _load(spec, seed)
    config = {"hidden": hidden, "l2": NETWORK_L2}
    import_s = torch_func_import()
    start = time.perf_counter()
    model = train_model(taskset, "hard", config, TrainConfig(seed=seed))
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    engine = MTIF(model, taskset)
    result = engine.relatedness(instance=False)
    mtif_s = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    start = time.perf_counter()
    dense = MTIF(model, taskset, solver="woodbury-gn")
    dense.sample_space = woodbury.SampleSpace(
        dense.structure, gauss_newton=True, linear_layers=False
    )
    dense_matrix = dense.task_matrix()
    dense_s = time.perf_counter() - start
    diff = np.abs(dense_matrix - result.matrix).max() / np.abs(dense_matrix).max()
    return {
        "n_params": engine.fns.space.numel,
        "tasks": len(taskset),
        "train_s": train_s,
        "mtif_s": mtif_s,
        "mtif_peak_rss_gb": rss,
        "mtif_timings_s": result.meta["timings_s"],
        "task_matrix_path": result.meta["task_matrix_path"],
        "torch_func_import_s": import_s,
        "solver_plan": result.meta["solver_plan"],
        "solver_report": result.meta["solver"],
        "stationarity": result.meta["diagnostics"]["stationarity"],
        "dense_jacobian_s": dense_s,
        "dense_jacobian_max_rel_diff": float(diff),
    }


def torch_func_import() -> float:
    """Seconds of the process's first ``torch.func`` transforms (reverse and forward mode:
    ``hessian`` of a 1-parameter function), run before anything is timed: they import
    ``torch._dynamo`` (sympy and ~800 modules, ~1.5 s) and the forward-mode decompositions
    (~0.25 s), one-time costs of the process like the other imports, which both sides'
    timings leave out."""
    start = time.perf_counter()
    torch.func.hessian(lambda v: v.pow(3).sum())(torch.ones(1))
    return time.perf_counter() - start


def network_loto_one(spec: dict[str, Any], hidden: list[int], seed: int) -> dict[str, Any]:
    """One leave-one-task-out retraining (without task 0) of the same MLP."""
    from taskrel.relatedness.ground_truth import train_model

    taskset = _load(spec, seed)
    config = {"hidden": hidden, "l2": NETWORK_L2}
    start = time.perf_counter()
    train_model(taskset, "hard", config, TrainConfig(seed=seed), without_tasks=[0])
    return {"retrain_s": time.perf_counter() - start}


def scale(quick: bool, seeds: int, cache: ResultCache | None, unit: str = "all") -> dict[str, Any]:
    """The scale cases (``unit``: both, ``subsets`` or ``network``) over ``seeds`` seeds
    (figures: see the module docstring)."""
    spec = SUBSET_DATA[quick]
    rows: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        rows.setdefault(key, []).append(float(value))

    plans = {}
    for seed in range(seeds):
        if unit in ("all", "network"):
            plans["network"] = network_unit(quick, seed, add, cache)
        if unit == "network":
            continue
        newton = cached(
            cache,
            ["subset_newton", spec, SUBSET_CONFIG[quick], seed],
            functools.partial(measured, subset_newton, spec, SUBSET_CONFIG[quick], seed),
        )
        retrain = cached(
            cache,
            ["subset_retrain", spec, seed, newton["config"]],
            functools.partial(
                measured, subset_retrain, spec, seed, newton["config"], newton["subsets"]
            ),
        )
        predicted, exact = np.asarray(newton["losses"]), np.asarray(retrain["losses"])
        mask = ~np.isnan(exact)
        add("subsets_newton_s", newton["fit_s"] + newton["predict_s"])
        add(
            "subsets_newton_with_training_s",
            newton["fit_s"] + newton["predict_s"] + newton["train_s"],
        )
        add("subsets_retrain_s", retrain["seconds"])
        add("subsets_newton_rss_gb", newton["peak_rss_gb"])
        add("subsets_retrain_rss_gb", retrain["peak_rss_gb"])
        add("subsets_speedup", retrain["seconds"] / (newton["fit_s"] + newton["predict_s"]))
        add("subsets_spearman", spearmanr(predicted[mask], exact[mask])[0])
        add("subsets_max_rel_err", np.max(np.abs(predicted[mask] / exact[mask] - 1)))
        plans["subsets"] = newton["solver_plan"]
        print(f"  subset Newton seed {seed} done", flush=True)
    return {
        "subset_data": spec,
        "network_data": NETWORK_DATA,
        "network_hidden": NETWORK_HIDDEN[quick],
        "figures": {k: mean_std(v) for k, v in rows.items()},
        "solver_plans": plans,
    }


def network_unit(
    quick: bool, seed: int, add: Callable[[str, float], None], cache: ResultCache | None
) -> dict[str, Any]:
    """The network case for one seed (figures through ``add``); returns its solver plan."""
    hidden = NETWORK_HIDDEN[quick]
    net = cached(
        cache,
        ["network_mtif", NETWORK_DATA, hidden, seed],
        functools.partial(measured, network_mtif, NETWORK_DATA, hidden, seed),
    )
    one = cached(
        cache,
        ["network_loto_one", NETWORK_DATA, hidden, seed],
        functools.partial(measured, network_loto_one, NETWORK_DATA, hidden, seed),
    )
    loto = one["retrain_s"] * net["tasks"]
    add("network_params", net["n_params"])
    add("network_train_s", net["train_s"])
    add("network_mtif_s", net["mtif_s"])
    add("network_loto_s", loto)
    add("network_speedup", loto / net["mtif_s"])
    add("network_mtif_rss_gb", net["mtif_peak_rss_gb"])
    add("network_retrain_rss_gb", one["peak_rss_gb"])
    add("network_stationarity_relative", net["stationarity"]["relative"])
    add("network_dense_jacobian_s", net["dense_jacobian_s"])
    add("network_dense_jacobian_max_rel_diff", net["dense_jacobian_max_rel_diff"])
    add("network_torch_func_import_s", net["torch_func_import_s"])
    for key, value in net["mtif_timings_s"].items():
        add(f"network_mtif_{key}", value)
    print(f"  network seed {seed} done", flush=True)
    plan: dict[str, Any] = {**net["solver_plan"], "task_matrix_path": net["task_matrix_path"]}
    return plan


def scale_markdown(table: dict[str, Any]) -> str:
    f, plans = table["figures"], table["solver_plans"]
    lines = [
        "### Sample-space solves at scale",
        "",
        "| case | parameters | solver | method time (s) | reference time (s) | speedup | "
        "peak RSS method / reference (GB) |",
        "|---|---|---|---|---|---|---|",
    ]
    notes = []
    if "subsets" in plans:
        sub = plans["subsets"]
        lines.append(
            f"| subset Newton, {table['subset_data']['name']}, all subsets | "
            f"{sub['n_params']:,} | {sub['solver']} (R = {sub['sample_rows']:,}) | "
            f"{pm(f['subsets_newton_s'], 1)} | {pm(f['subsets_retrain_s'], 1)} (retrain each) | "
            f"{pm(f['subsets_speedup'], 1)} | {pm(f['subsets_newton_rss_gb'], 2)} / "
            f"{pm(f['subsets_retrain_rss_gb'], 2)} |"
        )
        notes.append(
            f"Subset Newton vs retraining: Spearman {pm(f['subsets_spearman'], 4)}, largest "
            f"relative error {pm(f['subsets_max_rel_err'], 4)}; with the training of the full "
            "model (regularisation search, if any) "
            f"{pm(f['subsets_newton_with_training_s'], 1)} s."
        )
    if "network" in plans:
        net = plans["network"]
        lines.append(
            f"| MTIF task matrix, MLP {table['network_hidden']} | {net['n_params']:,} | "
            f"{net['solver']}, {net['gn_kernel']}, task matrix {net['task_matrix_path']} "
            f"(R = {net['sample_rows']:,}) | "
            f"{pm(f['network_mtif_s'], 1)} | {pm(f['network_loto_s'], 1)} (LOTO: one "
            f"retraining × T) | {pm(f['network_speedup'], 1)} | "
            f"{pm(f['network_mtif_rss_gb'], 2)} / {pm(f['network_retrain_rss_gb'], 2)} |"
        )
        notes.append(
            f"Network: trained in {pm(f['network_train_s'], 1)} s, ‖∇J‖ at "
            f"{pm(f['network_stationarity_relative'], 2)} of the per-example gradient scale "
            "(Adam with early stopping is not at an optimum). The same solve from per-example "
            f"Jacobians: {pm(f['network_dense_jacobian_s'], 1)} s, its matrix within "
            f"{f['network_dense_jacobian_max_rel_diff']['mean']:.1e} (largest difference / "
            "largest entry, mean over seeds) of the layer path's. The process's first "
            f"torch.func calls (they import torch._dynamo and the forward-mode "
            f"decompositions) took "
            f"{pm(f['network_torch_func_import_s'], 1)} s, before anything was timed."
        )
    notes.append(
        "Wall seconds, mean ± std over seeds; peak RSS of the measuring process (including "
        "~0.4 GB of imports)."
    )
    return "\n".join([*lines, "", " ".join(notes)])


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
    p = parser(__doc__.split("\n\n")[0], default_seeds=2)
    p.add_argument(
        "--part",
        choices=("all", "grid", "scale"),
        default="all",
        help="grid: sections 1-3 (methods, backends); scale: section 4 (sample-space solves)",
    )
    p.add_argument(
        "--unit",
        choices=("all", "subsets", "network"),
        default="all",
        help="with --part scale: both cases, or one of them alone",
    )
    p.add_argument("--no-ray", action="store_true", help="skip the Ray backend")
    p.add_argument(
        "--feedback-max-tasks",
        type=int,
        default=FEEDBACK_MAX_TASKS,
        help="skip feedback MTL on task sets with more tasks (T(T-1) edges)",
    )
    args = p.parse_args(argv)
    cache = setup(args, "scaling")
    seeds = args.seeds
    methods = ["mtif", "gradient", "affinity", "ground-truth"] if args.quick else list(METHODS)
    start = time.perf_counter()
    tasks: dict[str, Any] = {}
    data: dict[str, Any] = {}
    backends: dict[str, dict[str, float]] = {}
    if args.part in ("all", "grid"):
        warm_up(tuple(methods))
        if args.quick:  # no executor comparison: worker start-up alone exceeds the budget
            tasks = grid([(4, 100), (8, 100)], methods, seeds, "T", cache)
            data = grid([(4, 50), (4, 200)], methods, seeds, "n", cache)
        else:
            tasks = grid(
                [(4, 200), (16, 200), (64, 200)],
                methods,
                seeds,
                "T",
                cache,
                args.feedback_max_tasks,
            )
            data = grid([(8, 100), (8, 400), (8, 1600)], methods, seeds, "n", cache)
            backends = executors(16, seeds, not args.no_ray, cache)
        print(markdown("Time vs number of tasks (200 examples per task)", tasks))
        print()
        print(markdown("Time vs examples per task", data))
        print("\n### LOTO retraining by backend (16 tasks)\n")
        print("| backend | wall time (s) | speedup |\n|---|---|---|")
        for name, row in backends.items():
            speed = f"{row['speedup_vs_local_1']:.2f}" if "speedup_vs_local_1" in row else "–"
            print(f"| {name} | {pm(row, 1)} | {speed} |")
    at_scale = {}
    if args.part != "grid":
        at_scale = scale(args.quick, 1 if args.quick else seeds, cache, args.unit)
    if at_scale:
        print()
        print(scale_markdown(at_scale))
    total = time.perf_counter() - start
    print(f"\ntotal {total:.1f} s")
    figures = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "mode": "quick" if args.quick else "full",
        "part": args.part,
        "unit": args.unit,
        "seeds": seeds,
        "methods": {m: METHODS[m] for m in methods},
        "model": MODEL,
        "train_config": EXACT,
        "feedback_max_tasks": args.feedback_max_tasks,
        "units": "wall seconds; ratio_to_loto = method / LOTO; std with ddof=1; "
        "peak_rss in GB (1e9 bytes)",
        "tasks": tasks,
        "data": data,
        "executors": backends,
        "scale": at_scale,
        "total_s": total,
    }
    write_out(args, figures)
    return 0


if __name__ == "__main__":
    run_main(main)
