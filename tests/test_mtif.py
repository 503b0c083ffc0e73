"""MTIF: structured solves, scores against exact leave-one-out, sign convention."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import four_binary_tasks

from taskrel.data import load
from taskrel.data.taskset import Task, TaskSet
from taskrel.models import build_model
from taskrel.relatedness import RelateContext, Relatedness, relate
from taskrel.relatedness.ground_truth import loo_effects, sample_train_ids, train_model
from taskrel.relatedness.mtif import MTIF
from taskrel.training.trainer import TrainConfig

CONVEX = {"hidden": [], "shared_head": True, "l2": 1e-2, "l2_task": 1e-1}
LBFGS = TrainConfig(
    optimizer="lbfgs", lr=1.0, epochs=1, lbfgs_max_iter=300, patience=None, dtype="float64"
)


@pytest.fixture(scope="module")
def regression() -> TaskSet:
    """4 linear regression tasks (2 clusters of 2) with 150 training rows each."""
    return load(
        "synthetic-regression",
        clusters=2,
        cluster_size=2,
        n_unrelated=0,
        n_adversarial=0,
        n_per_task=300,
        n_features=5,
        train=0.5,
        val=0.0,
        seed=1,
    ).standardize()


@pytest.fixture(scope="module")
def classification() -> TaskSet:
    return four_binary_tasks(seed=2)


@pytest.fixture(scope="module")
def convex_engine(regression: TaskSet) -> MTIF:
    model = train_model(regression, "hard", CONVEX, LBFGS)
    return MTIF(model, regression)


@pytest.mark.parametrize(
    ("name", "config"),
    [
        ("hard", {"hidden": [6], "activation": "tanh", "l2": 1e-2}),
        ("hard", {"hidden": [], "shared_head": True, "l2": 1e-2, "l2_task": 1e-1}),
        ("soft", {"hidden": [3], "activation": "tanh", "coupling": 0.3, "l2": 1e-2}),
        ("soft", {"hidden": [3], "coupling": 0.3, "couple_heads": False, "l2": 1e-2}),
        ("stl", {"hidden": [3], "l2": 1e-2}),
    ],
)
def test_structured_solve_equals_flat_solve(
    classification: TaskSet, name: str, config: dict
) -> None:
    """Block-arrow (Schur / consensus) solve == dense solve of the flat Hessian, also for
    the task-removed systems, at an arbitrary (untrained) point with damping."""
    torch.manual_seed(0)
    model = build_model(name, classification, config)
    structured = MTIF(model, classification, damping=2.0, structured=True)
    flat = MTIF(model, classification, damping=2.0, structured=False)
    for without in (None, 1):
        h_struct = structured.operator(without).dense()
        h_flat = flat.operator(without).dense()
        torch.testing.assert_close(h_struct, h_flat, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(
        structured.inverse_test_gradients, flat.inverse_test_gradients, rtol=1e-9, atol=1e-11
    )
    np.testing.assert_allclose(
        structured.newton_task_matrix(), flat.newton_task_matrix(), rtol=1e-7, atol=1e-12
    )


def test_iterative_solvers_match_explicit(convex_engine: MTIF, regression: TaskSet) -> None:
    model = convex_engine.fns.model
    for solver in ("cg", "lissa"):
        other = MTIF(model, regression, solver=solver, structured=True)
        np.testing.assert_allclose(
            other.task_matrix(), convex_engine.task_matrix(), rtol=1e-6, atol=1e-10
        )


def test_instance_scores_match_exact_leave_one_out(
    convex_engine: MTIF, regression: TaskSet
) -> None:
    ctx = RelateContext(model="hard", model_config=CONVEX, train_config=LBFGS)
    ids = sample_train_ids(regression, 16, seed=0)
    actual = loo_effects(regression, ctx, ids)
    scores, all_ids = convex_engine.instance_scores("renormalized")
    rows = [int(np.flatnonzero((all_ids == i).all(1))[0]) for i in ids]
    predicted = scores[rows]
    assert np.corrcoef(predicted.ravel(), actual.ravel())[0, 1] > 0.99
    slope = float(predicted.ravel() @ actual.ravel() / (predicted.ravel() @ predicted.ravel()))
    assert slope == pytest.approx(1.0, abs=0.1)


def test_scores_are_consistent(convex_engine: MTIF) -> None:
    fixed, ids = convex_engine.instance_scores("fixed")
    renorm, _ = convex_engine.instance_scores("renormalized")
    task = convex_engine.task_matrix()
    for j in range(convex_engine.n_tasks):
        mine = ids[:, 0] == j
        np.testing.assert_allclose(fixed[mine].sum(0), task[:, j], rtol=1e-9, atol=1e-14)
        np.testing.assert_allclose(renorm[mine].sum(0), 0.0, atol=1e-12)
    per_test, rows = convex_engine.test_example_scores(2)
    assert per_test.shape == (len(ids), len(rows))
    np.testing.assert_allclose(per_test.mean(1), fixed[:, 2], rtol=1e-8, atol=1e-14)
    # several targets at once: the single-target blocks side by side, in the order given
    both, both_rows = convex_engine.test_example_scores([2, 0])
    first, first_rows = convex_engine.test_example_scores(0)
    np.testing.assert_allclose(both, np.hstack([per_test, first]), rtol=1e-10, atol=1e-15)
    np.testing.assert_array_equal(both_rows, np.concatenate([rows, first_rows]))


def _task(name: str, x: np.ndarray, y: np.ndarray, n_train: int) -> Task:
    return Task(
        name,
        "regression",
        x.astype(np.float32),
        y.astype(np.float32),
        1,
        train_idx=np.arange(n_train),
        test_idx=np.arange(n_train, len(y)),
    )


def test_sign_removing_a_duplicated_helpful_point_raises_test_loss() -> None:
    """Task 0's test point is also a (noise-free) training point; every other training
    point is noisy. Removing that point must raise task 0's test loss (retrained), and its
    score on task 0 must be positive."""
    rng = np.random.default_rng(0)
    w = np.array([1.0, -2.0, 0.5])
    tasks = []
    for t in range(2):
        x = rng.normal(size=(41, 3))
        y = x @ w + rng.normal(scale=1.0, size=41)
        x[40], y[40] = x[0], x[0] @ w  # test point == training point 0, noise-free
        y[0] = y[40]
        tasks.append(_task(f"t{t}", x, y, 40))
    ts = TaskSet("dup", tuple(tasks))
    ctx = RelateContext(model="hard", model_config=CONVEX, train_config=LBFGS)
    engine = MTIF(train_model(ts, "hard", CONVEX, LBFGS), ts)
    scores, _ = engine.instance_scores()
    actual = loo_effects(ts, ctx, np.array([[0, 0]]))[0]
    assert actual[0] > 0 and scores[0, 0] > 0
    per_test, _ = engine.test_example_scores(0)
    assert per_test[0, 0] > 0


def test_registry_entry_trains_and_returns_relatedness(classification: TaskSet, tmp_path) -> None:
    ctx = RelateContext(
        model="hard",
        model_config={"hidden": [4], "l2": 1e-2},
        train_config=TrainConfig(epochs=5, patience=None),
    )
    result = relate(classification, "mtif", ctx, task_level="newton", damping=1e-2)
    n = len(classification)
    assert result.instance_scores is not None
    assert result.matrix.shape == (n, n) and result.instance_scores.shape == (
        sum(len(t.train_idx) for t in classification.tasks),
        n,
    )
    np.testing.assert_allclose(result.matrix, result.meta["newton_matrix"])
    assert result.meta["solver"]["damping"] == 1e-2
    assert {"train_s", "influence_s"} <= set(result.meta["timings_s"])
    back = Relatedness.load(result.save(tmp_path / "mtif"))
    assert back.instance_scores is not None
    np.testing.assert_allclose(back.instance_scores, result.instance_scores)


def _gradient_scales(model: torch.nn.Module, taskset: TaskSet) -> tuple[float, float]:
    """``||grad J||`` and ``max_t`` RMS per-example gradient norm, straight from the
    model's own parameters with an autograd loop (independent of MTIF's vmap path)."""
    params = list(model.parameters())

    def flat(value: torch.Tensor) -> torch.Tensor:
        grads = torch.autograd.grad(value, params, allow_unused=True, retain_graph=True)
        return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                          for g, p in zip(grads, params, strict=True)])  # fmt: skip

    total, scale = model.penalty(), 0.0
    for t, task in enumerate(taskset.tasks):
        x, y = task.arrays("train")
        xt = torch.as_tensor(x, dtype=params[0].dtype)
        yt = torch.as_tensor(y)
        yt = yt.to(params[0].dtype) if yt.is_floating_point() else yt
        losses = model.loss(xt, yt, t)
        total = total + losses.mean()
        sq = [float(flat(losses[i]).pow(2).sum()) for i in range(len(losses))]
        scale = max(scale, float(np.mean(sq)) ** 0.5)
    return float(flat(total).norm()), scale


def test_converged_convex_model_has_clean_diagnostics(convex_engine: MTIF) -> None:
    result = convex_engine.relatedness(task_level="newton", instance=False)
    diag = result.meta["diagnostics"]
    assert diag["stationarity"]["stationary"] and diag["stationarity"]["relative"] < 1e-6
    assert diag["damping"] == 0.0 and diag["positive_definite"]
    newton = diag["newton"]
    assert all(newton["positive_definite"]) and newton["damping"] == [0.0] * 4
    assert all(lo > 0 for lo in newton["min_eig"])
    assert result.meta["caveats"] == []


def test_under_trained_model_is_flagged(regression: TaskSet) -> None:
    torch.manual_seed(0)
    model = build_model("hard", regression, CONVEX)  # untrained
    engine = MTIF(model, regression)
    result = engine.relatedness(instance=False)
    stat = result.meta["diagnostics"]["stationarity"]
    assert not stat["stationary"]
    norm, scale = _gradient_scales(model, regression)
    assert stat["grad_norm"] == pytest.approx(norm, rel=1e-5)
    assert stat["task_grad_scale"] == pytest.approx(scale, rel=1e-5)
    assert stat["relative"] == pytest.approx(norm / scale, rel=1e-5) and norm / scale > 1e-2
    assert sum("not at an optimum" in c for c in result.meta["caveats"]) == 1


def test_indefinite_task_removed_hessian_is_diagnosed(classification: TaskSet) -> None:
    """Untrained tanh MLP: the per-task smallest eigenvalue of H - H_j equals the dense
    one (over the coordinates not held), the indefinite ones are named in one notice and
    damped from the requested 0 to -lambda_min + 1e-3 lambda_max."""
    torch.manual_seed(1)
    model = build_model("hard", classification, {"hidden": [4], "activation": "tanh", "l2": 1e-3})
    engine = MTIF(model, classification, solver="explicit", damping=0.0)
    flat = MTIF(model, classification, solver="explicit", structured=False)
    result = engine.relatedness(task_level="newton", instance=False)
    newton = result.meta["diagnostics"]["newton"]
    for j in range(engine.n_tasks):
        keep = torch.ones(engine.fns.space.numel, dtype=torch.bool)
        keep[engine.orphaned(j)] = False
        dense = flat.operator(without=j).dense()[keep][:, keep]
        lo = float(torch.linalg.eigvalsh(dense)[0])
        assert newton["min_eig"][j] == pytest.approx(lo, rel=1e-8, abs=1e-12)
        assert newton["positive_definite"][j] == (lo > 0)
        hi = newton["max_eig"][j]
        expected = -lo + 1e-3 * hi if lo < 0 else 0.0
        assert newton["damping"][j] == pytest.approx(expected, rel=1e-10)
    pds = newton["positive_definite"]
    bad = [n for n, pd in zip(classification.names, pds, strict=True) if not pd]
    assert bad, "the constructed case must have an indefinite H - H_j"
    lines = [c for c in result.meta["caveats"] if c.startswith("MTIF Newton step")]
    assert len(lines) == 1 and all(name in lines[0] for name in bad)


@pytest.mark.parametrize("solver", ["explicit", "woodbury"])
def test_newton_step_with_unpenalised_heads(solver: str) -> None:
    """``l2_task=0``: without task j its head has no curvature at all (this used to raise
    LinAlgError). The head is held where it is, which is the minimum-norm
    (pseudo-inverse) Newton step of the flat dense system (checked at an untrained point,
    where the step is not trivial); the trained model, whose task gradients all vanish
    (each head fits its task), still counts as stationary."""
    ts = load(
        "synthetic-regression",
        clusters=1,
        cluster_size=2,
        n_unrelated=1,
        n_adversarial=0,
        n_per_task=40,
        n_features=3,
        train=0.5,
        val=0.0,
        seed=3,
    ).standardize()
    config = {"hidden": [], "shared_head": True, "l2": 1e-2, "l2_task": 0.0}
    exact = TrainConfig(optimizer="newton", lr=1.0, epochs=2, patience=None, dtype="float64")
    model = train_model(ts, "hard", config, exact)
    engine = MTIF(model, ts, solver=solver)
    newton = engine.newton_task_matrix()
    diag = engine.newton_diagnostics
    assert diag is not None and all(diag["positive_definite"])
    assert diag["held"] == [4] * 3 and diag["damping"] == [0.0] * 3  # 3 weights + bias
    assert engine.stationarity["stationary"]
    torch.manual_seed(0)
    model = build_model("hard", ts, config)
    newton = MTIF(model, ts, solver=solver).newton_task_matrix()
    assert np.abs(newton).max() > 1e-3
    flat = MTIF(model, ts, solver="explicit", structured=False)
    fns = flat.fns
    base = torch.stack([fns.mean_loss(fns.theta, i, "test") for i in range(3)])
    for j in range(3):
        h = flat.operator(without=j).dense()
        rhs = flat.train_gradients[:, j] - flat.objective_gradient
        step = torch.linalg.pinv(h, rtol=1e-12) @ rhs
        moved = torch.stack([fns.mean_loss(fns.theta + step, i, "test") for i in range(3)])
        np.testing.assert_allclose(newton[:, j], (moved - base).numpy(), rtol=1e-7, atol=1e-12)


def test_cg_newton_diagnostics_match_the_explicit_ones(convex_engine: MTIF) -> None:
    """CG's task-removed solves take their eigenvalue estimates from its own Lanczos
    coefficients: on a converged convex model they agree with the exact ones and the
    Newton matrix with the explicit one."""
    model, tasks = convex_engine.fns.model, convex_engine.taskset
    cg = MTIF(model, tasks, solver="cg", structured=True, solver_options={"tol": 1e-12})
    np.testing.assert_allclose(
        cg.newton_task_matrix(), convex_engine.newton_task_matrix(), rtol=1e-6, atol=1e-12
    )
    ours, exact = cg.newton_diagnostics, convex_engine.newton_diagnostics
    assert ours is not None and exact is not None
    assert all(ours["positive_definite"]) and ours["damping"] == [0.0] * 4
    np.testing.assert_allclose(ours["min_eig"], exact["min_eig"], rtol=1e-4)
    np.testing.assert_allclose(ours["max_eig"], exact["max_eig"], rtol=1e-4)
