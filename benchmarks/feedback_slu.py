"""Benchmark: output-level feedback MTL on ATIS and SNIPS (intent + slots).

Trains the joint BiLSTM base model (``slu``, the K = 0 baseline) and feedback variants
over several seeds and reports test intent accuracy, slot F1 (seqeval span F1) and
sentence (overall) accuracy as mean ± std, the feedback read-out (loss rise when an edge is
removed, gate choices) and training seconds per epoch.

Protocol: Adam, early stopping on the dev (``val``) loss (best dev epoch restored), never
on test. Unseen test intents / slot tags (ATIS) count as errors. Each training job runs in
its own process with ``--threads`` torch threads, ``--workers`` jobs at a time; seconds per
epoch therefore include the per-epoch dev evaluation and depend on the machine's load.
``--time-threads`` adds a separate timing of one ATIS epoch of the base and the main
feedback model, run alone with that many threads.

    python benchmarks/feedback_slu.py --quick --out quick.json
    python benchmarks/feedback_slu.py --out full.json --workers 16
    python benchmarks/feedback_slu.py --merge main.json ablations.json --out all.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

# the main feedback model: K = 2, hinge convergence loss (our formulation) on
FEEDBACK = {"iterations": 2, "gate_points": ["encoder", "decoder"]}
NO_CONVERGENCE = {"convergence_weight": 0.0}
SQUARED = {"convergence": "squared"}
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "base (K=0)": ("slu", {}),
    "base + chars": ("slu", {"char_filters": 50}),
    "feedback": ("feedback", FEEDBACK),
    "fixed: embedding": ("feedback", {**FEEDBACK, "infusion": "embedding"}),
    "fixed: encoder": ("feedback", {**FEEDBACK, "infusion": "encoder"}),
    "fixed: decoder": ("feedback", {**FEEDBACK, "infusion": "decoder"}),
    "gate incl. embedding": ("feedback", {**FEEDBACK, "gate_points": None}),
    "gate + none": ("feedback", {**FEEDBACK, "gate_none": True}),
    "intent->slots only": ("feedback", {**FEEDBACK, "edges": ["intent->slots"]}),
    "slots->intent only": ("feedback", {**FEEDBACK, "edges": ["slots->intent"]}),
    # iterations x convergence loss, one row each ("feedback" is K=2 with the hinge; the
    # hinge is identically 0 for K=1, so K=1 has no "hinge" row)
    "K=2, no convergence loss": ("feedback", {**FEEDBACK, **NO_CONVERGENCE}),
    "K=2, squared convergence loss": ("feedback", {**FEEDBACK, **SQUARED}),
    "K=1, no convergence loss": ("feedback", {**FEEDBACK, "iterations": 1, **NO_CONVERGENCE}),
    "K=1, squared convergence loss": ("feedback", {**FEEDBACK, "iterations": 1, **SQUARED}),
}
MAIN = ("base (K=0)", "feedback")
# not ablations of feedback: the embedding gate costs ~4x, chars change the base model
ABLATIONS = [v for v in VARIANTS if v not in ("gate incl. embedding", "base + chars")]
METRICS = ("intent_accuracy", "slot_f1", "overall_accuracy")


@dataclass(frozen=True)
class Job:
    """One training run."""

    dataset: str
    variant: str
    seed: int
    epochs: int
    patience: int
    batch_size: int
    lr: float
    n_train: int | None = None
    n_test: int | None = None
    slu: dict[str, Any] = field(default_factory=dict)
    selection_metric: str | None = None


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def load_data(dataset: str, n_train: int | None, n_test: int | None) -> Any:
    """ATIS/SNIPS, optionally with fewer training and test utterances."""
    from taskrel.data import load

    ts = load(dataset, n_train=n_train, seed=0)
    if n_test is None:
        return ts
    return ts.with_tasks([replace(t, test_idx=t.test_idx[:n_test]) for t in ts.tasks])


def run_job(job: Job) -> dict[str, Any]:
    """Train one model; test scores, feedback read-out and timings."""
    from taskrel.models import build_model
    from taskrel.models.feedback import FeedbackMTL, feedback_relatedness
    from taskrel.relatedness import RelateContext
    from taskrel.seeding import seed_everything
    from taskrel.training.trainer import TrainConfig, train

    ts = load_data(job.dataset, job.n_train, job.n_test)
    name, options = VARIANTS[job.variant]
    options = {**options, "slu": job.slu} if name == "feedback" else {**options, **job.slu}
    seed_everything(job.seed)
    model = build_model(name, ts, options)
    cfg = TrainConfig(
        epochs=job.epochs,
        patience=job.patience,
        batch_size=job.batch_size,
        lr=job.lr,
        grad_clip=5.0,
        seed=job.seed,
        selection_metric=job.selection_metric,
    )
    start = time.perf_counter()
    result = train(model, ts, cfg, progress=False)
    seconds = time.perf_counter() - start
    out: dict[str, Any] = {
        **job.__dict__,
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "train_seconds": seconds,
        "seconds_per_epoch": seconds / result.epochs_run,
        "test": model.extra_metrics(ts, "test"),
        "dev": model.extra_metrics(ts, "val"),
    }
    if isinstance(model, FeedbackMTL):
        rel = feedback_relatedness(ts, RelateContext(), model=model)
        out["relatedness"] = {
            f"{r['source']}->{r['target']}": r["value"]
            for r in rel.to_records()
            if r["source"] != r["target"]
        }
        out["gates"] = model.gate_report()
    return out


def time_epoch(
    dataset: str, variant: str, threads: int, batch_size: int, slu: dict[str, Any]
) -> float:
    """Seconds of one training epoch (with the dev evaluation), run in this process."""
    _init_worker(threads)
    job = Job(dataset, variant, 0, epochs=1, patience=1, batch_size=batch_size, lr=1e-3, slu=slu)
    return float(run_job(job)["seconds_per_epoch"])


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± std over seeds per (dataset, variant), in run order."""
    rows: list[dict[str, Any]] = []
    keys = list(dict.fromkeys((r["dataset"], r["variant"], r["epochs"]) for r in results))
    for key in keys:
        runs = [r for r in results if (r["dataset"], r["variant"], r["epochs"]) == key]
        dataset, variant, _ = key
        row: dict[str, Any] = {
            "dataset": dataset,
            "variant": variant,
            "seeds": len(runs),
            "epochs": runs[0]["epochs"],
            "epochs_run": [r["epochs_run"] for r in runs],
        }
        for m in METRICS:
            row[f"test_{m}_mean"], row[f"test_{m}_std"] = mean_std(
                [100 * r["test"][m] for r in runs]
            )
        row["seconds_per_epoch_mean"], row["seconds_per_epoch_std"] = mean_std(
            [r["seconds_per_epoch"] for r in runs]
        )
        if "relatedness" in runs[0]:
            for edge in runs[0]["relatedness"]:
                row[f"relatedness_{edge}_mean"], row[f"relatedness_{edge}_std"] = mean_std(
                    [r["relatedness"][edge] for r in runs]
                )
            row["gate_choices"] = [
                {g["source"] + "->" + g["target"]: g["chosen"] for g in r["gates"]} for r in runs
            ]
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| data | variant | epochs | intent acc % | slot F1 % | overall % | s/epoch "
        "| R[slots,intent] | R[intent,slots] |",
        "|---" * 9 + "|",
    ]
    for r in rows:
        cells = [r["dataset"], r["variant"], str(r["epochs"])]
        cells += [f"{r[f'test_{m}_mean']:.2f} ± {r[f'test_{m}_std']:.2f}" for m in METRICS]
        cells.append(f"{r['seconds_per_epoch_mean']:.1f}")
        for edge in ("intent->slots", "slots->intent"):
            key = f"relatedness_{edge}_mean"
            cells.append(f"{r[key]:+.4f} ± {r[f'relatedness_{edge}_std']:.4f}" if key in r else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plan(args: argparse.Namespace) -> list[Job]:
    """The jobs of quick or full mode."""
    seeds = range(args.seeds)
    if args.quick:
        small = {"embedding_dim": 32, "hidden": 32, "decoder_hidden": 32}
        return [
            Job(
                "atis",
                v,
                s,
                epochs=8,
                patience=8,
                batch_size=16,
                lr=3e-3,
                n_train=300,
                n_test=300,
                slu=small,
            )
            for v in MAIN
            for s in seeds
        ]
    jobs = []
    for dataset in args.datasets:
        batch = 32 if dataset == "atis" else 64
        epochs = args.epochs if dataset == "atis" else args.snips_epochs
        budgets = [(epochs, list(args.main))]
        if dataset in args.ablation_datasets:
            budgets.append((args.ablation_epochs, args.variants))
        for n_epochs, variants in budgets:
            jobs += [
                Job(
                    dataset,
                    v,
                    s,
                    n_epochs,
                    args.patience,
                    batch,
                    lr=1e-3,
                    slu={"word_dropout": args.word_dropout},
                    selection_metric=args.selection_metric,
                )
                for v in variants
                for s in seeds
            ]
    return jobs


def run_all(jobs: list[Job], args: argparse.Namespace, report: dict[str, Any]) -> None:
    """Run ``jobs`` in ``args.workers`` processes into ``report['runs']`` (job order),
    rewriting ``args.out`` after each one."""
    results = report["runs"]
    with ProcessPoolExecutor(
        args.workers, initializer=_init_worker, initargs=(args.threads,)
    ) as pool:
        costly_first = sorted(jobs, key=lambda j: VARIANTS[j.variant][0] != "feedback")
        futures = [pool.submit(run_job, j) for j in costly_first]
        for fut in as_completed(futures):
            results.append(fut.result())
            r = results[-1]
            print(
                f"done {r['dataset']} {r['variant']} seed {r['seed']}: "
                + " ".join(f"{m}={r['test'][m]:.4f}" for m in METRICS)
                + f" ({r['seconds_per_epoch']:.1f} s/epoch)",
                flush=True,
            )
            if args.out:
                args.out.write_text(json.dumps(report, indent=2, default=str))
    order = {(j.dataset, j.variant, j.epochs, j.seed): i for i, j in enumerate(jobs)}
    results.sort(key=lambda r: order[(r["dataset"], r["variant"], r["epochs"], r["seed"])])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="ATIS subset, 2 variants, <60 s")
    parser.add_argument("--out", type=Path, help="write every figure to this JSON file")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--datasets", nargs="+", default=["atis", "snips"])
    parser.add_argument(
        "--main",
        nargs="*",
        choices=list(VARIANTS),
        default=list(MAIN),
        help="variants of the main budget (--epochs, --snips-epochs)",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        default=list(ABLATIONS),
        help="variants of the ablation budget",
    )
    parser.add_argument("--ablation-datasets", nargs="*", default=["atis"])
    parser.add_argument("--epochs", type=int, default=15, help="ATIS base and main feedback")
    parser.add_argument("--snips-epochs", type=int, default=6, help="SNIPS base and feedback")
    parser.add_argument("--ablation-epochs", type=int, default=4, help="every ablation variant")
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument(
        "--word-dropout", type=float, default=0.0, help="JointSLU word_dropout (full mode)"
    )
    parser.add_argument(
        "--selection-metric",
        choices=list(METRICS),
        help="early stopping on this dev metric instead of the dev loss (full mode)",
    )
    parser.add_argument("--workers", type=int, default=1, help="training jobs in parallel")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per job")
    parser.add_argument(
        "--time-threads",
        type=int,
        default=0,
        help="also time one ATIS epoch alone with this many threads (0: no)",
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        help="train nothing: summarise the runs of these earlier --out files together",
    )
    args = parser.parse_args(argv)
    jobs = plan(args)
    start = time.perf_counter()
    results: list[dict[str, Any]] = []
    report: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "arguments": {k: str(v) for k, v in vars(args).items()},
        "cpu_count": os.cpu_count(),
        "runs": results,
    }
    if args.merge:
        report["mode"] = "merge"
        for path in args.merge:
            results += json.loads(path.read_text())["runs"]
    else:
        run_all(jobs, args, report)
    report["summary"] = summarize(results)
    if args.time_threads:
        slu = jobs[0].slu if jobs else {}
        timing = {v: time_epoch("atis", v, args.time_threads, 32, slu) for v in MAIN}
        report["timing_alone"] = {
            "threads": args.time_threads,
            "seconds_per_atis_epoch": timing,
            "feedback_over_base": timing["feedback"] / timing["base (K=0)"],
        }
    report["wall_seconds"] = time.perf_counter() - start
    table = markdown(report["summary"])
    report["markdown"] = table
    print(table)
    base_rows = {
        (r["dataset"], r["epochs"]): r for r in report["summary"] if r["variant"] == "base (K=0)"
    }
    for r in report["summary"]:
        base = base_rows.get((r["dataset"], r["epochs"]))
        if base is not None and r is not base:
            r["overall_gain_over_base"] = (
                r["test_overall_accuracy_mean"] - base["test_overall_accuracy_mean"]
            )
            print(
                f"{r['dataset']} {r['variant']} ({r['epochs']} epochs): overall accuracy "
                f"{r['overall_gain_over_base']:+.2f} points vs base"
            )
    if "timing_alone" in report:
        t = report["timing_alone"]
        print(
            f"one ATIS epoch alone, {t['threads']} threads: "
            + ", ".join(f"{k} {v:.1f} s" for k, v in t["seconds_per_atis_epoch"].items())
            + f" (feedback/base = {t['feedback_over_base']:.2f})"
        )
    print(f"wall time {report['wall_seconds']:.0f} s")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2, default=str))
    return report


if __name__ == "__main__":
    main()
