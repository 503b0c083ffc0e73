"""One training run end to end: load data, build and train a model, evaluate it, and
write everything into a run folder (the engine behind ``taskrel train`` and the demo)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from taskrel.config import RunConfig
from taskrel.data import load
from taskrel.data.taskset import TaskSet
from taskrel.models import build_model
from taskrel.models.base import MTLModel
from taskrel.runs import record_run, write_json
from taskrel.seeding import seed_everything
from taskrel.training.metrics import evaluate, summarize
from taskrel.training.trainer import TrainResult, train

MODEL_FILE = "model.pt"
RESULT_FILE = "metrics.json"  # written last: a run folder holding it is complete


def load_taskset(config: RunConfig) -> TaskSet:
    """The configured dataset, split with the run's seed unless the options name one,
    and standardised as configured."""
    options = {"seed": config.seed, **config.data.options}
    taskset = load(config.data.name, **options)
    if config.data.standardize != "none":
        taskset = taskset.standardize(config.data.standardize)
    return taskset


@dataclass
class RunOutcome:
    """What a training run produced."""

    model: MTLModel
    taskset: TaskSet
    metrics: dict[str, dict[str, float]]
    summary: dict[str, float]
    train_result: TrainResult
    seconds: float


def run_training(
    config: RunConfig,
    run_dir: Path | None = None,
    resume: bool = False,
    progress: bool | None = None,
    taskset: TaskSet | None = None,
) -> RunOutcome:
    """Train ``config.model`` on ``config.data`` and, with ``run_dir``, write
    ``config.json``, ``environment.json``, ``metrics.json`` (test metrics per task plus
    their average), ``history.json``, ``timings.json``, ``model.pt`` and model-specific
    artefacts into it (``metrics.json`` last, so its presence marks a finished run).
    ``"auto"`` regularisation options are chosen on validation data first
    (:func:`~taskrel.training.regularization.resolve_regularization`); ``model.pt`` holds
    the chosen values, ``config.json`` the config as given.
    ``resume`` continues from ``run_dir/checkpoint.pt``."""
    from taskrel.training.regularization import resolve_regularization

    taskset = taskset if taskset is not None else load_taskset(config)
    train_cfg = config.train.model_copy(update={"seed": config.seed})
    if run_dir is not None:
        record_run(run_dir, config.model_dump())
    options, report = resolve_regularization(
        taskset, config.model_name, config.model_options, train_cfg
    )
    pinned = config.model_copy(update={"model": {"name": config.model_name, **options}})
    seed_everything(config.seed)
    model = build_model(config.model_name, taskset, options)
    checkpoint = run_dir / "checkpoint.pt" if run_dir is not None else None
    if checkpoint is not None and not checkpoint.exists():
        resume = False  # interrupted before the first checkpoint: start from epoch 0
    start = time.perf_counter()
    result = train(
        model,
        taskset,
        train_cfg,
        checkpoint=checkpoint,
        resume=resume,
        progress=progress,
    )
    seconds = time.perf_counter() - start
    result.regularization = report.to_dict() if report is not None else None
    metrics = evaluate(model, taskset, "test")
    summary = {**summarize(metrics), **model.extra_metrics(taskset, "test")}
    if run_dir is not None:
        # the selection's wall time varies from run to run: timings.json, not metrics.json
        chosen = {k: v for k, v in (result.regularization or {}).items() if k != "seconds"}
        write_json(run_dir / "history.json", result.history, overwrite=resume)
        write_json(
            run_dir / "timings.json",
            {
                "train_seconds": seconds,
                "seconds_per_epoch": seconds / max(1, len(result.history)),
                "regularization_seconds": (result.regularization or {}).get("seconds", 0.0),
            },
            overwrite=True,
        )
        save_model(model, pinned, run_dir / MODEL_FILE)
        model.write_artifacts(run_dir, taskset)
        write_json(
            run_dir / RESULT_FILE,
            {
                "tasks": metrics,
                "average": summary,
                "best_epoch": result.best_epoch,
                "epochs_run": result.epochs_run,
                "convergence": result.convergence,
                "regularization": chosen or None,
            },
            overwrite=resume,
        )
    return RunOutcome(model, taskset, metrics, summary, result, seconds)


def save_model(model: MTLModel, config: RunConfig, path: Path) -> None:
    """Save parameters with the config needed to rebuild the model."""
    torch.save({"config": config.model_dump(), "state": model.state_dict()}, path)


def load_model(run_dir: str | Path) -> tuple[MTLModel, TaskSet, RunConfig]:
    """Rebuild a trained model (and its task set) from a run folder."""
    from taskrel.config import validate
    from taskrel.errors import RunDirError

    path = Path(run_dir) / MODEL_FILE
    if not path.is_file():
        raise RunDirError(f"{run_dir}: no {MODEL_FILE}; is this a finished training run?")
    try:
        saved: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
        config = validate(RunConfig, saved["config"], str(path))
    except (KeyError, TypeError, RuntimeError, OSError) as err:
        raise RunDirError(f"{path}: unreadable model file ({type(err).__name__})") from None
    taskset = load_taskset(config)
    model = build_model(config.model_name, taskset, config.model_options)
    model.load_state_dict(saved["state"])
    model.eval()
    return model, taskset, config
