"""Benchmark: MTIF against actual retraining, and what it saves in time.

For each case (dataset x model) and seed: train the model, compute MTIF (task level
first-order and task-removed Newton; instance level), then retrain for ground truth:

- LOTO (T + 1 trainings): Spearman/Pearson of MTIF vs actual over the off-diagonal
  (i != j) and the diagonal (i == j) entries separately;
- LOO for ``--loo`` sampled training examples: Pearson/Spearman of instance scores vs the
  actual change of every task's test loss (scores with ``fixed`` weights, the paper's
  convention, and ``renormalized`` weights, which model what dropping an example does),
  and of the leverage-corrected scores (``kind="leverage"``, renormalized: one Newton step
  per removed example) against the same retrainings; ``loo_slope_*``: least-squares slope
  of actual on predicted;
- LDS over ``--subsets`` random 50% subsets (per task): per-task Spearman between the
  summed scores of the removed examples and the retrained test loss, averaged over tasks;
- time ratio: T LOTO retrainings / MTIF task-level time (Hessian + solve + matrix), and
  LOO retraining per example x N / MTIF instance time. Both measured in this process;
  MTIF times are steady state: the one-off ``torch.func`` warm-up of the first call in a
  process (scripted decompositions, ~0.5 s) is reported apart as ``mtif_first_call_s``.

Convex model: hard sharing with ``hidden=[]``, ``shared_head=True``, L2 1e-2 (shared) and
1e-1 (heads), L-BFGS to convergence in float64 (Newton steps for school and
synthetic-regression, ``NEWTON``; office-caltech retrains warm-started). MLP: hard
sharing, one hidden layer, L-BFGS in float64 too (deterministic, so retraining differs only
by the data); its retrainings start from the trained model (warm start: the nearby local
optimum, which is what influence functions predict), and one case repeats it with
cold-start retraining. Everything runs single-threaded in one process; other jobs on the
machine make absolute times noisy, ratios less so. The regression MLP trains longer (5
L-BFGS epochs of 500 iterations) so that it reaches a stationary point; every case
records ``relative_grad_norm`` (MTIF's ``stationarity``) and whether ``H`` was positive
definite.

Ensembles (``--part ensemble``, the synthetic classification MLP trained with the converged
preset; issue 15, item 4), per data seed:

- ground truth: LOTO by cold retraining over ``--repeats`` R resampled splits
  (:func:`loto_relatedness` with ``repeats``), its split-half reliability and noise ceiling
  ``ceiling_loto`` (and, with ``--seed-repeats``, the seed-only self-agreement);
- MTIF ensembles of K in ``--ks`` members on each of the same R repeats (paired), from one
  set of ``max(ks)`` trained members per repeat (:func:`train_members`; an ensemble of K is
  the first K members): ``agreement_mtif_kK_vs_loto`` (Spearman of the off-diagonal means,
  with the bootstrap CI of :func:`agreement_ci`), its fraction of the ceiling, and
  ``member_agreement_kK`` (mean pairwise Spearman of the members);
- LDS with and without ensembles: the instance scores of the original split's K-member
  ensemble against cold retraining without ``--lds-subsets`` random 50% subsets, the
  ground truth being the mean test loss over two training seeds; ``lds_seed_self_agreement``
  (per-task Spearman between the two seeds, averaged) and ``lds_ceiling`` (its
  Spearman-Brown value for two seeds, square-rooted);
- the epsilon-down-weight check on member 0: task j's loss weighted ``1 - eps``, the
  objective re-optimised by L-BFGS *warm-started from theta_hat*, and the actual change of
  every task's test loss compared with the first-order prediction ``eps R[i, j]``:
  ``epsilon_EPS_spearman`` over the off-diagonal (deterministic: no ceiling below 1).

``--first-seed S`` runs data seeds ``S .. S + N - 1`` (e.g. seeds not looked at before).

Office-Caltech task level (``--part office-caltech``, not part of ``all``; issue 15): at
train fractions ``--splits`` (default 5/10/20%), the convex model with the library's
default training, the first-order task matrix of ``MTIF(..., solver="auto")`` (as
``relatedness(instance=False)``) against the T LOTO retrainings, each unit in a fresh
process (:func:`scaling.measured`) so that its peak RSS is its own: ``speedup_task_level``
(steady state) and ``_first_call`` (with the torch.func warm-up), ``mtif_peak_rss_gb``,
``loto_peak_rss_gb``. ``--quick``: 5% only.

    python benchmarks/mtif_accuracy.py --quick --out quick.json
    python benchmarks/mtif_accuracy.py --out full.json
    python benchmarks/mtif_accuracy.py --part ensemble --seeds 2 --ks 1,5,10
    python benchmarks/mtif_accuracy.py --part office-caltech --out office.json
"""

from __future__ import annotations

import math
import resource
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from _harness import (
    cached,
    machine_load,
    markdown,
    mean_std,
    parser,
    pm,
    run_main,
    setup,
    write_out,
)
from scaling import measured
from torch import Tensor

from taskrel.execution import ResultCache
from taskrel.notices import collect
from taskrel.relatedness import RelateContext
from taskrel.relatedness.agreement import Correlation, agreement, correlate
from taskrel.relatedness.ensemble import combine, train_members
from taskrel.relatedness.ground_truth import (
    linear_datamodeling_score,
    load_data,
    loo_effects,
    loto_relatedness,
    random_subsets,
    sample_train_ids,
    subset_losses,
    train_model,
)
from taskrel.relatedness.mtif import MTIF, MTLFunctions
from taskrel.relatedness.reliability import agreement_ci, spearman_brown
from taskrel.relatedness.resample import plan_repeats, repeat_taskset
from taskrel.training.trainer import TrainConfig

CONVEX = {"hidden": [], "shared_head": True, "l2": 1e-2, "l2_task": 1e-1}
MLP = {"hidden": [16], "activation": "tanh", "l2": 1e-2, "l2_task": 1e-2}
LBFGS = {
    "optimizer": "lbfgs",
    "lr": 1.0,
    "epochs": 1,
    "lbfgs_max_iter": 300,
    "patience": None,
    "dtype": "float64",
}
CONVERGED = {**LBFGS, "epochs": 5, "lbfgs_max_iter": 500}
"""The regression MLP needs this to reach ||grad J|| <= 1e-3 of the task gradient scale."""
NEWTON = {"optimizer": "newton", "lr": 1.0, "epochs": 20, "patience": None, "dtype": "float64"}
"""Exact optimum of a small convex model (Newton steps stop at a relative gradient of 1e-9;
one step for squared loss): L-BFGS's 300 iterations leave school at 6e-4, too coarse for
leave-one-out differences."""
CORRELATIONS: tuple[Correlation, ...] = ("spearman", "pearson")
SYN = {"n_per_task": 200, "train": 0.3, "val": 0.0}


@dataclass(frozen=True)
class Case:
    """One dataset x model configuration."""

    data: str
    options: dict[str, Any]
    model: dict[str, Any]
    standardize: str = "task"
    solver: str = "explicit"
    loo: int | None = None  # overrides --loo
    subsets: int | None = None  # overrides --subsets
    seeds: int | None = None  # at most this many seeds (expensive cases)
    warm_start: bool = False  # retrain from the trained model (non-convex models)
    train: dict[str, Any] = field(default_factory=lambda: dict(LBFGS))

    def spec(self, seed: int) -> dict[str, Any]:
        return {
            "name": self.data,
            "options": {**self.options, "seed": seed},
            "standardize": self.standardize,
        }


CASES: dict[str, Case] = {
    "synthetic-regression / convex": Case("synthetic-regression", SYN, CONVEX, train=NEWTON),
    "synthetic / convex": Case("synthetic", SYN, CONVEX),
    "school (20) / convex": Case(
        "school", {"n_tasks": 20, "train": 0.3}, CONVEX, "pooled", train=NEWTON
    ),
    "office-caltech / convex": Case(  # warm-started retraining: the same (unique) optimum,
        # reached more precisely than by 300 cold L-BFGS iterations on 40,040 parameters
        "office-caltech",
        {"train": 0.1},
        CONVEX,
        "none",
        solver="auto",
        loo=12,
        subsets=20,
        seeds=1,
        warm_start=True,
    ),
    "synthetic-regression / mlp": Case(
        "synthetic-regression", SYN, MLP, loo=12, subsets=20, warm_start=True, train=CONVERGED
    ),
    "synthetic / mlp": Case("synthetic", SYN, MLP, loo=12, subsets=20, seeds=1, warm_start=True),
    "synthetic / mlp (cold retrain)": Case("synthetic", SYN, MLP, loo=12, subsets=20, seeds=1),
}
QUICK = ("synthetic / convex",)
QUICK_LOO = QUICK_SUBSETS = 6


def run_case(case: Case, seed: int, n_loo: int, n_subsets: int) -> dict[str, float]:
    """Every figure of one case and seed (see module docstring)."""
    taskset = load_data(case.spec(seed))
    train_cfg = TrainConfig(**{**case.train, "seed": seed})
    ctx = RelateContext(model="hard", model_config=case.model, train_config=train_cfg)
    n_tasks = len(taskset)
    out: dict[str, float] = {"tasks": n_tasks, "train_examples": len(taskset.train_ids())}

    start = time.perf_counter()
    model = train_model(taskset, "hard", case.model, train_cfg)
    out["train_s"] = time.perf_counter() - start
    with collect() as caught:
        start = time.perf_counter()
        MTIF(model, taskset, solver=case.solver).task_matrix()  # torch.func warm-up
        out["mtif_first_call_s"] = time.perf_counter() - start
        engine = MTIF(model, taskset, solver=case.solver)
        start = time.perf_counter()
        first = engine.task_matrix()
        out["mtif_task_s"] = time.perf_counter() - start
        start = time.perf_counter()
        newton = engine.newton_task_matrix()
        out["mtif_newton_s"] = time.perf_counter() - start
        start = time.perf_counter()
        fixed, ids = engine.instance_scores("fixed")
        out["mtif_instance_s"] = time.perf_counter() - start
        renorm, _ = engine.instance_scores("renormalized")
        start = time.perf_counter()
        leverage, _ = engine.instance_scores("renormalized", kind="leverage")
        out["mtif_leverage_s"] = time.perf_counter() - start
    out["hessian_positive_definite"] = float(
        not any("the Hessian is not positive definite" in c for c in caught)
    )
    out["newton_step_positive_definite"] = float(
        not any("H - H_j is not positive definite" in c for c in caught)
    )
    out["relative_grad_norm"] = engine.stationarity["relative"]
    out["damping"] = engine.report.damping
    out["n_params"] = engine.fns.space.numel

    start = time.perf_counter()
    warm = model if case.warm_start else False
    loto = loto_relatedness(taskset, ctx, warm_start=warm).matrix
    loto_s = time.perf_counter() - start
    out["retrain_s_per_model"] = loto_s / (n_tasks + 1)
    out["speedup_task_level"] = n_tasks * out["retrain_s_per_model"] / out["mtif_task_s"]
    out["speedup_task_level_newton"] = (
        n_tasks * out["retrain_s_per_model"] / (out["mtif_task_s"] + out["mtif_newton_s"])
    )
    for name, pred in (("first_order", first), ("newton", newton)):
        for part in ("off", "diag"):
            for method in CORRELATIONS:
                out[f"loto_{name}_{part}_{method}"] = agreement(pred, loto, part, method)

    if n_loo:
        loo_ids = sample_train_ids(taskset, n_loo, seed)
        actual = loo_effects(taskset, ctx, loo_ids, warm_start=warm).ravel()
        index = {tuple(i): n for n, i in enumerate(ids.tolist())}
        rows = [index[tuple(i)] for i in loo_ids.tolist()]
        for name, scores in (("fixed", fixed), ("renormalized", renorm), ("leverage", leverage)):
            for method in CORRELATIONS:
                out[f"loo_{name}_{method}"] = correlate(scores[rows].ravel(), actual, method)
        for name, scores in (("renormalized", renorm), ("leverage", leverage)):
            predicted = scores[rows].ravel()
            out[f"loo_slope_{name}"] = float(predicted @ actual / (predicted @ predicted))
        out["speedup_instance_level"] = (
            len(ids) * out["retrain_s_per_model"] / (out["mtif_task_s"] + out["mtif_instance_s"])
        )
    if n_subsets:
        removed = random_subsets(taskset, n_subsets, 0.5, seed)
        losses = subset_losses(taskset, ctx, removed, warm_start=warm)
        out["lds_mean"] = float(np.nanmean(linear_datamodeling_score(fixed, ids, removed, losses)))
    return out


def summarize(values: list[dict[str, float]]) -> dict[str, dict[str, Any]]:
    """Per key: mean, sample std (ddof=1) and n over seeds, and the values."""
    keys = [k for k in values[0] if all(k in v for v in values)]
    return {k: {**mean_std([v[k] for v in values]), "values": [v[k] for v in values]} for k in keys}


COLUMNS = (
    ("params", "n_params", 0),
    ("‖∇J‖ rel.", "relative_grad_norm", 1),
    ("LOTO off ρ (1st)", "loto_first_order_off_spearman", 3),
    ("LOTO diag ρ (1st)", "loto_first_order_diag_spearman", 3),
    ("LOTO off ρ (Newton)", "loto_newton_off_spearman", 3),
    ("LOTO diag ρ (Newton)", "loto_newton_diag_spearman", 3),
    ("LOO r (fixed)", "loo_fixed_pearson", 3),
    ("LOO r (renorm.)", "loo_renormalized_pearson", 3),
    ("LOO slope (renorm.)", "loo_slope_renormalized", 2),
    ("LOO r (leverage)", "loo_leverage_pearson", 3),
    ("LOO ρ (leverage)", "loo_leverage_spearman", 3),
    ("LOO slope (leverage)", "loo_slope_leverage", 2),
    ("LDS", "lds_mean", 3),
    ("MTIF task s", "mtif_task_s", 3),
    ("retrain s/model", "retrain_s_per_model", 2),
    ("speed-up task level", "speedup_task_level", 0),
    ("speed-up task (1st+Newton)", "speedup_task_level_newton", 0),
)


def cell(stats: dict[str, dict[str, Any]], key: str, digits: int) -> str:
    """``mean ± std`` (n > 1), the value (n = 1) or ``–``."""
    if key not in stats or not np.isfinite(stats[key]["mean"]):
        return "–"
    st = stats[key]
    if key == "relative_grad_norm":
        return f"{st['mean']:.1e}"
    return pm(st, digits) if st["n"] > 1 else f"{st['mean']:.{digits}f}"


def table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    rows = [[case, *(cell(st, key, d) for _, key, d in COLUMNS)] for case, st in results.items()]
    return markdown(["case", *(c[0] for c in COLUMNS)], rows)


# -- office-caltech: task-level time and memory, fresh processes -----------------------------
OFFICE_SPLITS = (0.05, 0.1, 0.2)


def office_spec(train: float, seed: int) -> dict[str, Any]:
    """Office-Caltech with ``train`` of each domain for training (SURF z-scores)."""
    return {
        "name": "office-caltech",
        "options": {"train": train, "seed": seed},
        "standardize": "none",
    }


def office_mtif(train: float, seed: int, preset: dict[str, Any]) -> dict[str, Any]:
    """Train the convex model (``preset``: {} = the library's default training), then the
    first-order task matrix with ``solver="auto"`` as a user gets it
    (``MTIF.relatedness(instance=False)``: solve, matrix, stationarity, diagnostics)
    twice: the first call includes the process's one-off torch.func warm-up."""
    taskset = load_data(office_spec(train, seed))
    cfg = TrainConfig(**{**preset, "seed": seed})
    start = time.perf_counter()
    model = train_model(taskset, "hard", CONVEX, cfg)
    out: dict[str, Any] = {
        "train_s": time.perf_counter() - start,
        "peak_rss_after_training_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        * 1024
        / 1e9,
        "tasks": len(taskset),
        "train_examples": len(taskset.train_ids()),
    }
    for key in ("mtif_first_call_s", "mtif_s"):
        start = time.perf_counter()
        engine = MTIF(model, taskset, solver="auto")
        result = engine.relatedness(instance=False)
        out[key] = time.perf_counter() - start
    out["mtif_timings_s"] = result.meta["timings_s"]
    out["solver"] = engine.plan.solver
    out["sample_rows"] = engine.plan.sample_rows
    out["n_params"] = engine.fns.space.numel
    out["relative_grad_norm"] = engine.stationarity["relative"]
    return out


def office_loto_one(train: float, seed: int, preset: dict[str, Any], task: int) -> dict[str, Any]:
    """One leave-one-task-out retraining (without ``task``) of the same model."""
    taskset = load_data(office_spec(train, seed))
    start = time.perf_counter()
    train_model(taskset, "hard", CONVEX, TrainConfig(**{**preset, "seed": seed}), [task])
    return {"retrain_s": time.perf_counter() - start}


def run_office(
    splits: list[float], seed: int, preset: dict[str, Any], cache: ResultCache | None
) -> dict[str, dict[str, Any]]:
    """Per training fraction: MTIF (auto solver) and the T LOTO retrainings, each unit in
    a fresh process (its own peak RSS), cached. The ``+1`` training of LOTO is the full
    model that MTIF's unit trains too; the ratio compares the T retrainings with MTIF."""
    out: dict[str, dict[str, Any]] = {}
    for train in splits:
        key = ("office", train, seed, preset)
        mtif = cached(  # "layers": units timed since the layer-factored linear Woodbury path
            cache, (*key, "mtif", "layers"), lambda t=train: measured(office_mtif, t, seed, preset)
        )
        loto = [
            cached(
                cache,
                (*key, "loto", j),
                lambda t=train, j=j: measured(office_loto_one, t, seed, preset, j),
            )
            for j in range(mtif["tasks"])
        ]
        loto_s = sum(r["retrain_s"] for r in loto)
        out[f"{train:g}"] = {
            **{k: v for k, v in mtif.items() if k not in ("seconds", "peak_rss_gb")},
            "mtif_peak_rss_gb": mtif["peak_rss_gb"],
            "loto_s": loto_s,
            "retrain_s_per_model": (loto_s + mtif["train_s"]) / (len(loto) + 1),
            "loto_peak_rss_gb": max(r["peak_rss_gb"] for r in loto),
            "speedup_task_level": loto_s / mtif["mtif_s"],
            "speedup_task_level_first_call": loto_s / mtif["mtif_first_call_s"],
        }
        print(f"office-caltech {train:g}: done", flush=True)
    return out


def office_table(rows: dict[str, dict[str, Any]]) -> str:
    head = [
        "train", "params", "rows R", "solver", "‖∇J‖ rel.", "train s", "T LOTO s", "MTIF s",
        "MTIF s (1st call)", "speed-up", "speed-up (1st call)", "peak RSS MTIF GB",
        "peak RSS LOTO GB",
    ]  # fmt: skip
    body = [
        [
            split,
            r["n_params"],
            r["sample_rows"],
            r["solver"],
            f"{r['relative_grad_norm']:.1e}",
            f"{r['train_s']:.1f}",
            f"{r['loto_s']:.1f}",
            f"{r['mtif_s']:.2f}",
            f"{r['mtif_first_call_s']:.2f}",
            f"{r['speedup_task_level']:.0f}",
            f"{r['speedup_task_level_first_call']:.0f}",
            f"{r['mtif_peak_rss_gb']:.2f}",
            f"{r['loto_peak_rss_gb']:.2f}",
        ]  # fmt: skip
        for split, r in rows.items()
    ]
    return markdown(head, body)


# -- ensembles on the MLP ------------------------------------------------------------------
ENSEMBLE_DATA = {"name": "synthetic", "options": SYN, "standardize": "task"}
QUICK_DATA = {
    "name": "synthetic",
    "options": {**SYN, "n_per_task": 80, "n_features": 6, "clusters": 1, "cluster_size": 2},
    "standardize": "task",
}
QUICK_MLP = {**MLP, "hidden": [6]}


def reweighted_optimum(fns: MTLFunctions, weights: list[float], theta0: Tensor) -> Tensor:
    """Minimiser of ``sum_t w_t G_t + penalty`` by full-batch L-BFGS (strong Wolfe) in
    float64, warm-started from ``theta0`` ``(p,)``."""
    theta = theta0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS(
        [theta],
        lr=1.0,
        max_iter=500,
        tolerance_grad=1e-12,
        tolerance_change=1e-16,
        history_size=50,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        opt.zero_grad()
        value = fns.objective(theta, weights)
        value.backward()
        return value

    for _ in range(4):
        opt.step(closure)
    return theta.detach()


def epsilon_check(model: Any, taskset: Any, epsilons: list[float]) -> dict[str, float]:
    """First-order MTIF vs re-optimisation with task j down-weighted by ``eps``: Spearman
    over the off-diagonal and the diagonal of ``(T, T)`` actual vs predicted changes."""
    engine = MTIF(model, taskset, solver="explicit")
    first = engine.task_matrix()
    fns, t = engine.fns, len(taskset)
    base = torch.stack([fns.mean_loss(fns.theta, i, "test") for i in range(t)])
    out: dict[str, float] = {}
    for eps in epsilons:
        actual = np.zeros((t, t))
        for j in range(t):
            weights = [1.0 - eps if k == j else 1.0 for k in range(t)]
            theta = reweighted_optimum(fns, weights, fns.theta)
            with torch.no_grad():
                losses = torch.stack([fns.mean_loss(theta, i, "test") for i in range(t)])
            actual[:, j] = (losses - base).numpy()
        predicted = eps * first
        out[f"epsilon_{eps:g}_spearman"] = agreement(predicted, actual, "off")
        out[f"epsilon_{eps:g}_diag_spearman"] = agreement(predicted, actual, "diag")
        scale = float(np.abs(actual).max())
        out[f"epsilon_{eps:g}_max_abs_error_rel"] = float(np.abs(predicted - actual).max()) / scale
    return out


def run_ensemble(
    spec: dict[str, Any],
    model_config: dict[str, Any],
    seed: int,
    repeats: int,
    ks: list[int],
    n_subsets: int,
    seed_repeats: int,
    epsilons: list[float],
    cache: ResultCache | None,
) -> dict[str, float]:
    """Every ensemble figure of one data seed (module docstring)."""
    spec = {**spec, "options": {**spec["options"], "seed": seed}}
    taskset = load_data(spec)
    train_cfg = TrainConfig(**{**CONVERGED, "seed": seed})
    ctx = RelateContext(
        model="hard",
        model_config=model_config,
        train_config=train_cfg,
        cache_dir=None if cache is None else cache.directory,
    )
    out: dict[str, float] = {"tasks": len(taskset)}
    start = time.perf_counter()
    truth = loto_relatedness(taskset, ctx, repeats=repeats, seed=seed, seed_repeats=seed_repeats)
    out["loto_s"] = time.perf_counter() - start
    out["reliability_loto"] = truth.meta["reliability"]
    out["ceiling_loto"] = truth.meta["ceiling"]
    if seed_repeats:
        out["seed_only_agreement_loto"] = truth.meta["seed_only_agreement"]

    kmax = max(ks)
    members = []
    start = time.perf_counter()
    for rep in plan_repeats(taskset, repeats, seed, seed):
        data = repeat_taskset(taskset, rep)
        rctx = replace(ctx, train_config=train_cfg.model_copy(update={"seed": rep.train_seed}))
        key = ("members", spec, model_config, CONVERGED, rep.index, rep.train_seed, kmax)
        members.append(
            cached(
                cache,
                key,
                lambda d=data, c=rctx, i=rep.index: train_members(
                    d, c, kmax, solver="explicit", instance=i == 0
                ),
            )
        )
    out["members_s"] = time.perf_counter() - start
    for k in ks:
        stack = np.stack([combine(m[:k]).matrix for m in members])
        value, low, high = agreement_ci(stack, truth.meta["per_repeat"], seed=seed)
        name = f"mtif_k{k}_vs_loto"
        out[f"agreement_{name}"] = value
        out[f"agreement_{name}_ci_low"] = low
        out[f"agreement_{name}_ci_high"] = high
        ceiling = out["ceiling_loto"]  # 0 when the ground truth's reliability is <= 0
        out[f"fraction_of_ceiling_{name}"] = value / ceiling if ceiling > 0 else math.nan
        if k > 1:
            out[f"member_agreement_k{k}"] = float(
                np.mean([combine(m[:k]).meta["member_agreement"] for m in members])
            )

    if n_subsets:
        subsets = random_subsets(taskset, n_subsets, 0.5, seed)
        runs = [
            subset_losses(
                taskset, replace(ctx, train_config=train_cfg.model_copy(update=u)), subsets
            )
            for u in ({"seed": seed}, {"seed": seed + 1})
        ]
        target = (runs[0] + runs[1]) / 2
        per_task = [correlate(runs[0][:, i], runs[1][:, i]) for i in range(len(taskset))]
        out["lds_seed_self_agreement"] = float(np.nanmean(per_task))
        out["lds_ceiling"] = math.sqrt(max(spearman_brown(out["lds_seed_self_agreement"], 2), 0))
        for k in ks:
            ens = combine(members[0][:k])
            assert ens.instance_scores is not None and ens.instance_ids is not None
            lds = linear_datamodeling_score(ens.instance_scores, ens.instance_ids, subsets, target)
            out[f"lds_mtif_k{k}"] = float(np.nanmean(lds))

    if epsilons:
        model = train_model(taskset, "hard", model_config, train_cfg)  # = member 0's model
        out.update(epsilon_check(model, taskset, epsilons))
    return out


def ensemble_tables(stats: dict[str, dict[str, Any]], ks: list[int], eps: list[float]) -> str:
    """Markdown: agreement and LDS per K beside their ceilings; the epsilon check."""

    def get(key: str) -> str:
        return cell(stats, key, 3)

    rows = [
        [
            f"MTIF, K = {k}",
            get(f"agreement_mtif_k{k}_vs_loto"),
            get("ceiling_loto"),
            get(f"fraction_of_ceiling_mtif_k{k}_vs_loto"),
            get(f"member_agreement_k{k}") if k > 1 else "–",
            get(f"lds_mtif_k{k}"),
            get("lds_ceiling"),
        ]
        for k in ks
    ]
    head = [
        "ensemble",
        "ρ vs resampled LOTO (off-diag.)",
        "ceiling_loto",
        "fraction of ceiling",
        "member agreement",
        "LDS",
        "LDS ceiling",
    ]
    eps_rows = [
        [
            f"{e:g}",
            get(f"epsilon_{e:g}_spearman"),
            get(f"epsilon_{e:g}_diag_spearman"),
            get(f"epsilon_{e:g}_max_abs_error_rel"),
        ]
        for e in eps
    ]
    eps_head = ["ε", "ρ off-diag. (1st order vs actual)", "ρ diag.", "max |error| / max |actual|"]
    return markdown(head, rows) + "\n\n" + markdown(eps_head, eps_rows)


def main() -> None:
    p = parser(__doc__.split("\n")[0], default_seeds=2)
    p.add_argument(
        "--part", choices=("all", "accuracy", "ensemble", "office-caltech"), default="all"
    )
    p.add_argument("--splits", default="0.05,0.1,0.2", help="office-caltech train fractions")
    p.add_argument("--loo", type=int, default=20, help="LOO examples per case and seed")
    p.add_argument("--subsets", type=int, default=20, help="LDS subsets per case/seed")
    p.add_argument("--cases", default=None, help="comma-separated case names")
    p.add_argument("--repeats", type=int, default=4, help="resampled LOTO repeats (ensemble)")
    p.add_argument("--seed-repeats", type=int, default=1, help="seed-only LOTO repeats")
    p.add_argument("--ks", default="1,5", help="ensemble sizes, comma-separated")
    p.add_argument("--lds-subsets", type=int, default=16, help="LDS subsets (ensemble part)")
    p.add_argument("--epsilons", default="0.05,0.1,0.2", help="down-weights of the check")
    p.add_argument("--first-seed", type=int, default=0, help="data seeds start here")
    args = p.parse_args()
    cache = setup(args, "mtif_accuracy")
    seeds = [args.first_seed + s for s in range(1 if args.quick else args.seeds)]
    figures: dict[str, Any] = {"mode": "quick" if args.quick else "full", "seeds": seeds}
    start = time.perf_counter()
    if args.part in ("all", "accuracy"):
        names = list(QUICK if args.quick else CASES)
        if args.cases:
            names = [c.strip() for c in args.cases.split(",")]
        results: dict[str, dict[str, dict[str, Any]]] = {}
        for name in names:
            case = CASES[name]
            n_loo = QUICK_LOO if args.quick else (case.loo or args.loo)
            n_sub = QUICK_SUBSETS if args.quick else (case.subsets or args.subsets)
            use = seeds[: case.seeds or len(seeds)]
            runs = [
                cached(
                    cache,
                    ("accuracy", asdict(case), s, n_loo, n_sub),
                    lambda c=case, s=s, n=n_loo, m=n_sub: run_case(c, s, n, m),
                )
                for s in use
            ]
            results[name] = summarize(runs)
            print(f"{name}: done ({time.perf_counter() - start:.0f} s)", flush=True)
        figures["results"] = results
        figures["cases"] = {
            n: {"data": CASES[n].spec(0), "model": CASES[n].model, "train": CASES[n].train}
            for n in names
        }
        print(table(results))
    if args.part in ("all", "ensemble"):
        ks = [int(k) for k in args.ks.split(",")]
        eps = [float(e) for e in args.epsilons.split(",")]
        data, model = (QUICK_DATA, QUICK_MLP) if args.quick else (ENSEMBLE_DATA, MLP)
        repeats, subsets, seed_repeats = (
            (2, 6, 0) if args.quick else (args.repeats, args.lds_subsets, args.seed_repeats)
        )
        if args.quick:
            ks = [1, 2]
        runs = [
            run_ensemble(data, model, s, repeats, ks, subsets, seed_repeats, eps, cache)
            for s in seeds
        ]
        stats = summarize(runs)
        figures["ensemble"] = {
            "data": data,
            "model": model,
            "train": CONVERGED,
            "repeats": repeats,
            "ks": ks,
            "lds_subsets": subsets,
            "results": stats,
        }
        print(f"ensembles: done ({time.perf_counter() - start:.0f} s)", flush=True)
        print(ensemble_tables(stats, ks, eps))
    if args.part == "office-caltech":
        splits = [0.05] if args.quick else [float(f) for f in args.splits.split(",")]
        preset: dict[str, Any] = {}  # the library's default training (Newton in the sample space)
        rows = run_office(splits, seeds[0], preset, cache)
        figures["office_caltech"] = {"train": preset or "default", "seed": seeds[0], "splits": rows}
        print(office_table(rows))
    figures["machine_load"] = machine_load()
    write_out(args, figures, start)


if __name__ == "__main__":
    run_main(main)
