"""How far can a relatedness comparison be trusted? Resampled ground truths with a noise
ceiling, and every method's agreement with them as value ± CI and as a fraction of the
ceiling.

For each dataset, the leave-one-task-out (LOTO) and pairwise ground truths are computed by
retraining on R = 10 repeats (repeat 0: the loaded split and training seed; repeat r: the
same per-task sizes re-split with a new seed, and training seed + r). The R = 5 figures use
the first 5 of those repeats (the plans nest, so they are exactly what an R = 5 run gives).
Every method runs on the same repeats and is averaged. Reported:

- each ground truth's split-half reliability (Spearman-Brown corrected) and its noise
  ceiling sqrt(reliability), with 95% CIs, and (full mode) the seed-only self-agreement
  (the loaded split under a second training seed);
- each method's off-diagonal Spearman with the mean ground truth, its 95% bootstrap CI over
  repeats, its fraction of the ceiling and the one-line verdict (rules in
  ``taskrel.relatedness.reliability``); the other ground truth is scored as a method too;
- wall time of each method over all repeats as a ratio to the ground truth's;
- on synthetic data, the mean ground truth's off-diagonal Spearman with the generating
  similarity ``taskset.meta['similarity']`` at R = 1 (repeat 0 alone), 5 and 10.

Model: the library's default hard sharing, the convex ``x.(w + v_t) + b_t`` (``hidden=[]``,
shared head) trained with the default ``TrainConfig()`` (Newton steps up to 2048
parameters, else full-batch L-BFGS, float64, until the relative gradient norm is below
1e-9). Its L2 penalties are chosen on validation data by
``taskrel.training.regularization.resolve_regularization`` (once per dataset, on the loaded
split; retrainings never re-tune); the JSON records the chosen values. Gradient cosine and lookahead
affinity record mini-batch Adam training of the same model. VMTL and feedback MTL are not
run here (non-convex models of their own, R trainings each). Quick mode: 4 small
synthetic regression tasks, R = 4, and the parameter-similarity baseline's L2 pinned to
the model's head L2 instead of chosen per repeat. One process, one torch thread;
times are wall seconds on a shared machine, so read them as ratios within one run.

Usage::

    python benchmarks/trust.py --quick --out trust-quick.json
    nice -n 10 python benchmarks/trust.py --out trust.json --md docs/bench/trust.md
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from _harness import cached, markdown, parser, run_main, setup, write_out

from taskrel.data import load
from taskrel.data.taskset import TaskSet
from taskrel.errors import TaskrelError
from taskrel.execution import LocalExecutor
from taskrel.pipelines.compare import GROUND_TRUTHS, relate_repeats
from taskrel.relatedness import METHODS, RelateContext, agreement
from taskrel.relatedness.reliability import trust_summary
from taskrel.relatedness.resample import plan_repeats
from taskrel.relatedness.result import Relatedness
from taskrel.training.regularization import resolve_regularization
from taskrel.training.trainer import TrainConfig

AUTO = {"hidden": [], "shared_head": True, "l2": "auto", "l2_task": "auto"}
ADAM = {"epochs": 30, "lr": 1e-2, "batch_size": 32, "patience": None}
KINDS = ("loto", "pairwise")
SKIPPED_METHODS = {
    "vmtl": "not run here: trains its own non-convex model, R times",
    "feedback": "not run here: trains its own non-convex model, R times",
}

# label -> (loader name, loader options, standardise per task, MTIF options)
DATASETS: dict[str, tuple[str, dict[str, Any], bool, dict[str, Any]]] = {
    "synthetic": ("synthetic", {}, True, {}),
    "synthetic-regression": ("synthetic-regression", {}, True, {}),
    # z-scored per task by the loader
    "office-caltech": ("office-caltech", {"train": 0.2, "val": 0.1}, False, {"solver": "cg"}),
    # pooled standardisation by the loader (per-patient scaling would erase age and sex)
    "parkinsons-15": ("parkinsons", {"train": 0.3, "val": 0.1}, False, {}),
    "school-20": ("school", {"n_tasks": 20, "train": 0.3, "val": 0.1}, True, {}),
    "landmine": ("landmine", {"train": 0.3, "val": 0.1}, True, {}),
}
FIRST_TASKS = {"parkinsons-15": 15}
QUICK = {
    "synthetic-4": (
        "synthetic-regression",
        {"clusters": 2, "cluster_size": 2, "n_unrelated": 0, "n_adversarial": 0, "n_per_task": 80},
        True,
        {},
    ),
}


def load_case(label: str, spec: tuple[str, dict[str, Any], bool, dict[str, Any]]) -> TaskSet:
    name, options, standardize, _ = spec
    taskset = load(name, **options, seed=0)
    if label in FIRST_TASKS:
        taskset = taskset.select_tasks(list(range(FIRST_TASKS[label])))
    return taskset.standardize() if standardize else taskset


def model_config(taskset: TaskSet, train: TrainConfig) -> tuple[dict[str, Any], str]:
    """The model options chosen on validation data, and a description of the choice."""
    pinned, report = resolve_regularization(taskset, "hard", AUTO, train)
    chosen = report.chosen if report is not None else {}
    return dict(pinned), "chosen on validation: " + ", ".join(
        f"{k} {v:.3g}" for k, v in chosen.items()
    )


def run_case(
    label: str,
    spec: tuple[str, dict[str, Any], bool, dict[str, Any]],
    repeats: int,
    seed_repeats: int,
    adam: dict[str, Any],
    pin_baselines: bool,
    cache: Any,
    cache_dir: Path | None,
    workers: int = 1,
) -> dict[str, Any]:
    """Every ground truth and method on ``repeats`` repeats of one dataset (ground-truth
    retrainings on ``workers`` processes)."""
    taskset = load_case(label, spec)
    train = TrainConfig()
    config, how = cached(cache, ["config", label], lambda: model_config(taskset, train))
    ctx = RelateContext(
        model_config=config,
        train_config=train,
        cache_dir=None if cache_dir is None else cache_dir / "retrain" / label,
        executor=LocalExecutor(workers),
    )
    plan = plan_repeats(taskset, repeats, 0, train.seed)
    methods = [m for m in METHODS if m not in GROUND_TRUTHS.values() and m not in SKIPPED_METHODS]
    options: dict[str, dict[str, Any]] = {
        "mtif": spec[3],
        "gradient": {"train_config": adam},
        "affinity": {"train_config": adam},
        **({"param-similarity": {"l2": config.get("l2_task", 1.0)}} if pin_baselines else {}),
    }
    results: dict[str, Relatedness] = {}
    skipped = dict(SKIPPED_METHODS)
    for kind in KINDS:
        name = GROUND_TRUTHS[kind]
        results[kind] = cached(
            cache,
            ["truth", label, kind, repeats, seed_repeats, config],
            lambda name=name: _timed(
                lambda: relate_repeats(taskset, name, ctx, {"seed_repeats": seed_repeats}, plan, 0)
            ),
        )
        print(f"  {label} {kind}: {results[kind].meta['wall_time_s']:.1f} s", flush=True)
    for m in methods:
        try:
            results[m] = cached(
                cache,
                ["method", label, m, repeats, config, options.get(m, {})],
                lambda m=m: _timed(
                    lambda: relate_repeats(taskset, m, ctx, options.get(m, {}), plan, 0)
                ),
            )
        except TaskrelError as err:
            skipped[m] = str(err)
            continue
        print(f"  {label} {m}: {results[m].meta['wall_time_s']:.1f} s", flush=True)
    return {
        "taskset": taskset,
        "results": results,
        "skipped": skipped,
        "model_config": config,
        "regularisation": how,
    }


def _timed(compute: Any) -> Relatedness:
    start = time.perf_counter()
    rel: Relatedness = compute()
    rel.meta["wall_time_s"] = time.perf_counter() - start
    return rel


def summarize(case: dict[str, Any], sizes: tuple[int, ...]) -> dict[str, Any]:
    """Trust figures of one dataset at each R in ``sizes`` (first R repeats)."""
    taskset: TaskSet = case["taskset"]
    results: dict[str, Relatedness] = case["results"]
    out: dict[str, Any] = {
        "n_tasks": len(taskset),
        "model_config": case["model_config"],
        "regularisation": case["regularisation"],
        "skipped": case["skipped"],
    }
    for kind in KINDS:
        out[f"wall_time_s_{kind}"] = results[kind].meta["wall_time_s"]
        seed_only = results[kind].meta.get("seed_only_agreement")
        out[f"seed_only_agreement_{kind}"] = seed_only
        for m, rel in results.items():
            if m != kind:
                out[f"time_ratio_{m}_vs_{kind}"] = (
                    rel.meta["wall_time_s"] / results[kind].meta["wall_time_s"]
                )
    for m, rel in results.items():
        out[f"wall_time_s_{m}"] = rel.meta["wall_time_s"]
    similarity = taskset.meta.get("similarity")
    for r in sizes:
        stacks = {m: rel.meta["per_repeat"][:r] for m, rel in results.items()}
        for kind in KINDS:
            others = {m: s for m, s in stacks.items() if m != kind}
            trust = trust_summary(stacks[kind], kind, others, taskset.names, seed=0)
            out[f"R{r}_{kind}"] = trust
            if similarity is not None:
                for n in sorted({1, r}):
                    mean = stacks[kind][:n].mean(0)
                    out[f"structure_spearman_{kind}_R{n}"] = agreement(mean, similarity)
    return out


def tables(summary: dict[str, dict[str, Any]], sizes: tuple[int, ...]) -> str:
    def ci(t: dict[str, Any], key: str) -> str:
        return f"{t[key]:.2f} [{t[key + '_ci_low']:.2f}, {t[key + '_ci_high']:.2f}]"

    truth_rows, method_rows, structure_rows = [], [], []
    for data, s in summary.items():
        for r in sizes:
            for kind in KINDS:
                t = s[f"R{r}_{kind}"]
                seed_only = s.get(f"seed_only_agreement_{kind}")
                truth_rows.append(
                    [
                        data,
                        kind,
                        r,
                        ci(t, f"reliability_{kind}"),
                        ci(t, f"ceiling_{kind}"),
                        "–" if seed_only is None else f"{seed_only:.2f}",
                    ]
                )
                for m in t["methods"]:
                    key = f"{m}_vs_{kind}"
                    method_rows.append(
                        [
                            data,
                            kind,
                            r,
                            m,
                            ci(t, f"agreement_{key}"),
                            t[f"fraction_of_ceiling_{key}"],
                            t[f"verdict_{key}"],
                            s.get(f"time_ratio_{m}_vs_{kind}", float("nan")),
                        ]
                    )
        if "structure_spearman_loto_R1" in s:
            for kind in KINDS:
                structure_rows.append(
                    [data, kind]
                    + [s.get(f"structure_spearman_{kind}_R{n}", float("nan")) for n in (1, *sizes)]
                )
    text = [
        "### Ground truths: reliability and noise ceiling (95% CIs)",
        "",
        markdown(
            ["data", "ground truth", "R", "reliability", "ceiling", "seed-only self-agreement"],
            truth_rows,
        ),
        "",
        "### Methods: off-diagonal Spearman with the mean ground truth (95% bootstrap CI)",
        "",
        markdown(
            [
                "data",
                "ground truth",
                "R",
                "method",
                "agreement",
                "fraction of ceiling",
                "verdict",
                "time / ground truth",
            ],
            method_rows,
        ),
    ]
    if structure_rows:
        text += [
            "",
            "### Synthetic: mean ground truth vs the known structure (off-diagonal Spearman)",
            "",
            markdown(
                ["data", "ground truth", "R = 1", *(f"R = {n}" for n in sizes)], structure_rows
            ),
        ]
    return "\n".join(text)


def report(
    args: Any,
    summary: dict[str, dict[str, Any]],
    sizes: tuple[int, ...],
    repeats: int,
    adam: dict[str, Any],
    cases: dict[str, Any],
    started: float,
) -> None:
    """Write the tables (``--md``) and every figure (``--out``) of the datasets so far."""
    mode = "quick" if args.quick else "full"
    if args.md is not None:
        done = ", ".join(summary)
        command = "python benchmarks/trust.py" + (" --quick" if args.quick else "")
        args.md.write_text(
            "## Trust: resampled ground truths, noise ceilings, agreement with CIs\n\n"
            f"`{command}` ({mode} mode; datasets so far: {done}). Convex hard sharing "
            "with the default training (Newton or L-BFGS to the optimum, float64); regularisation: "
            + "; ".join(f"{k}: {v['regularisation']}" for k, v in summary.items())
            + ". R repeats, each a new split (same per-task sizes) and training seed; the "
            "methods run on the same repeats. Reliability: Spearman-Brown split-half "
            "reliability of the mean matrix off the diagonal; ceiling = sqrt(reliability). "
            "Definitions and verdict rules: the ground-truth section of the methods page."
            + (f" {args.note}" if args.note else "")
            + f"\n\n{tables(summary, sizes)}\n"
        )
    write_out(
        args,
        {
            "mode": mode,
            "repeats": repeats,
            "sizes": list(sizes),
            "train_config": TrainConfig().model_dump(),
            "baseline_train_config": adam,
            "datasets": {k: [v[0], v[1]] for k, v in cases.items()},
            "keys": {
                "R{r}_{gt}": "trust figures of ground truth gt over the first r repeats: "
                "reliability_gt, ceiling_gt (+ _ci_low/_ci_high), agreement_M_vs_gt "
                "(+ CI), fraction_of_ceiling_M_vs_gt, verdict_M_vs_gt, top_pairs_gt",
                "time_ratio_M_vs_gt": "wall time of M over all repeats / the ground truth's",
                "structure_spearman_gt_R{n}": "Spearman of the mean of the first n repeats "
                "with meta['similarity'], off the diagonal",
            },
            "results": summary,
        },
        started,
    )


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n\n")[0], default_seeds=10)
    p.add_argument("--md", type=Path, default=None, help="also write the tables here")
    p.add_argument("--only", default=None, help="comma-separated dataset labels to run")
    p.add_argument("--workers", type=int, default=1, help="processes for ground-truth trainings")
    p.add_argument("--note", default="", help="a sentence on the machine, added to --md")
    args = p.parse_args(argv)
    cache = setup(args, "trust")
    cache_dir = None if cache is None else cache.directory
    started = time.perf_counter()
    cases = QUICK if args.quick else DATASETS
    if args.only:
        cases = {k: v for k, v in cases.items() if k in args.only.split(",")}
    repeats = 4 if args.quick else args.seeds
    sizes = (repeats,) if args.quick else tuple(sorted({5, repeats}))
    seed_repeats = 0 if args.quick else 1
    adam = {**ADAM, "epochs": 10} if args.quick else ADAM
    summary: dict[str, dict[str, Any]] = {}
    for label, spec in cases.items():
        print(f"{label} ...", flush=True)
        case = run_case(
            label, spec, repeats, seed_repeats, adam, args.quick, cache, cache_dir, args.workers
        )
        summary[label] = summarize(case, sizes)
        report(args, summary, sizes, repeats, adam, cases, started)  # after every dataset
    print(tables(summary, sizes))
    print(f"\ntotal {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    run_main(main)
