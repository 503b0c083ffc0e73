"""Benchmark: MTIF against the dattri library's influence functions on the same model.

Model: convex hard sharing (``hidden=[]``, ``shared_head=True``) with ONE L2 coefficient
``lam`` on every parameter, trained with L-BFGS in float64, so dattri's ``regularization=
lam`` (it adds ``lam * I`` to the Hessian of its loss) reproduces our penalty exactly. The
per-task weighting ``1/n_t`` of our objective rides in the batch as a per-example weight,
and dattri gets one batch of all training rows (the exact Hessian, no shuffling).

Scores compared: per (training example, test example) ``grad l(z_train)^T H^-1 grad
l(z_test) / n_task`` -- dattri's sign (positive = helpful) and ours agree, no conversion
needed. Reported: Pearson/Spearman over all pairs, the largest absolute difference relative
to the largest score, and wall time (ours: block-arrow explicit solve, or CG on the
block-arrow operator -- the blocks are formed explicitly, then CG needs only small matrix
products; dattri: IFAttributorExplicit / IFAttributorCG on Hessian-vector products) as a
ratio within one process. Seeds change the
data split; single-threaded.

    python benchmarks/mtif_vs_peer.py --quick --out quick.json
    python benchmarks/mtif_vs_peer.py --out full.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.func import functional_call
from torch.utils.data import DataLoader, TensorDataset

from taskrel.data.taskset import TaskSet
from taskrel.models.base import MTLModel, per_example_loss
from taskrel.relatedness.agreement import correlate
from taskrel.relatedness.ground_truth import load_data, train_model
from taskrel.relatedness.mtif import MTIF
from taskrel.training.trainer import TrainConfig

LAM = 1e-2
MODEL = {"hidden": [], "shared_head": True, "l2": LAM, "l2_task": LAM}
TRAIN = TrainConfig(
    optimizer="lbfgs", lr=1.0, epochs=1, lbfgs_max_iter=300, patience=None, dtype="float64"
)
CASES: dict[str, dict[str, Any]] = {
    "synthetic-regression": {
        "name": "synthetic-regression",
        "options": {"n_per_task": 200, "train": 0.3, "val": 0.0},
        "standardize": "task",
    },
    "synthetic": {
        "name": "synthetic",
        "options": {"n_per_task": 200, "train": 0.3, "val": 0.0},
        "standardize": "task",
    },
    "school (20)": {
        "name": "school",
        "options": {"n_tasks": 20, "train": 0.3},
        "standardize": "pooled",
    },
}
QUICK = ("synthetic-regression",)


def _rows(taskset: TaskSet, split: str) -> TensorDataset:
    """All rows of ``split`` as ``(x, y, task, weight)`` tensors (weight ``1/n_task``)."""
    xs, ys, ts, ws = [], [], [], []
    for t, task in enumerate(taskset.tasks):
        x, y = task.arrays(split)  # type: ignore[arg-type]
        xs.append(torch.as_tensor(x, dtype=torch.float64))
        ys.append(torch.as_tensor(y).to(torch.float64 if task.kind == "regression" else torch.long))
        ts.append(torch.full((len(y),), t, dtype=torch.long))
        ws.append(torch.full((len(y),), 1.0 / len(y), dtype=torch.float64))
    return TensorDataset(torch.cat(xs), torch.cat(ys), torch.cat(ts), torch.cat(ws))


def dattri_functions(
    model: MTLModel,
    taskset: TaskSet,
) -> tuple[Callable[..., Tensor], Callable[..., Tensor]]:
    """``loss_func(params, batch)`` = sum of weighted training losses (mixed tasks) and
    ``target_func(params, batch)`` = sum of unweighted losses, for dattri."""
    kind = taskset.tasks[0].kind
    n_tasks = len(taskset)

    def losses(params: dict[str, Tensor], x: Tensor, y: Tensor, task: Tensor) -> Tensor:
        outs = torch.stack([functional_call(model, params, (x, t)) for t in range(n_tasks)])
        index = task.reshape(1, -1, *([1] * (outs.dim() - 2))).expand(1, *outs.shape[1:])
        return per_example_loss(outs.gather(0, index)[0], y, kind)

    def loss_func(params: dict[str, Tensor], data: tuple[Tensor, ...]) -> Tensor:
        x, y, task, w = data
        return (w * losses(params, x, y, task)).sum()

    def target_func(params: dict[str, Tensor], data: tuple[Tensor, ...]) -> Tensor:
        x, y, task, _ = data
        return losses(params, x, y, task).sum()

    return loss_func, target_func


def dattri_scores(model: MTLModel, taskset: TaskSet, solver: str) -> tuple[np.ndarray, float]:
    """``(N_train, N_test)`` dattri scores and seconds."""
    from dattri.algorithm.influence_function import IFAttributorCG, IFAttributorExplicit
    from dattri.task import AttributionTask

    loss_func, target_func = dattri_functions(model, taskset)
    task = AttributionTask(
        loss_func=loss_func,
        model=model,
        checkpoints={k: v.detach() for k, v in model.state_dict().items()},
        target_func=target_func,
    )
    train, test = _rows(taskset, "train"), _rows(taskset, "test")
    start = time.perf_counter()
    if solver == "explicit":
        attributor = IFAttributorExplicit(task=task, regularization=LAM)
    else:
        attributor = IFAttributorCG(task=task, regularization=LAM, max_iter=60, tol=1e-8)
    attributor.cache(DataLoader(train, batch_size=len(train), shuffle=False))
    scores = attributor.attribute(
        DataLoader(train, batch_size=256, shuffle=False),
        DataLoader(test, batch_size=256, shuffle=False),
    )
    return scores.detach().numpy(), time.perf_counter() - start


def mtif_scores(model: MTLModel, taskset: TaskSet, solver: str) -> tuple[np.ndarray, float]:
    """``(N_train, N_test)`` MTIF per-test-example scores (test examples task by task) and
    seconds (first-order solve included)."""
    start = time.perf_counter()
    engine = MTIF(
        model,
        taskset,
        solver=solver,
        damping=0.0,
        structured=True,
        solver_options={"tol": 1e-10} if solver == "cg" else None,
    )
    blocks = [engine.test_example_scores(i)[0] for i in range(len(taskset))]
    return np.concatenate(blocks, axis=1), time.perf_counter() - start


def run_case(spec: dict[str, Any], seed: int, solvers: tuple[str, ...]) -> dict[str, float]:
    taskset = load_data({**spec, "options": {**spec["options"], "seed": seed}})
    model = train_model(taskset, "hard", MODEL, TRAIN.model_copy(update={"seed": seed}))
    mtif_scores(model, taskset, "explicit")  # torch.func warm-up, untimed
    out: dict[str, float] = {
        "train_examples": len(taskset.train_ids()),
        "test_examples": sum(len(t.test_idx) for t in taskset.tasks),
    }
    for solver in solvers:
        ours, ours_s = mtif_scores(model, taskset, solver)
        peer, peer_s = dattri_scores(model, taskset, solver)
        out[f"{solver}_pearson"] = correlate(ours.ravel(), peer.ravel(), "pearson")
        out[f"{solver}_spearman"] = correlate(ours.ravel(), peer.ravel(), "spearman")
        out[f"{solver}_max_rel_diff"] = float(np.abs(ours - peer).max() / np.abs(peer).max())
        out[f"{solver}_mtif_s"] = ours_s
        out[f"{solver}_dattri_s"] = peer_s
        out[f"{solver}_speedup"] = peer_s / ours_s
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one dataset, one seed (<60 s)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--cg",
        action="store_true",
        help="also compare CG (first dataset, seed 0 only: dattri's CG runs "
        "a full CG per test batch and takes minutes)",
    )
    parser.add_argument("--out", type=Path, default=None, help="write every figure as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = QUICK if args.quick else tuple(CASES)
    seeds = [0] if args.quick else list(range(args.seeds))
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for n, name in enumerate(names):
        runs = [
            run_case(
                CASES[name],
                s,
                ("explicit", "cg") if args.cg and n == 0 and s == 0 else ("explicit",),
            )
            for s in seeds
        ]
        results[name] = {
            k: {
                "mean": float(np.mean([r[k] for r in runs])),
                "std": float(np.std([r[k] for r in runs])),
                "values": [r[k] for r in runs],
            }
            for k in runs[0]
            if all(k in r for r in runs)
        }
        if args.cg and n == 0:
            results[f"{name} (seed 0, with CG)"] = {
                k: {"mean": v, "std": 0.0, "values": [v]} for k, v in runs[0].items()
            }
    cols = [("solver", None)] + [
        (c, c) for c in ("pearson", "spearman", "max_rel_diff", "mtif_s", "dattri_s", "speedup")
    ]
    lines = ["| dataset | " + " | ".join(c for c, _ in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, stats in results.items():
        for solver in ("explicit", "cg"):
            if f"{solver}_pearson" not in stats or (solver == "explicit" and "CG" in name):
                continue
            cells = [solver] + [
                f"{stats[f'{solver}_{k}']['mean']:.4g} ± {stats[f'{solver}_{k}']['std']:.2g}"
                for _, k in cols[1:]
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "mode": "quick" if args.quick else "full",
                    "seeds": seeds,
                    "lambda": LAM,
                    "model": MODEL,
                    "results": results,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
