"""Several relatedness methods on the same tasks, next to a ground truth.

:func:`compare` runs each requested method through :func:`taskrel.relatedness.relate`,
skips (with the reason) the methods that do not apply to the data or are not installed,
trains the context's model once for its per-task test metrics, and returns a
:class:`Comparison`. Its agreement table scores every method against the ground truth
(by default leave-one-task-out retraining, ``ground-truth``; or ``pairwise`` or
``subsets``, see :data:`GROUND_TRUTHS`) on the off-diagonal entries (cross-task
transfer) and on the diagonal (a task's own data) separately, and against the generating
structure ``taskset.meta['similarity']`` when the data has one (synthetic tasks).

With ``repeats=R >= 2`` every method and the ground truth are computed on the same R
repeats (resampled split and training seed, :mod:`taskrel.relatedness.resample`) and
averaged, and :attr:`Comparison.trust` says how far the comparison can be trusted:
the ground truth's reliability and noise ceiling, each method's agreement with a
bootstrap CI, as a fraction of the ceiling, and a verdict
(:mod:`taskrel.relatedness.reliability`).

Run folders: :meth:`Comparison.save` writes one ``relatedness/METHOD.json`` per method,
``comparison.json`` (the deterministic part: config, metrics, skipped methods, structure,
agreement without the time columns) and ``timings.json`` (durations: the Relatedness
meta entries whose key ends in ``_s`` live there, so the result files are byte-identical
across runs on CPU); :meth:`Comparison.load` reads them back for ``taskrel report``.
"""

from __future__ import annotations

import inspect
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from taskrel.data.taskset import TaskSet
from taskrel.errors import ConfigError, NotApplicableError, RunDirError
from taskrel.relatedness import RelateContext, method_function, relate
from taskrel.relatedness.agreement import Correlation, Part, agreement
from taskrel.relatedness.reliability import trust_summary
from taskrel.relatedness.resample import Repeat, average, plan_repeats, repeat_taskset
from taskrel.relatedness.result import Relatedness
from taskrel.runs import write_json
from taskrel.training.metrics import evaluate
from taskrel.training.trainer import fit
from taskrel.validation import check_options

REFERENCE = "ground-truth"
GROUND_TRUTHS: dict[str, str] = {"loto": REFERENCE, "pairwise": "pairwise", "subsets": "subsets"}
"""Ground-truth kind -> registry name of the method computing it (docs/methods/ground-truth.md
says which question each answers)."""
DEFAULT_GROUND_TRUTH = "loto"
COMPARISON_FILE = "comparison.json"
TIMINGS_FILE = "timings.json"
RELATEDNESS_DIR = "relatedness"
TIME_COLUMNS = ("wall_time_s", "time_ratio")
AGREEMENTS: tuple[tuple[str, Part, Correlation], ...] = (
    ("spearman_off", "off", "spearman"),
    ("pearson_off", "off", "pearson"),
    ("spearman_diag", "diag", "spearman"),
)
"""Agreement table columns: (name, entries compared, correlation) against the reference."""


@dataclass
class Comparison:
    """Relatedness matrices of several methods on one task set.

    Attributes:
        task_names: the ``T`` tasks, in matrix order.
        results: method name -> its :class:`Relatedness`, in the requested order.
        skipped: method name -> why it was not computed.
        metrics: task -> test metrics of ``ctx.model`` trained on all tasks.
        structure: the generating ``(T, T)`` task similarity, if the data has one.
        config: data, methods, options and the context's model and training settings.
        timings: durations per method (``wall_time_s`` and the method's own breakdown,
            in seconds) and ``metrics_model`` (``train_s``).
        reference: the method whose matrix is the ground truth (``ground-truth``,
            ``pairwise`` or ``subsets``).
        trust: with ``repeats >= 2``, how far the comparison can be trusted, as a flat
            dict whose keys name what they hold (``GT`` is the ground truth's label
            ``loto``/``pairwise``/``subsets``, ``M`` a method's name):

            - ``ground_truth`` (GT), ``repeats``, ``level`` (of every CI, 0.95),
              ``min_reliability`` (0.5, the verdict threshold), ``methods`` (the M, in order);
            - ``reliability_GT`` (Spearman-Brown split-half reliability of the mean
              matrix, off the diagonal) with ``reliability_GT_ci_low/_ci_high``,
              ``split_half_spearman_GT`` (before the correction), ``ceiling_GT`` =
              sqrt(reliability) with ``ceiling_GT_ci_low/_ci_high``,
              ``seed_only_agreement_GT`` (same split, new seeds; NaN if not measured);
            - per method: ``agreement_M_vs_GT`` (off-diagonal Spearman of the mean
              matrices) with ``agreement_M_vs_GT_ci_low/_ci_high`` (bootstrap over
              repeats), ``fraction_of_ceiling_M_vs_GT``, ``verdict_M_vs_GT`` (one line);
            - ``top_pairs_GT``: ``{"helpful": [...], "harmful": [...]}``, each entry
              ``{"target", "source", "mean", "stderr", "ci_low", "ci_high"}`` in the
              ground truth's units.

            :meth:`trust_rows` gives one row per method for tables. Empty without repeats.
    """

    task_names: list[str]
    results: dict[str, Relatedness]
    skipped: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    structure: np.ndarray | None = None
    config: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, dict[str, Any]] = field(default_factory=dict)
    reference: str = REFERENCE
    trust: dict[str, Any] = field(default_factory=dict)

    def agreement_table(self) -> list[dict[str, Any]]:
        """One row per computed method: ``method``, ``wall_time_s``, ``time_ratio`` (to
        the reference's wall time), Spearman and Pearson with the reference on the
        off-diagonal (``spearman_off``, ``pearson_off``), Spearman on the diagonal
        (``spearman_diag``) and Spearman with the known structure off the diagonal
        (``structure_spearman_off``). Missing comparisons are NaN."""
        ref = self.results.get(self.reference)
        ref_time = self.wall_time(self.reference)
        rows = []
        for name, rel in self.results.items():
            row: dict[str, Any] = {"method": name, "wall_time_s": self.wall_time(name)}
            row["time_ratio"] = row["wall_time_s"] / ref_time if ref_time else math.nan
            for key, part, corr in AGREEMENTS:
                row[key] = agreement(rel, ref, part, corr) if ref is not None else math.nan
            row["structure_spearman_off"] = (
                agreement(rel, self.structure, "off") if self.structure is not None else math.nan
            )
            rows.append(row)
        return rows

    def wall_time(self, method: str) -> float:
        """Wall time of ``method`` in seconds (NaN if unknown)."""
        return float(self.timings.get(method, {}).get("wall_time_s", math.nan))

    def to_markdown(self, digits: int = 3) -> str:
        """The agreement table in markdown (vs the reference and the known structure)."""
        head = (
            "| method | wall time (s) | time / ground truth | Spearman off-diag | "
            "Pearson off-diag | Spearman diag | Spearman vs structure |"
        )
        lines = [head, "|---" * 7 + "|"]
        for r in self.agreement_table():
            values = [
                r["wall_time_s"],
                r["time_ratio"],
                r["spearman_off"],
                r["pearson_off"],
                r["spearman_diag"],
                r["structure_spearman_off"],
            ]
            lines.append(f"| {r['method']} | " + " | ".join(_fmt(v, digits) for v in values) + " |")
        lines += [f"| {m} | skipped: {why} |" + " |" * 5 for m, why in self.skipped.items()]
        if self.trust:
            lines += ["", self.trust_markdown(digits)]
        return "\n".join(lines)

    def trust_rows(self) -> list[dict[str, Any]]:
        """One row per method of :attr:`trust`: ``method``, ``agreement``, ``ci_low``,
        ``ci_high``, ``ceiling``, ``fraction_of_ceiling``, ``verdict`` ([] without it)."""
        t = self.trust
        if not t:
            return []
        gt = t["ground_truth"]
        return [
            {
                "method": m,
                "agreement": t[f"agreement_{m}_vs_{gt}"],
                "ci_low": t[f"agreement_{m}_vs_{gt}_ci_low"],
                "ci_high": t[f"agreement_{m}_vs_{gt}_ci_high"],
                "ceiling": t[f"ceiling_{gt}"],
                "fraction_of_ceiling": t[f"fraction_of_ceiling_{m}_vs_{gt}"],
                "verdict": t[f"verdict_{m}_vs_{gt}"],
            }
            for m in t["methods"]
        ]

    def trust_markdown(self, digits: int = 3) -> str:
        """The ground truth's reliability and ceiling, one row per method (agreement
        ± CI, ceiling, fraction of the ceiling, verdict) and its top pairs."""
        t = self.trust
        gt = t["ground_truth"]
        level = f"{100 * t['level']:.0f}%"

        def ci(value: float, low: float, high: float) -> str:
            return f"{_fmt(value, digits)} [{_fmt(low, digits)}, {_fmt(high, digits)}]"

        seed_only = t.get(f"seed_only_agreement_{gt}", math.nan)
        lines = [
            f"Ground truth {gt} over {t['repeats']} repeats (new split and seed each): "
            f"reliability {ci(*(t[f'reliability_{gt}{s}'] for s in ('', '_ci_low', '_ci_high')))}"
            f", noise ceiling {ci(*(t[f'ceiling_{gt}{s}'] for s in ('', '_ci_low', '_ci_high')))}"
            f" ({level} CIs; seed-only self-agreement {_fmt(seed_only, digits)})",
            "",
            f"| method | agreement vs {gt} [{level} CI] | ceiling | fraction of ceiling "
            "| verdict |",
            "|---|---|---|---|---|",
        ]
        for r in self.trust_rows():
            lines.append(
                f"| {r['method']} | {ci(r['agreement'], r['ci_low'], r['ci_high'])} | "
                f"{_fmt(r['ceiling'], digits)} | {_fmt(r['fraction_of_ceiling'], digits)} | "
                f"{r['verdict']} |"
            )
        for kind in ("helpful", "harmful"):
            pairs = t[f"top_pairs_{gt}"][kind]
            shown = "; ".join(
                f"{p['source']} -> {p['target']} {ci(p['mean'], p['ci_low'], p['ci_high'])}"
                for p in pairs
            )
            lines += [
                "",
                f"Most {kind} pairs of {gt} (source -> target, mean [{level} CI]): {shown}",
            ]
        return "\n".join(lines)

    # -- persistence --------------------------------------------------------------------
    def save(self, run_dir: str | Path) -> Path:
        """Write the comparison into ``run_dir`` (see the module docstring); returns the
        path of ``comparison.json``."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        for name, rel in self.results.items():
            save_result(rel, run_dir, name)
        doc = {
            "task_names": self.task_names,
            "methods": list(self.results),
            "skipped": self.skipped,
            "metrics": self.metrics,
            "config": self.config,
            "reference": self.reference,
            "trust": self.trust,
            "structure": None if self.structure is None else self.structure.tolist(),
            "agreement": [
                {k: v for k, v in row.items() if k not in TIME_COLUMNS}
                for row in self.agreement_table()
            ],
        }
        write_json(run_dir / TIMINGS_FILE, self.timings, overwrite=True)
        return write_json(run_dir / COMPARISON_FILE, doc, overwrite=True)

    @classmethod
    def load(cls, run_dir: str | Path) -> Comparison:
        """Read a comparison written by :meth:`save`.

        Raises:
            RunDirError: ``run_dir`` holds no comparison, or a file is malformed.
        """
        run_dir = Path(run_dir)
        path = run_dir / COMPARISON_FILE
        try:
            doc = json.loads(path.read_text())
            timings = json.loads((run_dir / TIMINGS_FILE).read_text())
        except FileNotFoundError as err:
            raise RunDirError(
                f"{run_dir}: no {Path(err.filename).name}; not a 'taskrel compare' run folder"
            ) from None
        except ValueError as err:
            raise RunDirError(f"{path}: malformed comparison file ({err})") from None
        results = {m: Relatedness.load(run_dir / RELATEDNESS_DIR / m) for m in doc["methods"]}
        structure = doc.get("structure")
        return cls(
            doc["task_names"],
            results,
            doc.get("skipped", {}),
            doc.get("metrics", {}),
            None if structure is None else np.asarray(structure, dtype=np.float64),
            doc.get("config", {}),
            timings,
            doc.get("reference", REFERENCE),
            doc.get("trust", {}),
        )


def durations(rel: Relatedness) -> dict[str, Any]:
    """The meta entries of ``rel`` that are durations (keys ending in ``_s``, seconds)."""
    return {k: v for k, v in rel.meta.items() if k.endswith("_s")}


def save_result(rel: Relatedness, run_dir: str | Path, name: str) -> Path:
    """Save ``rel`` as ``run_dir/relatedness/NAME.json`` without its :func:`durations`
    (they vary from run to run; ``timings.json`` holds them). Returns the JSON path."""
    kept = {k: v for k, v in rel.meta.items() if k not in durations(rel)}
    return Relatedness(
        rel.matrix, rel.task_names, rel.method, rel.instance_scores, rel.instance_ids, kept
    ).save(Path(run_dir) / RELATEDNESS_DIR / name)


def _silent(line: str) -> None:
    """The default log: say nothing."""


def _fmt(value: float, digits: int) -> str:
    return (
        "–"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:.{digits}g}"
    )


def check_methods(
    methods: Sequence[str],
    options: Mapping[str, Mapping[str, Any]],
) -> dict[str, str]:
    """Check the request before anything runs; returns the methods whose module is not
    installed (or not written yet), with the reason.

    Raises:
        ConfigError: no or repeated methods, an unknown method name, options for a method
            not requested, options that are not JSON-like, or an option the method's
            function does not accept.
    """
    if not methods or len(set(methods)) != len(methods):
        raise ConfigError(f"methods must be a non-empty list without repeats, got {methods}")
    extra = sorted(set(options) - set(methods))
    if extra:
        raise ConfigError(f"options given for methods not requested: {', '.join(extra)}")
    try:
        json.dumps(options, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"method options must be JSON-like (numbers, strings, lists, dicts): {err}"
        ) from None
    unavailable = {}
    for name in methods:
        try:
            fn = method_function(name)
        except (ImportError, AttributeError) as err:
            unavailable[name] = f"not available in this installation ({err})"
            continue
        check_options(f"method {name!r}", fn, dict(options.get(name, {})), skip=("taskset", "ctx"))
    return unavailable


def compare(
    taskset: TaskSet,
    methods: Sequence[str],
    ctx: RelateContext | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    ground_truth: str = DEFAULT_GROUND_TRUTH,
    log: Callable[[str], None] | None = None,
    repeats: int = 1,
    seed: int = 0,
) -> Comparison:
    """Compute several relatedness methods on ``taskset`` and compare them.

    Args:
        taskset: the tasks; ``meta['similarity']`` (if present) is the known structure.
        methods: registry names (see :data:`taskrel.relatedness.METHODS`), e.g.
            ``["mtif", "gradient", "affinity"]``; the ground truth's method is added
            when missing.
        ctx: the model, training, executor and cache every method uses.
        options: per-method keyword options (JSON-like), e.g.
            ``{"gradient": {"every": 2}}``.
        ground_truth: ``loto`` (default: what removing task j's data from the model
            trained on all tasks does to task i; the estimand of MTIF, and T + 1
            trainings), ``pairwise`` (does training i with j beat i alone; the question
            of task grouping) or ``subsets`` (additive effect of j's presence in random
            task subsets); see :data:`GROUND_TRUTHS`.
        log: called with one line per step (e.g. ``print``).
        repeats: R; with R >= 2 every method and the ground truth run on the same R
            repeats (new split and training seed each; a method's ``train_config``
            option gets the repeat's seed) and are averaged, and ``trust`` is filled.
        seed: seed of the resampled splits (and of the bootstrap and halvings).

    Returns:
        A :class:`Comparison`. Methods that raise a
        :class:`~taskrel.errors.NotApplicableError` (e.g. a classification-only model on
        regression tasks) or whose module is not installed are listed in ``skipped`` with
        the reason.

    Raises:
        ConfigError: an unknown method, option or ground truth, ``repeats``/``seed`` given
            as a method option, or ``repeats`` < 1 or more than the data allow (checked
            before anything runs).
        DataError: with ``repeats >= 2``, a task too small to re-split.
    """
    ctx = ctx or RelateContext()
    options = dict(options or {})
    if ground_truth not in GROUND_TRUTHS:
        raise ConfigError(
            f"ground_truth must be one of {', '.join(GROUND_TRUTHS)}, got {ground_truth!r}"
        )
    reference = GROUND_TRUTHS[ground_truth]
    methods = list(methods) + ([reference] if reference not in methods else [])
    skipped = check_methods(methods, options)
    for name, opts in options.items():
        taken = sorted({"repeats", "seed"} & set(opts))
        if taken and name not in skipped and _resamples_itself(name):
            raise ConfigError(
                f"method {name!r}: set {', '.join(taken)} through compare's repeats and "
                "seed, not as a method option"
            )
    plan = plan_repeats(taskset, repeats, seed, ctx.train_config.seed)
    say = log or _silent
    ctx = ctx.pinned(taskset)  # "auto" regularisation chosen once, used by every method
    results: dict[str, Relatedness] = {}
    timings: dict[str, dict[str, Any]] = {}
    for name in methods:
        if name not in skipped:
            say(f"relatedness: {name} ...")
            try:
                rel = relate_repeats(taskset, name, ctx, options.get(name, {}), plan, seed)
            except NotApplicableError as err:
                skipped[name] = f"not applicable: {err}"
            else:
                results[name] = rel
                timings[name] = durations(rel)
                say(f"  {name}: {rel.meta['wall_time_s']:.1f} s")
                continue
        say(f"  skipped {name}: {skipped[name]}")
    say(f"training {ctx.model} on all tasks for per-task metrics ...")
    start = time.perf_counter()
    model = fit(taskset, ctx.model, ctx.model_config, ctx.train_config, progress=ctx.progress).model
    metrics = evaluate(model, taskset, "test")
    timings["metrics_model"] = {"train_s": time.perf_counter() - start}
    similarity = taskset.meta.get("similarity")
    config = {
        "data": taskset.name,
        "n_tasks": len(taskset),
        "methods": list(methods),
        "options": options,
        "model": ctx.model,
        "model_config": dict(ctx.model_config),
        "regularization": ctx.regularization,
        "train_config": ctx.train_config.model_dump(),
        "executor": ctx.executor.name,
        "ground_truth": ground_truth,
        "repeats": repeats,
        "resample_seed": seed,
    }
    trust: dict[str, Any] = {}
    if repeats >= 2 and reference in results:
        truth = results[reference]
        trust = trust_summary(
            truth.meta["per_repeat"],
            ground_truth,
            {m: r.meta["per_repeat"] for m, r in results.items() if m != reference},
            taskset.names,
            seed=seed,
            seed_only=truth.meta.get("seed_only_agreement"),
        )
    return Comparison(
        taskset.names,
        results,
        skipped,
        metrics,
        None if similarity is None else np.asarray(similarity, dtype=np.float64),
        config,
        timings,
        reference,
        trust,
    )


def _resamples_itself(method: str) -> bool:
    """Whether the method's function takes ``repeats`` (a ground truth by retraining,
    which runs all its repeats in one executor sweep)."""
    return "repeats" in inspect.signature(method_function(method)).parameters


def relate_repeats(
    taskset: TaskSet,
    name: str,
    ctx: RelateContext,
    options: Mapping[str, Any],
    plan: Sequence[Repeat],
    seed: int,
) -> Relatedness:
    """Method ``name`` on every repeat of ``plan`` (from
    :func:`~taskrel.relatedness.resample.plan_repeats` with resampling seed ``seed``),
    averaged by :func:`~taskrel.relatedness.resample.average` when there are several
    (a ground truth by retraining runs its repeats itself, in one executor sweep). A
    ``train_config`` option gets each repeat's training seed."""
    if len(plan) == 1:
        return relate(taskset, name, ctx, **options)
    if _resamples_itself(name):
        return relate(taskset, name, ctx, **options, repeats=len(plan), seed=seed)
    results = []
    for rep in plan:
        opts = dict(options)
        if isinstance(opts.get("train_config"), Mapping):
            opts["train_config"] = {**opts["train_config"], "seed": rep.train_seed}
        train = ctx.train_config.model_copy(update={"seed": rep.train_seed})
        results.append(
            relate(repeat_taskset(taskset, rep), name, replace(ctx, train_config=train), **opts)
        )
    return average(results)
