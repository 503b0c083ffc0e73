"""Core commands: ``demo``, ``train`` and ``datasets``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from taskrel.cli import app
from taskrel.config import RunConfig

console = Console()

OutOption = Annotated[
    Path | None,
    typer.Option("--out", help="run folder to create (default: runs/<command>-<time>)"),
]


def metrics_table(title: str, rows: dict[str, dict[str, float]], columns: list[str]) -> Table:
    """A rich table with one row per key of ``rows`` and the given metric columns."""
    table = Table(title=title)
    table.add_column("")
    for c in columns:
        table.add_column(c, justify="right")
    for name, values in rows.items():
        table.add_row(name, *(f"{values[c]:.4f}" if c in values else "-" for c in columns))
    return table


@app.command()
def demo(
    data: Annotated[str, typer.Option(help="dataset name or file")] = "synthetic",
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    out: OutOption = None,
) -> None:
    """Train single-task, hard- and soft-sharing models on a built-in dataset and
    compare them per task, then compare relatedness methods against retraining (HTML
    report in the run folder's compare/)."""
    from taskrel.demo import run_demo
    from taskrel.runs import new_run_dir
    from taskrel.training.metrics import PRIMARY_METRIC

    run_dir = new_run_dir(out, kind="demo")
    start = time.perf_counter()
    outcomes = run_demo(run_dir, data=data, seed=seed, log=console.print)
    first = next(iter(outcomes.values()))
    metric = PRIMARY_METRIC[first.taskset.tasks[0].kind]
    rows = {t: {m: o.metrics[t][metric] for m, o in outcomes.items()} for t in first.taskset.names}
    rows["average"] = {m: o.summary[metric] for m, o in outcomes.items()}
    console.print(metrics_table(f"test {metric} per task ({data})", rows, list(outcomes)))
    console.print(f"run folder: {run_dir}  ({time.perf_counter() - start:.1f} s)")


@app.command()
def train(
    config: Annotated[Path | None, typer.Option(help="TOML/JSON run config")] = None,
    model: Annotated[str | None, typer.Option(help="model name (overrides the config)")] = None,
    data: Annotated[str | None, typer.Option(help="dataset (overrides the config)")] = None,
    seed: Annotated[int | None, typer.Option(help="random seed (overrides the config)")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="override a config field, e.g. --set train.lr=0.01 --set model.hidden=[32]",
        ),
    ] = None,
    out: OutOption = None,
    resume: Annotated[bool, typer.Option(help="continue an interrupted run in --out")] = False,
) -> None:
    """Train one model and write a run folder with metrics, history and the model."""
    from taskrel.config import load_run_config
    from taskrel.experiment import run_training
    from taskrel.runs import new_run_dir

    overrides = list(set_ or [])
    if model is not None:
        overrides.append(f"model.name={model}")
    if data is not None:
        overrides.append(f"data.name={data}")
    if seed is not None:
        overrides.append(f"seed={seed}")
    cfg = load_run_config(config, overrides)
    if resume and out is None:
        raise typer.BadParameter("--resume needs --out naming the run folder")
    run_dir = new_run_dir(out, kind="train", resume=resume)
    if resume:
        cfg = saved_run_config(run_dir, cfg if (config or overrides) else None)
    outcome = run_training(cfg, run_dir, resume=resume)
    columns = sorted({k for m in outcome.metrics.values() for k in m if k != "loss"})
    rows = {**outcome.metrics, "average": outcome.summary}
    console.print(metrics_table(f"{cfg.model_name} on {cfg.data.name} (test)", rows, columns))
    console.print(f"run folder: {run_dir}  ({outcome.seconds:.1f} s training)")


def saved_run_config(run_dir: Path, requested: RunConfig | None) -> RunConfig:
    """The config a run folder was started with; ``requested`` must match it."""
    from taskrel.config import read_config_file, validate
    from taskrel.errors import RunDirError

    path = run_dir / "config.json"
    if not path.is_file():
        raise RunDirError(f"{run_dir}: no config.json; not a taskrel training run")
    saved = validate(RunConfig, read_config_file(path), str(path))
    if requested is not None and requested != saved:
        raise RunDirError(
            f"{run_dir}: --resume continues the run with its saved config; "
            "the given options differ from it (drop them or use a new --out)"
        )
    return saved


@app.command()
def datasets(
    details: Annotated[bool, typer.Option(help="load each dataset and list its tasks")] = False,
) -> None:
    """List the built-in datasets (with --details: their tasks and split sizes)."""
    from taskrel.data import DATASETS, load

    table = Table(title="built-in datasets")
    for c in ("name", "description", "tasks", "train/test examples"):
        table.add_column(c)
    for name, info in DATASETS.items():
        ts = load(name)
        sizes = ts.sizes().values()
        table.add_row(
            name,
            info.description,
            str(len(ts)),
            f"{sum(s['train'] for s in sizes)}/{sum(s['test'] for s in sizes)}",
        )
        if details:
            console.print(ts.describe())
    console.print(table)
