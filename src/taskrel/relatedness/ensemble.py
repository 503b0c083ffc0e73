"""Ensembles of MTIF: the average over ``K`` independently trained models.

A network's influence scores depend on where its training happened to end: two seeds give
two local optima with their own Hessians, and influence at one of them is a noisy estimate
of what retraining (from any seed) does. TRAK (Park et al., 2023) averages attribution
scores over independently trained models; this module does the same for
:func:`~taskrel.relatedness.mtif.mtif_relatedness` (registry entry ``mtif``, option
``ensemble=K``), as a layer over it: each *member* is one call of ``mtif_relatedness``.

Members (``k = 0 .. K-1``), with ``s`` the context's training seed:

- member 0 is the plain computation (training seed ``s``, the task set's own split), so
  ``ensemble=1`` is exactly ``mtif_relatedness``;
- member ``k >= 1`` trains with seed :func:`member_seed` ``(s, k)``; with
  ``ensemble_resample=True`` it also trains (and is scored) on a re-split of the task set
  (:func:`~taskrel.relatedness.resample.resplit` with seed
  :func:`~taskrel.relatedness.resample.split_seed` ``(s, k)``: every task's train,
  validation and test rows pooled and cut again with the same sizes, as the resampled
  ground truths do).

The seeds of the first ``K`` members do not depend on ``K``, so an ensemble of ``K`` is
the first ``K`` members of any larger one (:func:`train_members` then :func:`combine` of a
prefix: how a benchmark gets K = 1, 5, 10 from one set of trainings).

The result (:func:`combine`) holds the mean of the members' task matrices (and of
``first_order_matrix`` / ``newton_matrix``), the mean instance score of every training
example of the original split over the members that trained on it (all of them unless
resampled), and in ``meta``: ``ensemble`` (K),
``ensemble_resample``, ``member_seeds``, ``member_split_seeds`` (None: the original split),
``member_matrices`` ``(K, T, T)``, ``member_stderr`` ``(T, T)`` (std ddof=1 / sqrt K),
``member_agreement`` (mean pairwise Spearman of the members' off-diagonal entries; NaN for
K = 1), ``member_diagnostics`` (each member's ``diagnostics``; ``diagnostics`` itself is
member 0's), ``instance_members`` ``(N,)`` (members that scored each example), the summed
``timings_s`` and the union of ``caveats``.

For a convex model every member reaches the same optimum, so ``K > 1`` gives the ``K = 1``
matrix up to training noise and only costs time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from taskrel.data.taskset import TaskSet
from taskrel.errors import ConfigError
from taskrel.relatedness.mtif import check_mtif, mtif_relatedness
from taskrel.relatedness.reliability import self_agreement
from taskrel.relatedness.resample import (
    check_resplittable,
    resplit,
    split_seed,
    standard_error,
)
from taskrel.relatedness.result import Relatedness
from taskrel.validation import check_options

WHERE = "relate(method='mtif')"
MEMBER_KEYS = ("ensemble_member", "train_seed", "split_seed")


def member_seed(seed: int, k: int) -> int:
    """Training seed of ensemble member ``k`` under the context's training seed ``seed``:
    ``seed`` itself for member 0, a ``SeedSequence([seed, k, 1])`` draw otherwise (far from
    the ``seed + r`` of resampled repeats, so no two members or repeats share an
    initialisation)."""
    if k == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), k, 1]).generate_state(1)[0])


def member_plan(ensemble: int, resample: bool, seed: int) -> list[tuple[int, int | None]]:
    """``(training seed, split seed or None)`` of each of the ``ensemble`` members (see the
    module docstring)."""
    return [
        (member_seed(seed, k), split_seed(seed, k) if resample and k > 0 else None)
        for k in range(ensemble)
    ]


def check_ensemble(
    taskset: TaskSet,
    ctx: Any,
    ensemble: int = 1,
    ensemble_resample: bool = False,
    **options: Any,
) -> None:
    """The checks of :func:`mtif_ensemble` that need no training (``relate`` runs them
    first): :func:`check_members`, then MTIF's own
    (:func:`~taskrel.relatedness.mtif.check_mtif`: option values, the memory need).

    Raises:
        ConfigError, DataError, NotApplicableError: a check fails (one line).
    """
    check_members(taskset, ensemble, ensemble_resample, options)
    check_mtif(taskset, ctx, **options)


def check_members(
    taskset: TaskSet, ensemble: Any, ensemble_resample: Any, options: dict[str, Any]
) -> None:
    """``ensemble`` an integer >= 1, ``ensemble_resample`` a bool, ``options`` known to
    :func:`~taskrel.relatedness.mtif.mtif_relatedness` with values of its types, no trained
    ``model`` with ``ensemble > 1`` (members are trained here), and, when resampling,
    enough rows in every task to re-split ``ensemble`` times.

    Raises:
        ConfigError: any of these fails (one line naming the option).
        DataError: with ``ensemble_resample``, a task too small to re-split.
    """
    if isinstance(ensemble, bool) or not isinstance(ensemble, int | np.integer) or ensemble < 1:
        raise ConfigError(
            f"{WHERE}: option ensemble={ensemble!r} must be an integer >= 1 (models averaged)"
        )
    if not isinstance(ensemble_resample, bool | np.bool_):
        raise ConfigError(
            f"{WHERE}: option ensemble_resample={ensemble_resample!r} must be true or false"
        )
    check_options(WHERE, mtif_relatedness, options, skip=("taskset", "ctx"))
    if ensemble > 1 and options.get("model") is not None:
        raise ConfigError(
            f"{WHERE}: a trained model and ensemble={ensemble} do not go together (the "
            "ensemble trains its own members); pass ensemble=1 with model"
        )
    if ensemble_resample and ensemble > 1:
        check_resplittable(taskset, int(ensemble))


def mtif_ensemble(
    taskset: TaskSet,
    ctx: Any,
    ensemble: int = 1,
    ensemble_resample: bool = False,
    **options: Any,
) -> Relatedness:
    """MTIF averaged over ``ensemble`` independently trained models (registry entry
    ``mtif``; module docstring). ``options`` go to every member's
    :func:`~taskrel.relatedness.mtif.mtif_relatedness`; all are checked before training.

    Args:
        taskset: the tasks.
        ctx: the :class:`~taskrel.relatedness.RelateContext`; member ``k`` trains with
            ``ctx.train_config`` under seed :func:`member_seed` ``(seed, k)``.
        ensemble: K >= 1, the number of members.
        ensemble_resample: members ``k >= 1`` train on re-split tasks (new split per member).

    Raises:
        ConfigError, DataError, NotApplicableError: as :func:`check_ensemble` (MTIF's own
            checks run in every member, before its training).
    """
    check_members(taskset, ensemble, ensemble_resample, options)
    members = train_members(taskset, ctx, int(ensemble), bool(ensemble_resample), **options)
    return combine(members, taskset.train_ids())


def train_members(
    taskset: TaskSet, ctx: Any, ensemble: int, resample: bool = False, **options: Any
) -> list[Relatedness]:
    """The ``ensemble`` members' own MTIF results, in order (module docstring); each
    ``meta`` gains ``ensemble_member`` (k), ``train_seed`` and ``split_seed``. The first
    K of them are the members of ``ensemble=K``: :func:`combine` of a prefix is that
    smaller ensemble. Options are not checked here (see :func:`check_ensemble`)."""
    members = []
    for k, (train_seed, split) in enumerate(member_plan(ensemble, resample, ctx.train_config.seed)):
        member_ctx = replace(
            ctx, train_config=ctx.train_config.model_copy(update={"seed": train_seed})
        )
        data = taskset if split is None else resplit(taskset, split)
        result = mtif_relatedness(data, member_ctx, **options)
        result.meta.update(ensemble_member=k, train_seed=train_seed, split_seed=split)
        members.append(result)
    return members


mtif_ensemble.check = check_ensemble  # type: ignore[attr-defined]
mtif_ensemble.forwards_to = mtif_relatedness  # type: ignore[attr-defined]


def combine(members: Sequence[Relatedness], ids: np.ndarray | None = None) -> Relatedness:
    """The mean of MTIF results of the same tasks (module docstring for ``meta``).

    Args:
        members: K >= 1 results of :func:`~taskrel.relatedness.mtif.mtif_relatedness`.
        ids: ``(N, 2)`` training ids the instance scores are reported for (default:
            member 0's); each example's score is the mean over the members that scored it
            (NaN if none did).

    Returns:
        A :class:`Relatedness` with ``matrix`` the mean ``(T, T)`` of the members'.
    """
    if not members:
        raise ValueError("combine() needs at least one member")
    first = members[0]
    stack = np.stack([m.matrix for m in members])
    meta = {k: v for k, v in first.meta.items() if k not in MEMBER_KEYS}
    for key in ("first_order_matrix", "newton_matrix"):
        if all(m.meta.get(key) is not None for m in members):
            meta[key] = _mean(np.stack([m.meta[key] for m in members]))
    meta.update(
        ensemble=len(members),
        ensemble_resample=any(m.meta.get("split_seed") is not None for m in members),
        member_seeds=[m.meta.get("train_seed") for m in members],
        member_split_seeds=[m.meta.get("split_seed") for m in members],
        member_matrices=stack,
        member_stderr=standard_error(stack),
        member_agreement=self_agreement(stack),
        member_diagnostics=[m.meta.get("diagnostics") for m in members],
        timings_s=_summed([m.meta.get("timings_s", {}) for m in members]),
        caveats=list(dict.fromkeys(c for m in members for c in m.meta.get("caveats", []))),
    )
    scores, ids, counts = _mean_scores(members, ids)
    if counts is not None:
        meta["instance_members"] = counts
    return Relatedness(_mean(stack), first.task_names, first.method, scores, ids, meta)


def _mean_scores(
    members: Sequence[Relatedness], ids: np.ndarray | None
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Mean instance scores ``(N, T)`` over the members holding each of ``ids`` (NaN where
    none does), the ids, and how many members scored each; Nones when the members have no
    instance scores."""
    if any(m.instance_scores is None or m.instance_ids is None for m in members):
        return None, None, None
    ref = members[0].instance_ids if ids is None else ids
    ids = np.asarray(ref, dtype=np.int64).reshape(-1, 2)
    index = {(int(t), int(r)): n for n, (t, r) in enumerate(ids)}
    aligned = np.full((len(members), len(ids), len(members[0].task_names)), np.nan)
    for k, m in enumerate(members):
        assert m.instance_scores is not None and m.instance_ids is not None
        pairs = [(index.get((int(t), int(r))), n) for n, (t, r) in enumerate(m.instance_ids)]
        dst, src = zip(*[(d, n) for d, n in pairs if d is not None], strict=True) or ((), ())
        aligned[k, list(dst)] = m.instance_scores[list(src)]
    counts = np.isfinite(aligned[..., 0]).sum(0)
    return _mean(aligned), ids, counts


def _mean(stack: np.ndarray) -> np.ndarray:
    """Mean over the first axis, ignoring NaN, taken as the first finite entry plus the
    mean deviation from it: exactly that entry when all agree (a plain mean of K equal
    floats can differ from them in the last bit); NaN where no entry is finite."""
    stack = np.asarray(stack, dtype=np.float64)
    finite = np.isfinite(stack)
    first = np.take_along_axis(stack, finite.argmax(0)[None], 0)[0]
    with np.errstate(invalid="ignore"):
        deviation = np.where(finite, stack - first, 0.0).sum(0) / finite.sum(0)
    return np.where(finite.any(0), first + deviation, np.nan)


def _summed(timings: Sequence[dict[str, float]]) -> dict[str, float]:
    """Durations summed key by key over the members."""
    keys = dict.fromkeys(k for t in timings for k in t)
    return {k: float(sum(t.get(k, 0.0) for t in timings)) for k in keys}


__all__ = [
    "check_ensemble",
    "check_members",
    "combine",
    "member_plan",
    "member_seed",
    "mtif_ensemble",
    "train_members",
]
