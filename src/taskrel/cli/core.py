"""Core commands: ``demo``, ``train`` and ``datasets``, and the output helpers every
command uses.

Results (tables) go to stdout; progress and the run-folder line go to stderr. On a
terminal tables are drawn by rich; otherwise they are printed as raw markdown, so
``taskrel compare ... > out.md`` is a valid markdown file.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from taskrel.cli.application import SESSION, app

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from taskrel.config import RunConfig

OutOption = Annotated[
    Path | None,
    typer.Option("--out", help="run folder to create (default: runs/COMMAND-DATE-TIME)"),
]
ResumeOption = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="continue the interrupted run in --out, reusing its finished work "
        "(a finished run is left unchanged)",
    ),
]


def model_help() -> str:
    """``--model`` help listing the registered model names."""
    from taskrel.registry import MODELS

    return f"model name, one of {', '.join(MODELS)} (overrides the config)"


def _console() -> Console:
    from rich.console import Console

    return Console(soft_wrap=True, highlight=False)


def say(message: str) -> None:
    """A progress or status line, on stderr (never wrapped)."""
    typer.echo(message, err=True)


def print_markdown(text: str) -> None:
    """A markdown table (or text) on stdout: rendered by rich on a terminal, raw
    otherwise; a blank line follows so the next output starts a new block."""
    if sys.stdout.isatty():
        from rich.markdown import Markdown

        _console().print(Markdown(text))
    else:
        typer.echo(text + "\n")


def markdown_table(title: str, rows: dict[str, dict[str, float]], columns: list[str]) -> str:
    """``rows`` (name -> column -> value) as a markdown table under a bold title."""
    lines = [
        f"**{title}**",
        "",
        "| | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for name, values in rows.items():
        cells = (f"{values[c]:.4f}" if c in values else "-" for c in columns)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def metrics_table(title: str, rows: dict[str, dict[str, float]], columns: list[str]) -> Table:
    """A rich table with one row per key of ``rows`` and the given metric columns."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("")
    for c in columns:
        table.add_column(c, justify="right")
    for name, values in rows.items():
        table.add_row(name, *(f"{values[c]:.4f}" if c in values else "-" for c in columns))
    return table


def print_table(title: str, rows: dict[str, dict[str, float]], columns: list[str]) -> None:
    """A metrics table on stdout: rich on a terminal, raw markdown otherwise."""
    if sys.stdout.isatty():
        _console().print(metrics_table(title, rows, columns))
    else:
        typer.echo(markdown_table(title, rows, columns) + "\n")


def open_run_dir(out: Path | None, kind: str, resume: bool = False, resumable: bool = True) -> Path:
    """Create the command's run folder (or reopen it with ``resume``) and record it for
    the interruption message and the clean-up after a failure."""
    from taskrel.runs import new_run_dir

    existed = out is not None and out.is_dir()
    run_dir = new_run_dir(out, kind=kind, resume=resume)
    SESSION.opened(run_dir, created=not resume, existed=existed, resumable=resumable)
    return run_dir


@app.command()
def demo(
    data: Annotated[str, typer.Option(help="dataset name or file")] = "synthetic",
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    out: OutOption = None,
) -> None:
    """Train single-task, hard- and soft-sharing models on a built-in dataset and
    compare them per task, then compare relatedness methods against retraining (HTML
    report in the run folder's compare/)."""
    from taskrel.pipelines.demo import run_demo
    from taskrel.training.metrics import PRIMARY_METRIC

    start = time.perf_counter()
    run_dir = open_run_dir(out, kind="demo", resumable=False)
    outcomes = run_demo(run_dir, data=data, seed=seed, log=say)
    first = next(iter(outcomes.values()))
    metric = PRIMARY_METRIC[first.taskset.tasks[0].kind]
    rows = {t: {m: o.metrics[t][metric] for m, o in outcomes.items()} for t in first.taskset.names}
    rows["average"] = {m: o.summary[metric] for m, o in outcomes.items()}
    print_table(f"test {metric} per task ({data})", rows, list(outcomes))
    say(f"run folder: {run_dir}  ({time.perf_counter() - start:.1f} s)")


@app.command()
def train(
    config: Annotated[Path | None, typer.Option(help="TOML/JSON run config")] = None,
    model: Annotated[str | None, typer.Option(help=model_help())] = None,
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
    resume: ResumeOption = False,
) -> None:
    """Train one model and write a run folder with metrics, history and the model."""
    from taskrel.config import load_run_config
    from taskrel.pipelines.experiment import RESULT_FILE, load_taskset, run_training
    from taskrel.runs import check_not_complete, check_run_dir

    overrides = list(set_ or [])
    if model is not None:
        overrides.append(f"model.name={model}")
    if data is not None:
        overrides.append(f"data.name={data}")
    if seed is not None:
        overrides.append(f"seed={seed}")
    if resume and out is None:
        raise typer.BadParameter("--resume needs --out naming the run folder")
    check_run_dir(out, resume)
    cfg = load_run_config(config, overrides)
    if resume:
        assert out is not None
        cfg = saved_run_config(out, cfg if (config or overrides) else None)
        check_not_complete(out, RESULT_FILE)
    taskset = load_taskset(cfg)
    run_dir = open_run_dir(out, kind="train", resume=resume)
    outcome = run_training(cfg, run_dir, resume=resume, taskset=taskset)
    columns = sorted({k for m in outcome.metrics.values() for k in m if k != "loss"})
    rows = {**outcome.metrics, "average": outcome.summary}
    print_table(f"{cfg.model_name} on {cfg.data.name} (test)", rows, columns)
    say(f"run folder: {run_dir}  ({outcome.seconds:.1f} s training)")


def saved_run_config(run_dir: Path, requested: RunConfig | None, key: str = "") -> RunConfig:
    """The config a run folder was started with (``config.json``, or its ``key`` entry);
    ``requested`` must match it."""
    from taskrel.config import RunConfig, read_config_file, validate
    from taskrel.errors import RunDirError

    path = run_dir / "config.json"
    if not path.is_file():
        raise RunDirError(f"{run_dir}: no config.json; not a taskrel training run")
    doc = read_config_file(path)
    if key:
        if key not in doc:
            raise RunDirError(f"{path}: no {key!r} entry; not a run of this command")
        doc = doc[key]
    saved = validate(RunConfig, doc, str(path))
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

    lines = ["| name | description | tasks | train/test examples |", "|---|---|---|---|"]
    for name, info in DATASETS.items():
        ts = load(name)
        sizes = ts.sizes().values()
        train_n, test_n = sum(s["train"] for s in sizes), sum(s["test"] for s in sizes)
        lines.append(f"| {name} | {info.description} | {len(ts)} | {train_n}/{test_n} |")
        if details:
            say(ts.describe())
    print_markdown("\n".join(lines))
