"""Which tasks to train together: search the partitions of the tasks for the one that
minimises a *group-additive* objective.

An objective gives every candidate group ``G`` (a set of task positions) a cost ``c(G)``
and scores a partition ``P`` as ``sum_{G in P} c(G) + penalty * (|P| - 1)``. Two costs are
built in:

- :func:`predicted_loss_cost` — ``c(G) = sum_{i in G} L_i(G)``, the predicted (or, with the
  ``retrain`` predictor, actual) loss of each task of ``G`` when trained with exactly ``G``
  (:class:`~taskrel.decisions.predictors.GroupOutcomePredictor`). The sum over a partition
  is the total loss of training every group as its own model.
- :func:`pair_weight_cost` — ``c(G) = -sum_{i != j in G} R[i, j]``: minus the within-group
  relatedness of a task x task matrix (both directions of every pair).

Costs are asked for in batches (:data:`GroupCost`: a list of groups -> their costs) and
memoised (:class:`MemoCost`), so an expensive predictor answers every needed subset in one
call per search step.

Search (:func:`search_partition`): with ``n_groups`` fixed, exactly that many non-empty
groups; with ``n_groups=None`` any number, each group beyond the first costing
``penalty``. Up to ``exhaustive_max_tasks`` tasks the optimum is exact: dynamic programming
over the ``2^T - 1`` subsets (``O(3^T)`` steps, every subset's cost asked for in one batch).
Beyond that a local search (best single-task move, else best pairwise swap; with a free
number of groups also opening a group and merging two groups) runs from a greedy
agglomerative start, random restarts and any partitions given as starts, optionally within a
budget of distinct subsets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from taskrel.decisions.predictors import GroupOutcomePredictor
from taskrel.errors import ConfigError

Search = Literal["auto", "exhaustive", "local"]
MAX_EXHAUSTIVE = 16
"""Most tasks an exhaustive search accepts (``2^16`` subsets, ``3^16`` steps)."""
Group = tuple[int, ...]
GroupCost = Callable[[Sequence[Group]], np.ndarray]
"""Costs ``(M,)`` of ``M`` groups (sorted tuples of task positions)."""


@dataclass
class Grouping:
    """A partition of the tasks.

    Attributes:
        groups: task positions per group; each group sorted, groups ordered by their
            first task.
        task_names: all ``T`` task names (positions index into it).
        score: value of the objective the search optimised (see ``objective``).
        search: ``exhaustive`` (proved optimal) or ``local`` (a local optimum).
        objective: what ``score`` is, e.g. ``within-group relatedness (higher is better)``.
        predicted: per-task prediction ``(T,)`` of the predictor that chose the groups
            (each task's predicted loss in its group), None for a relatedness matrix.
    """

    groups: list[list[int]]
    task_names: list[str]
    score: float
    search: str
    objective: str = "within-group relatedness (higher is better)"
    predicted: np.ndarray | None = field(default=None, repr=False)

    def named(self) -> list[list[str]]:
        """The groups as task names."""
        return [[self.task_names[t] for t in g] for g in self.groups]

    def labels(self) -> np.ndarray:
        """Group number of every task, shape ``(T,)``."""
        return labels_of(self.groups, len(self.task_names))


def labels_of(groups: Sequence[Sequence[int]], n_tasks: int) -> np.ndarray:
    """Group number ``(T,)`` of every task of the partition ``groups``."""
    out = np.empty(n_tasks, dtype=np.int64)
    for k, g in enumerate(groups):
        out[list(g)] = k
    return out


def canonical(groups: Iterable[Iterable[int]]) -> list[list[int]]:
    """Groups sorted inside and by first task; empty groups dropped."""
    return sorted(sorted(int(t) for t in g) for g in groups if len(list(g)))


class MemoCost:
    """A :data:`GroupCost` that remembers every answer and asks ``cost`` only for groups
    it has not seen, all in one call.

    Attributes:
        n_queried: distinct groups asked for so far.
    """

    def __init__(self, cost: GroupCost) -> None:
        self.cost = cost
        self.memo: dict[Group, float] = {}

    @property
    def n_queried(self) -> int:
        return len(self.memo)

    def __call__(self, groups: Sequence[Iterable[int]]) -> np.ndarray:
        keys = [tuple(sorted(int(t) for t in g)) for g in groups]
        new = list(dict.fromkeys(k for k in keys if k and k not in self.memo))
        if new:
            values = np.asarray(self.cost(new), dtype=np.float64).reshape(len(new))
            if not np.all(np.isfinite(values)):
                bad = new[int(np.flatnonzero(~np.isfinite(values))[0])]
                raise ConfigError(f"the grouping objective is not finite for the group {list(bad)}")
            self.memo.update(zip(new, values.tolist(), strict=True))
        return np.array([self.memo[k] if k else 0.0 for k in keys])


def predicted_loss_cost(predictor: GroupOutcomePredictor) -> GroupCost:
    """``c(G) = sum_{i in G} L_i(G)`` from a fitted group-outcome predictor."""

    def cost(groups: Sequence[Group]) -> np.ndarray:
        table = np.asarray(predictor.subset_losses([list(g) for g in groups]), dtype=np.float64)
        return np.array([table[m, list(g)].sum() for m, g in enumerate(groups)])

    return cost


def pair_weights(matrix: np.ndarray) -> np.ndarray:
    """``S = R + R^T`` with a zero diagonal: the gain of putting i and j in one group.

    Raises:
        ConfigError: the matrix is not square or has NaN/inf off the diagonal.
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ConfigError(f"grouping needs a square task x task matrix, got shape {m.shape}")
    off = ~np.eye(len(m), dtype=bool)
    if not np.all(np.isfinite(m[off])):
        raise ConfigError(
            "grouping: the relatedness matrix has NaN or infinite entries off the diagonal"
        )
    s = np.where(off, m, 0.0)
    return s + s.T


def pair_weight_cost(matrix: np.ndarray) -> GroupCost:
    """``c(G) = -sum_{i != j in G} R[i, j]`` (minus the within-group relatedness)."""
    s = pair_weights(matrix)

    def cost(groups: Sequence[Group]) -> np.ndarray:
        return np.array([-s[np.ix_(g, g)].sum() / 2 for g in groups])

    return cost


@dataclass
class SearchResult:
    """The best partition found.

    Attributes:
        groups: canonical groups (see :func:`canonical`).
        objective: ``sum_G c(G) + penalty * (|P| - 1)`` (units of the cost).
        search: ``exhaustive`` or ``local``.
        n_queried: distinct groups whose cost was asked for.
    """

    groups: list[list[int]]
    objective: float
    search: str
    n_queried: int


def search_partition(
    cost: GroupCost,
    n_tasks: int,
    n_groups: int | None = None,
    penalty: float = 0.0,
    search: Search = "auto",
    exhaustive_max_tasks: int = 10,
    restarts: int = 10,
    starts: Sequence[Sequence[Sequence[int]]] = (),
    budget: int | None = None,
    greedy: bool = True,
    seed: int = 0,
) -> SearchResult:
    """The partition of ``range(n_tasks)`` minimising the objective (module docstring).

    Args:
        cost: group costs (wrapped in a :class:`MemoCost` unless it is one).
        n_tasks: ``T``.
        n_groups: exactly this many groups (``1 <= n_groups <= T``); None: free, with
            ``penalty`` per group beyond the first.
        penalty: cost of each extra group (units of the cost); only with ``n_groups=None``.
        search: ``exhaustive``, ``local`` or ``auto`` (exhaustive up to
            ``exhaustive_max_tasks`` tasks).
        restarts: random starts of the local search (besides the greedy start).
        starts: extra start partitions of the local search (e.g. other methods' choices).
        budget: the local search stops starting new steps once this many distinct groups
            were asked for (None: no limit).
        greedy: start the local search also from the greedy agglomerative partition (it
            asks for the costs of all ``T (T - 1) / 2`` pairs first).
        seed: seeds the random starts.

    Raises:
        ConfigError: ``n_groups`` out of range, a negative penalty, or an unknown search.
    """
    if n_tasks < 1:
        raise ConfigError(f"grouping needs at least one task, got {n_tasks}")
    if n_groups is not None and not 1 <= n_groups <= n_tasks:
        raise ConfigError(
            f"n_groups must lie in [1, {n_tasks}] for {n_tasks} tasks, got {n_groups}"
        )
    if not np.isfinite(penalty) or penalty < 0:
        raise ConfigError(f"the group-count penalty must be finite and >= 0, got {penalty}")
    if search not in ("auto", "exhaustive", "local"):
        raise ConfigError(f"search must be 'auto', 'exhaustive' or 'local', got {search!r}")
    memo = cost if isinstance(cost, MemoCost) else MemoCost(cost)
    lam = penalty if n_groups is None else 0.0
    exhaustive = search == "exhaustive" or (search == "auto" and n_tasks <= exhaustive_max_tasks)
    if exhaustive and n_tasks > MAX_EXHAUSTIVE:
        raise ConfigError(
            f"exhaustive search over {n_tasks} tasks needs 2^{n_tasks} subsets; use "
            f"search='local' beyond {MAX_EXHAUSTIVE} tasks"
        )
    if exhaustive:
        groups = _exhaustive(memo, n_tasks, n_groups, lam)
    else:
        local = _LocalSearch(memo, n_tasks, n_groups, lam, budget)
        groups = local.run(starts, restarts, greedy, seed)
    groups = canonical(groups)
    value = float(memo(groups).sum() + lam * (len(groups) - 1))
    return SearchResult(groups, value, "exhaustive" if exhaustive else "local", memo.n_queried)


def _members(mask: int) -> Group:
    return tuple(i for i in range(mask.bit_length()) if mask >> i & 1)


def _exhaustive(cost: MemoCost, t: int, k: int | None, lam: float) -> list[list[int]]:
    """Exact optimum by dynamic programming over subsets. ``best[j, mask]`` is the lowest
    cost of splitting the tasks of ``mask`` into ``j`` groups (free ``k``: one row, any
    number of groups); the group holding the lowest task of ``mask`` ranges over the
    subsets of ``mask`` that contain it."""
    full = (1 << t) - 1
    c = np.zeros(full + 1)
    c[1:] = cost([_members(m) for m in range(1, full + 1)]) + lam
    rows = 2 if k is None else k + 1
    best = np.full((rows, full + 1), np.inf)
    choice = np.zeros((rows, full + 1), dtype=np.int64)
    best[0, 0] = 0.0
    if k is None:
        best[1, 0] = 0.0  # the free row refers to itself
    for mask in range(1, full + 1):
        low = mask & -mask
        rest = mask ^ low
        sub = rest
        while True:  # every subset of rest, the empty one last
            group = sub | low
            if k is None:
                value = c[group] + best[1, mask ^ group]
                if value < best[1, mask]:
                    best[1, mask], choice[1, mask] = value, group
            else:
                values = c[group] + best[:-1, mask ^ group]
                better = values < best[1:, mask]
                best[1:, mask] = np.where(better, values, best[1:, mask])
                choice[1:, mask] = np.where(better, group, choice[1:, mask])
            if sub == 0:
                break
            sub = (sub - 1) & rest
    groups, mask, j = [], full, 1 if k is None else k
    while mask:
        group = int(choice[j, mask])
        groups.append(list(_members(group)))
        mask ^= group
        j = j if k is None else j - 1
    return groups


class _LocalSearch:
    """Best-improvement local search on partitions (labels ``(T,)``) for a memoised cost."""

    def __init__(
        self, cost: MemoCost, t: int, k: int | None, lam: float, budget: int | None
    ) -> None:
        self.cost, self.t, self.k, self.lam, self.budget = cost, t, k, lam, budget

    def exhausted(self) -> bool:
        return self.budget is not None and self.cost.n_queried >= self.budget

    def value(self, groups: Sequence[Sequence[int]]) -> float:
        return float(self.cost(groups).sum() + self.lam * (len(groups) - 1))

    def run(
        self,
        starts: Sequence[Sequence[Sequence[int]]],
        restarts: int,
        greedy: bool,
        seed: int,
    ) -> list[list[int]]:
        rng = np.random.default_rng(seed)
        candidates = [canonical(s) for s in starts]
        candidates = [s for s in candidates if self.k is None or len(s) == self.k]
        if greedy or not candidates:
            candidates.append(self._greedy())
        k0 = self.k or len(candidates[-1])
        for _ in range(restarts):
            labels = rng.permutation(np.arange(self.t) % k0)  # every group non-empty
            candidates.append([np.flatnonzero(labels == g).tolist() for g in range(k0)])
        best: list[list[int]] = candidates[0]
        best_value = np.inf
        for start in candidates:
            if self.exhausted() and best_value < np.inf:
                break
            found = self._improve([list(g) for g in start])
            value = self.value(found)
            if value < best_value - 1e-12:
                best, best_value = found, value
        return best

    def _greedy(self) -> list[list[int]]:
        """From singletons, merge the pair of groups that lowers the objective most, down to
        ``k`` groups (free ``k``: while a merge lowers it)."""
        groups = [[i] for i in range(self.t)]
        while len(groups) > (self.k or 1) and not (self.k is None and self.exhausted()):
            pairs = [(a, b) for a in range(len(groups)) for b in range(a + 1, len(groups))]
            merged = self.cost([groups[a] + groups[b] for a, b in pairs])
            alone = self.cost(groups)
            gains = np.array([alone[a] + alone[b] for a, b in pairs]) + self.lam - merged
            best = int(np.argmax(gains))
            if self.k is None and gains[best] <= 1e-12:
                break
            a, b = pairs[best]
            groups[a] = groups[a] + groups.pop(b)
        return groups

    def _improve(self, groups: list[list[int]]) -> list[list[int]]:
        """Take the best improving move (if no move improves, the best improving swap)
        until none lowers the objective or the budget is spent."""
        while not self.exhausted():
            current = self.value(groups)
            for neighbours in (self._moves, self._swaps):
                options = neighbours(groups)
                if not options:
                    continue
                values = self._values(options)
                best = int(np.argmin(values))
                if values[best] < current - 1e-12:
                    groups = options[best]
                    break
            else:
                return groups
        return groups

    def _values(self, options: list[list[list[int]]]) -> np.ndarray:
        """Objective of each partition in ``options`` (one batch of group costs)."""
        costs = self.cost([g for option in options for g in option])
        ends = np.cumsum([len(option) for option in options])
        sums = np.add.reduceat(costs, np.r_[0, ends[:-1]])
        return sums + self.lam * (np.diff(np.r_[0, ends]) - 1)

    def _moves(self, groups: list[list[int]]) -> list[list[list[int]]]:
        """Partitions one move away: task i to another group (free ``k``: also to a new
        group, and merging two groups); never emptying a group when ``k`` is fixed."""
        out = []
        for a, ga in enumerate(groups):
            if self.k is not None and len(ga) == 1:
                continue
            for i in ga:
                rest = [x for x in ga if x != i]
                for b in range(len(groups)):
                    if b != a:
                        option = [list(g) for g in groups]
                        option[a], option[b] = rest, sorted(option[b] + [i])
                        out.append([g for g in option if g])
                if self.k is None and rest:
                    out.append([*(g for n, g in enumerate(groups) if n != a), rest, [i]])
        if self.k is None:
            for a in range(len(groups)):
                for b in range(a + 1, len(groups)):
                    keep = [g for n, g in enumerate(groups) if n not in (a, b)]
                    out.append([*keep, sorted(groups[a] + groups[b])])
        return out

    def _swaps(self, groups: list[list[int]]) -> list[list[list[int]]]:
        """Partitions one swap away: i in group a exchanged with j in group b."""
        out = []
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                for i in groups[a]:
                    for j in groups[b]:
                        option = [list(g) for g in groups]
                        option[a] = sorted([x for x in groups[a] if x != i] + [j])
                        option[b] = sorted([x for x in groups[b] if x != j] + [i])
                        out.append(option)
        return out


def choose_groups(
    predictor: GroupOutcomePredictor,
    task_names: Sequence[str],
    n_groups: int | None = None,
    penalty: float = 0.0,
    rule: str = "min",
    **options: Any,
) -> Grouping:
    """The partition chosen on the predicted losses of a fitted ``predictor``.

    Args:
        predictor: fitted on the ``T`` tasks named ``task_names``.
        n_groups: as in :func:`search_partition`.
        penalty: as in :func:`search_partition`.
        rule: ``min`` (the partition minimising the total predicted loss) or ``one-se``
            (the fewest groups within one standard error of that minimum over folds; needs
            a cross-fitted predictor, see :mod:`taskrel.decisions.crossfit`, and chooses
            the number of groups itself).
        **options: other options of :func:`search_partition` (search, restarts, ...).

    Returns:
        A :class:`Grouping` whose ``score`` is the objective (sum over tasks of the
        predicted loss in their group, plus the penalty) and ``predicted`` the per-task
        predictions ``(T,)``.

    Raises:
        ConfigError: an unknown rule, or ``one-se`` without folds or with ``n_groups`` or
            a penalty.
    """
    if rule not in ("min", "one-se"):
        raise ConfigError(f"rule must be 'min' or 'one-se', got {rule!r}")
    objective = f"sum over tasks of the {predictor.units} (+ group penalty; lower is better)"
    if rule == "one-se":
        fold_cost = getattr(predictor, "fold_cost", None)
        if fold_cost is None:
            raise ConfigError(
                "rule='one-se' needs a cross-fitted predictor (folds >= 2): the standard "
                "error is taken over folds"
            )
        if n_groups is not None or penalty:
            raise ConfigError(
                "rule='one-se' chooses the number of groups itself; give neither n_groups "
                "nor a penalty"
            )
        from taskrel.decisions.crossfit import one_se_choice

        chosen = one_se_choice(fold_cost(), len(task_names), **options)
        groups, search = chosen.groups, chosen.search
        score = float(predicted_loss_cost(predictor)([tuple(g) for g in groups]).sum())
        objective = f"sum over tasks of the {predictor.units} (one-standard-error rule)"
    else:
        found = search_partition(
            predicted_loss_cost(predictor), len(task_names), n_groups, penalty, **options
        )
        groups, search, score = found.groups, found.search, found.objective
    return Grouping(
        groups,
        list(task_names),
        score,
        search,
        objective=objective,
        predicted=predictor.predict_group_loss(groups),
    )
