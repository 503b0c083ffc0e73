"""The main job: train single-task, hard-sharing and soft-sharing models on one task set
and compare them per task (``taskrel demo``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from taskrel.config import DataConfig, RunConfig
from taskrel.experiment import RunOutcome, load_taskset, run_training
from taskrel.plots import metric_bars
from taskrel.runs import record_run, write_json
from taskrel.training.metrics import PRIMARY_METRIC
from taskrel.training.trainer import TrainConfig

DEMO_MODELS: dict[str, dict[str, Any]] = {
    "stl": {"name": "stl", "hidden": [32]},
    "hard": {"name": "hard", "hidden": [32]},
    "soft": {"name": "soft", "hidden": [32], "coupling": 1e-2},
}


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
    model into ``run_dir``; returns the outcome per model."""
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
    return outcomes
