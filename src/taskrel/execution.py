"""Run many independent jobs (retrainings, seeds, benchmark grids) locally or on Ray,
with an on-disk cache so an interrupted sweep resumes where it stopped.

A :class:`Job` is a *top-level* function plus JSON-serialisable keyword arguments; its
cache key is a SHA-256 of the function's qualified name and the canonical JSON of the
arguments. Results are pickled one file per key (written atomically), so a killed sweep
loses at most the jobs that were running, never a finished one, and re-running the same
sweep reuses every finished result without duplicating it.

Backends: :class:`LocalExecutor` (``workers=1`` runs in-process; more workers use a
process pool with the ``spawn`` start method) and :class:`RayExecutor` (a real Ray
cluster: an existing one by address, or a local one started on demand).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from taskrel.errors import ConfigError


@dataclass(frozen=True)
class Job:
    """One unit of work: ``fn(**kwargs)``. ``fn`` must be importable (top-level)."""

    fn: Callable[..., Any]
    kwargs: dict[str, Any] = field(default_factory=dict)

    def key(self) -> str:
        """Stable hash of the function name and its arguments (canonical JSON)."""
        name = f"{self.fn.__module__}.{self.fn.__qualname__}"
        payload = json.dumps({"fn": name, "kwargs": self.kwargs}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:32]

    def run(self) -> Any:
        return self.fn(**self.kwargs)


class ResultCache:
    """One pickle file per job key under ``directory``."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.pkl"

    def __contains__(self, key: str) -> bool:
        return self._path(key).is_file()

    def get(self, key: str) -> Any:
        with self._path(key).open("rb") as fh:
            return pickle.load(fh)

    def put(self, key: str, value: Any) -> None:
        tmp = self._path(key).with_suffix(f".tmp{os.getpid()}")
        with tmp.open("wb") as fh:
            pickle.dump(value, fh)
        os.replace(tmp, self._path(key))

    def __len__(self) -> int:
        return sum(1 for _ in self.directory.glob("*.pkl"))


def _run_job(job: Job) -> Any:
    import torch

    torch.set_num_threads(1)
    return job.run()


class Executor(ABC):
    """Runs jobs; :meth:`map` returns results in job order and uses the cache."""

    name: str = "executor"

    def map(self, jobs: Sequence[Job], cache: ResultCache | str | Path | None = None,
            progress: Callable[[int, int], None] | None = None) -> list[Any]:
        """Results of ``jobs`` in order. Cached results are reused; new results are
        written to the cache as each job finishes. ``progress(done, total)`` is called
        after each finished job."""
        store = ResultCache(cache) if isinstance(cache, str | Path) else cache
        results: dict[int, Any] = {}
        todo: list[int] = []
        for i, job in enumerate(jobs):
            if store is not None and job.key() in store:
                results[i] = store.get(job.key())
            else:
                todo.append(i)
        done = len(results)
        if progress is not None:
            progress(done, len(jobs))
        for i, value in self._run([jobs[i] for i in todo], todo):
            results[i] = value
            if store is not None:
                store.put(jobs[i].key(), value)
            done += 1
            if progress is not None:
                progress(done, len(jobs))
        return [results[i] for i in range(len(jobs))]

    @abstractmethod
    def _run(self, jobs: Sequence[Job], ids: Sequence[int]) -> Iterator[tuple[int, Any]]:
        """Yield ``(id, result)`` as jobs finish (any order)."""


class LocalExecutor(Executor):
    """In-process (``workers=1``) or a pool of ``workers`` processes."""

    name = "local"

    def __init__(self, workers: int | None = 1) -> None:
        self.workers = workers or os.cpu_count() or 1

    def _run(self, jobs: Sequence[Job], ids: Sequence[int]) -> Iterator[tuple[int, Any]]:
        if self.workers == 1 or len(jobs) <= 1:
            for i, job in zip(ids, jobs, strict=True):
                yield i, job.run()
            return
        with ProcessPoolExecutor(self.workers, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(_run_job, job): i for i, job in zip(ids, jobs, strict=True)}
            for fut in as_completed(futures):
                yield futures[fut], fut.result()


class RayExecutor(Executor):
    """Runs jobs as Ray tasks (``pip install taskrel[distributed]``).

    Args:
        address: address of an existing cluster (``"auto"`` or ``"ray://host:port"``);
            None starts a local Ray instance.
        num_cpus: CPUs for a local instance (ignored when connecting).
        cpus_per_job: CPUs reserved per job.
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None,
                 cpus_per_job: float = 1.0) -> None:
        try:
            import ray
        except ImportError as err:
            raise ConfigError("the ray executor needs Ray: pip install 'taskrel[distributed]'"
                              ) from err
        self._ray = ray
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"address": address, "include_dashboard": False,
                                      "log_to_driver": False}
            if address is None:
                kwargs["num_cpus"] = num_cpus
            ray.init(**kwargs)
        self.cpus_per_job = cpus_per_job

    def _run(self, jobs: Sequence[Job], ids: Sequence[int]) -> Iterator[tuple[int, Any]]:
        ray = self._ray
        remote = ray.remote(num_cpus=self.cpus_per_job)(_run_job)
        pending = {remote.remote(job): i for i, job in zip(ids, jobs, strict=True)}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                yield pending.pop(ref), ray.get(ref)

    def shutdown(self) -> None:
        self._ray.shutdown()


def make_executor(name: str = "local", workers: int | None = 1, address: str | None = None,
                  ) -> Executor:
    """``local`` (default) or ``ray``."""
    if name == "local":
        return LocalExecutor(workers)
    if name == "ray":
        return RayExecutor(address=address, num_cpus=workers)
    raise ConfigError(f"unknown executor {name!r}; expected 'local' or 'ray'")
