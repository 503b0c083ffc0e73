"""Office-Caltech-10 with SURF bag-of-words features: four domains as four 10-class tasks.

Tasks (in this order) and sizes: ``amazon`` 958, ``caltech`` 1123, ``dslr`` 157, ``webcam``
295 images; each image is an 800-bin SURF visual-word histogram (counts). Labels ``1..10``
in the files become class ids ``0..9`` named (alphabetically, the benchmark's order)
``back_pack, bike, calculator, headphones, keyboard, laptop_computer, monitor, mouse, mug,
projector``.

This is the benchmark VMTL reports on, but with SURF features instead of deep CNN features,
so absolute accuracies are lower than published ones: compare methods with each other on
the same features, splits and seeds.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from taskrel.data.files import load_mat
from taskrel.data.taskset import Task, TaskSet
from taskrel.errors import DataError

DOMAINS: tuple[tuple[str, str], ...] = (
    ("amazon", "amazon_SURF_L10.mat"),
    ("caltech", "Caltech10_SURF_L10.mat"),
    ("dslr", "dslr_SURF_L10.mat"),
    ("webcam", "webcam_SURF_L10.mat"),
)
CLASSES: tuple[str, ...] = (
    "back_pack", "bike", "calculator", "headphones", "keyboard",
    "laptop_computer", "monitor", "mouse", "mug", "projector",
)  # fmt: skip
NORMALIZATIONS = ("zscore", "l1", "none")


def load_office_caltech(
    train: float | int = 0.1,
    val: float | int = 0.0,
    seed: int = 0,
    normalize: Literal["zscore", "l1", "none"] = "zscore",
) -> TaskSet:
    """Load Office-Caltech-10 (SURF) as four classification tasks.

    Protocol: for each task (domain) a stratified random ``train`` fraction of its images is
    the training split (the benchmark uses 5%, 10% and 20%, i.e. ``train=0.05/0.1/0.2``,
    over several seeds) and the rest is the test split. A validation split, if asked, is
    taken from what would otherwise be test: ``val`` is a fraction (or count) of each
    task's *whole* data, so ``train=0.1, val=0.1`` gives 10% train, 10% val and 80% test.
    For a given seed the training split does not depend on ``val``.

    Args:
        train, val: split sizes per task (fractions of each task's images, or counts).
        seed: seed of the split.
        normalize: ``l1`` divides each histogram by its sum (features become visual-word
            frequencies, summing to 1); ``zscore`` (default) does that and then
            standardises every feature with the mean/std of the task's *training* rows
            only; ``none`` keeps the raw counts.

    Returns:
        A :class:`TaskSet` of 4 tasks, ``x`` float32 ``(n_t, 800)``, ``y`` int64 in ``0..9``;
        ``meta['classes']`` holds the class names (also in each task's ``labels``).
    """
    if normalize not in NORMALIZATIONS:
        raise DataError(
            f"office-caltech: normalize must be one of {NORMALIZATIONS}, got {normalize!r}"
        )
    tasks = tuple(_domain_task(name, file, l1=normalize != "none") for name, file in DOMAINS)
    meta = {"classes": list(CLASSES), "normalize": normalize, "features": "SURF-800"}
    taskset = TaskSet(name="office-caltech", tasks=tasks, meta=meta).split(train, val, seed=seed)
    return taskset.standardize(scope="task") if normalize == "zscore" else taskset


def _domain_task(name: str, file: str, l1: bool) -> Task:
    mat = load_mat("office_caltech10_surf", file)
    x = mat["fts"].astype(np.float64)
    if l1:
        x = x / np.maximum(x.sum(axis=1, keepdims=True), 1e-12)
    y = mat["labels"].reshape(-1).astype(np.int64) - 1
    return Task(
        name=name,
        kind="classification",
        x=x.astype(np.float32),
        y=y,
        n_outputs=len(CLASSES),
        train_idx=np.arange(len(y)),
        labels=CLASSES,
    )
