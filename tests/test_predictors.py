"""Group-outcome predictors: exact retraining equalities, first-order consistency with
MTIF, hand-made matrices and bad input."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from taskrel.data import load
from taskrel.data.taskset import TaskSet
from taskrel.decisions.matrix import AffinitySum, probe_train_config
from taskrel.decisions.predictors import make_predictor
from taskrel.decisions.tag import TAG
from taskrel.errors import ConfigError
from taskrel.models.base import MTLModel
from taskrel.relatedness import RelateContext, relate
from taskrel.relatedness.ground_truth import task_subset_losses, train_model
from taskrel.relatedness.mtif import MTIF
from taskrel.training.trainer import TrainConfig

LINEAR = {"hidden": [], "shared_head": True, "l2": 1e-2, "l2_task": 1e-1}
EXACT = TrainConfig(
    optimizer="lbfgs", lr=1.0, epochs=1, lbfgs_max_iter=300, patience=None, dtype="float64"
)
SUBSETS = [[0, 1], [0, 2, 4], [1, 2, 3, 4], [3]]


def _taskset(name: str, seed: int) -> TaskSet:
    return load(
        name,
        clusters=2,
        cluster_size=2,
        n_unrelated=1,
        n_adversarial=0,
        n_per_task=60,
        n_features=4,
        train=0.5,
        val=0.0,
        seed=seed,
    ).standardize()


@pytest.fixture(scope="module")
def regression() -> tuple[TaskSet, RelateContext, np.ndarray]:
    """5 linear regression tasks, the exact convex model and retrained subset losses."""
    taskset = _taskset("synthetic-regression", 1)
    ctx = RelateContext(model="hard", model_config=LINEAR, train_config=EXACT)
    return taskset, ctx, task_subset_losses(taskset, ctx, SUBSETS)


def test_subset_newton_equals_retraining(regression) -> None:
    taskset, ctx, exact = regression
    predictor = make_predictor("mtif-newton").fit(taskset, ctx)
    predicted = predictor.subset_losses(SUBSETS)
    assert np.array_equal(np.isnan(predicted), np.isnan(exact))
    np.testing.assert_allclose(predicted, exact, rtol=1e-6)
    assert predictor.trainings == 1 and predictor.meta["grad_norm_relative"] < 1e-5
    assert predictor.meta["damped_solves"] == 0


@pytest.fixture(scope="module")
def trained(regression) -> MTLModel:
    """The convex model trained on all tasks of ``regression``."""
    taskset, ctx, _ = regression
    return train_model(taskset, ctx.model, ctx.model_config, ctx.train_config)


def test_grad_tag_identity_equals_retraining_on_linear_model(regression, trained) -> None:
    taskset, ctx, exact = regression
    predictor = make_predictor("grad-tag", dim=None, model=trained).fit(taskset, ctx)
    np.testing.assert_allclose(predictor.subset_losses(SUBSETS), exact, rtol=1e-6)
    # a random projection to fewer dimensions than parameters is no longer exact
    projected = make_predictor("grad-tag", dim=8, seed=3, model=trained).fit(taskset, ctx)
    assert np.nanmax(np.abs(projected.subset_losses(SUBSETS) / exact - 1)) > 1e-4


def test_softmax_regression_grad_tag_and_repeated_newton_equal_retraining() -> None:
    """Logits linear in the parameters: the linearised softmax regression is exact, and
    Newton steps on the subset objective converge to the retrained optimum (one step is
    not exact for the cross-entropy)."""
    taskset = _taskset("synthetic", 4).select_tasks([0, 1, 2])
    ctx = RelateContext(model="hard", model_config=LINEAR, train_config=EXACT)
    subsets = [[0, 2], [1]]
    exact = task_subset_losses(taskset, ctx, subsets)
    model = train_model(taskset, ctx.model, ctx.model_config, ctx.train_config)
    predicted = make_predictor("grad-tag", dim=None, model=model).fit(taskset, ctx)
    np.testing.assert_allclose(predicted.subset_losses(subsets), exact, rtol=1e-5)
    one = make_predictor("mtif-newton", model=model).fit(taskset, ctx).subset_losses(subsets)
    assert np.nanmax(np.abs(one / exact - 1)) > 1e-4
    more = make_predictor("mtif-newton", model=model, steps=6).fit(taskset, ctx)
    np.testing.assert_allclose(more.subset_losses(subsets), exact, rtol=1e-5)


def test_soft_sharing_steps_on_the_subset_model() -> None:
    """The coupling of a model of the subset ties only its tasks: both estimators use
    that penalty, so on a linear soft-sharing model they equal retraining."""
    taskset = _taskset("synthetic-regression", 1).select_tasks([0, 1, 2, 4])
    soft = {"hidden": [], "coupling": 0.3, "l2": 1e-2}
    ctx = RelateContext(model="soft", model_config=soft, train_config=EXACT)
    subsets = [[0, 1, 3], [2, 3]]
    exact = task_subset_losses(taskset, ctx, subsets)
    model = train_model(taskset, ctx.model, ctx.model_config, ctx.train_config)
    for name, options in (("mtif-newton", {}), ("grad-tag", {"dim": None})):
        predictor = make_predictor(name, model=model, **options).fit(taskset, ctx)
        np.testing.assert_allclose(predictor.subset_losses(subsets), exact, rtol=1e-6)


def test_leave_one_task_out_matches_mtif_matrices(regression, trained) -> None:
    """G = all tasks but j: first order gives MTIF's first-order LOTO column, the Newton
    step MTIF's task-removed Newton column (hard sharing: the removed head decouples)."""
    taskset, ctx, _ = regression
    model = trained
    engine = MTIF(model, taskset, solver="explicit")
    first, newton = engine.task_matrix(), engine.newton_task_matrix()
    n = len(taskset)
    loto = [[t for t in range(n) if t != j] for j in range(n)]
    tables = {}
    for name, reference in (("mtif-first-order", first), ("mtif-newton", newton)):
        predictor = make_predictor(name, model=model).fit(taskset, ctx)
        assert predictor.trainings == 0
        full = predictor.subset_losses([list(range(n))])[0]
        tables[name] = table = predictor.subset_losses(loto)
        for j in range(n):
            others = loto[j]
            # up to the residual gradient of the trained model (~1e-8), which only the
            # subset step accounts for
            np.testing.assert_allclose(
                table[j, others] - full[others], reference[others, j], rtol=1e-6, atol=1e-9
            )
    # removing one task of five is a small change: first order is within a few percent
    gap = np.abs(tables["mtif-first-order"] - tables["mtif-newton"])
    assert np.nanmax(gap) < 0.05 * np.nanmax(np.abs(newton))


def test_singular_subset_hessian_is_damped_with_a_notice(regression, caplog) -> None:
    taskset, ctx, _ = regression
    ctx = RelateContext(
        model="hard",
        model_config={"hidden": [], "shared_head": True, "l2": 0.0, "l2_task": 0.0},
        train_config=EXACT,
    )
    with caplog.at_level(logging.WARNING, logger="taskrel"):
        predictor = make_predictor("mtif-newton").fit(taskset, ctx)
        predicted = predictor.subset_losses([[0, 1]])
    assert predictor.meta["damped_solves"] == 1 and predictor.meta["max_damping"] > 0
    assert np.all(np.isfinite(predicted[0, [0, 1]]))
    assert any("not positive definite" in r.getMessage() for r in caplog.records)


def test_matrix_heuristics_on_a_hand_made_matrix() -> None:
    matrix = np.array([[1.0, 0.5, 0.2], [0.1, 1.0, 0.3], [0.4, 0.6, 1.0]])
    taskset = _taskset("synthetic-regression", 1).select_tasks([0, 1, 2])
    ctx = RelateContext()
    summed = AffinitySum(matrix=matrix).fit(taskset, ctx)
    mean = TAG(matrix=matrix).fit(taskset, ctx)
    subsets = [[0, 1, 2], [0, 2], [1]]
    nan = np.nan
    np.testing.assert_allclose(
        summed.subset_losses(subsets),
        [[-0.7, -0.4, -1.0], [-0.2, nan, -0.4], [nan, 0.0, nan]],
    )
    np.testing.assert_allclose(
        mean.subset_losses(subsets),
        [[-0.35, -0.2, -0.5], [-0.2, nan, -0.4], [nan, 0.0, nan]],
    )
    np.testing.assert_allclose(summed.predict_group_loss([[1], [2, 0]]), [-0.2, 0.0, -0.4])
    assert summed.trainings == 0


def test_tag_averages_the_lookahead_affinity() -> None:
    """TAG's group score is the row mean of the lookahead affinity over the other members;
    an L-BFGS context is swapped for mini-batch training (seed and precision kept)."""
    taskset = _taskset("synthetic-regression", 1).select_tasks([0, 1, 2])
    exact = RelateContext(model_config=LINEAR, train_config=EXACT.model_copy(update={"seed": 5}))
    probe = probe_train_config(taskset, exact)
    assert (probe.optimizer, probe.seed, probe.dtype) == ("adam", 5, "float64")
    quick = TrainConfig(
        optimizer="adam", epochs=6, lr=1e-2, batch_size=10, patience=None, dtype="float64"
    )
    ctx = RelateContext(model="hard", model_config=LINEAR, train_config=quick)
    tag = make_predictor("tag", options={"every": 2}).fit(taskset, ctx)
    z = relate(taskset, "affinity", ctx, every=2).matrix
    assert tag.trainings == 1
    np.testing.assert_allclose(
        tag.subset_losses([[0, 1, 2], [1, 2]]),
        [
            [-(z[0, 1] + z[0, 2]) / 2, -(z[1, 0] + z[1, 2]) / 2, -(z[2, 0] + z[2, 1]) / 2],
            [np.nan, -z[1, 2], -z[2, 1]],
        ],
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: p.subset_losses([[0, 7]]), r"outside \[0, 3\)"),
        (lambda p: p.subset_losses([[]]), "is empty"),
        (lambda p: p.subset_losses([[1, 1]]), "more than once"),
        (lambda p: p.predict_group_loss([[0, 1], [1, 2]]), "more than one group"),
        (lambda p: p.predict_group_loss([[0, 1], []]), "a group is empty"),
        (lambda p: p.predict_group_loss([[0, 1]]), "in no group"),
    ],
)
def test_bad_groups_give_one_line_config_errors(call, message) -> None:
    taskset = _taskset("synthetic-regression", 1).select_tasks([0, 1, 2])
    predictor = AffinitySum(matrix=np.eye(3)).fit(taskset, RelateContext())
    with pytest.raises(ConfigError, match=message) as err:
        call(predictor)
    assert "\n" not in str(err.value)


def test_bad_predictor_options() -> None:
    with pytest.raises(ConfigError, match="unknown group-outcome predictor 'nope'"):
        make_predictor("nope")
    with pytest.raises(ConfigError, match="unknown option.*dims.*accepted: dim"):
        make_predictor("grad-tag", dims=10)
    with pytest.raises(ConfigError, match="dim must be an integer >= 1"):
        make_predictor("grad-tag", dim=0)
    with pytest.raises(ConfigError, match="steps must be an integer >= 1"):
        make_predictor("mtif-newton", steps=0)
    with pytest.raises(ConfigError, match="damping"):
        make_predictor("mtif-newton", damping=-1.0)
    with pytest.raises(ConfigError, match="not fitted"):
        make_predictor("tag").subset_losses([[0]])
    taskset = _taskset("synthetic-regression", 1).select_tasks([0, 1, 2])
    with pytest.raises(ConfigError, match=r"finite \(3, 3\) array"):
        AffinitySum(matrix=np.eye(2)).fit(taskset, RelateContext())
