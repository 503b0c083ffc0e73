"""Benchmark: MTIF against two peer libraries' influence functions on the same model:
dattri (``IFAttributorExplicit`` / ``IFAttributorCG``) and pyDVL (``DirectInfluence`` /
``CgInfluence``; and ``ArnoldiInfluence`` at rank p/2, a low-rank approximation shown
against MTIF's exact scores). Both peers are optional (``pip install -e ".[peer]"``); a
missing one is skipped with a one-line note.

Model: the convex hard-sharing model ``f_t(x) = (w + v_t)^T x + b_t`` written as a plain
``nn.Module`` and wrapped in :class:`taskrel.ModuleAdapter` with ONE L2 coefficient
``lam`` on every parameter (the adapter's default penalty ``(lam/2)||theta||^2``; the
built-in model penalises biases less), trained with L-BFGS in float64. So the peers'
``regularization=lam`` (``lam * I`` added to the Hessian of their loss) reproduces the
penalty exactly. The per-task weighting ``1/n_t`` of the objective rides in the batch as
a per-example weight; each peer gets one batch of all training rows (the exact Hessian).
pyDVL's model takes one input tensor and its loss ``(outputs, targets)``: the rows are
packed as ``[x, task, y, weight]`` and the packed model returns the weighted loss of
each row.

Scores compared: per (training example, test example) ``grad l(z_train)^T H^-1 grad
l(z_test) / n_task`` -- the peers' sign (up-weighting influence without the minus) and
ours (positive = helpful) agree, no conversion. Reported per peer and solver: Pearson and
Spearman over all pairs, the largest absolute difference relative to the largest score,
and the peer's wall time as a ratio to MTIF's in the same process (MTIF: structured
block-arrow explicit solve, or CG; MTIF and each peer start from the trained model and
include every gradient and solve). Seeds change the data split; single-threaded.

    python benchmarks/mtif_vs_peer.py --quick --out quick.json
    python benchmarks/mtif_vs_peer.py --cg --out full.json
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from _harness import cached, mean_std, parser, run_main, setup, write_out
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.data import DataLoader, TensorDataset

from taskrel.data.taskset import TaskSet
from taskrel.models.base import MTLModel, per_example_loss
from taskrel.relatedness.adapter import ModuleAdapter
from taskrel.relatedness.agreement import correlate
from taskrel.relatedness.ground_truth import load_data
from taskrel.relatedness.mtif import MTIF
from taskrel.seeding import seed_everything
from taskrel.training.trainer import TrainConfig, train

LAM = 1e-2
TRAIN = TrainConfig(
    optimizer="lbfgs", lr=1.0, epochs=2, lbfgs_max_iter=300, patience=None, dtype="float64"
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
PEERS = {"dattri": "dattri", "pydvl": "pydvl"}  # peer -> module
CG_TOL = 1e-10


class LinearMTL(nn.Module):
    """``f_t(x) = (w + v_t)^T x + b_t``: a shared weight and one linear head per task.
    ``task`` is one index (MTIF) or a ``(b,)`` tensor of each row's task (the peers'
    batches mix tasks: each row's head is gathered, one forward pass per batch)."""

    def __init__(self, d: int, outputs: int, n_tasks: int) -> None:
        super().__init__()
        self.shared = nn.Linear(d, outputs, bias=False)
        self.heads = nn.ModuleList(nn.Linear(d, outputs) for _ in range(n_tasks))

    def forward(self, x: Tensor, task: int | Tensor) -> Tensor:
        if isinstance(task, int):
            return self.shared(x) + self.heads[task](x)
        weight = torch.stack([h.weight for h in self.heads])[task]  # (b, C, d)
        bias = torch.stack([h.bias for h in self.heads])[task]  # (b, C)
        return self.shared(x) + torch.einsum("bcd,bd->bc", weight, x) + bias


def trained_model(taskset: TaskSet, seed: int) -> ModuleAdapter:
    """The model above, wrapped (uniform L2 ``LAM``) and trained to the optimum."""
    task = taskset.tasks[0]
    outputs = 1 if task.kind == "regression" else task.n_outputs
    seed_everything(seed)
    module = LinearMTL(task.x.shape[1], outputs, len(taskset))
    model = ModuleAdapter(module, taskset, task_params=["heads.{t}.*"], l2=LAM, linear=True)
    train(model, taskset, TRAIN.model_copy(update={"seed": seed}), progress=False)
    return model


def _rows(taskset: TaskSet, split: str, weighted: bool) -> tuple[Tensor, ...]:
    """All rows of ``split`` as ``(x, y, task, weight)`` tensors (weight ``1/n_task`` if
    ``weighted``, else 1)."""
    xs, ys, ts, ws = [], [], [], []
    for t, task in enumerate(taskset.tasks):
        x, y = task.arrays(split)  # type: ignore[arg-type]
        xs.append(torch.as_tensor(x, dtype=torch.float64))
        ys.append(torch.as_tensor(y).to(torch.float64 if task.kind == "regression" else torch.long))
        ts.append(torch.full((len(y),), t, dtype=torch.long))
        ws.append(torch.full((len(y),), 1.0 / len(y) if weighted else 1.0, dtype=torch.float64))
    return torch.cat(xs), torch.cat(ys), torch.cat(ts), torch.cat(ws)


def example_losses(
    model: MTLModel, params: dict[str, Tensor], x: Tensor, y: Tensor, task: Tensor, kind: str
) -> Tensor:
    """``(b,)`` loss of each row under its own task's output (rows of mixed tasks)."""
    return per_example_loss(functional_call(model, params, (x, task)), y, kind)


# -- MTIF ------------------------------------------------------------------------------------
def mtif_scores(model: MTLModel, taskset: TaskSet, solver: str) -> tuple[np.ndarray, float]:
    """``(N_train, N_test)`` MTIF per-test-example scores (test examples task by task) and
    seconds (Hessian, solves and gradients)."""
    start = time.perf_counter()
    engine = MTIF(
        model,
        taskset,
        solver=solver,
        damping=0.0,
        structured=True,
        solver_options={"tol": CG_TOL} if solver == "cg" else None,
    )
    scores, _ = engine.test_example_scores(range(len(taskset)))  # one solve for all targets
    return scores, time.perf_counter() - start


# -- dattri ----------------------------------------------------------------------------------
def dattri_scores(model: MTLModel, taskset: TaskSet, solver: str) -> tuple[np.ndarray, float]:
    """``(N_train, N_test)`` dattri scores and seconds."""
    from dattri.algorithm.influence_function import IFAttributorCG, IFAttributorExplicit
    from dattri.task import AttributionTask

    kind = taskset.tasks[0].kind

    def loss_func(params: dict[str, Tensor], data: tuple[Tensor, ...]) -> Tensor:
        x, y, task, w = data
        return (w * example_losses(model, params, x, y, task, kind)).sum()

    def target_func(params: dict[str, Tensor], data: tuple[Tensor, ...]) -> Tensor:
        x, y, task, _ = data
        return example_losses(model, params, x, y, task, kind).sum()

    task = AttributionTask(
        loss_func=loss_func,
        model=model,
        checkpoints={k: v.detach() for k, v in model.state_dict().items()},
        target_func=target_func,
    )
    train = TensorDataset(*_rows(taskset, "train", weighted=True))
    test = TensorDataset(*_rows(taskset, "test", weighted=False))
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


# -- pyDVL -----------------------------------------------------------------------------------
class Packed(nn.Module):
    """``model`` for pyDVL: input rows ``[x, task, y, weight]`` ``(b, d + 3)``, output the
    weighted loss of each row ``(b,)``; pyDVL's loss then sums the outputs."""

    def __init__(self, model: MTLModel, d: int, kind: str) -> None:
        super().__init__()
        self.model, self.d, self.kind = model, d, kind

    def forward(self, rows: Tensor) -> Tensor:
        x, task, y, w = rows[:, : self.d], rows[:, self.d], rows[:, self.d + 1], rows[:, -1]
        y = y if self.kind == "regression" else y.long()
        params = dict(self.model.named_parameters())
        return w * example_losses(self.model, params, x, y, task.long(), self.kind)


def _summed(outputs: Tensor, _targets: Tensor) -> Tensor:
    return outputs.sum()


def _packed(taskset: TaskSet, split: str, weighted: bool) -> tuple[Tensor, Tensor]:
    x, y, task, w = _rows(taskset, split, weighted)
    rows = torch.cat([x, task[:, None].double(), y[:, None].double(), w[:, None]], dim=1)
    return rows, torch.zeros(len(rows), dtype=torch.float64)


def pydvl_scores(model: MTLModel, taskset: TaskSet, solver: str) -> tuple[np.ndarray, float]:
    """``(N_train, N_test)`` pyDVL scores and seconds."""
    from pydvl.influence import InfluenceMode
    from pydvl.influence.torch import ArnoldiInfluence, CgInfluence, DirectInfluence

    d = taskset.tasks[0].x.shape[1]
    packed = Packed(model, d, taskset.tasks[0].kind)
    train_rows, train_y = _packed(taskset, "train", weighted=True)
    test_rows, test_y = _packed(taskset, "test", weighted=False)
    start = time.perf_counter()
    influence: Any
    if solver == "explicit":
        influence = DirectInfluence(packed, _summed, regularization=LAM)
    elif solver == "arnoldi":
        rank = arnoldi_rank(model)
        influence = ArnoldiInfluence(packed, _summed, regularization=LAM, rank=rank)
    else:
        influence = CgInfluence(
            packed,
            _summed,
            regularization=LAM,
            rtol=CG_TOL,
            atol=0.0,
            solve_simultaneously=True,
        )
    loader = DataLoader(TensorDataset(train_rows, train_y), batch_size=len(train_rows))
    influence = influence.fit(loader)
    scores = influence.influences(test_rows, test_y, train_rows, train_y, mode=InfluenceMode.Up)
    return scores.detach().numpy().T, time.perf_counter() - start


def arnoldi_rank(model: nn.Module) -> int:
    """The rank of pyDVL's Arnoldi (low-rank) approximation: half the parameters."""
    return sum(p.numel() for p in model.parameters()) // 2


PEER_SCORES: dict[str, Callable[[MTLModel, TaskSet, str], tuple[np.ndarray, float]]] = {
    "dattri": dattri_scores,
    "pydvl": pydvl_scores,
}


def run_case(
    spec: dict[str, Any], seed: int, solvers: tuple[str, ...], peers: tuple[str, ...]
) -> dict[str, float]:
    """Every figure of one dataset and seed (keys ``SOLVER_PEER_*`` and ``SOLVER_mtif_s``)."""
    taskset = load_data({**spec, "options": {**spec["options"], "seed": seed}})
    model = trained_model(taskset, seed)
    mtif_scores(model, taskset, "explicit")  # torch.func warm-up, untimed
    out: dict[str, float] = {
        "params": float(sum(p.numel() for p in model.parameters())),
        "train_examples": float(len(taskset.train_ids())),
        "test_examples": float(sum(len(t.test_idx) for t in taskset.tasks)),
    }
    computed: dict[str, tuple[np.ndarray, float]] = {}
    for solver in solvers:
        mine = "explicit" if solver == "arnoldi" else solver  # Arnoldi vs the exact scores
        if mine not in computed:
            computed[mine] = mtif_scores(model, taskset, mine)
        ours, ours_s = computed[mine]
        out[f"{solver}_mtif_s"] = ours_s
        for peer in peers:
            if solver == "arnoldi" and peer != "pydvl":
                continue
            theirs, peer_s = PEER_SCORES[peer](model, taskset, solver)
            key = f"{solver}_{peer}"
            out[f"{key}_pearson"] = correlate(ours.ravel(), theirs.ravel(), "pearson")
            out[f"{key}_spearman"] = correlate(ours.ravel(), theirs.ravel(), "spearman")
            out[f"{key}_max_rel_diff"] = float(np.abs(ours - theirs).max() / np.abs(theirs).max())
            out[f"{key}_s"] = peer_s
            out[f"{key}_time_ratio"] = peer_s / ours_s
    return out


def available_peers() -> tuple[str, ...]:
    """The installed peers; a one-line note for each missing one."""
    found = []
    for peer, module in PEERS.items():
        if importlib.util.find_spec(module) is None:
            print(f"note: {peer} is not installed (pip install -e '.[peer]'); skipped")
        else:
            found.append(peer)
    return tuple(found)


def table(results: dict[str, dict[str, dict[str, float]]], peers: tuple[str, ...]) -> str:
    """The markdown table: one row per dataset, solver and peer (mean ± sample std)."""
    header = (
        "| dataset | solver | peer | Pearson | Spearman | max abs diff / max abs score "
        "| MTIF s | peer s | peer / MTIF time |"
    )
    lines = [header, "|---" * 9 + "|"]

    def cell(stat: dict[str, float], digits: str) -> str:
        return f"{stat['mean']:{digits}}" + (f" ± {stat['std']:.2g}" if stat["n"] > 1 else "")

    for name, stats in results.items():
        for solver in ("explicit", "cg", "arnoldi"):
            for peer in peers:
                key = f"{solver}_{peer}"
                if f"{key}_pearson" not in stats:
                    continue
                cells = [
                    cell(stats[f"{key}_pearson"], ".6f"),
                    cell(stats[f"{key}_spearman"], ".6f"),
                    cell(stats[f"{key}_max_rel_diff"], ".2g"),
                    cell(stats[f"{solver}_mtif_s"], ".3g"),
                    cell(stats[f"{key}_s"], ".3g"),
                    cell(stats[f"{key}_time_ratio"], ".3g"),
                ]
                label = "Arnoldi, rank p/2 (MTIF: explicit)" if solver == "arnoldi" else solver
                lines.append(f"| {name} | {label} | {peer} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument(
        "--cg",
        action="store_true",
        help="also compare CG solvers (first dataset, seed 0 only: dattri's CG re-runs a "
        "full CG per test batch and takes minutes)",
    )
    args = p.parse_args()
    started = time.perf_counter()
    cache = setup(args, "mtif_vs_peer")
    peers = available_peers()
    if not peers:
        print("no peer library installed: nothing to compare")
        return
    names = QUICK if args.quick else tuple(CASES)
    seeds = [0] if args.quick else list(range(args.seeds))
    results: dict[str, dict[str, dict[str, float]]] = {}
    for n, name in enumerate(names):
        runs = []
        for s in seeds:
            solvers = ("explicit",) if args.quick else ("explicit", "arnoldi")
            solvers += ("cg",) if args.cg and n == 0 and s == 0 else ()
            key = ("mtif_vs_peer", name, s, solvers, peers, LAM)
            runs.append(
                cached(
                    cache,
                    key,
                    lambda s=s, solvers=solvers, name=name: run_case(
                        CASES[name], s, solvers, peers
                    ),
                )
            )
        explicit = [{k: v for k, v in r.items() if not k.startswith("cg_")} for r in runs]
        results[name] = {k: mean_std([r[k] for r in explicit]) for k in explicit[0]}
        cg = {k: v for k, v in runs[0].items() if k.startswith("cg_")}
        if cg:
            results[f"{name}, seed 0"] = {k: mean_std([v]) for k, v in cg.items()}
    print(table(results, peers))
    write_out(
        args,
        {"seeds": seeds, "lambda": LAM, "peers": list(peers), "results": results},
        started,
    )


if __name__ == "__main__":
    run_main(main)
