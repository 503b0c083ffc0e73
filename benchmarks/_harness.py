"""Shared harness of the benchmark scripts (imported as ``from _harness import ...`` when a
script runs as ``python benchmarks/NAME.py``).

It gives every benchmark the same command line (``--quick``, ``--out FILE.json``,
``--cache DIR``, ``--seeds N``), the same statistics (the sample std, ddof=1, and a
bootstrap confidence interval), the same markdown and JSON writers (the JSON records the
arguments, versions and machine load next to the figures) and the exact convex training
preset. Results of expensive units go through :class:`taskrel.execution.ResultCache`, so an
interrupted benchmark resumes where it stopped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from taskrel.execution import ResultCache
from taskrel.progress import Progress
from taskrel.progress import progress as reporter
from taskrel.runs import environment_info
from taskrel.signals import interrupt_signals

EXACT: dict[str, Any] = {
    "optimizer": "lbfgs",
    "lr": 1.0,
    "epochs": 2,
    "patience": None,
    "dtype": "float64",
}
"""Training preset for convex models: full-batch L-BFGS in float64, to the optimum."""


def parser(description: str, default_seeds: int = 3) -> argparse.ArgumentParser:
    """The common command line; scripts add their own options to it."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small run (under 60 s on 2 cores)")
    p.add_argument("--out", type=Path, default=None, help="write every figure as JSON")
    p.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="cache folder of finished units (default: .bench-cache/NAME); rerun to resume",
    )
    p.add_argument("--no-cache", action="store_true", help="recompute everything")
    p.add_argument("--seeds", type=int, default=default_seeds, help="seeds (repeats) per case")
    return p


def run_main(main: Callable[[], int | None]) -> None:
    """Run a benchmark's ``main`` and exit with its status (None: 0). SIGTERM stops it as
    Ctrl-C does; either prints one line instead of a traceback and exits with status 130
    (finished units stay cached, worker processes are stopped, and the same command
    resumes)."""
    try:
        with interrupt_signals():
            status = main()
    except KeyboardInterrupt:  # a training's TrainingInterrupted included
        print(
            "interrupted: finished units are cached; run the same command to resume",
            file=sys.stderr,
        )
        sys.exit(130)
    sys.exit(status)


def setup(args: argparse.Namespace, name: str) -> ResultCache | None:
    """One torch thread per process; returns the cache of this benchmark (None if off)."""
    torch.set_num_threads(1)
    if args.no_cache:
        return None
    folder = args.cache or Path(".bench-cache") / (name + ("-quick" if args.quick else ""))
    return ResultCache(folder)


def cached(cache: ResultCache | None, key: Sequence[Any], compute: Callable[[], Any]) -> Any:
    """``compute()``, or its cached value under ``key`` (JSON-able parts)."""
    if cache is None:
        return compute()
    text = json.dumps(list(key), sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode()).hexdigest()[:32]
    if digest in cache:
        return cache.get(digest)
    value = compute()
    cache.put(digest, value)
    return value


def progress(label: str, total: int, unit: str = "runs") -> Progress:
    """A reporter for a benchmark loop, always shown: a rich bar on a terminal, otherwise
    a line every few seconds with the time left (see :mod:`taskrel.progress`). Call
    ``report.advance()`` after each unit, inside ``with progress(...) as report:``."""
    return reporter(label, unit, total, enabled=True)


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample std (ddof=1; 0 for a single value) of the finite values, and n."""
    a = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if a.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    std = float(a.std(ddof=1)) if a.size > 1 else 0.0
    return {"mean": float(a.mean()), "std": std, "n": int(a.size)}


def bootstrap_ci(
    values: Sequence[float], level: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values``."""
    a = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if a.size < 2:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = a[rng.integers(0, a.size, size=(n_boot, a.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    return (float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail)))


def pm(stat: dict[str, float], digits: int = 3) -> str:
    """``mean ± std`` as text (``–`` when undefined)."""
    if not np.isfinite(stat.get("mean", float("nan"))):
        return "–"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def markdown(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "–" if not np.isfinite(v) else f"{v:.3g}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_load() -> dict[str, float]:
    """1/5/15-minute load averages and the core count (recorded beside timings)."""
    one, five, fifteen = os.getloadavg()
    return {"load_1m": one, "load_5m": five, "load_15m": fifteen, "cores": os.cpu_count() or 1}


def write_out(
    args: argparse.Namespace, figures: dict[str, Any], started: float | None = None
) -> None:
    """Write ``figures`` with the arguments, versions and load to ``args.out`` (if given)."""
    if args.out is None:
        return
    doc = {
        "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "environment": environment_info(),
        "machine_load_at_end": machine_load(),
        **({"wall_time_s": time.perf_counter() - started} if started is not None else {}),
        **figures,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return str(value)
