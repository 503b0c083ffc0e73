"""Run many independent jobs (retrainings, seeds, benchmark grids) locally or on Ray,
with an on-disk cache so an interrupted sweep resumes where it stopped.

A :class:`Job` is a *top-level* function plus keyword arguments. Its cache key is a
SHA-256 of the function's qualified name and a canonical JSON form of the arguments
(:func:`canonical`): numbers, strings, lists and dicts as themselves, NumPy arrays and
tensors by a hash of their dtype, shape and bytes, dataclasses (e.g. a ``TaskSet``) and
pydantic models field by field. Equal arguments give equal keys in every process; an
argument with no canonical form is refused rather than hashed by its ``repr``.

Results are pickled one file per key, written atomically by the driver as each job
finishes, so a killed sweep loses only the jobs that were running, never a finished one,
and re-running the sweep reuses every finished result. Jobs with equal keys in one sweep
run once. Results come back in job order whatever the completion order, so a resumed
sweep returns exactly what an uninterrupted one does.

Backends: :class:`LocalExecutor` (``workers=1`` runs in-process; more workers use a
:func:`process_pool` with the ``spawn`` start method) and :class:`RayExecutor` (a real Ray
cluster: an existing one by address, or a local one started on demand).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import sys
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import cached_property
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch

from taskrel.errors import ConfigError


def function_name(fn: Callable[..., Any]) -> str:
    """``module.qualname`` of a top-level function.

    Raises:
        ValueError: ``fn`` is a lambda or a nested function (other processes cannot
            import it, and its name would not identify it).
    """
    name = f"{fn.__module__}.{fn.__qualname__}"
    if "<" in fn.__qualname__:
        raise ValueError(
            f"job function {name} must be a top-level function, not a lambda or a nested function"
        )
    return name


def canonical(value: Any) -> Any:
    """A JSON-serialisable form of ``value`` that is equal exactly when the values are.

    Raises:
        TypeError: a value (or a part of it) of a type with no canonical form.
    """
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray | torch.Tensor):
        return _array_digest(value)
    if isinstance(value, Path):
        return {"__path__": str(value)}
    if isinstance(value, Mapping):  # keys as JSON text: "1" and 1 stay distinct
        return {json.dumps(canonical(k), sort_keys=True): canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            "__dataclass__": _type_name(value),
            "fields": {
                f.name: canonical(getattr(value, f.name)) for f in dataclasses.fields(value)
            },
        }
    if hasattr(value, "model_dump") and hasattr(type(value), "model_fields"):  # pydantic
        return {"__model__": _type_name(value), "fields": canonical(value.model_dump())}
    if callable(value) and hasattr(value, "__qualname__"):
        return {"__function__": function_name(value)}
    raise TypeError(
        f"job argument of type {_type_name(value)} has no canonical form for the "
        "cache key; pass numbers, strings, lists, dicts, arrays, dataclasses or "
        "pydantic models"
    )


def _type_name(value: Any) -> str:
    return f"{type(value).__module__}.{type(value).__qualname__}"


def _array_digest(value: Any) -> dict[str, Any]:
    """Dtype, shape and SHA-256 of the bytes of an array or a ``torch.Tensor``."""
    arr = np.asarray(value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value)
    if arr.dtype.hasobject:
        raise TypeError("object arrays have no canonical form for the cache key")
    return {
        "__array__": hashlib.sha256(arr.tobytes(order="C")).hexdigest(),
        "dtype": arr.dtype.str,
        "shape": list(arr.shape),
    }


@dataclass(frozen=True)
class Job:
    """One unit of work: ``fn(**kwargs)``. ``fn`` must be importable (top-level) and the
    arguments must have a canonical form (see :func:`canonical`)."""

    fn: Callable[..., Any]
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        function_name(self.fn)

    def key(self) -> str:
        """Stable 32-hex-digit hash of the function name and the canonical arguments."""
        return self._key

    @cached_property
    def _key(self) -> str:
        payload = json.dumps(
            {"fn": function_name(self.fn), "kwargs": canonical(self.kwargs)},
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:32]

    def run(self) -> Any:
        return self.fn(**self.kwargs)


class ResultCache:
    """One pickle file ``KEY.pkl`` per job key under ``directory``."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.pkl"

    def __contains__(self, key: str) -> bool:
        return self._path(key).is_file()

    def get(self, key: str) -> Any:
        """The stored result.

        Raises:
            KeyError: no result for ``key``, or its file cannot be unpickled (e.g. written
                by an incompatible version); the job then simply runs again.
        """
        try:
            with self._path(key).open("rb") as fh:
                return pickle.load(fh)
        except FileNotFoundError:
            raise KeyError(key) from None
        except (EOFError, pickle.UnpicklingError, AttributeError, ImportError) as err:
            raise KeyError(f"{key} (unreadable: {type(err).__name__})") from None

    def put(self, key: str, value: Any) -> None:
        """Store ``value`` atomically: readers see the whole file or none."""
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{key}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                pickle.dump(value, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self._path(key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def keys(self) -> list[str]:
        """Keys of every stored result (sorted)."""
        return sorted(p.stem for p in self.directory.glob("*.pkl"))

    def __len__(self) -> int:
        return len(self.keys())


def _run_job(job: Job) -> Any:
    """Run ``job`` in a worker process, one thread per job (workers share the cores)."""
    torch.set_num_threads(1)
    return job.run()


class Executor(ABC):
    """Runs jobs; :meth:`map` returns results in job order and uses the cache."""

    name: str = "executor"

    def map(
        self,
        jobs: Sequence[Job],
        cache: ResultCache | str | Path | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[Any]:
        """Results of ``jobs`` in order.

        Cached results are reused; each new result is written to the cache as soon as its
        job finishes. Jobs with equal keys run once. ``progress(done, total)`` is called
        once before running and after each finished job (``total`` counts distinct keys).
        If a job fails or the sweep is interrupted (Ctrl-C, SIGTERM, ``progress``
        raising), the jobs not yet started are cancelled, finished results stay cached,
        and the exception is raised; a local pool also stops its running jobs
        (:func:`process_pool`) instead of waiting for them.
        """
        store = ResultCache(cache) if isinstance(cache, str | Path) else cache
        first: dict[str, int] = {}
        for i, job in enumerate(jobs):
            first.setdefault(job.key(), i)
        results: dict[str, Any] = {}
        todo: list[int] = []
        for key, i in first.items():
            if store is not None:
                with suppress(KeyError):
                    results[key] = store.get(key)
                    continue
            todo.append(i)
        if progress is not None:
            progress(len(results), len(first))
        for i, value in self._run([jobs[i] for i in todo], todo):
            key = jobs[i].key()
            if store is not None:
                store.put(key, value)
            results[key] = value
            if progress is not None:
                progress(len(results), len(first))
        return [results[job.key()] for job in jobs]

    @abstractmethod
    def _run(self, jobs: Sequence[Job], ids: Sequence[int]) -> Iterator[tuple[int, Any]]:
        """Yield ``(id, result)`` as jobs finish (any order)."""


TERMINATE_GRACE_S = 10.0
"""Seconds a terminated worker gets to stop (a training saves its checkpoint on SIGTERM)
before it is killed."""


@contextmanager
def process_pool(
    workers: int,
    start_method: str = "spawn",
    initializer: Callable[..., object] | None = None,
    initargs: tuple[Any, ...] = (),
) -> Iterator[ProcessPoolExecutor]:
    """A pool of ``workers`` processes that is stopped, not waited for, when the block is
    left by an exception.

    Leaving the block normally waits for the submitted jobs, as ``with
    ProcessPoolExecutor()`` does. Leaving it by an exception (a failed job, Ctrl-C,
    SIGTERM turned into ``KeyboardInterrupt``, a consumer abandoning a generator that
    holds the pool) cancels the jobs not yet started and sends SIGTERM to the workers, so
    that a training in progress saves its checkpoint and stops; a worker still alive
    :data:`TERMINATE_GRACE_S` seconds later is killed. ``concurrent.futures`` alone would
    wait for every running job to finish, which for a training can take an hour, and a
    worker that handles SIGTERM would go on to the next queued job."""
    pool = ProcessPoolExecutor(
        workers,
        mp_context=get_context(start_method),
        initializer=initializer,
        initargs=initargs,
    )
    try:
        yield pool
    except BaseException:
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()
        for process in processes:
            process.join(TERMINATE_GRACE_S)
            if process.is_alive():
                process.kill()
                process.join()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class LocalExecutor(Executor):
    """In-process (``workers=1``) or a pool of ``workers`` processes (None: one per CPU)."""

    name = "local"

    def __init__(self, workers: int | None = 1) -> None:
        if workers is not None and workers < 1:
            raise ConfigError(f"workers must be >= 1 (or None for one per CPU), got {workers}")
        self.workers = workers or os.cpu_count() or 1

    def _run(self, jobs: Sequence[Job], ids: Sequence[int]) -> Iterator[tuple[int, Any]]:
        if self.workers == 1 or len(jobs) <= 1:
            for i, job in zip(ids, jobs, strict=True):
                yield i, job.run()
            return
        # a failed job or an abandoned sweep stops the workers (see process_pool)
        with process_pool(min(self.workers, len(jobs))) as pool:
            futures = {pool.submit(_run_job, job): i for i, job in zip(ids, jobs, strict=True)}
            for fut in as_completed(futures):
                yield futures[fut], fut.result()


class RayExecutor(Executor):
    """Runs jobs as Ray tasks (``pip install taskrel[distributed]``).

    Args:
        address: address of an existing cluster (``"auto"`` or ``"ray://host:port"``);
            None starts a local Ray instance (unless Ray is already initialised).
        num_cpus: CPUs for a local instance (ignored when connecting).
        cpus_per_job: CPUs reserved per job.
        max_retries: how many times a job whose worker process or node died (killed,
            out of memory, node lost) is run again before the sweep fails with Ray's
            ``WorkerCrashedError``/``NodeDiedError``.
        retry_exceptions: also retry jobs that *raise*: False (default: an exception in
            a job is a deterministic failure and is raised at once), True (any
            exception), or a list of exception types. Counts against ``max_retries``.

    Retrying is safe because a job is a deterministic function of its arguments (seeded)
    and only a finished attempt's result reaches the driver and the cache: a retried
    job returns exactly what an undisturbed run does. Job functions are shipped by
    reference, so the workers must be able to import them (installed packages; a local
    instance also searches the driver's ``sys.path``). :meth:`shutdown` (or leaving a
    ``with`` block) stops a Ray instance this executor started and leaves one it merely
    joined running.
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        num_cpus: int | None = None,
        cpus_per_job: float = 1.0,
        max_retries: int = 3,
        retry_exceptions: bool | Sequence[type[BaseException]] = False,
    ) -> None:
        try:
            import ray
        except ImportError as err:
            raise ConfigError(
                "the ray executor needs Ray: pip install 'taskrel[distributed]'"
            ) from err
        if cpus_per_job <= 0:
            raise ConfigError(f"cpus_per_job must be > 0, got {cpus_per_job}")
        if max_retries < 0:
            raise ConfigError(f"max_retries must be >= 0, got {max_retries}")
        self._ray = ray
        self._owned = not ray.is_initialized()
        if self._owned:
            kwargs: dict[str, Any] = {
                "address": address,
                "include_dashboard": False,
                "log_to_driver": False,
            }
            if address is None:
                kwargs["num_cpus"] = num_cpus
                # workers import job functions from wherever the driver can (e.g. tests/)
                kwargs["job_config"] = ray.job_config.JobConfig(
                    code_search_path=[os.path.abspath(p) for p in sys.path if os.path.isdir(p)]
                )
            ray.init(**kwargs)
        self.cpus_per_job = cpus_per_job
        self.max_retries = max_retries
        self.retry_exceptions = (
            retry_exceptions if isinstance(retry_exceptions, bool) else list(retry_exceptions)
        )

    def _run(self, jobs: Sequence[Job], ids: Sequence[int]) -> Iterator[tuple[int, Any]]:
        ray = self._ray
        remote = ray.remote(
            num_cpus=self.cpus_per_job,
            max_retries=self.max_retries,
            retry_exceptions=self.retry_exceptions,
        )(_run_job)
        pending = {remote.remote(job): i for i, job in zip(ids, jobs, strict=True)}
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    yield pending.pop(ref), ray.get(ref)
        finally:  # a failed job or an abandoned sweep: cancel what has not finished
            for ref in pending:
                ray.cancel(ref, force=True)

    def shutdown(self) -> None:
        """Stop the local Ray instance if this executor started it."""
        if self._owned and self._ray.is_initialized():
            self._ray.shutdown()

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def make_executor(
    name: str = "local",
    workers: int | None = 1,
    address: str | None = None,
) -> Executor:
    """``local`` (default; ``workers`` processes) or ``ray`` (``workers`` CPUs for a local
    instance, or the cluster at ``address``)."""
    if name == "local":
        return LocalExecutor(workers)
    if name == "ray":
        return RayExecutor(address=address, num_cpus=workers)
    raise ConfigError(f"unknown executor {name!r}; expected 'local' or 'ray'")
