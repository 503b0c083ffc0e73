"""Built-in loaders on the bundled real data: rotated digits, Office-Caltech, school,
landmine, Parkinsons."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from taskrel.data import DATASETS, load
from taskrel.data.digits import _partition, load_rotated_digits, rotate
from taskrel.data.landmine import load_landmine
from taskrel.data.office_caltech import CLASSES, load_office_caltech
from taskrel.data.parkinsons import load_parkinsons
from taskrel.data.school import load_school
from taskrel.data.taskset import TaskSet
from taskrel.errors import DataError


def _assert_same_split(a: TaskSet, b: TaskSet) -> None:
    for ta, tb in zip(a, b, strict=True):
        for split in ("train", "val", "test"):
            np.testing.assert_array_equal(ta.indices(split), tb.indices(split))


def _differs(a: TaskSet, b: TaskSet) -> bool:
    return any(not np.array_equal(ta.train_idx, tb.train_idx) for ta, tb in zip(a, b, strict=True))


def _originals() -> tuple[np.ndarray, np.ndarray]:
    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target


# -- rotated digits -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_cls() -> TaskSet:
    return load_rotated_digits(seed=0)


def test_rotated_digits_class_tasks_partition_all_images(digits_cls: TaskSet) -> None:
    assert digits_cls.names == ["rot-0", "rot-15", "rot-30", "rot-45", "rot-60", "rot-75"]
    assert digits_cls.input_shape == (64,)
    _, labels = _originals()
    assert sum(t.n_examples for t in digits_cls) == 1797
    pooled = np.concatenate([t.y for t in digits_cls])
    np.testing.assert_array_equal(np.bincount(pooled), np.bincount(labels))
    for task in digits_cls:
        assert task.x.dtype == np.float32 and task.y.dtype == np.int64
        assert task.n_outputs == 10 and task.labels == tuple("0123456789")
        assert task.x.min() >= 0.0 and task.x.max() <= 1.0
        # class-balanced partition: each class count within 1 of its share
        share = np.bincount(labels) / 6
        assert np.all(np.abs(np.bincount(task.y, minlength=10) - share) <= 1)


def test_digit_partition_is_disjoint_and_complete() -> None:
    _, labels = _originals()
    parts = _partition(labels, 6, np.random.default_rng(3))
    joined = np.concatenate(parts)
    assert len(joined) == 1797 and len(np.unique(joined)) == 1797


def test_rotation_tasks_differ(digits_cls: TaskSet) -> None:
    images, _ = _originals()
    originals = {row.tobytes() for row in images.reshape(len(images), -1)}
    rot0, rot45 = digits_cls["rot-0"], digits_cls["rot-45"]
    assert all(row.tobytes() in originals for row in rot0.x)  # unrotated images
    assert np.mean([row.tobytes() in originals for row in rot45.x]) < 0.01
    mean_gap = np.abs(rot0.x.mean(axis=0) - rot45.x.mean(axis=0)).max()
    assert mean_gap > 0.1


def test_rotate_is_counter_clockwise() -> None:
    image = np.zeros((1, 5, 5), dtype=np.float32)
    image[0, 0, 2] = 1.0  # top centre
    turned = rotate(image, 90).reshape(5, 5)
    assert turned[2, 0] == pytest.approx(1.0, abs=1e-5)  # -> left centre
    assert turned.sum() == pytest.approx(1.0, abs=1e-5)


def test_rotated_digits_split_sizes_and_determinism(digits_cls: TaskSet) -> None:
    for task, sizes in zip(digits_cls, digits_cls.sizes().values(), strict=True):
        n = task.n_examples
        assert sizes == {
            "train": round(0.1 * n),
            "val": round(0.1 * n),
            "test": n - 2 * round(0.1 * n),
        }
    again = load_rotated_digits(seed=0)
    _assert_same_split(digits_cls, again)
    np.testing.assert_array_equal(digits_cls[2].x, again[2].x)
    other = load_rotated_digits(seed=1)
    assert _differs(digits_cls, other)
    assert not np.array_equal(digits_cls[0].y, other[0].y)  # a different image partition


def test_rotated_digits_angle_regression() -> None:
    ts = load_rotated_digits(target="angle", angles=(0, 30, 60), train=0.2, val=0.0)
    assert ts.names == [f"digit-{d}" for d in range(10)]
    _, labels = _originals()
    for digit, task in enumerate(ts):
        assert task.kind == "regression" and task.y.dtype == np.float32
        assert task.n_examples == 3 * np.sum(labels == digit)
        values, counts = np.unique(task.y, return_counts=True)
        np.testing.assert_array_equal(values, [0.0, 30.0, 60.0])
        assert np.all(counts == np.sum(labels == digit))
        assert len(task.train_idx) == round(0.2 * task.n_examples)


def test_rotated_digits_n_per_task_and_bad_options() -> None:
    ts = load_rotated_digits(n_per_task=40, train=10, val=5)
    assert [t.n_examples for t in ts] == [40] * 6
    assert ts.sizes()["rot-30"] == {"train": 10, "val": 5, "test": 25}
    with pytest.raises(DataError, match="target"):
        load_rotated_digits(target="scale")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="distinct angles"):
        load_rotated_digits(angles=(15, 15))


# -- Office-Caltech -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def office_l1() -> TaskSet:
    return load_office_caltech(normalize="l1", seed=0)


def test_office_caltech_sizes_and_classes(office_l1: TaskSet) -> None:
    assert office_l1.names == ["amazon", "caltech", "dslr", "webcam"]
    assert [t.n_examples for t in office_l1] == [958, 1123, 157, 295]
    assert office_l1.input_shape == (800,)
    expected_counts = {
        "amazon": [92, 82, 94, 99, 100, 100, 99, 100, 94, 98],
        "dslr": [12, 21, 12, 13, 10, 24, 22, 12, 8, 23],
        "webcam": [29, 21, 31, 27, 27, 30, 43, 30, 27, 30],
        "caltech": [151, 110, 100, 138, 85, 128, 133, 94, 87, 97],
    }
    for task in office_l1:
        assert task.n_outputs == 10 and task.labels == CLASSES and task.y.dtype == np.int64
        np.testing.assert_array_equal(np.bincount(task.y), expected_counts[task.name])
        np.testing.assert_allclose(task.x.sum(axis=1), 1.0, rtol=1e-5)  # L1-normalised
    raw = load_office_caltech(normalize="none")
    assert raw["dslr"].x.max() == 47 and np.all(raw["dslr"].x == np.round(raw["dslr"].x))


@pytest.mark.parametrize("train", [0.05, 0.1, 0.2])
def test_office_caltech_protocol_split_sizes(train: float) -> None:
    ts = load_office_caltech(train=train, seed=2, normalize="none")
    for task, sizes in zip(ts, ts.sizes().values(), strict=True):
        n_train = round(train * task.n_examples)
        assert sizes == {"train": n_train, "val": 0, "test": task.n_examples - n_train}


def test_office_caltech_val_comes_from_test(office_l1: TaskSet) -> None:
    with_val = load_office_caltech(train=0.1, val=0.1, seed=0, normalize="l1")
    for a, b in zip(office_l1, with_val, strict=True):
        np.testing.assert_array_equal(a.train_idx, b.train_idx)
        assert len(b.val_idx) == round(0.1 * b.n_examples)
        assert set(b.val_idx) | set(b.test_idx) == set(a.test_idx)


def test_office_caltech_zscore_uses_training_rows_only(office_l1: TaskSet) -> None:
    z = load_office_caltech(normalize="zscore", seed=0)
    _assert_same_split(z, office_l1)
    for zt, lt in zip(z, office_l1, strict=True):
        train = lt.x[lt.train_idx].astype(np.float64)
        mean, std = train.mean(axis=0), train.std(axis=0)
        std = np.where(std > 1e-12, std, 1.0)
        np.testing.assert_allclose(zt.x, (lt.x - mean) / std, atol=1e-3)
        varying = lt.x[lt.train_idx].std(axis=0) > 1e-6
        zt_train, zt_test = zt.x[zt.train_idx][:, varying], zt.x[zt.test_idx][:, varying]
        np.testing.assert_allclose(zt_train.mean(axis=0), 0.0, atol=1e-4)
        np.testing.assert_allclose(zt_train.std(axis=0), 1.0, atol=1e-3)
        assert np.abs(zt_test.mean(axis=0)).max() > 0.05


def test_office_caltech_determinism_and_bad_option(office_l1: TaskSet) -> None:
    _assert_same_split(office_l1, load_office_caltech(normalize="l1", seed=0))
    assert _differs(office_l1, load_office_caltech(normalize="l1", seed=1))
    with pytest.raises(DataError, match="normalize"):
        load_office_caltech(normalize="l2")  # type: ignore[arg-type]


# -- school -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def school() -> TaskSet:
    return load_school(seed=0)


def test_school_shapes_and_values(school: TaskSet) -> None:
    assert len(school) == 139
    assert school.names[0] == "school-001" and school.names[-1] == "school-139"
    assert sum(t.n_examples for t in school) == 15362
    assert min(t.n_examples for t in school) == 22 and max(t.n_examples for t in school) == 251
    assert school.input_shape == (27,)
    x = np.concatenate([t.x for t in school])
    y = np.concatenate([t.y for t in school])
    assert x.dtype == np.float32 and y.dtype == np.float32
    assert not np.any(np.all(x == 1.0, axis=0))  # the constant column is dropped
    assert (y.min(), y.max()) == (1.0, 70.0)
    assert school[0].n_examples == 200


def test_school_split_sizes_and_min_train(school: TaskSet) -> None:
    for task, sizes in zip(school, school.sizes().values(), strict=True):
        assert sizes["train"] == round(0.2 * task.n_examples)
        assert sizes["train"] + sizes["test"] == task.n_examples
    tiny = load_school(train=0.01, n_tasks=10)
    assert len(tiny) == 10
    assert min(s["train"] for s in tiny.sizes().values()) == 2


def test_school_determinism_and_bad_n_tasks(school: TaskSet) -> None:
    _assert_same_split(school.select_tasks(range(5)), load_school(n_tasks=5, seed=0))
    assert _differs(load_school(n_tasks=5, seed=0), load_school(n_tasks=5, seed=1))
    with pytest.raises(DataError, match="n_tasks"):
        load_school(n_tasks=200)


# -- landmine -----------------------------------------------------------------------------
def test_landmine_tasks_and_ground_truth() -> None:
    ts = load_landmine(train=0.2, seed=0)
    assert len(ts) == 29 and ts.names[0] == "landmine-01" and ts.input_shape == (9,)
    assert sum(t.n_examples for t in ts) == 14820
    assert sum(int(t.y.sum()) for t in ts) == 904
    assert all(t.n_outputs == 2 and set(np.unique(t.y)) == {0, 1} for t in ts)
    assert ts.meta["groups"] == [0] * 15 + [1] * 14
    sim = ts.meta["similarity"]
    assert sim.shape == (29, 29)
    assert sim[0, 14] == 1 and sim[15, 28] == 1 and sim[14, 15] == 0
    # stratified: every task keeps positives in its training split
    assert all(t.y[t.train_idx].sum() >= 3 for t in ts)
    _assert_same_split(ts, load_landmine(train=0.2, seed=0))


# -- Parkinsons ---------------------------------------------------------------------------
def test_parkinsons_raw_values_and_source_rows() -> None:
    ts = load_parkinsons(standardize=False, train=0.3, seed=0)
    assert len(ts) == 42 and ts.names == [f"subject-{i:02d}" for i in range(1, 43)]
    assert sum(t.n_examples for t in ts) == 5875 and ts.input_shape == (19,)
    assert ts.meta["feature_names"][:3] == ["age", "sex", "test_time"]
    first = ts[0]
    np.testing.assert_allclose(first.x[0, :4], [72, 0, 5.6431, 0.00662], rtol=1e-6)
    assert first.y[0] == pytest.approx(34.398) and first.y.dtype == np.float32
    assert ts.meta["source_rows"][0][0] == 1
    rows = np.sort(np.concatenate(ts.meta["source_rows"]))
    np.testing.assert_array_equal(rows, np.arange(1, 5876))
    assert ts.sizes()["subject-01"]["train"] == round(0.3 * first.n_examples)
    motor = load_parkinsons(target="motor_UPDRS", standardize=False)
    assert motor[0].y[0] == pytest.approx(28.199)


def test_parkinsons_pooled_standardisation() -> None:
    ts = load_parkinsons(seed=0)
    train = np.concatenate([t.x[t.train_idx] for t in ts]).astype(np.float64)
    np.testing.assert_allclose(train.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(train.std(axis=0), 1.0, atol=1e-3)
    assert np.ptp(ts[0].x[:, 0]) == 0  # age is constant within a patient ...
    assert ts[0].x[0, 0] != ts[1].x[0, 0]  # ... but differs between patients
    with pytest.raises(DataError, match="target"):
        load_parkinsons(target="UPDRS")  # type: ignore[arg-type]


def test_new_datasets_are_registered() -> None:
    assert {"landmine", "parkinsons"} <= set(DATASETS)
    assert len(load("landmine")) == 29
