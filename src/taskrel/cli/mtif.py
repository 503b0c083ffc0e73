"""Influence-function commands: ``ground-truth`` (retraining: LOTO, pairwise, LOO, LDS)
and ``select`` (MTIF data selection, or with ``--drop tasks`` source-task selection on a
group-outcome predictor, with before/after metrics)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from taskrel.cli.application import app
from taskrel.cli.core import (
    OutOption,
    ResumeOption,
    print_markdown,
    print_table,
    say,
)
from taskrel.cli.relate import (
    AddressOption,
    ConfigOption,
    DataOption,
    ExecutorOption,
    InstanceOption,
    SeedOption,
    SetOption,
    WorkersOption,
    method_options,
    prepare,
    shutdown,
    with_instance,
)

if TYPE_CHECKING:
    from taskrel.data.taskset import TaskSet
    from taskrel.relatedness import RelateContext

MtifOption = Annotated[
    list[str] | None,
    typer.Option(
        "--option", help="MTIF option KEY=VALUE, e.g. --option solver=cg --option damping=0.01"
    ),
]


KINDS = ("loto", "pairwise", "loo", "lds")


@app.command("ground-truth")
def ground_truth(
    kind: Annotated[
        str,
        typer.Option(
            help="loto: leave one task out; pairwise: {i,j} vs {i}; loo: leave one "
            "example out; lds: random subsets"
        ),
    ] = "loto",
    data: DataOption = None,
    config: ConfigOption = None,
    seed: SeedOption = None,
    set_: SetOption = None,
    examples: Annotated[int, typer.Option(min=1, help="loo: training examples sampled")] = 50,
    subsets: Annotated[int, typer.Option(min=1, help="lds: random subsets retrained")] = 20,
    fraction: Annotated[
        float, typer.Option(help="lds: fraction of each task removed, in (0, 1)")
    ] = 0.5,
    option: MtifOption = None,
    executor: ExecutorOption = "local",
    workers: WorkersOption = 1,
    address: AddressOption = None,
    out: OutOption = None,
    resume: ResumeOption = False,
    instance: InstanceOption = None,
) -> None:
    """Ground truth by retraining. loto/pairwise write a relatedness matrix; loo and lds
    also compute MTIF instance scores (--instance: which kind) and report their agreement
    with retraining (Pearson/Spearman for loo, the linear datamodeling score for lds)."""
    from taskrel.errors import ConfigError
    from taskrel.runs import write_json

    if kind not in KINDS:
        raise ConfigError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"--fraction must be in (0, 1), got {fraction}")
    if instance is not None and kind not in ("loo", "lds"):
        raise ConfigError(f"--instance applies to --kind loo or lds, got --kind {kind}")
    if instance == "none":
        raise ConfigError(
            "--instance none: --kind loo and lds need instance scores (first-order or leverage)"
        )
    mtif_options = with_instance(method_options(option), instance, "mtif")
    run_dir, taskset, ctx = prepare(
        f"ground-truth-{kind}",
        config,
        data,
        seed,
        set_,
        out,
        executor,
        workers,
        address,
        resume=resume,
        result="metrics.json",
    )
    try:
        if kind in ("loto", "pairwise"):
            summary = _matrix_ground_truth(kind, taskset, ctx, run_dir)
        else:
            summary = _instance_ground_truth(
                kind,
                taskset,
                ctx,
                run_dir,
                examples,
                subsets,
                fraction,
                mtif_options,
                0 if seed is None else seed,
            )
    finally:
        shutdown(ctx)
    write_json(run_dir / "metrics.json", summary, overwrite=True)
    say(f"run folder: {run_dir}")


def _matrix_ground_truth(
    kind: str,
    taskset: TaskSet,
    ctx: RelateContext,
    run_dir: Path,
) -> dict[str, Any]:
    from taskrel.pipelines.compare import save_result
    from taskrel.relatedness import relate

    method = "ground-truth" if kind == "loto" else "pairwise"
    rel = relate(taskset, method, ctx)
    save_result(rel, run_dir, kind)  # durations go to metrics.json only
    rel.plot(run_dir / f"{kind}.png")
    print_markdown(rel.to_markdown())
    return {
        "kind": kind,
        "retrainings": rel.meta["retrainings"],
        "wall_time_s": rel.meta["wall_time_s"],
    }


def _instance_ground_truth(
    kind: str,
    taskset: TaskSet,
    ctx: RelateContext,
    run_dir: Path,
    examples: int,
    n_subsets: int,
    fraction: float,
    options: dict[str, Any],
    seed: int,
) -> dict[str, Any]:
    import time

    import numpy as np

    from taskrel.relatedness import relate
    from taskrel.relatedness.agreement import correlate
    from taskrel.relatedness.ground_truth import (
        linear_datamodeling_score,
        loo_effects,
        random_subsets,
        sample_train_ids,
        subset_losses,
    )

    mtif = relate(taskset, "mtif", ctx, **options)
    mtif.save(run_dir / "relatedness" / "mtif")
    assert mtif.instance_scores is not None and mtif.instance_ids is not None
    start = time.perf_counter()
    summary: dict[str, Any]
    if kind == "loo":
        ids = sample_train_ids(taskset, examples, seed)
        effects = loo_effects(taskset, ctx, ids)
        index = {tuple(i): n for n, i in enumerate(mtif.instance_ids.tolist())}
        predicted = mtif.instance_scores[[index[tuple(i)] for i in ids.tolist()]]
        np.savez_compressed(run_dir / "loo.npz", ids=ids, actual=effects, predicted=predicted)
        summary = {
            "pearson": correlate(predicted.ravel(), effects.ravel(), "pearson"),
            "spearman": correlate(predicted.ravel(), effects.ravel(), "spearman"),
        }
        rows = {"mtif vs loo": summary}
    else:
        removed = random_subsets(taskset, n_subsets, fraction, seed)
        losses = subset_losses(taskset, ctx, removed)
        lds = linear_datamodeling_score(mtif.instance_scores, mtif.instance_ids, removed, losses)
        np.savez_compressed(
            run_dir / "lds.npz",
            losses=losses,
            lds=lds,
            removed=np.concatenate(
                [np.column_stack([np.full(len(r), m), r]) for m, r in enumerate(removed)]
            ),
        )
        summary = {
            "lds_mean": float(np.nanmean(lds)),
            "lds_per_task": dict(zip(taskset.names, lds.tolist(), strict=True)),
        }
        rows = {name: {"lds": v} for name, v in summary["lds_per_task"].items()}
        rows["mean"] = {"lds": summary["lds_mean"]}
    print_table(f"MTIF vs {kind} retraining", rows, list(next(iter(rows.values()))))
    return {
        "kind": kind,
        **summary,
        "retrain_wall_time_s": time.perf_counter() - start,
        "mtif_wall_time_s": mtif.meta["wall_time_s"],
    }


DROPS = ("examples", "tasks")


@app.command()
def select(
    target: Annotated[
        str,
        typer.Option(
            help="target task name, or 'average' (examples: the mean loss over tasks; "
            "tasks: every task in turn)"
        ),
    ] = "average",
    drop: Annotated[
        str,
        typer.Option(
            help="examples: remove training examples predicted to hurt (MTIF); tasks: "
            "drop whole source tasks predicted to hurt each target (see --predictor)"
        ),
    ] = "examples",
    predictor: Annotated[
        str | None,
        typer.Option(
            help="with --drop tasks: the group-outcome predictor choosing the tasks "
            "(default mtif-newton; e.g. grad-tag, retrain)"
        ),
    ] = None,
    min_improvement: Annotated[
        float,
        typer.Option(
            help="with --drop tasks: drop a task only if the predicted validation loss "
            "falls by more than this"
        ),
    ] = 0.0,
    folds: Annotated[
        int | None,
        typer.Option(
            help="with --drop tasks: 1 (default) chooses on the validation split; K >= 2 "
            "cross-fits the predictor on K folds of the training + validation rows"
        ),
    ] = None,
    random: Annotated[
        int, typer.Option(help="with --drop tasks: random draws dropping as many tasks")
    ] = 5,
    threshold: Annotated[float, typer.Option(help="remove examples scoring below it")] = 0.0,
    max_fraction: Annotated[
        str,
        typer.Option(
            help="at most this fraction of each task is removed, in [0, 1), or 'auto': "
            "chosen on the validation split by retraining"
        ),
    ] = "0.5",
    score_split: Annotated[
        str,
        typer.Option(
            help="split the examples are scored on: val (default; carved from the training "
            "rows if the data have none) or test (OPTIMISTIC: selects on the test split "
            "it then reports)"
        ),
    ] = "val",
    val_fraction: Annotated[
        float,
        typer.Option(help="fraction of each task's training rows carved for validation"),
    ] = 0.2,
    data: DataOption = None,
    config: ConfigOption = None,
    seed: SeedOption = None,
    set_: SetOption = None,
    option: MtifOption = None,
    executor: ExecutorOption = "local",
    workers: WorkersOption = 1,
    address: AddressOption = None,
    out: OutOption = None,
    resume: ResumeOption = False,
) -> None:
    """Remove the training examples (or, with --drop tasks, the whole source tasks)
    predicted on the validation split to hurt the target, retrain, and compare test
    metrics.

    --drop examples: score every training example by MTIF on the validation split, remove
    those predicted to hurt the target, retrain, and compare per-task test metrics with
    all data, random removal and single-task learning; writes removed.csv and
    selection.json. --drop tasks: for each target, drop the source tasks a group-outcome
    predictor predicts to hurt it on the validation split, retrain, and compare its test
    metrics with all tasks, random drops, single-task and dropping examples; writes
    task_selection.json."""
    from taskrel.errors import ConfigError
    from taskrel.pipelines.selection import (
        OPTIMISTIC,
        SCORE_SPLITS,
        SETTINGS,
        check_max_fraction,
        select_data,
    )
    from taskrel.runs import write_json

    if drop not in DROPS:
        raise ConfigError(f"--drop must be examples or tasks, got {drop!r}")
    for name, value in (("--predictor", predictor), ("--folds", folds)):
        if value is not None and drop != "tasks":
            raise ConfigError(f"{name} needs --drop tasks (got --drop {drop})")
    if score_split not in SCORE_SPLITS:
        raise ConfigError(f"--score-split must be val or test, got {score_split!r}")
    if drop == "tasks" and score_split != "val":
        raise ConfigError("--drop tasks chooses on the validation split only; drop --score-split")
    try:
        fraction = check_max_fraction(
            max_fraction if max_fraction == "auto" else float(max_fraction)
        )
    except ValueError:
        raise ConfigError(
            f"--max-fraction must be a number in [0, 1) or auto, got {max_fraction!r}"
        ) from None
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    if drop == "tasks":
        from taskrel.decisions.predictors import make_predictor

        make_predictor(predictor or "mtif-newton")  # an unknown name fails before any work
        if min_improvement < 0 or random < 1 or (folds is not None and folds < 1):
            raise ConfigError(
                f"--min-improvement must be >= 0, --random >= 1 and --folds >= 1, got "
                f"{min_improvement}, {random} and {folds}"
            )
    run_dir, taskset, ctx = prepare(
        "select",
        config,
        data,
        seed,
        set_,
        out,
        executor,
        workers,
        address,
        resume=resume,
        result="task_selection.json" if drop == "tasks" else "selection.json",
    )
    if drop == "tasks":
        _select_tasks(
            run_dir,
            taskset,
            ctx,
            None if target == "average" else target,
            predictor or "mtif-newton",
            min_improvement,
            random,
            threshold,
            fraction,
            method_options(option),
            val_fraction,
            1 if folds is None else folds,
        )
        return
    try:
        result = select_data(
            taskset,
            ctx,
            None if target == "average" else target,
            threshold=threshold,
            max_fraction=fraction,
            seed=ctx.train_config.seed,
            mtif_options=method_options(option),
            score_split="test" if score_split == "test" else "val",
            val_fraction=val_fraction,
        )
    finally:
        shutdown(ctx)
    removed = {(int(t), int(r)) for t, r in result.removed}
    rows = ["task,row,score"] + [
        f"{taskset.names[t]},{r},{s:.6g}"
        for (t, r), s in zip(result.ids.tolist(), result.scores.tolist(), strict=True)
        if (t, r) in removed
    ]
    (run_dir / "removed.csv").write_text("\n".join(rows) + "\n")
    print_markdown(result.caption())  # how to read the tables below
    for metric in _primary_metrics(result.summary["all"]):
        table = {
            task: {s: result.metrics[s][task][metric] for s in SETTINGS}
            for task in result.metrics["all"]
        }
        table["average"] = {s: result.summary[s][metric] for s in SETTINGS}
        title = f"test {metric} (target: {result.target})"
        print_table(title + (f", {OPTIMISTIC}" if result.optimistic else ""), table, list(SETTINGS))
    say(
        f"removed {len(result.removed)} of {len(result.ids)} training examples; "
        f"run folder: {run_dir}"
    )
    write_json(  # written last: its presence marks the run complete
        run_dir / "selection.json",
        {
            "target": result.target,
            "evaluation": result.caption(),
            "metrics": result.metrics,
            "summary": result.summary,
            "meta": result.meta,
        },
        overwrite=True,
    )


def _select_tasks(
    run_dir: Path,
    taskset: TaskSet,
    ctx: RelateContext,
    target: str | None,
    predictor: str,
    min_improvement: float,
    n_random: int,
    threshold: float,
    max_fraction: float | Literal["auto"],
    mtif_options: dict[str, Any],
    val_fraction: float,
    folds: int,
) -> None:
    """``select --drop tasks``: choose, train, print the table, write
    ``task_selection.json`` (last: it marks the run complete)."""
    from taskrel.pipelines.task_selection import select_tasks
    from taskrel.runs import write_json

    try:
        result = select_tasks(
            taskset,
            ctx,
            target,
            predictor=predictor,
            min_improvement=min_improvement,
            n_random=n_random,
            threshold=threshold,
            max_fraction=max_fraction,
            mtif_options=mtif_options,
            seed=ctx.train_config.seed,
            val_fraction=val_fraction,
            folds=folds,
        )
    finally:
        shutdown(ctx)
    print_markdown(result.table())
    dropped = sum(len(c.dropped) for c in result.targets.values())
    say(
        f"dropped {dropped} source task(s) over {len(result.targets)} target(s) with "
        f"{predictor}; run folder: {run_dir}"
    )
    write_json(run_dir / "task_selection.json", result.to_dict(), overwrite=True)


def _primary_metrics(summary: dict[str, float]) -> list[str]:
    return [m for m in ("accuracy", "rmse", "explained_variance", "loss") if m in summary]
