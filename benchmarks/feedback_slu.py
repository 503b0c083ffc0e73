"""Benchmark: output-level feedback MTL on ATIS and SNIPS (intent + slots), on two base
models.

Trains each base model (``slu``: joint BiLSTM-CRF; ``slu-stack``: Stack-Propagation style)
alone and wrapped in feedback MTL, with and without the character CNN, over paired seeds
(the same seed gives the same data order and, within a base, the same initial base
weights), and reports test intent accuracy, slot F1 (seqeval span F1) and sentence
(overall) accuracy as mean ± std, the paired per-seed differences with a paired t-test
(feedback vs its base, the ablation contrasts, characters vs none, stack vs joint), the
feedback read-out (loss rise when an edge is removed, gate choices), seconds per epoch and
the latency of ``tag_sentence`` (what ``taskrel predict`` runs) for one utterance.

Protocol: Adam, early stopping on the dev (``val``) loss or ``--selection-metric`` (best
dev epoch restored), never on test. Unseen test intents / slot tags (ATIS) count as errors.
Jobs run in ``--jobs`` worker processes with one torch thread each, on ``--device`` (``cuda``
moves models and batches to the GPU; the workers are then spawned, not forked). Seconds
per epoch include the per-epoch dev evaluation and depend on the machine's load;
``--time-threads`` adds a timing of one ATIS epoch of every base and its feedback model,
run alone. Every finished run is cached (``--cache``, default ``.bench-cache/feedback_slu``):
rerunning the same command resumes, and ``--merge`` summarises earlier ``--out`` files
together. The markdown tables are also written next to ``--out`` (``.md``).

    python benchmarks/feedback_slu.py --quick --jobs 2 --out quick.json
    python benchmarks/feedback_slu.py --jobs 16 --device cuda --out results/full.json \\
        --cache results/cache
    python benchmarks/feedback_slu.py --merge main.json ablations.json --out all.json
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from _harness import cached, machine_load, mean_std, parser, pm, run_main, setup, write_out
from scipy import stats

from taskrel.execution import ResultCache, process_pool

# the main feedback model: K = 2, hinge convergence loss (our formulation) on
FEEDBACK = {"iterations": 2, "gate_points": ["encoder", "decoder"]}
NO_CONVERGENCE = {"convergence_weight": 0.0}
SQUARED = {"convergence": "squared"}
VARIANTS: dict[str, dict[str, Any] | None] = {
    "base": None,  # the base model itself (K = 0)
    "feedback": FEEDBACK,
    "fixed: embedding": {**FEEDBACK, "infusion": "embedding"},
    "fixed: encoder": {**FEEDBACK, "infusion": "encoder"},
    "fixed: decoder": {**FEEDBACK, "infusion": "decoder"},
    "gate incl. embedding": {**FEEDBACK, "gate_points": None},
    "gate + none": {**FEEDBACK, "gate_none": True},
    "intent->slots only": {**FEEDBACK, "edges": ["intent->slots"]},
    "slots->intent only": {**FEEDBACK, "edges": ["slots->intent"]},
    # iterations x convergence loss, one row each ("feedback" is K=2 with the hinge; the
    # hinge is identically 0 for K=1, so K=1 has no "hinge" row)
    "K=2, no convergence loss": {**FEEDBACK, **NO_CONVERGENCE},
    "K=2, squared convergence loss": {**FEEDBACK, **SQUARED},
    "K=1, no convergence loss": {**FEEDBACK, "iterations": 1, **NO_CONVERGENCE},
    "K=1, squared convergence loss": {**FEEDBACK, "iterations": 1, **SQUARED},
}
MAIN = ("base", "feedback")
# not ablations of feedback: the embedding gate costs ~4x
ABLATIONS = [v for v in VARIANTS if v != "gate incl. embedding"]
BASES = {"slu": "slu", "slu-stack": "stack"}  # base model -> its options key in feedback
METRICS = ("intent_accuracy", "slot_f1", "overall_accuracy")
CACHE_VERSION = 2  # bump when a change invalidates cached runs
CHAR_CNN_VERSION = 2  # bump when the character CNN changes (invalidates runs with chars > 0)
LATENCY_SENTENCE = "show me the cheapest round trip flights from boston to denver on monday"


@dataclass(frozen=True)
class Job:
    """One training run: ``base`` model alone or wrapped by ``variant``'s feedback
    options, with ``chars`` character-CNN filters (0: none)."""

    dataset: str
    base: str
    variant: str
    chars: int
    seed: int
    epochs: int
    patience: int
    batch_size: int
    lr: float
    n_train: int | None = None
    n_val: int | None = None
    n_test: int | None = None
    slu: dict[str, Any] = field(default_factory=dict)
    selection_metric: str | None = None

    def model(self) -> tuple[str, dict[str, Any]]:
        """Registry name and options of this job's model (the ``slu`` options that the
        base's config has, e.g. ``attention_dim`` only for ``slu-stack``)."""
        from taskrel.models import model_class

        fields = model_class(self.base).Config.model_fields
        body = {k: v for k, v in self.slu.items() if k in fields} | {"char_filters": self.chars}
        options = VARIANTS[self.variant]
        if options is None:
            return self.base, body
        return "feedback", {**options, "base": self.base, BASES[self.base]: body}


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


@functools.cache
def load_data(dataset: str, n_train: int | None, n_val: int | None, n_test: int | None) -> Any:
    """ATIS/SNIPS, optionally with fewer training, dev and test utterances (loaded once
    per process)."""
    from taskrel.data import load

    ts = load(dataset, n_train=n_train, seed=0)
    return ts.with_tasks(
        [replace(t, val_idx=t.val_idx[:n_val], test_idx=t.test_idx[:n_test]) for t in ts.tasks]
    )


def run_job(job: Job, device: str = "cpu") -> dict[str, Any]:
    """Train one model on ``device``; test scores, feedback read-out and timings."""
    from taskrel.models import build_model
    from taskrel.models.feedback import FeedbackMTL, feedback_relatedness
    from taskrel.relatedness import RelateContext
    from taskrel.seeding import seed_everything
    from taskrel.training.trainer import TrainConfig, train

    ts = load_data(job.dataset, job.n_train, job.n_val, job.n_test)
    name, options = job.model()
    seed_everything(job.seed)
    model = build_model(name, ts, options).to(device)
    cfg = TrainConfig(
        epochs=job.epochs,
        patience=job.patience,
        batch_size=job.batch_size,
        lr=job.lr,
        grad_clip=5.0,
        seed=job.seed,
        selection_metric=job.selection_metric,
    )
    ends: list[tuple[float, float]] = []  # (wall, this process's CPU) seconds

    def clock(*_: Any) -> None:
        ends.append((time.perf_counter(), time.process_time()))

    clock()
    result = train(model, ts, cfg, progress=False, on_epoch=clock)
    seconds = time.perf_counter() - ends[0][0]
    epochs = len(ends) - 1
    out: dict[str, Any] = {
        **asdict(job),
        "device": device,
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "train_seconds": seconds,
        # training steps + dev evaluation, without the final convergence check; CPU
        # seconds (all threads of the process) do not grow when other processes load the
        # machine, so they estimate the wall time on idle cores of a one-thread run
        "seconds_per_epoch": (ends[-1][0] - ends[0][0]) / epochs,
        "cpu_seconds_per_epoch": (ends[-1][1] - ends[0][1]) / epochs,
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


def run_cached(job: Job, device: str, cache_dir: str | None) -> dict[str, Any]:
    """:func:`run_job`, or its cached result (the key is the job, not the device)."""
    cache = ResultCache(cache_dir) if cache_dir is not None else None
    key = ["feedback_slu", CACHE_VERSION, asdict(job)]
    if job.chars:  # version 2: the max skips positions past a word's end
        key.append({"char_cnn": CHAR_CNN_VERSION})
    return dict(cached(cache, key, lambda: run_job(job, device)))


def time_epoch(
    base: str, variant: str, threads: int, device: str, chars: int = 0
) -> dict[str, float]:
    """Wall and CPU seconds of one ATIS training epoch (with the dev evaluation) of the
    default-size model, run in this process with ``threads`` torch threads."""
    _init_worker(threads)
    job = Job("atis", base, variant, chars, 0, epochs=1, patience=1, batch_size=32, lr=1e-3)
    run = run_job(job, device)
    return {"wall": run["seconds_per_epoch"], "cpu": run["cpu_seconds_per_epoch"]}


def predict_latency(chars: int, repeats: int = 30) -> dict[str, float]:
    """Median milliseconds of :func:`taskrel.models.slu.tag_sentence` on one ATIS
    utterance, after loading, per base and base + feedback at the default model size with
    ``chars`` character filters (one thread, CPU; the weights are untrained, which does
    not change the cost)."""
    import torch

    from taskrel.models import build_model
    from taskrel.models.slu import tag_sentence

    torch.set_num_threads(1)
    ts = load_data("atis", None, None, None)
    latency = {}
    for base in BASES:
        for variant in MAIN:
            torch.manual_seed(0)
            name, options = Job("atis", base, variant, chars, 0, 1, 1, 32, 1e-3).model()
            model = build_model(name, ts, options).eval()
            times = []
            for _ in range(repeats + 3):  # 3 warm-up calls
                start = time.perf_counter()
                tag_sentence(model, ts, LATENCY_SENTENCE)
                times.append(1000 * (time.perf_counter() - start))
            label = base if variant == "base" else f"{base} + feedback"
            latency[label] = float(np.median(times[3:]))
    return latency


# -- statistics ---------------------------------------------------------------------------
GROUP = ("dataset", "base", "chars", "variant", "epochs")


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± std over seeds per (dataset, base, chars, variant, epochs), in run order."""
    rows: list[dict[str, Any]] = []
    keys = list(dict.fromkeys(tuple(r[k] for k in GROUP) for r in results))
    for key in keys:
        runs = [r for r in results if tuple(r[k] for k in GROUP) == key]
        row: dict[str, Any] = dict(zip(GROUP, key, strict=True))
        row.update(seeds=[r["seed"] for r in runs], epochs_run=[r["epochs_run"] for r in runs])
        for m in METRICS:
            row[f"test_{m}"] = mean_std([100 * r["test"][m] for r in runs])
        for clock in ("seconds_per_epoch", "cpu_seconds_per_epoch"):
            row[clock] = mean_std([r.get(clock, float("nan")) for r in runs])
        if "relatedness" in runs[0]:
            for edge in runs[0]["relatedness"]:
                row[f"relatedness_{edge}"] = mean_std([r["relatedness"][edge] for r in runs])
            row["gate_choices"] = [
                {g["source"] + "->" + g["target"]: g["chosen"] for g in r["gates"]} for r in runs
            ]
        rows.append(row)
    return rows


def paired(
    results: list[dict[str, Any]], factor: str, treated: Any, control: Any
) -> list[dict[str, Any]]:
    """Paired comparisons of ``factor == treated`` against ``factor == control`` with every
    other setting equal, paired by seed: per-seed differences of each test metric in
    points (treated − control), their mean ± std, wins, and the two-sided paired t-test
    p-value (NaN with fewer than 2 pairs)."""
    others = [k for k in GROUP if k != factor]
    index = {(tuple(r[k] for k in others), r[factor], r["seed"]): r for r in results}
    comparisons = []
    for setting in dict.fromkeys(tuple(r[k] for k in others) for r in results):
        seeds = sorted(
            s for (o, f, s) in index if o == setting and f == treated and (o, control, s) in index
        )
        if not seeds:
            continue
        row: dict[str, Any] = {
            **dict(zip(others, setting, strict=True)),
            "compare": f"{factor}: {treated} − {control}",
            "seeds": seeds,
        }
        for m in METRICS:
            diffs = [
                100
                * (
                    index[(setting, treated, s)]["test"][m]
                    - index[(setting, control, s)]["test"][m]
                )
                for s in seeds
            ]
            row[f"diff_{m}"] = {
                **mean_std(diffs),
                "per_seed": diffs,
                "wins": int(sum(d > 0 for d in diffs)),
                "p_paired_t": float(stats.ttest_1samp(diffs, 0.0).pvalue)
                if len(diffs) > 1 and np.std(diffs) > 0
                else float("nan"),
            }
        comparisons.append(row)
    return comparisons


# ablation contrasts (treated, control): each changes one thing of the feedback model
CONTRASTS = (
    ("feedback", "K=2, no convergence loss"),  # the hinge
    ("K=2, squared convergence loss", "K=2, no convergence loss"),  # the squared loss
    ("K=2, no convergence loss", "K=1, no convergence loss"),  # a second iteration
    ("K=1, squared convergence loss", "K=1, no convergence loss"),
)


def comparisons(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Feedback (every variant) vs its base, the ablation contrasts of :data:`CONTRASTS`,
    characters vs none, stack vs joint base."""
    out = []
    for variant in dict.fromkeys(r["variant"] for r in results):
        if variant != "base":
            out += paired(results, "variant", variant, "base")
    for treated, control in CONTRASTS:
        out += paired(results, "variant", treated, control)
    for chars in sorted({r["chars"] for r in results} - {0}):
        out += paired(results, "chars", chars, 0)
    out += paired(results, "base", "slu-stack", "slu")
    return out


def markdown(rows: list[dict[str, Any]], pairs: list[dict[str, Any]]) -> str:
    lines = [
        "| data | base | chars | variant | epochs | intent acc % | slot F1 % | overall % "
        "| s/epoch (CPU s) | R[slots,intent] | R[intent,slots] |",
        "|---" * 11 + "|",
    ]
    for r in rows:
        cells = [r["dataset"], r["base"], str(r["chars"]), r["variant"], str(r["epochs"])]
        cells += [pm(r[f"test_{m}"], 2) for m in METRICS]
        cells.append(
            f"{r['seconds_per_epoch']['mean']:.1f} ({r['cpu_seconds_per_epoch']['mean']:.1f})"
        )
        for edge in ("intent->slots", "slots->intent"):
            stat = r.get(f"relatedness_{edge}")
            cells.append(f"{stat['mean']:+.4f} ± {stat['std']:.4f}" if stat else "-")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Paired differences (treated − control, points; per seed; wins; two-sided paired "
        "t-test p):",
        "",
        "| data | setting | comparison | epochs | Δ overall | per seed | wins | p "
        "| Δ slot F1 | Δ intent acc |",
        "|---" * 10 + "|",
    ]
    for c in pairs:
        setting = ", ".join(
            f"{k}={c[k]}" for k in ("base", "chars", "variant") if k in c and k != "epochs"
        )
        d = c["diff_overall_accuracy"]
        lines.append(
            "| "
            + " | ".join(
                [
                    c["dataset"],
                    setting,
                    c["compare"],
                    str(c["epochs"]),
                    pm(d, 2),
                    " ".join(f"{v:+.2f}" for v in d["per_seed"]),
                    f"{d['wins']}/{len(d['per_seed'])}",
                    f"{d['p_paired_t']:.3f}",
                    pm(c["diff_slot_f1"], 2),
                    pm(c["diff_intent_accuracy"], 2),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


# -- the grid -----------------------------------------------------------------------------
def plan(args: argparse.Namespace) -> list[Job]:
    """The jobs of quick or full mode."""
    seeds = range(args.seeds)
    if args.quick:
        small = {"embedding_dim": 32, "hidden": 32, "decoder_hidden": 32, "attention_dim": 32}
        return [
            Job("atis", b, v, 0, s, 6, 6, 16, 1e-2, n_train=200, n_val=100, n_test=200, slu=small)
            for b in args.bases
            for v in MAIN
            for s in seeds
        ]
    jobs = []
    slu = {"word_dropout": args.word_dropout}
    for dataset in args.datasets:
        batch = 32 if dataset == "atis" else 64
        epochs = args.epochs if dataset == "atis" else args.snips_epochs
        grid = [(epochs, list(args.main), args.bases, args.chars)]
        if dataset in args.ablation_datasets:
            grid.append((args.ablation_epochs, args.variants, ["slu"], [0]))
        for n_epochs, variants, bases, chars in grid:
            jobs += [
                Job(
                    dataset,
                    b,
                    v,
                    c,
                    s,
                    n_epochs,
                    args.patience,
                    batch,
                    lr=1e-3,
                    slu=slu,
                    selection_metric=args.selection_metric,
                )
                for b in bases
                for c in chars
                for v in variants
                for s in seeds
            ]
    return jobs


def run_all(
    jobs: list[Job],
    args: argparse.Namespace,
    cache: ResultCache | None,
    on_result: Callable[[list[dict[str, Any]]], None],
) -> list[dict[str, Any]]:
    """Run (or fetch from the cache) ``jobs`` in ``args.jobs`` worker processes, seed by
    seed (so that a run stopped early still has complete pairs), the longest jobs of a
    seed first. ``on_result`` gets the finished runs (in job order) after each one. After
    ``args.stop_after`` seconds no new job starts; the running ones finish."""
    cache_dir = str(cache.directory) if cache is not None else None
    method = "fork" if args.device == "cpu" else "spawn"  # CUDA cannot run in forked workers
    deadline = time.perf_counter() + (args.stop_after or math.inf)
    results: dict[int, dict[str, Any]] = {}
    queue = sorted(
        range(len(jobs)),
        key=lambda i: (
            jobs[i].seed,
            VARIANTS[jobs[i].variant] is None,
            jobs[i].dataset != "snips",
            jobs[i].chars == 0,
        ),
        reverse=True,  # popped from the end
    )
    with process_pool(args.jobs, method, initializer=_init_worker, initargs=(1,)) as pool:
        running: dict[Future[dict[str, Any]], int] = {}
        while queue or running:
            # submit only what a worker can start now, so that nothing starts after the
            # deadline (a pool queues one job more than it has workers)
            while queue and len(running) < args.jobs and time.perf_counter() < deadline:
                i = queue.pop()
                running[pool.submit(run_cached, jobs[i], args.device, cache_dir)] = i
            if not running:
                break
            done, _ = wait(running, timeout=5, return_when=FIRST_COMPLETED)
            for fut in done:
                r = results[running.pop(fut)] = fut.result()
                print(
                    f"done {r['dataset']} {r['base']} chars={r['chars']} {r['variant']} "
                    f"seed {r['seed']}: "
                    + " ".join(f"{m}={r['test'][m]:.4f}" for m in METRICS)
                    + f" ({r['seconds_per_epoch']:.1f} s/epoch, {len(results)}/{len(jobs)})",
                    flush=True,
                )
                on_result([results[i] for i in sorted(results)])
    if len(results) < len(jobs):
        print(f"stopped: {len(jobs) - len(results)} of {len(jobs)} jobs not run", flush=True)
    return [results[i] for i in sorted(results)]


def report(args: argparse.Namespace, results: list[dict[str, Any]], planned: int) -> dict[str, Any]:
    """Runs, summary, paired comparisons and their markdown."""
    figures: dict[str, Any] = {
        "mode": "merge" if args.merge else "quick" if args.quick else "full",
        "cpu_count": os.cpu_count(),
        "jobs_planned": planned,
        "jobs_finished": len(results),
        "runs": results,
        "summary": summarize(results),
        "paired": comparisons(results),
    }
    figures["markdown"] = markdown(figures["summary"], figures["paired"])
    return figures


def save(args: argparse.Namespace, figures: dict[str, Any], started: float) -> None:
    """``--out`` JSON and the markdown next to it (``.md``)."""
    write_out(args, figures, started)
    if args.out is not None:
        args.out.with_suffix(".md").write_text(figures["markdown"] + "\n")


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__.split("\n\n")[0], default_seeds=3)
    p.add_argument("--datasets", nargs="*", default=["atis", "snips"])
    p.add_argument("--bases", nargs="+", choices=list(BASES), default=list(BASES))
    p.add_argument(
        "--chars",
        nargs="+",
        type=int,
        default=[0, 50],
        help="character-CNN filters of the main grid (0: none); each value is a row",
    )
    p.add_argument(
        "--main",
        nargs="*",
        choices=list(VARIANTS),
        default=list(MAIN),
        help="variants of the main budget (--epochs, --snips-epochs)",
    )
    p.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        default=list(ABLATIONS),
        help="variants of the ablation budget (slu base, no characters)",
    )
    p.add_argument("--ablation-datasets", nargs="*", default=[])
    p.add_argument("--epochs", type=int, default=15, help="ATIS main budget")
    p.add_argument("--snips-epochs", type=int, default=6, help="SNIPS main budget")
    p.add_argument("--ablation-epochs", type=int, default=4, help="every ablation variant")
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--word-dropout", type=float, default=0.0, help="word_dropout (full mode)")
    p.add_argument(
        "--selection-metric",
        choices=list(METRICS),
        help="early stopping on this dev metric instead of the dev loss (full mode)",
    )
    p.add_argument("--jobs", type=int, default=1, help="worker processes, one thread each")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument(
        "--stop-after",
        type=float,
        default=None,
        help="seconds after which no new job starts (running jobs finish; results so far "
        "are summarised and cached)",
    )
    p.add_argument(
        "--time-threads",
        type=int,
        default=0,
        help="also time one ATIS epoch of each base and its feedback alone (0: no)",
    )
    p.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        help="train nothing: summarise the runs of these earlier --out files together",
    )
    args = p.parse_args(argv)
    cache = setup(args, "feedback_slu")
    started = time.perf_counter()
    jobs = plan(args)
    if args.merge:
        results = [r for path in args.merge for r in json.loads(path.read_text())["runs"]]
    else:
        results = run_all(
            jobs, args, cache, lambda done: save(args, report(args, done, len(jobs)), started)
        )
    figures = report(args, results, len(jobs))
    figures["predict_ms_one_utterance"] = predict_latency(max(args.chars))
    if args.time_threads:
        figures["timing_alone"] = timing = {
            "threads": args.time_threads,
            "device": args.device,
            "seconds_per_atis_epoch": {
                f"{b} {v}": time_epoch(b, v, args.time_threads, args.device)
                for b in args.bases
                for v in MAIN
            },
        }
        per = timing["seconds_per_atis_epoch"]
        timing["feedback_over_base"] = {
            b: {c: per[f"{b} feedback"][c] / per[f"{b} base"][c] for c in ("wall", "cpu")}
            for b in args.bases
        }
        timing["machine_load"] = machine_load()
    print(figures["markdown"])
    print(
        "tag_sentence, one utterance (ms): "
        + ", ".join(f"{k} {v:.1f}" for k, v in figures["predict_ms_one_utterance"].items())
    )
    if "timing_alone" in figures:
        t = figures["timing_alone"]
        print(
            f"one ATIS epoch alone, {t['threads']} threads, {t['device']}: "
            + ", ".join(
                f"{k} {v['wall']:.1f} s ({v['cpu']:.1f} CPU s)"
                for k, v in t["seconds_per_atis_epoch"].items()
            )
            + " (feedback/base: "
            + ", ".join(
                f"{b} {r['wall']:.2f} ({r['cpu']:.2f} CPU)"
                for b, r in t["feedback_over_base"].items()
            )
            + ")"
        )
    print(f"wall time {time.perf_counter() - started:.0f} s", file=sys.stderr)
    save(args, figures, started)


if __name__ == "__main__":
    run_main(main)
