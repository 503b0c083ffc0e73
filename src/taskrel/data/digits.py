"""Rotated digits: scikit-learn's 1797 8x8 handwritten digits rotated by fixed angles, the
small-scale analogue of Rotated MNIST (works offline: the images ship with scikit-learn).

Every image is scaled from ``0..16`` to ``[0, 1]``, rotated counter-clockwise about its
centre with ``scipy.ndimage.rotate(reshape=False, order=1)`` (bilinear, zero fill, so values
stay in ``[0, 1]``) and flattened to 64 float32 features.

Two task structures:

- ``target="class"``: one 10-class task per angle (``rot-0``, ``rot-15``, ...). The images are
  *partitioned* across the angle tasks (a seeded, class-balanced partition), so no image
  appears in two tasks and the tasks differ in their images as well as in the rotation.
- ``target="angle"``: one regression task per digit class (``digit-0`` ... ``digit-9``)
  whose target is the rotation angle in degrees; each task holds every image of its digit
  at every angle (``n_images_of_digit * len(angles)`` examples). The same base image thus
  appears at several angles, possibly some in training and some in test (as in Rotated
  MNIST angle regression); its target differs at each angle.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy import ndimage
from sklearn.datasets import load_digits

from taskrel.data.taskset import Task, TaskSet
from taskrel.errors import DataError

DEFAULT_ANGLES: tuple[float, ...] = (0, 15, 30, 45, 60, 75)


def load_rotated_digits(
    target: Literal["class", "angle"] = "class",
    angles: Sequence[float] = DEFAULT_ANGLES,
    train: float | int = 0.1,
    val: float | int = 0.1,
    seed: int = 0,
    n_per_task: int | None = None,
) -> TaskSet:
    """Load the rotated-digits task set (see module docstring).

    Args:
        target: ``class`` (10-class digit recognition, one task per angle) or ``angle``
            (regression of the angle in degrees, one task per digit class).
        angles: rotation angles in degrees (counter-clockwise); at least 2, distinct.
        train, val: split sizes per task (fractions or counts); the rest is the test split.
        seed: seeds the image partition, the ``n_per_task`` subsample and the split.
        n_per_task: keep at most this many examples per task (a seeded random subsample);
            ``None`` keeps all.

    Returns:
        A :class:`TaskSet` with ``x`` float32 ``(n, 64)`` in ``[0, 1]``; ``y`` int64 digit
        classes ``0..9`` (``class``) or float32 angles in degrees (``angle``).
        ``meta['angles']`` lists the angles and ``meta['target']`` the target.
    """
    angles = _check_angles(angles)
    if n_per_task is not None and n_per_task < 2:
        raise DataError(f"rotated digits: n_per_task must be >= 2 or None, got {n_per_task}")
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    if target == "class":
        tasks = _class_tasks(images, labels, angles, rng, n_per_task)
    elif target == "angle":
        tasks = _angle_tasks(images, labels, angles, rng, n_per_task)
    else:
        raise DataError(f"rotated digits: target must be 'class' or 'angle', got {target!r}")
    name = "rotated-digits" if target == "class" else "rotated-digits-angle"
    meta = {"angles": list(angles), "target": target}
    return TaskSet(name=name, tasks=tuple(tasks), meta=meta).split(train, val, seed=seed)


def rotate(images: np.ndarray, angle: float) -> np.ndarray:
    """Rotate a stack of images ``(n, h, w)`` by ``angle`` degrees counter-clockwise about
    their centres; returns float32 ``(n, h * w)`` clipped to ``[0, 1]``."""
    rotated = ndimage.rotate(images, angle, axes=(2, 1), reshape=False, order=1)
    return np.clip(rotated, 0.0, 1.0).reshape(len(images), -1).astype(np.float32)


def _check_angles(angles: Sequence[float]) -> tuple[float, ...]:
    out = tuple(float(a) for a in angles)
    if len(out) < 2 or len(set(out)) != len(out):
        raise DataError(f"rotated digits: need at least 2 distinct angles, got {list(angles)}")
    return out


def _subsample(n: int, n_keep: int | None, rng: np.random.Generator) -> np.ndarray:
    """Sorted row indices of a seeded random subset of ``n_keep`` of ``n`` rows (all if None)."""
    if n_keep is None or n_keep >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=n_keep, replace=False))


def _partition(labels: np.ndarray, n_parts: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Split the image indices into ``n_parts`` disjoint, class-balanced, sorted subsets."""
    perm = rng.permutation(len(labels))
    by_class = perm[np.argsort(labels[perm], kind="stable")]
    return [np.sort(by_class[k::n_parts]) for k in range(n_parts)]


def _class_tasks(
    images: np.ndarray,
    labels: np.ndarray,
    angles: tuple[float, ...],
    rng: np.random.Generator,
    n_per_task: int | None,
) -> list[Task]:
    tasks = []
    for angle, members in zip(angles, _partition(labels, len(angles), rng), strict=True):
        members = members[_subsample(len(members), n_per_task, rng)]
        tasks.append(
            Task(
                name=f"rot-{angle:g}",
                kind="classification",
                x=rotate(images[members], angle),
                y=labels[members],
                n_outputs=10,
                train_idx=np.arange(len(members)),
                labels=tuple(str(c) for c in range(10)),
            )
        )
    return tasks


def _angle_tasks(
    images: np.ndarray,
    labels: np.ndarray,
    angles: tuple[float, ...],
    rng: np.random.Generator,
    n_per_task: int | None,
) -> list[Task]:
    tasks = []
    for digit in range(10):
        own = images[labels == digit]
        x = np.concatenate([rotate(own, angle) for angle in angles])
        y = np.repeat(np.asarray(angles, dtype=np.float32), len(own))
        keep = _subsample(len(x), n_per_task, rng)
        tasks.append(
            Task(
                name=f"digit-{digit}",
                kind="regression",
                x=x[keep],
                y=y[keep],
                n_outputs=1,
                train_idx=np.arange(len(keep)),
            )
        )
    return tasks
