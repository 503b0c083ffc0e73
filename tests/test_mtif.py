"""MTIF: structured solves, scores against exact leave-one-out, sign convention."""

from __future__ import annotations

import numpy as np
import pytest
import torch

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


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
    return load(
        "synthetic",
        n_per_task=40,
        n_features=4,
        clusters=1,
        cluster_size=2,
        n_unrelated=1,
        n_adversarial=1,
        seed=2,
    ).standardize()


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
