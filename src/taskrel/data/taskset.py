"""The data model: :class:`Task` and :class:`TaskSet`.

A task holds *all* of its examples (``x``, ``y``) plus three index arrays naming which rows
are in the train / validation / test split. A training example's stable global id is the
pair ``(task position, row index)``: row indices refer to the rows of the task's data as the
loader read them, so instance-level scores map back to the user's files whatever the split.

Shapes
------
- classification: ``x`` float32 ``(n, d)``, ``y`` int64 ``(n,)`` in ``[0, n_outputs)``.
- regression: ``x`` float32 ``(n, d)``, ``y`` float32 ``(n,)``.
- sequence_labeling: ``x`` int64 ``(n, L)`` token ids padded with 0, ``y`` int64 ``(n, L)``
  tag ids padded with ``-100`` (ignored by the loss).
A classification task over token sequences (e.g. SLU intents) has int64 ``x`` of shape
``(n, L)`` as well.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from taskrel.errors import DataError
from taskrel.notices import notice

TaskKind = Literal["classification", "regression", "sequence_labeling"]
TASK_KINDS: tuple[str, ...] = ("classification", "regression", "sequence_labeling")
SplitName = Literal["train", "val", "test"]
PAD_TAG = -100


def _as_index(a: Sequence[int] | np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.int64).reshape(-1)


@dataclass(frozen=True)
class Task:
    """One task: its data and its split.

    Attributes:
        name: unique name within the task set.
        kind: ``classification``, ``regression`` or ``sequence_labeling``.
        x: inputs of every example, shape ``(n, ...)`` (see module docstring).
        y: targets of every example, shape ``(n,)`` or ``(n, L)``.
        n_outputs: number of classes / tags; 1 for regression.
        train_idx, val_idx, test_idx: disjoint row indices into ``x`` and ``y``.
        labels: optional names of the classes or tags (length ``n_outputs``).
    """

    name: str
    kind: TaskKind
    x: np.ndarray
    y: np.ndarray
    n_outputs: int
    train_idx: np.ndarray
    val_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    test_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    labels: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise DataError(f"task {self.name!r}: kind {self.kind!r} is not one of {TASK_KINDS}")
        if len(self.x) != len(self.y):
            raise DataError(f"task {self.name!r}: x has {len(self.x)} rows but y has {len(self.y)}")
        for split in ("train_idx", "val_idx", "test_idx"):
            object.__setattr__(self, split, _as_index(getattr(self, split)))
        n = len(self.x)
        all_idx = np.concatenate([self.train_idx, self.val_idx, self.test_idx])
        if all_idx.size and (all_idx.min() < 0 or all_idx.max() >= n):
            raise DataError(f"task {self.name!r}: split indices must lie in [0, {n})")
        if np.unique(all_idx).size != all_idx.size:
            raise DataError(f"task {self.name!r}: train/val/test splits overlap")
        if self.kind == "classification" and len(self.y):
            ymin, ymax = int(self.y.min()), int(self.y.max())
            if ymin < 0 or ymax >= self.n_outputs:
                raise DataError(
                    f"task {self.name!r}: class labels must lie in [0, {self.n_outputs}), "
                    f"found [{ymin}, {ymax}]"
                )

    @property
    def n_examples(self) -> int:
        return len(self.x)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def indices(self, split: SplitName) -> np.ndarray:
        """Row indices of ``split`` (``train``, ``val`` or ``test``)."""
        if split not in ("train", "val", "test"):
            raise DataError(f"split must be 'train', 'val' or 'test', got {split!r}")
        return {"train": self.train_idx, "val": self.val_idx, "test": self.test_idx}[split]

    def arrays(self, split: SplitName) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` of one split."""
        idx = self.indices(split)
        return self.x[idx], self.y[idx]


@dataclass(frozen=True)
class TaskSet:
    """An ordered collection of tasks with stable global example ids.

    Attributes:
        name: dataset name (e.g. ``synthetic``, ``school``).
        tasks: the tasks, in a fixed order; task position ``t`` is the first element of
            every global example id ``(t, row)``.
        shared_inputs: True when every task is defined on the same examples (e.g. intent
            and slots of the same utterances); trainers then draw the same rows for all
            tasks in a step.
        meta: free-form facts from the loader (ground-truth similarity, vocabularies, ...).
    """

    name: str
    tasks: tuple[Task, ...]
    shared_inputs: bool = False
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", tuple(self.tasks))
        if not self.tasks:
            raise DataError(f"task set {self.name!r} has no tasks")
        names = [t.name for t in self.tasks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise DataError(f"task set {self.name!r}: duplicate task names {dupes}")

    # -- access -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.tasks)

    def __repr__(self) -> str:
        """One line: name, number of tasks (the first few named) and split sizes."""
        shown = ", ".join(self.names[:4]) + (", ..." if len(self) > 4 else "")
        n = {s: sum(v[s] for v in self.sizes().values()) for s in ("train", "val", "test")}
        return (
            f"TaskSet({self.name!r}, {len(self)} tasks [{shown}], "
            f"train/val/test examples {n['train']}/{n['val']}/{n['test']})"
        )

    def __iter__(self) -> Iterator[Task]:
        return iter(self.tasks)

    def __getitem__(self, key: int | str) -> Task:
        return self.tasks[self.index(key)] if isinstance(key, str) else self.tasks[key]

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def index(self, name: str) -> int:
        """Position of the task called ``name``."""
        for i, t in enumerate(self.tasks):
            if t.name == name:
                return i
        raise DataError(f"task set {self.name!r} has no task {name!r}; tasks: {self.names}")

    @property
    def input_shape(self) -> tuple[int, ...]:
        shapes = {t.input_shape for t in self.tasks}
        if len(shapes) != 1:
            raise DataError(f"task set {self.name!r}: tasks have different input shapes {shapes}")
        return next(iter(shapes))

    @property
    def in_features(self) -> int:
        """Width of the (flat) feature vector shared by all tasks."""
        shape = self.input_shape
        return int(np.prod(shape)) if shape else 1

    def sizes(self) -> dict[str, dict[str, int]]:
        """Number of examples per task and split."""
        return {
            t.name: {s: len(t.indices(s)) for s in ("train", "val", "test")} for t in self.tasks
        }

    def train_ids(self) -> np.ndarray:
        """Global ids of every training example, ``(N_train, 2)`` int64 rows ``(task, row)``,
        tasks in order and rows in the order of ``train_idx``."""
        parts = [
            np.stack([np.full(len(t.train_idx), i, dtype=np.int64), t.train_idx], axis=1)
            for i, t in enumerate(self.tasks)
        ]
        return np.concatenate(parts, axis=0)

    # -- transformations (each returns a new TaskSet) --------------------------------
    def with_tasks(self, tasks: Sequence[Task], **changes: Any) -> TaskSet:
        return replace(self, tasks=tuple(tasks), **changes)

    def select_tasks(self, names: Sequence[str | int]) -> TaskSet:
        """A task set holding only the named (or numbered) tasks, in the given order.

        ``meta['similarity']`` (a task x task matrix) is restricted accordingly."""
        pos = [n if isinstance(n, int) else self.index(n) for n in names]
        meta = dict(self.meta)
        sim = meta.get("similarity")
        if sim is not None:
            meta["similarity"] = np.asarray(sim)[np.ix_(pos, pos)]
        return self.with_tasks([self.tasks[p] for p in pos], meta=meta)

    def drop_train(self, ids: np.ndarray | Sequence[tuple[int, int]]) -> TaskSet:
        """Remove training examples given by global ids ``(task, row)``.

        Raises:
            DataError: an id is not a training example, or a task would be left with fewer
                than one training example.
        """
        ids = np.asarray(ids, dtype=np.int64).reshape(-1, 2)
        tasks = list(self.tasks)
        for t in np.unique(ids[:, 0]) if len(ids) else []:
            task = tasks[int(t)]
            rows = ids[ids[:, 0] == t, 1]
            missing = np.setdiff1d(rows, task.train_idx)
            if missing.size:
                raise DataError(
                    f"task {task.name!r}: rows {missing[:5].tolist()} are not training examples"
                )
            keep = task.train_idx[~np.isin(task.train_idx, rows)]
            if keep.size == 0:
                raise DataError(f"task {task.name!r}: removing these ids leaves no training data")
            tasks[int(t)] = replace(task, train_idx=keep)
        return self.with_tasks(tasks)

    def keep_train(self, ids: np.ndarray | Sequence[tuple[int, int]]) -> TaskSet:
        """Keep only the given training examples; tasks with none are removed entirely."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1, 2)
        keep_names = []
        tasks = []
        for i, task in enumerate(self.tasks):
            rows = ids[ids[:, 0] == i, 1]
            kept = task.train_idx[np.isin(task.train_idx, rows)]
            if kept.size:
                tasks.append(replace(task, train_idx=kept))
                keep_names.append(i)
        if not tasks:
            raise DataError(f"task set {self.name!r}: no training examples kept")
        sub = self.select_tasks(keep_names)
        return sub.with_tasks(tasks)

    def split(
        self,
        train: float | int,
        val: float | int = 0.0,
        test: float | int | None = None,
        seed: int = 0,
        stratify: bool = True,
        min_train: int = 2,
    ) -> TaskSet:
        """Re-split every task, deterministically given ``seed``.

        Args:
            train: a fraction in (0, 1] of each task's examples, or a count (int >= 1).
            val: the same for the validation split.
            test: the same for the test split; ``None`` puts every remaining example in it.
            seed: random seed; the same seed gives the same split on every machine.
            stratify: keep class proportions in classification tasks where possible.
            min_train: each task gets at least this many training examples (a fraction
                that rounds to fewer is raised to it, with a notice).

        Raises:
            DataError: ``train`` is 0, a size is negative or a fraction above 1, or the
                sizes ask for more examples than a task has (the message says which
                option to lower).

        A training split with a single class, or a constant regression target, gives a
        notice (the model cannot learn anything from it).
        """
        if isinstance(train, int | float | np.number) and not isinstance(train, bool) and not train:
            raise DataError(
                f"train={train!r}: every task needs training examples; give a fraction in "
                f"(0, 1] or a count >= {min_train}"
            )
        tasks, raised = [], []
        for i, task in enumerate(self.tasks):
            rng = np.random.default_rng([seed, i])
            n = task.n_examples
            n_train = _count(train, n, "train", task.name)
            n_val = _count(val, n, "val", task.name) if val else 0
            if n_train < min(min_train, n - 1):
                raised.append(task.name)
            n_train = max(n_train, min(min_train, n - 1))
            if n_train < min_train:
                raise DataError(
                    f"task {task.name!r}: {n} examples cannot give {min_train} training examples"
                )
            rest = n - n_train - n_val
            n_test = rest if test is None else _count(test, n, "test", task.name)
            if n_test > rest or rest < 0:
                asked = f"train={train!r}, val={val!r}" + (
                    "" if test is None else f", test={test!r}"
                )
                raise DataError(
                    f"task {task.name!r}: {asked} ask for {n_train} + {n_val} + "
                    f"{max(n_test, 0)} "
                    f"examples but it has {n}; lower them so that they add up to at most "
                    f"{n} (fractions: at most 1 in total), e.g. train={_suggest(train, val, n)}"
                )
            order = _stratified_order(task, rng) if stratify else rng.permutation(n)
            tasks.append(
                replace(
                    task,
                    train_idx=np.sort(order[:n_train]),
                    val_idx=np.sort(order[n_train : n_train + n_val]),
                    test_idx=np.sort(order[n_train + n_val : n_train + n_val + n_test]),
                )
            )
        if raised:
            notice(
                f"train={train!r} gives fewer than {min_train} training examples to "
                f"{_some(raised)}; each gets {min_train} (the minimum)"
            )
        _check_training_targets(tasks)
        return self.with_tasks(tasks)

    def standardize(self, scope: Literal["task", "pooled"] = "task") -> TaskSet:
        """Z-score float features with mean/std fitted on training rows only.

        ``scope='task'`` fits one scaler per task; ``'pooled'`` one over all tasks' training
        rows. Integer (token) inputs are left unchanged. Constant features keep std 1.
        Moments are computed in float64, so huge values (e.g. 1e30) do not overflow.

        Raises:
            DataError: a feature is NaN or infinite (before or after standardising).
        """
        float_tasks = [t for t in self.tasks if np.issubdtype(t.x.dtype, np.floating)]
        if not float_tasks:
            return self
        for task in float_tasks:
            flat = task.x.reshape(task.n_examples, -1)
            _check_finite(task.name, flat, np.arange(len(flat)), "")
        pooled = None
        if scope == "pooled":
            stacked = np.concatenate(
                [t.x[t.train_idx].reshape(len(t.train_idx), -1) for t in float_tasks]
            )
            pooled = _moments(stacked)
        elif scope != "task":
            raise DataError(f"standardize scope must be 'task' or 'pooled', got {scope!r}")
        tasks = []
        for task in self.tasks:
            if not np.issubdtype(task.x.dtype, np.floating):
                tasks.append(task)
                continue
            flat = task.x.reshape(task.n_examples, -1)
            mean, std = pooled or _moments(flat[task.train_idx])
            z = (flat.astype(np.float64) - mean) / std
            _check_finite(task.name, z, np.arange(len(z)), " after standardising")
            tasks.append(replace(task, x=z.astype(np.float32).reshape(task.x.shape)))
        return self.with_tasks(tasks)

    def describe(self) -> str:
        """A short human-readable summary (one line per task)."""
        lines = [f"{self.name}: {len(self)} tasks, input shape {self.tasks[0].input_shape}"]
        for t, s in zip(self.tasks, self.sizes().values(), strict=True):
            lines.append(
                f"  {t.name:<24} {t.kind:<18} outputs={t.n_outputs:<4} "
                f"train={s['train']:<6} val={s['val']:<6} test={s['test']}"
            )
        return "\n".join(lines)


def _count(value: float | int, n: int, what: str, task: str) -> int:
    number = isinstance(value, int | float | np.integer | np.floating)
    if isinstance(value, bool) or not number or not value >= 0:
        raise DataError(
            f"{what}={value!r} (task {task!r}): expected a fraction in [0, 1] or a count >= 0"
        )
    if isinstance(value, float | np.floating):
        if value > 1.0:
            raise DataError(
                f"{what}={value!r} (task {task!r}): a fraction must be <= 1; "
                f"give a count (int) or a fraction"
            )
        return int(round(float(value) * n))
    return int(value)


def _stratified_order(
    task: Task, rng: np.random.Generator, rows: np.ndarray | None = None
) -> np.ndarray:
    """A permutation of ``rows`` (default: all rows) that interleaves classes so any prefix
    keeps class proportions."""
    pool = np.arange(task.n_examples) if rows is None else np.asarray(rows)
    if task.kind != "classification" or task.y.ndim != 1:
        return pool[rng.permutation(len(pool))]
    y = task.y[pool]
    keys = np.empty(len(pool))
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        rng.shuffle(members)
        # rank within class / class size: evenly spread positions in [0, 1)
        keys[members] = (np.arange(len(members)) + rng.random()) / len(members)
    return pool[np.lexsort((rng.random(len(pool)), keys))]


def _moments(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = a.astype(np.float64)
    mean = a.mean(axis=0)
    std = a.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    return mean, std


def _suggest(train: float | int, val: float | int, n: int) -> str:
    """A ``train`` value (of the same kind) that leaves room for ``val`` and a test split."""
    if isinstance(train, float):
        share = val if isinstance(val, float) else val / n
        return f"{max(round(0.9 - share, 2), 0.05):g}"
    used = round(val * n) if isinstance(val, float) else int(val)
    return str(max(n - used - max(1, n // 10), 1))


def _some(names: Sequence[str], shown: int = 5) -> str:
    """``"task 'a'"``, or ``"3 tasks ('a', 'b', 'c')"`` (at most ``shown`` named)."""
    if len(names) == 1:
        return f"task {names[0]!r}"
    listed = ", ".join(repr(n) for n in names[:shown]) + (", ..." if len(names) > shown else "")
    return f"{len(names)} tasks ({listed})"


def _check_training_targets(tasks: Sequence[Task]) -> None:
    """One notice for the training splits that cannot teach anything: a single class
    (classification), and one for a constant target (regression)."""
    one_class, constant = [], []
    for task in tasks:
        y = task.y[task.train_idx]
        if len(y) < 2 or task.kind == "sequence_labeling":
            continue
        if task.kind == "classification" and np.unique(y).size == 1:
            one_class.append(task.name)
        elif task.kind == "regression" and np.ptp(y) == 0:
            constant.append(task.name)
    if one_class:
        notice(
            f"the training split of {_some(one_class)} holds a single class; the model "
            "can only learn to predict that class there"
        )
    if constant:
        notice(
            f"the training target of {_some(constant)} is constant; the model can only "
            "learn to predict that value there"
        )


def check_features(taskset: TaskSet, split: SplitName = "train") -> None:
    """Refuse non-finite float features in ``split`` (before training on them).

    Raises:
        DataError: names the task, row and feature of the first NaN or infinite value."""
    for task in taskset.tasks:
        if np.issubdtype(task.x.dtype, np.floating):
            idx = task.indices(split)
            _check_finite(task.name, task.x[idx].reshape(len(idx), -1), idx, "")


def _check_finite(task: str, values: np.ndarray, rows: np.ndarray, when: str) -> None:
    """DataError at the first non-finite entry of ``values`` ``(n, d)`` (row ids ``rows``)."""
    bad = np.argwhere(~np.isfinite(values))
    if len(bad):
        row, col = (int(v) for v in bad[0])
        raise DataError(
            f"task {task!r}: feature {col} of row {int(rows[row])} is "
            f"{float(values[row, col])!r}{when}; features must be finite numbers"
        )
