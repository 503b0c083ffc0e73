"""Relatedness commands: ``relate`` (one method), ``compare`` (several methods next to
retraining, with an HTML report), ``report`` (rebuild that report) and ``group`` (which
tasks to train together)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from taskrel.cli import app
from taskrel.cli.core import OutOption, console, metrics_table

if TYPE_CHECKING:
    from taskrel.data.taskset import TaskSet
    from taskrel.relatedness import RelateContext

ConfigOption = Annotated[
    Path | None, typer.Option(help="TOML/JSON run config (data, model, train)")
]
DataOption = Annotated[str | None, typer.Option(help="dataset name or file (overrides the config)")]
SeedOption = Annotated[int | None, typer.Option(help="random seed (overrides the config)")]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set", help="override a config field, e.g. --set model.hidden=[] --set train.epochs=50"
    ),
]
ExecutorOption = Annotated[str, typer.Option(help="where retrainings run: local or ray")]
WorkersOption = Annotated[int, typer.Option(help="local processes (or CPUs of a local Ray)")]
AddressOption = Annotated[str | None, typer.Option(help="address of a Ray cluster")]


def prepare(
    kind: str,
    config: Path | None,
    data: str | None,
    seed: int | None,
    overrides: list[str] | None,
    out: Path | None,
    executor: str,
    workers: int,
    address: str | None,
) -> tuple[Path, TaskSet, RelateContext]:
    """Run config, task set, relatedness context and a new run folder (holding
    ``config.json`` and ``environment.json``) for a command.

    Returns:
        ``(run_dir, taskset, ctx)``; retrainings are cached in ``run_dir/cache``."""
    from taskrel.config import load_run_config
    from taskrel.execution import make_executor
    from taskrel.experiment import load_taskset
    from taskrel.relatedness import RelateContext
    from taskrel.runs import new_run_dir, record_run

    items = list(overrides or [])
    if data is not None:
        items.append(f"data.name={data}")
    if seed is not None:
        items.append(f"seed={seed}")
    cfg = load_run_config(config, items)
    taskset = load_taskset(cfg)
    run_dir = new_run_dir(out, kind=kind)
    ctx = RelateContext(
        model=cfg.model_name,
        model_config=cfg.model_options,
        train_config=cfg.train.model_copy(update={"seed": cfg.seed}),
        executor=make_executor(executor, workers, address),
        cache_dir=run_dir / "cache",
    )
    record_run(
        run_dir,
        {"command": kind, "run": cfg.model_dump(), "executor": executor, "workers": workers},
    )
    return run_dir, taskset, ctx


def method_options(items: list[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` (or ``METHOD.KEY=VALUE``) items as a nested dict, values parsed as
    JSON where possible."""
    from taskrel.config import apply_overrides

    return apply_overrides({}, list(items or []))


def shutdown(ctx: RelateContext) -> None:
    """Stop a Ray instance the command started."""
    stop = getattr(ctx.executor, "shutdown", None)
    if stop is not None:
        stop()


@app.command()
def relate(
    method: Annotated[
        str, typer.Option(help="relatedness method, e.g. mtif, gradient, affinity, ground-truth")
    ] = "mtif",
    data: DataOption = None,
    config: ConfigOption = None,
    seed: SeedOption = None,
    set_: SetOption = None,
    option: Annotated[
        list[str] | None, typer.Option(help="method option KEY=VALUE, e.g. --option every=2")
    ] = None,
    executor: ExecutorOption = "local",
    workers: WorkersOption = 1,
    address: AddressOption = None,
    out: OutOption = None,
) -> None:
    """Compute one relatedness matrix: writes relatedness/METHOD.json (and .npz with
    instance scores), a heatmap PNG and timings into the run folder."""
    from taskrel.compare import check_methods, durations, save_result
    from taskrel.errors import ConfigError
    from taskrel.relatedness import relate as compute
    from taskrel.runs import write_json

    opts = method_options(option)
    unavailable = check_methods([method], {method: opts})
    if unavailable:
        raise ConfigError(f"method {method!r}: {unavailable[method]}")
    run_dir, taskset, ctx = prepare(
        "relate", config, data, seed, set_, out, executor, workers, address
    )
    try:
        rel = compute(taskset, method, ctx, **opts)
    finally:
        shutdown(ctx)
    save_result(rel, run_dir, method)
    write_json(run_dir / "timings.json", {method: durations(rel)}, overwrite=True)
    rel.plot(run_dir / f"{method}.png")
    console.print(rel.to_markdown())
    console.print(f"run folder: {run_dir}  ({rel.meta['wall_time_s']:.1f} s)")


@app.command()
def compare(
    methods: Annotated[str, typer.Option(help="comma-separated methods")] = (
        "mtif,gradient,affinity,vmtl,feedback,ground-truth"
    ),
    data: DataOption = None,
    config: ConfigOption = None,
    seed: SeedOption = None,
    set_: SetOption = None,
    option: Annotated[
        list[str] | None,
        typer.Option(help="method option METHOD.KEY=VALUE, e.g. --option gradient.every=2"),
    ] = None,
    executor: ExecutorOption = "local",
    workers: WorkersOption = 1,
    address: AddressOption = None,
    out: OutOption = None,
) -> None:
    """Compute several relatedness methods on the same tasks, score them against
    leave-one-task-out retraining (and the known structure of synthetic data), and
    write an HTML report."""
    from taskrel.compare import check_methods
    from taskrel.compare import compare as run
    from taskrel.report import write_comparison

    names = [m.strip() for m in methods.split(",") if m.strip()]
    opts = method_options(option)
    check_methods(names, opts)
    run_dir, taskset, ctx = prepare(
        "compare", config, data, seed, set_, out, executor, workers, address
    )
    start = time.perf_counter()
    try:
        comparison = run(taskset, names, ctx, opts, log=console.print)
    finally:
        shutdown(ctx)
    report = write_comparison(comparison, run_dir)
    console.print(comparison.to_markdown())
    console.print(f"report: {report}  ({time.perf_counter() - start:.1f} s)")


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="folder of a 'taskrel compare' run")],
) -> None:
    """Rebuild the HTML report of a comparison from its saved results."""
    from taskrel.compare import Comparison
    from taskrel.report import write_report

    console.print(f"report: {write_report(Comparison.load(run_dir), run_dir)}")


@app.command()
def group(
    groups: Annotated[int, typer.Option("--groups", help="number of groups")] = 2,
    relatedness: Annotated[
        Path | None, typer.Option(help="a saved relatedness JSON (default: compute --method)")
    ] = None,
    method: Annotated[
        str, typer.Option(help="method computing the matrix when no --relatedness file is given")
    ] = "mtif",
    evaluate: Annotated[
        bool, typer.Option(help="train each group, all tasks together and single-task models")
    ] = True,
    data: DataOption = None,
    config: ConfigOption = None,
    seed: SeedOption = None,
    set_: SetOption = None,
    executor: ExecutorOption = "local",
    workers: WorkersOption = 1,
    address: AddressOption = None,
    out: OutOption = None,
) -> None:
    """Propose groups of tasks to train together (maximising within-group relatedness)
    and check the proposal by training."""
    from taskrel.errors import ConfigError
    from taskrel.grouping import SETTINGS, evaluate_grouping, propose_groups
    from taskrel.relatedness import Relatedness
    from taskrel.relatedness import relate as compute
    from taskrel.runs import write_json

    run_dir, taskset, ctx = prepare(
        "group", config, data, seed, set_, out, executor, workers, address
    )
    try:
        if relatedness is not None:
            rel = Relatedness.load(relatedness)
            if rel.task_names != taskset.names:
                raise ConfigError(
                    f"{relatedness}: its tasks {rel.task_names} are not those "
                    f"of the data {taskset.names}"
                )
        else:
            rel = compute(taskset, method, ctx)
        proposal = propose_groups(rel, groups)
        doc: dict[str, Any] = {
            "source": str(relatedness or rel.method),
            "n_groups": groups,
            "groups": proposal.named(),
            "score": proposal.score,
            "search": proposal.search,
        }
        console.print(
            f"groups ({proposal.search} search, score {proposal.score:.4g}): "
            + " | ".join(", ".join(g) for g in proposal.named())
        )
        if evaluate:
            result = evaluate_grouping(taskset, proposal, ctx)
            doc["metric"], doc["metrics"] = result.metric, result.metrics
            console.print(
                metrics_table(f"test {result.metric} per task", result.table(), list(SETTINGS))
            )
    finally:
        shutdown(ctx)
    write_json(run_dir / "grouping.json", doc, overwrite=True)
    console.print(f"run folder: {run_dir}")
