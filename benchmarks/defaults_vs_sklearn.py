"""Default ``stl``/``hard``/``soft`` models against scikit-learn's cross-validated linear
models, on every built-in tabular dataset and a generated small-task CSV.

Protocol (per dataset and seed; the seed draws the split and the training seed):
- the task set is loaded with its default options and standardised per task (features
  z-scored on training rows, as ``taskrel train`` does); every model sees the same arrays;
- taskrel: ``fit(taskset, name)`` with default configs: linear models whose regularisation
  is chosen on the validation split (carved from the training rows, 20%, then refitted on
  all of them, when the dataset has no validation split), trained to their optimum;
- scikit-learn, **per task**: ``RidgeCV`` (efficient leave-one-out over 17 alphas,
  1e-4..1e4) or ``LogisticRegressionCV`` (17 Cs, stratified k-fold, k = min(5, smallest
  class count)), cross-validated on the task's **training rows only**;
- scikit-learn, **pooled**: one such model on all tasks' training rows together;
- metric: the mean over tasks of the test explained variance (regression) or accuracy
  (classification); mean ± sample std (ddof=1) over seeds.

taskrel additionally uses the validation rows for selection when a dataset has them
(synthetic, rotated-digits); scikit-learn never sees them.

Targets (issue 12): default ``stl`` within 2% (relative) of per-task scikit-learn;
``max(hard, soft)`` at least as good as ``max(per-task, pooled)``.

    python benchmarks/defaults_vs_sklearn.py --quick --out defaults-quick.json
    nice -n 10 python benchmarks/defaults_vs_sklearn.py --out defaults.json
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _harness import cached, markdown, mean_std, parser, pm, run_main, setup, write_out
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV, RidgeCV
from sklearn.metrics import accuracy_score, explained_variance_score
from sklearn.model_selection import StratifiedKFold

from taskrel.data import load
from taskrel.data.taskset import TaskSet
from taskrel.training.metrics import evaluate, summarize
from taskrel.training.trainer import fit

ALPHAS = np.logspace(-4, 4, 17)
MODELS = ("stl", "hard", "soft")
SMALL_CSV = "small-csv"

DATASETS: dict[str, dict[str, Any]] = {  # loader options (none: the defaults); cheap first
    SMALL_CSV: {},
    "synthetic-regression": {},
    "synthetic": {},
    "parkinsons": {},
    "landmine": {},
    "school": {},
    "rotated-digits": {},
    "office-caltech": {},
}
QUICK = ("synthetic-regression", SMALL_CSV)


def small_csv(folder: Path, seed: int) -> Path:
    """12 related regression tasks, 60 rows each (10 features): ``y = x (w0 + 0.7 d_t) +
    noise``; loaded with 12 training rows per task and the rest for testing."""
    rng = np.random.default_rng(1000 + seed)
    w0 = rng.normal(size=10)
    lines = ["task," + ",".join(f"x{i}" for i in range(10)) + ",target"]
    for t in range(12):
        w = w0 + 0.7 * rng.normal(size=10)
        x = rng.normal(size=(60, 10))
        y = x @ w + rng.normal(scale=2.0, size=60)
        lines += [
            f"t{t}," + ",".join(f"{v:.6f}" for v in row) + f",{yy:.6f}"
            for row, yy in zip(x, y, strict=True)
        ]
    path = folder / f"small-tasks-{seed}.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def load_case(name: str, seed: int, folder: Path) -> TaskSet:
    if name == SMALL_CSV:
        return load(small_csv(folder, seed), train=12, seed=seed).standardize()
    return load(name, seed=seed, **DATASETS[name]).standardize()


def _metric(kind: str) -> str:
    return "explained_variance" if kind == "regression" else "accuracy"


def _sklearn(kind: str, x: np.ndarray, y: np.ndarray, seed: int) -> Any:
    """A cross-validated linear model fitted on ``(x, y)`` (training rows only)."""
    if kind == "regression":
        return RidgeCV(alphas=ALPHAS).fit(x, y)
    folds = int(min(5, np.bincount(y).min(initial=10**9) if len(np.unique(y)) > 1 else 0))
    classes = np.unique(y)
    if len(classes) < 2:
        return _Constant(classes[0])
    if folds < 2:
        return LogisticRegression(max_iter=5000).fit(x, y)
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return LogisticRegressionCV(Cs=ALPHAS, cv=cv, max_iter=5000).fit(x, y)


class _Constant:
    def __init__(self, label: int) -> None:
        self.label = label

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.full(len(x), self.label)


def _score(kind: str, y: np.ndarray, pred: np.ndarray) -> float:
    if kind == "regression":
        return float(explained_variance_score(y, pred))
    return float(accuracy_score(y, pred))


def sklearn_scores(taskset: TaskSet, seed: int) -> dict[str, float]:
    """Mean test metric over tasks of per-task and pooled scikit-learn models."""
    kind = taskset.tasks[0].kind
    train = [t.arrays("train") for t in taskset.tasks]
    test = [t.arrays("test") for t in taskset.tasks]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", FutureWarning)
        per_task = [_sklearn(kind, x, y, seed) for x, y in train]
        pooled = _sklearn(
            kind, np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), seed
        )
    return {
        "sklearn_per_task": float(
            np.mean(
                [_score(kind, y, m.predict(x)) for m, (x, y) in zip(per_task, test, strict=True)]
            )
        ),
        "sklearn_pooled": float(np.mean([_score(kind, y, pooled.predict(x)) for x, y in test])),
    }


def taskrel_score(taskset: TaskSet, model: str, seed: int) -> dict[str, Any]:
    start = time.perf_counter()
    result = fit(taskset, model, {}, {"seed": seed})
    metric = _metric(taskset.tasks[0].kind)
    reg = result.regularization or {}
    return {
        "score": float(summarize(evaluate(result.model, taskset, "test"))[metric]),
        "chosen": reg.get("chosen"),
        "selection": reg.get("selection"),
        "relative_grad_norm": result.convergence.get("relative"),
        "optimizer": result.config.optimizer if result.config else None,
        "fit_s": time.perf_counter() - start,
    }


def run_case(name: str, seed: int, folder: Path, cache: Any) -> dict[str, Any]:
    taskset = load_case(name, seed, folder)
    kind = taskset.tasks[0].kind
    out: dict[str, Any] = {"metric": _metric(kind), "n_tasks": len(taskset)}
    out.update(cached(cache, ["sklearn", name, seed], lambda: sklearn_scores(taskset, seed)))
    for model in MODELS:
        compute: Callable[[], Any] = lambda m=model: taskrel_score(taskset, m, seed)  # noqa: E731
        out[model] = cached(cache, ["taskrel", name, model, seed], compute)
    return out


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__.split("\n")[0], default_seeds=3)
    p.add_argument("--datasets", nargs="*", default=None, help="subset of datasets")
    args = p.parse_args(argv)
    cache = setup(args, "defaults_vs_sklearn")
    started = time.perf_counter()
    names = args.datasets or (list(QUICK) if args.quick else list(DATASETS))
    seeds = 1 if args.quick else args.seeds
    rows, figures = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            runs = [run_case(name, s, Path(tmp), cache) for s in range(seeds)]
            stats = {
                key: mean_std(
                    [r[key] if key.startswith("sklearn") else r[key]["score"] for r in runs]
                )
                for key in ("sklearn_per_task", "sklearn_pooled", *MODELS)
            }
            stl, sk = stats["stl"]["mean"], stats["sklearn_per_task"]["mean"]
            best_mtl = max(stats["hard"]["mean"], stats["soft"]["mean"])
            best_sk = max(sk, stats["sklearn_pooled"]["mean"])
            gap = (sk - stl) / abs(sk) if sk else float("nan")
            fig = {
                "metric": runs[0]["metric"],
                "n_tasks": runs[0]["n_tasks"],
                **{f"{k}_mean": v["mean"] for k, v in stats.items()},
                **{f"{k}_std": v["std"] for k, v in stats.items()},
                "stl_relative_gap_to_sklearn_per_task": gap,
                "target_stl_within_2pct": bool(gap <= 0.02),
                "best_mtl_minus_best_sklearn": best_mtl - best_sk,
                "target_mtl_at_least_best_sklearn": bool(best_mtl >= best_sk),
                "runs": runs,
            }
            figures[name] = fig
            rows.append(
                [
                    name,
                    fig["metric"],
                    *(pm(stats[k]) for k in ("stl", "hard", "soft", "sklearn_per_task")),
                    pm(stats["sklearn_pooled"]),
                    f"{gap:+.1%}",
                    "yes" if fig["target_stl_within_2pct"] else "no",
                    "yes" if fig["target_mtl_at_least_best_sklearn"] else "no",
                ]
            )
            print(f"{name}: done", file=sys.stderr)
    header = [
        "dataset",
        "metric",
        "stl",
        "hard",
        "soft",
        "sklearn per task",
        "sklearn pooled",
        "stl gap",
        "stl ≤ 2%",
        "MTL ≥ best sklearn",
    ]
    print(markdown(header, rows))
    print(f"\nseeds: {seeds}; mean ± sample std (ddof=1); stl gap = (per-task sklearn - stl) / it")
    write_out(args, {"datasets": figures, "seeds": seeds}, started)


if __name__ == "__main__":
    run_main(main)
