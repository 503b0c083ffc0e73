"""The main job: train single-task, hard-sharing and soft-sharing models on one task set
and compare them per task, then compare relatedness methods on the same tasks against
retraining without each task, over resampled splits, with the noise ceiling of that ground
truth (``taskrel demo``). Everything runs with the library's defaults."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from taskrel.config import DataConfig, RunConfig
from taskrel.pipelines.compare import compare
from taskrel.pipelines.experiment import RunOutcome, load_taskset, run_training
from taskrel.pipelines.report import write_comparison
from taskrel.plots import metric_bars
from taskrel.relatedness import RelateContext
from taskrel.runs import record_run, write_json
from taskrel.training.metrics import PRIMARY_METRIC
from taskrel.training.trainer import TrainConfig

DEMO_MODELS: dict[str, dict[str, Any]] = {name: {"name": name} for name in ("stl", "hard", "soft")}
"""The library defaults: linear models whose regularisation is chosen on validation data,
trained to the optimum."""

DEMO_METHODS = ["mtif", "gradient", "affinity", "param-similarity", "ground-truth"]

DEMO_REPEATS = 5
"""Resampled splits and seeds of the relatedness comparison (noise ceiling, CIs, verdicts)."""


def relatedness_context(seed: int) -> RelateContext:
    """The default relatedness context (hard sharing with its defaults: linear, validated
    regularisation chosen once, exact training) with the demo's seed."""
    return RelateContext(train_config=TrainConfig(seed=seed))


@contextmanager
def single_thread() -> Iterator[None]:
    """One torch thread inside the block: on these tiny models intra-op threads only add
    synchronisation (measured on a busy 2-core machine: retraining 265 s with 2 threads,
    7 s with 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def demo_config(data: str, seed: int, model: dict[str, Any]) -> RunConfig:
    return RunConfig(
        seed=seed,
        data=DataConfig(name=data),
        model=model,
        train=TrainConfig(),
    )


def run_demo(
    run_dir: Path, data: str = "synthetic", seed: int = 0, log: Callable[[str], None] = print
) -> dict[str, RunOutcome]:
    """Train every model of :data:`DEMO_MODELS` on ``data`` (same split and seed), write
    ``metrics.json`` (per model and task), ``per_task_<metric>.png`` and a sub-folder per
    model into ``run_dir``; then compare :data:`DEMO_METHODS` on the same tasks and write
    that comparison with its HTML report into ``run_dir/compare``. Returns the outcome
    per model."""
    base = demo_config(data, seed, DEMO_MODELS["hard"])
    taskset = load_taskset(base)
    record_run(
        run_dir,
        {
            "demo": {
                "data": data,
                "seed": seed,
                "models": {
                    m: demo_config(data, seed, c).model_dump() for m, c in DEMO_MODELS.items()
                },
            }
        },
    )
    outcomes: dict[str, RunOutcome] = {}
    for name, model in DEMO_MODELS.items():
        log(f"training {name} on {data} ...")
        sub = run_dir / name
        sub.mkdir()
        with single_thread():
            outcomes[name] = run_training(demo_config(data, seed, model), sub, taskset=taskset)
    metric = PRIMARY_METRIC[taskset.tasks[0].kind]
    table = {m: {t: o.metrics[t][metric] for t in taskset.names} for m, o in outcomes.items()}
    write_json(
        run_dir / "metrics.json",
        {
            "metric": metric,
            "per_task": table,
            "average": {m: o.summary for m, o in outcomes.items()},
        },
    )
    metric_bars(
        table, metric, run_dir / f"per_task_{metric}.png", title=f"{data}: test {metric} per task"
    )
    log(
        f"comparing relatedness methods against retraining without each task, over "
        f"{DEMO_REPEATS} resampled splits ..."
    )
    with single_thread():
        comparison = compare(
            taskset,
            DEMO_METHODS,
            relatedness_context(seed),
            log=log,
            repeats=DEMO_REPEATS,
            seed=seed,
        )
    log(comparison.to_markdown())
    log(f"relatedness report: {write_comparison(comparison, run_dir / 'compare')}")
    return outcomes
