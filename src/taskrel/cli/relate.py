"""Relatedness commands: ``relate`` (one method), ``compare`` (several methods next to
retraining, with an HTML report), ``report`` (rebuild that report) and ``group`` (which
tasks to train together)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from taskrel.cli.application import app
from taskrel.cli.core import (
    OutOption,
    ResumeOption,
    open_run_dir,
    print_markdown,
    print_table,
    say,
)

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
InstanceOption = Annotated[
    str | None,
    typer.Option(
        help="mtif instance scores: first-order (influence functions), leverage (one Newton "
        "step per removed example: exact leave-one-out for squared loss) or none",
    ),
]
INSTANCE_KINDS = {"first-order": "first-order", "leverage": "leverage", "none": False}


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
    *,
    resume: bool = False,
    result: str | None = None,
) -> tuple[Path, TaskSet, RelateContext]:
    """Run config, task set, relatedness context and a run folder (holding
    ``config.json`` and ``environment.json``) for a command. The folder is created only
    after the config and the data are validated.

    With ``resume`` the folder ``out`` of an interrupted run of the same command is
    reopened: its saved run config is used (given options must match it) and its cache
    of finished retrainings is reused; a run whose ``result`` file exists is complete
    and left unchanged (:class:`taskrel.runs.RunComplete`).

    Returns:
        ``(run_dir, taskset, ctx)``; retrainings are cached in ``run_dir/cache``."""
    from taskrel.cli.core import saved_run_config
    from taskrel.config import load_run_config
    from taskrel.errors import RunDirError
    from taskrel.execution import make_executor
    from taskrel.pipelines.experiment import load_taskset
    from taskrel.relatedness import RelateContext
    from taskrel.runs import check_not_complete, check_run_dir, read_run_record, record_run

    if resume and out is None:
        raise typer.BadParameter("--resume needs --out naming the run folder")
    check_run_dir(out, resume)
    items = list(overrides or [])
    if data is not None:
        items.append(f"data.name={data}")
    if seed is not None:
        items.append(f"seed={seed}")
    cfg = load_run_config(config, items)
    if resume:
        assert out is not None
        if read_run_record(out).get("command") != kind:
            raise RunDirError(f"{out}: not a run of 'taskrel {kind}'; cannot resume it here")
        cfg = saved_run_config(out, cfg if (config or items) else None, key="run")
        if result is not None:
            check_not_complete(out, result)
    taskset = load_taskset(cfg)
    run_dir = open_run_dir(out, kind=kind, resume=resume)
    ctx = RelateContext(
        model=cfg.model_name,
        model_config=cfg.model_options,
        train_config=cfg.train.model_copy(update={"seed": cfg.seed}),
        executor=make_executor(executor, workers, address),
        cache_dir=run_dir / "cache",
    )
    if not resume:
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


def with_instance(options: dict[str, Any], instance: str | None, method: str) -> dict[str, Any]:
    """``options`` of ``method`` with ``--instance`` as its ``instance`` option (unchanged
    when the flag is not given).

    Raises:
        ConfigError: an unknown kind, a method other than mtif, or an ``instance`` option
            that says otherwise."""
    from taskrel.errors import ConfigError

    if instance is None:
        return options
    if instance not in INSTANCE_KINDS:
        raise ConfigError(
            f"--instance must be one of {', '.join(INSTANCE_KINDS)}, got {instance!r}"
        )
    if method != "mtif":
        raise ConfigError(f"--instance applies to --method mtif only, got --method {method!r}")
    kind = INSTANCE_KINDS[instance]
    given = options.get("instance", kind)
    if (given is True and kind != "first-order") or (given is not True and given != kind):
        raise ConfigError(
            f"--instance {instance} contradicts --option instance={options['instance']!r}"
        )
    return {**options, "instance": kind}


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
    resume: ResumeOption = False,
    instance: InstanceOption = None,
) -> None:
    """Compute one relatedness matrix: writes relatedness/METHOD.json (and .npz with
    instance scores), a heatmap PNG and timings into the run folder, and prints the
    matrix with the method's diagnostics and caveats."""
    from taskrel.errors import ConfigError
    from taskrel.pipelines.compare import check_methods, durations, save_result
    from taskrel.relatedness import relate as compute
    from taskrel.relatedness.diagnostics import to_markdown
    from taskrel.runs import write_json

    opts = with_instance(method_options(option), instance, method)
    unavailable = check_methods([method], {method: opts})
    if unavailable:
        raise ConfigError(f"method {method!r}: {unavailable[method]}")
    run_dir, taskset, ctx = prepare(
        "relate",
        config,
        data,
        seed,
        set_,
        out,
        executor,
        workers,
        address,
        resume=resume,
        result="timings.json",
    )
    try:
        rel = compute(taskset, method, ctx, **opts)
    finally:
        shutdown(ctx)
    rel.plot(run_dir / f"{method}.png")
    save_result(rel, run_dir, method)
    write_json(run_dir / "timings.json", {method: durations(rel)}, overwrite=True)
    print_markdown(rel.to_markdown())
    diagnostics = to_markdown(rel.meta, rel.task_names)
    if diagnostics:
        print_markdown(diagnostics)
    say(f"run folder: {run_dir}  ({rel.meta['wall_time_s']:.1f} s)")


@app.command()
def compare(
    methods: Annotated[
        str, typer.Option(help="comma-separated methods (the ground truth is added)")
    ] = "mtif,gradient,affinity,vmtl,feedback",
    ground_truth: Annotated[
        str,
        typer.Option(
            help="what the methods are scored against: loto (remove task j from the model "
            "of all tasks), pairwise (train i with j vs alone; for grouping) or subsets "
            "(additive effect in random task subsets)"
        ),
    ] = "loto",
    repeats: Annotated[
        int,
        typer.Option(
            help="repeats with a new split and training seed each; >= 2 adds the noise "
            "ceiling, CIs and a verdict per method"
        ),
    ] = 1,
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
    resume: ResumeOption = False,
) -> None:
    """Compute several relatedness methods on the same tasks, score them against a
    ground truth by retraining (and the known structure of synthetic data), and write
    an HTML report."""
    from taskrel.errors import ConfigError
    from taskrel.pipelines.compare import GROUND_TRUTHS, check_methods
    from taskrel.pipelines.compare import compare as run
    from taskrel.pipelines.report import REPORT_FILE, write_comparison

    if ground_truth not in GROUND_TRUTHS:
        raise ConfigError(
            f"--ground-truth must be one of {', '.join(GROUND_TRUTHS)}, got {ground_truth!r}"
        )
    if repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, got {repeats}")
    names = [m.strip() for m in methods.split(",") if m.strip()]
    names += [] if GROUND_TRUTHS[ground_truth] in names else [GROUND_TRUTHS[ground_truth]]
    opts = method_options(option)
    check_methods(names, opts)
    run_dir, taskset, ctx = prepare(
        "compare",
        config,
        data,
        seed,
        set_,
        out,
        executor,
        workers,
        address,
        resume=resume,
        result=REPORT_FILE,
    )
    start = time.perf_counter()
    try:
        comparison = run(
            taskset,
            names,
            ctx,
            opts,
            ground_truth=ground_truth,
            log=say,
            repeats=repeats,
            seed=ctx.train_config.seed,
        )
    finally:
        shutdown(ctx)
    report = write_comparison(comparison, run_dir)
    print_markdown(comparison.to_markdown())
    say(f"report: {report}  ({time.perf_counter() - start:.1f} s)")


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="folder of a 'taskrel compare' run")],
) -> None:
    """Rebuild the HTML report of a comparison from its saved results."""
    from taskrel.pipelines.compare import Comparison
    from taskrel.pipelines.report import write_report

    say(f"report: {write_report(Comparison.load(run_dir), run_dir)}")


@app.command()
def group(
    groups: Annotated[
        int | None,
        typer.Option(
            "--groups",
            help="number of groups (default: 2 with a relatedness matrix; with --predictor "
            "the search also chooses the number, see --penalty)",
        ),
    ] = None,
    predictor: Annotated[
        str | None,
        typer.Option(
            help="choose groups by the predicted loss of each task in its group (e.g. "
            "mtif-newton, grad-tag, tag, retrain) instead of a relatedness matrix",
        ),
    ] = None,
    penalty: Annotated[
        float, typer.Option(help="with --predictor and no --groups: cost of each extra group")
    ] = 0.0,
    folds: Annotated[
        int,
        typer.Option(
            help="with --predictor: choose on K-fold cross-fitted validation losses of the "
            "pooled training + validation rows (1: on the validation split alone)"
        ),
    ] = 3,
    rule: Annotated[
        str | None,
        typer.Option(
            help="with --predictor: 'one-se' (fewest groups within one standard error over "
            "folds of the lowest predicted loss) or 'min' (the lowest predicted loss); "
            "default: one-se, or min with --groups, --penalty or --folds 1"
        ),
    ] = None,
    repeats: Annotated[
        int,
        typer.Option(
            help="with --predictor --evaluate: repeats, each a new train/validation/test "
            "split and training seed (the first is the data's own split)"
        ),
    ] = 3,
    random: Annotated[
        int, typer.Option(help="with --predictor --evaluate: random partitions, same sizes")
    ] = 20,
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
    resume: ResumeOption = False,
) -> None:
    """Propose groups of tasks to train together (maximising within-group relatedness, or
    with --predictor minimising the predicted loss of every task in its group) and check
    the proposal by training."""
    from taskrel.errors import ConfigError
    from taskrel.relatedness import Relatedness
    from taskrel.relatedness import relate as compute
    from taskrel.runs import write_json

    run_dir, taskset, ctx = prepare(
        "group",
        config,
        data,
        seed,
        set_,
        out,
        executor,
        workers,
        address,
        resume=resume,
        result="grouping.json",
    )
    try:
        if predictor is not None:
            doc = predicted_grouping(
                taskset, ctx, predictor, groups, penalty, evaluate, repeats, random, folds, rule
            )
        else:
            if relatedness is not None:
                rel = Relatedness.load(relatedness)
                if rel.task_names != taskset.names:
                    raise ConfigError(
                        f"{relatedness}: its tasks {rel.task_names} are not those "
                        f"of the data {taskset.names}"
                    )
            else:
                rel = compute(taskset, method, ctx)
            source = str(relatedness or rel.method)
            doc = matrix_grouping(taskset, ctx, rel, source, groups or 2, evaluate)
    finally:
        shutdown(ctx)
    write_json(run_dir / "grouping.json", doc, overwrite=True)
    say(f"run folder: {run_dir}")


def matrix_grouping(
    taskset: TaskSet,
    ctx: RelateContext,
    rel: Any,
    source: str,
    groups: int,
    evaluate: bool,
) -> dict[str, Any]:
    """``group`` from a relatedness matrix: print and return the proposal (and its
    evaluation by training)."""
    from taskrel.pipelines.grouping import SETTINGS, evaluate_grouping, propose_groups

    proposal = propose_groups(rel, groups)
    doc: dict[str, Any] = {
        "source": source,
        "n_groups": groups,
        "groups": proposal.named(),
        "score": proposal.score,
        "search": proposal.search,
    }
    typer.echo(
        f"groups ({proposal.search} search, score {proposal.score:.4g}): "
        + " | ".join(", ".join(g) for g in proposal.named())
        + "\n"
    )
    if evaluate:
        result = evaluate_grouping(taskset, proposal, ctx)
        doc["metric"], doc["metrics"] = result.metric, result.metrics
        print_table(f"test {result.metric} per task", result.table(), list(SETTINGS))
    return doc


GAINS = (
    ("gain_vs_all_in_one", "all-in-one"),
    ("gain_vs_median_random", "the median random partition"),
    ("gain_vs_single_task", "single-task"),
)
"""Gains printed by ``group --predictor --evaluate`` (test loss, positive = the chosen
groups are better)."""


def predicted_grouping(
    taskset: TaskSet,
    ctx: RelateContext,
    predictor: str,
    groups: int | None,
    penalty: float,
    evaluate: bool,
    repeats: int,
    n_random: int,
    folds: int = 3,
    rule: str | None = None,
) -> dict[str, Any]:
    """``group --predictor``: choose groups on validation data with the predictor (on
    ``folds`` cross-fitted folds of the training + validation rows, with ``rule``), print
    them with each task's predicted loss, and with ``evaluate`` train the choice, all tasks
    in one model, one model per task and random partitions of the same sizes over
    ``repeats`` repeats (each a new split and training seed; the choice is made anew in
    each) and print the actual test outcomes."""
    import numpy as np

    from taskrel.decisions.crossfit import CrossFitted
    from taskrel.decisions.evaluate import check_rule, evaluate_decisions, selection_view
    from taskrel.decisions.predictors import make_predictor
    from taskrel.decisions.search import choose_groups
    from taskrel.errors import ConfigError
    from taskrel.relatedness.resample import plan_repeats, repeat_taskset
    from taskrel.training.regularization import ensure_validation

    if repeats < 1 or n_random < 0:
        raise ConfigError(f"--repeats must be >= 1 and --random >= 0, got {repeats} and {n_random}")
    if rule is None:
        rule = "one-se" if folds >= 2 and groups is None and not penalty else "min"
    check_rule(rule, folds)
    if rule == "one-se" and (groups is not None or penalty):
        raise ConfigError(
            "--rule one-se chooses the number of groups itself; with --groups or --penalty "
            "use --rule min"
        )
    taskset, _ = ensure_validation(taskset, seed=ctx.train_config.seed, purpose="choose groups on")
    plan = plan_repeats(taskset, repeats, seed=ctx.train_config.seed) if evaluate else []
    pinned = ctx.pinned(taskset)  # "auto" regularisation chosen once on the validation split
    fitted = (
        CrossFitted(predictor, folds).fit(taskset, pinned)
        if folds >= 2
        else make_predictor(predictor).fit(selection_view(taskset), pinned)
    )
    chosen = choose_groups(fitted, taskset.names, groups, penalty, rule)
    assert chosen.predicted is not None
    labels = chosen.labels()
    where = f"{folds}-fold cross-fitted validation" if folds >= 2 else "the validation split"
    typer.echo(
        f"groups ({chosen.search} search on {predictor}, {where}, rule {rule}; total "
        f"predicted {chosen.score:.4g}, lower is better): "
        + " | ".join(", ".join(g) for g in chosen.named())
        + "\n"
    )
    doc: dict[str, Any] = {
        "predictor": predictor,
        "units": fitted.units,
        "folds": folds,
        "rule": rule,
        "n_groups": groups,
        "penalty": penalty,
        "groups": chosen.named(),
        "score": chosen.score,
        "search": chosen.search,
        "predicted": dict(zip(taskset.names, chosen.predicted.tolist(), strict=True)),
    }
    order = sorted(range(len(taskset)), key=lambda i: (labels[i], i))
    keys = {i: f"group {labels[i] + 1}: {taskset.names[i]}" for i in order}
    rows = {keys[i]: {"predicted": float(chosen.predicted[i])} for i in order}
    if not evaluate:
        print_table(f"{fitted.units} ({where})", rows, ["predicted"])
        return doc
    report = evaluate_decisions(  # each repeat chooses its regularisation on its own split
        [repeat_taskset(taskset, r) for r in plan],
        ctx,
        [predictor],
        n_groups=groups,
        penalty=penalty,
        n_random=n_random,
        oracle=False,
        folds=folds,
        rule=rule,
    )
    test = np.mean([r.decisions[predictor].test_loss for r in report.repeats], axis=0)
    for i in order:
        rows[keys[i]]["actual"] = float(test[i])
        rows[keys[i]]["all-in-one"] = float(np.mean([r.all_in_one[i] for r in report.repeats]))
        rows[keys[i]]["single-task"] = float(np.mean([r.single_task[i] for r in report.repeats]))
    columns = ["predicted", "actual", "all-in-one", "single-task"]
    title = (
        f"loss per task (predicted: {where} of the data's split; actual: test, mean over "
        f"{repeats} repeats, each choosing anew on its own split)"
    )
    print_table(title, rows, columns)
    losses = report.mean_losses()
    summary = report.summary()[predictor]
    settings = {
        "chosen groups": predictor,
        "all-in-one": "all-in-one",
        "single-task": "single-task",
        f"median of {n_random} random (same sizes)": f"random ({predictor} sizes)",
    }
    table = {
        label: {
            "mean test loss": float(losses[key].mean()),
            "std": float(np.std(losses[key], ddof=1)) if repeats > 1 else 0.0,
        }
        for label, key in settings.items()
        if n_random or "random" not in label
    }
    title = f"test loss, mean over tasks ({repeats} repeats, ± sample std)"
    print_table(title, table, ["mean test loss", "std"])
    for key, label in GAINS:
        if key in summary and (n_random or "random" not in key):
            g = summary[key]
            ci = f"95% CI {g['ci_low']:.4g} to {g['ci_high']:.4g}"
            typer.echo(f"gain over {label}: {g['mean']:.4g} ({ci})")
    doc["evaluation"] = {
        "repeats": repeats,
        "per_task": {taskset.names[i]: rows[keys[i]] for i in order},
        "mean_test_loss": {k: v.tolist() for k, v in losses.items()},
        "summary": summary,
    }
    return doc
