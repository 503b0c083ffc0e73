"""The diagnostics of an MTIF result as a person reads them: the numbers recorded in
``meta['diagnostics']`` and ``meta['solver_plan']`` (:meth:`taskrel.relatedness.mtif.MTIF.
diagnostics`) turned into table rows, each with a one-line reading that says whether the
scores can be taken at face value.

The readings are derived from the numbers themselves (with the tolerances of
:mod:`taskrel.relatedness.mtif`), not from the notices given during the computation, so a
saved result shows them too; ``meta['caveats']`` (the notices) are
listed next to the table by the report and the ``relate`` command. Used by
:mod:`taskrel.pipelines.report` (HTML) and ``taskrel relate`` (markdown).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from taskrel.relatedness.mtif import PD_RTOL, STATIONARY_RTOL


@dataclass(frozen=True)
class Row:
    """One diagnostic: what is measured, its value(s) as text, the reading, and whether
    the reading is a problem (``ok`` False)."""

    quantity: str
    value: str
    reading: str
    ok: bool


def _num(value: Any) -> float:
    """``value`` as a float (None, or anything not a number: NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)


def _g(value: Any) -> str:
    v = _num(value)
    return "–" if math.isnan(v) else f"{v:.3g}"


def _positive_definite(lo: float, hi: float) -> bool | None:
    """Whether eigenvalue estimates ``lo``/``hi`` say positive definite (None: unknown)."""
    if math.isnan(lo) or math.isnan(hi):
        return None
    return lo > PD_RTOL * max(abs(hi), 1e-300)


def diagnostic_rows(meta: Mapping[str, Any], task_names: Sequence[str]) -> list[Row]:
    """The rows of an MTIF result's diagnostics (``[]`` when ``meta`` has none): the
    stationarity of the trained model, the Hessian's extreme eigenvalues and damping, the
    solver (plan, iterations, whether it stopped at ``max_iter``) and, when the
    task-removed Newton matrix was computed, for how many tasks ``H - H_j`` was
    positive definite. ``task_names`` name the tasks of the Newton row."""
    diag = meta.get("diagnostics")
    if not isinstance(diag, Mapping):
        return []
    rows: list[Row] = []
    stat = diag.get("stationarity") or {}
    if stat:
        relative = _num(stat.get("relative"))
        ok = bool(stat.get("stationary", relative <= STATIONARY_RTOL))
        reading = (
            f"at an optimum (tolerance {STATIONARY_RTOL:g})"
            if ok
            else f"NOT at an optimum (tolerance {STATIONARY_RTOL:g}): influence scores "
            "assume a converged model; train longer or with an exact optimizer"
        )
        value = (
            f"{_g(relative)} (‖∇J‖ = {_g(stat.get('grad_norm'))}, "
            f"scale {_g(stat.get('task_grad_scale'))})"
        )
        rows.append(Row("‖∇J(θ̂)‖ / per-example gradient scale", value, reading, ok))
    lo, hi = _num(diag.get("min_eig")), _num(diag.get("max_eig"))
    pd = _positive_definite(lo, hi)
    reading = {
        True: "positive definite",
        False: "NOT positive definite: the model is not at a minimum (non-convex); "
        "scores use the damped Hessian and are approximate",
        None: "not estimated",
    }[pd]
    rows.append(
        Row(
            "Hessian H: smallest, largest eigenvalue",
            f"{_g(lo)}, {_g(hi)}",
            reading,
            pd is not False,
        )
    )
    damping = _num(diag.get("damping"))
    of_max = f" ({_g(damping / abs(hi))} λ_max)" if damping > 0 and math.isfinite(hi) and hi else ""
    rows.append(
        Row(
            "damping added to H",
            _g(damping) + of_max,
            "none" if damping == 0 else "H + damping·I is solved instead of H",
            True,
        )
    )
    plan = meta.get("solver_plan") or {}
    if plan:
        how = " (structured)" if plan.get("structured") and plan.get("solver") != "woodbury" else ""
        rows.append(
            Row(
                "solver",
                f"{plan.get('solver')}{how}",
                f"requested {plan.get('requested')}; memory budget {_g(plan.get('budget_gb'))} GB",
                True,
            )
        )
    if diag.get("iterations") is not None:
        hit = bool(diag.get("max_iter_hit"))
        reading = (
            "stopped at max_iter before its tolerance: the solution is approximate; "
            "raise max_iter or the damping"
            if hit
            else "reached its tolerance"
        )
        rows.append(
            Row("iterations of the iterative solver", str(diag["iterations"]), reading, not hit)
        )
    newton = diag.get("newton")
    if isinstance(newton, Mapping) and newton.get("positive_definite"):
        flags = [bool(f) for f in newton["positive_definite"]]
        bad = [
            str(task_names[j]) if j < len(task_names) else str(j)
            for j, f in enumerate(flags)
            if not f
        ]
        lows = [_num(v) for v in newton.get("min_eig", [])]
        dampings = [_num(v) for v in newton.get("damping", [])]
        if bad:
            reading = (
                f"NOT positive definite without {', '.join(bad)} (smallest eigenvalue "
                f"{_g(min(lows, default=math.nan))}); damped up to "
                f"{_g(max(dampings, default=math.nan))}: those columns of the Newton matrix "
                "are approximate"
            )
        else:
            reading = "positive definite for every task"
        value = f"{len(flags) - len(bad)} of {len(flags)} tasks"
        rows.append(Row("H − H_j positive definite (Newton step)", value, reading, not bad))
    members = [d for d in meta.get("member_diagnostics") or [] if isinstance(d, Mapping)]
    if len(members) > 1:  # an ensemble: the rows above are its first member's
        moved = sum(not (d.get("stationarity") or {}).get("stationary", True) for d in members)
        indefinite = sum(
            _positive_definite(_num(d.get("min_eig")), _num(d.get("max_eig"))) is False
            for d in members
        )
        reading = (
            f"rows above: member 1; {moved} of {len(members)} members not at an optimum, "
            f"{indefinite} with H not positive definite"
        )
        ok = moved == indefinite == 0
        rows.append(Row("ensemble members", str(len(members)), reading, ok))
    return rows


def newton_rows(meta: Mapping[str, Any], task_names: Sequence[str]) -> list[list[str]]:
    """Per removed task j: name, smallest and largest eigenvalue of ``H - H_j``, positive
    definite (yes/no), damping, iterations and held parameters, as text (``[]`` when the
    Newton matrix was not computed)."""
    diag = meta.get("diagnostics")
    newton = diag.get("newton") if isinstance(diag, Mapping) else None
    if not isinstance(newton, Mapping) or not newton.get("positive_definite"):
        return []
    keys = ("min_eig", "max_eig", "positive_definite", "damping", "iterations", "held")
    columns = [list(newton.get(k) or [None] * len(newton["positive_definite"])) for k in keys]
    rows = []
    for j, (lo, hi, pd, damping, iters, held) in enumerate(zip(*columns, strict=True)):
        name = str(task_names[j]) if j < len(task_names) else str(j)
        iterations = "–" if iters is None else str(iters)
        rows.append(
            [name, _g(lo), _g(hi), "yes" if pd else "NO", _g(damping), iterations, str(held)]
        )
    return rows


NEWTON_HEADER = [
    "task j removed",
    "smallest eigenvalue of H − H_j",
    "largest",
    "positive definite",
    "damping",
    "iterations",
    "held parameters",
]


def to_markdown(meta: Mapping[str, Any], task_names: Sequence[str]) -> str:
    """The diagnostics table and one line per caveat (``meta['caveats']``) as markdown
    (an empty string when there is neither)."""
    rows = diagnostic_rows(meta, task_names)
    caveats = [str(c) for c in meta.get("caveats") or []]
    parts = []
    if rows:
        lines = ["**Diagnostics**", "", "| quantity | value | reading |", "|---|---|---|"]
        lines += [f"| {r.quantity} | {r.value} | {r.reading} |" for r in rows]
        parts.append("\n".join(lines))
    if caveats:
        parts.append("\n".join(["**Caveats**", "", *(f"- {c}" for c in caveats)]))
    return "\n\n".join(parts)
