"""The main job: train single-task, hard-sharing and soft-sharing models on one task set
and compare them per task, then compare relatedness methods on the same tasks against
retraining without each task (``taskrel demo``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from taskrel.compare import compare
from taskrel.config import DataConfig, RunConfig
from taskrel.experiment import RunOutcome, load_taskset, run_training
from taskrel.plots import metric_bars
from taskrel.relatedness import RelateContext
from taskrel.report import write_comparison
from taskrel.runs import record_run, write_json
from taskrel.training.metrics import PRIMARY_METRIC
from taskrel.training.trainer import TrainConfig

DEMO_MODELS: dict[str, dict[str, Any]] = {
    "stl": {"name": "stl", "hidden": [32]},
    "hard": {"name": "hard", "hidden": [32]},
    "soft": {"name": "soft", "hidden": [32], "coupling": 1e-2},
}

DEMO_METHODS = ["mtif", "gradient", "affinity", "ground-truth"]


def relatedness_context(seed: int) -> RelateContext:
    """Fast, exact settings for the demo's relatedness comparison: the convex hard-sharing
    model ``x.(w + v_t)`` solved by full-batch L-BFGS in float64, so MTIF's Hessian is
    taken at the optimum and each retraining differs from the full model by its data only.
    Gradient cosine and lookahead affinity record 30 epochs of mini-batch Adam instead
    (they are defined on stochastic first-order training)."""
    return RelateContext(
        model="hard",
        model_config={"hidden": [], "shared_head": True, "l2": 1e-2, "l2_task": 1e-1},
        train_config=TrainConfig(
            optimizer="lbfgs", lr=1.0, epochs=2, patience=None, dtype="float64", seed=seed
        ),
    )


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


def relatedness_options(seed: int) -> dict[str, dict[str, Any]]:
    adam = {"epochs": 30, "lr": 1e-2, "batch_size": 32, "patience": None, "seed": seed}
    return {"gradient": {"train_config": adam}, "affinity": {"train_config": adam}}


def demo_config(data: str, seed: int, model: dict[str, Any]) -> RunConfig:
    return RunConfig(
        seed=seed,
        data=DataConfig(name=data),
        model=model,
        train=TrainConfig(epochs=150, lr=1e-2, batch_size=32, patience=20),
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
    log("comparing relatedness methods against retraining without each task ...")
    with single_thread():
        comparison = compare(
            taskset, DEMO_METHODS, relatedness_context(seed), relatedness_options(seed), log=log
        )
    log(comparison.to_markdown())
    log(f"relatedness report: {write_comparison(comparison, run_dir / 'compare')}")
    return outcomes
