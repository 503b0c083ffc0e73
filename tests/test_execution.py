"""Executor tests: cache keys, the on-disk cache, the local process pool, a sweep killed
with SIGKILL and restarted, and the Ray backend on a local 2-CPU Ray instance.

Jobs count their executions by writing one marker file per finished run into the folder
named by the environment variable ``TASKREL_TEST_MARKERS`` (kept out of the job arguments
so that runs with different marker folders share cache keys)."""

from __future__ import annotations

import importlib.util
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import taskrel.execution
from taskrel.execution import Job, LocalExecutor, ResultCache, canonical

MARKERS = "TASKREL_TEST_MARKERS"
TESTS_DIR = Path(__file__).resolve().parent


def train_subset(tasks: list[int], seed: int, pause: float = 0.0) -> np.ndarray:
    """A small retraining job: ridge regression on the pooled training rows of ``tasks``
    out of 8 random linear tasks drawn from ``seed``; returns each task's test MSE
    ``(len(tasks),)``. ``pause`` seconds of extra work make the job last."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(8, 5))
    x = rng.normal(size=(8, 60, 5))
    y = np.einsum("tnd,td->tn", x, w) + 0.3 * rng.normal(size=(8, 60))
    xs, ys = x[tasks, :40].reshape(-1, 5), y[tasks, :40].reshape(-1)
    beta = np.linalg.solve(xs.T @ xs + np.eye(5), xs.T @ ys)
    time.sleep(pause)
    marker_dir = os.environ.get(MARKERS)
    if marker_dir:
        Path(marker_dir, f"{'-'.join(map(str, tasks))}_{seed}_{uuid.uuid4().hex}").touch()
    return ((x[tasks, 40:] @ beta - y[tasks, 40:]) ** 2).mean(axis=1)


def fail_on(tasks: list[int], seed: int, bad: int) -> np.ndarray:
    """``train_subset`` that raises for ``seed == bad``."""
    if seed == bad:
        raise ValueError(f"job with seed {seed} fails")
    return train_subset(tasks, seed)


def sweep_jobs(n: int = 8, pause: float = 0.0) -> list[Job]:
    """``n`` retraining jobs over task pairs and seeds."""
    return [
        Job(train_subset, {"tasks": [i % 4, 4 + i % 4], "seed": i, "pause": pause})
        for i in range(n)
    ]


def executions(marker_dir: Path) -> Counter[tuple[str, str]]:
    """How many times each (tasks, seed) job finished, from its marker files."""
    return Counter(tuple(p.name.split("_")[:2]) for p in marker_dir.iterdir())


def as_bytes(results: list[object]) -> list[bytes]:
    """Each result pickled on its own (a pickle of the whole list also encodes which
    results share objects)."""
    return [pickle.dumps(r) for r in results]


def job_id(job: Job) -> tuple[str, str]:
    return "-".join(map(str, job.kwargs["tasks"])), str(job.kwargs["seed"])


@pytest.fixture()
def markers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "markers"
    folder.mkdir()
    monkeypatch.setenv(MARKERS, str(folder))
    return folder


# -- cache keys ---------------------------------------------------------------------------
def test_cache_keys_are_stable_and_distinct() -> None:
    from taskrel.data import load
    from taskrel.training import TrainConfig

    ts = load("synthetic", n_per_task=60, seed=0)
    base = Job(train_subset, {"tasks": [0, 1], "seed": 0, "data": ts})
    same = Job(
        train_subset, {"data": load("synthetic", n_per_task=60, seed=0), "seed": 0, "tasks": [0, 1]}
    )
    assert base.key() == same.key()  # argument order and object identity do not matter
    big = np.zeros(5000)
    changed = big.copy()
    changed[2500] = 1e-9  # invisible in repr(): a key from str() would collide
    variants = [
        Job(train_subset, {"tasks": [0, 1], "seed": 1, "data": ts}),
        Job(train_subset, {"tasks": [1, 0], "seed": 0, "data": ts}),
        Job(fail_on, {"tasks": [0, 1], "seed": 0, "data": ts}),
        Job(train_subset, {"tasks": [0, 1], "seed": 0, "data": ts.drop_train([(0, 0)])}),
        Job(train_subset, {"tasks": [0, 1], "seed": "0", "data": ts}),
        Job(train_subset, {"x": big}),
        Job(train_subset, {"x": changed}),
        Job(train_subset, {"x": big.astype(np.float32)}),
        Job(train_subset, {"x": {1: 2}}),
        Job(train_subset, {"x": {"1": 2}}),
        Job(train_subset, {"x": TrainConfig()}),
        Job(train_subset, {"x": TrainConfig(lr=0.1)}),
    ]
    keys = [base.key()] + [j.key() for j in variants]
    assert len(set(keys)) == len(keys)
    assert canonical(torch.zeros(3)) == canonical(np.zeros(3, dtype=np.float32))
    # the same key in a fresh interpreter (no dependence on hash seeds or addresses)
    code = (
        "from test_execution import train_subset; from taskrel.execution import Job;"
        "from taskrel.training import TrainConfig; import numpy as np;"
        "print(Job(train_subset, {'x': np.arange(3.0), 'cfg': TrainConfig(), "
        "'d': {'b': 1, 'a': [1, 2.5]}}).key())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=TESTS_DIR,
        env={**os.environ, "PYTHONHASHSEED": "7"},
    )
    here = Job(
        train_subset, {"d": {"a": [1, 2.5], "b": 1}, "cfg": TrainConfig(), "x": np.arange(3.0)}
    )
    assert out.stdout.strip() == here.key()


def test_jobs_refuse_lambdas_and_unhashable_arguments() -> None:
    with pytest.raises(ValueError, match="top-level"):
        Job(lambda: 1)
    with pytest.raises(TypeError, match="no canonical form"):
        Job(train_subset, {"x": object()}).key()


def test_cache_is_atomic_and_treats_unreadable_files_as_missing(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path)
    cache.put("k", {"a": np.arange(3)})
    np.testing.assert_array_equal(cache.get("k")["a"], np.arange(3))
    assert cache.keys() == ["k"] and sorted(os.listdir(tmp_path)) == ["k.pkl"]
    (tmp_path / "bad.pkl").write_bytes(b"\x80\x05truncated")
    with pytest.raises(KeyError):
        cache.get("bad")
    with pytest.raises(KeyError):
        cache.get("missing")


# -- local executor -----------------------------------------------------------------------
def test_map_runs_each_job_once_and_reuses_the_cache(tmp_path: Path, markers: Path) -> None:
    jobs = sweep_jobs(4)
    jobs.append(Job(train_subset, dict(jobs[0].kwargs)))  # a duplicate: runs once
    calls: list[tuple[int, int]] = []
    executor = LocalExecutor(workers=1)
    results = executor.map(jobs, cache=tmp_path, progress=lambda d, t: calls.append((d, t)))
    assert executions(markers) == Counter({job_id(j): 1 for j in jobs[:4]})
    assert calls == [(0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]
    assert results[4] is results[0] and len(ResultCache(tmp_path)) == 4
    again = executor.map(jobs + sweep_jobs(5)[4:], cache=tmp_path)
    assert executions(markers) == Counter({job_id(j): 1 for j in sweep_jobs(5)})  # only new
    assert as_bytes(again[:5]) == as_bytes(results)


def plain_results(jobs: list[Job], monkeypatch: pytest.MonkeyPatch) -> list[np.ndarray]:
    """Each job run here by hand, without markers."""
    monkeypatch.delenv(MARKERS, raising=False)
    return [job.run() for job in jobs]


def test_a_failing_job_raises_and_keeps_finished_results(tmp_path: Path, markers: Path) -> None:
    jobs = [Job(fail_on, {"tasks": [0, 4], "seed": s, "bad": 2}) for s in range(3)]
    with pytest.raises(ValueError, match="seed 2 fails"):
        LocalExecutor(workers=1).map(jobs, cache=tmp_path)
    assert len(ResultCache(tmp_path)) == 2  # the jobs before the failure are kept


# -- stopping a pool ----------------------------------------------------------------------
def sleep_then_mark(folder: str, seconds: float, ignore_sigterm: bool = False) -> int:
    """Write ``started-PID``, sleep, then write ``finished``; returns the PID."""
    if ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    Path(folder, f"started-{os.getpid()}").touch()
    time.sleep(seconds)
    Path(folder, "finished").touch()
    return os.getpid()


def once_started(folder: str, fail: bool) -> None:
    """Return (or raise, if ``fail``) as soon as a ``sleep_then_mark`` job has started."""
    deadline = time.monotonic() + 60
    while not list(Path(folder).glob("started-*")) and time.monotonic() < deadline:
        time.sleep(0.02)
    if fail:
        raise ValueError("job fails while another runs")


def worker_pids(folder: Path) -> list[int]:
    return [int(p.name.split("-")[1]) for p in folder.glob("started-*")]


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_failing_job_stops_the_running_ones_instead_of_waiting(tmp_path: Path) -> None:
    jobs = [
        Job(sleep_then_mark, {"folder": str(tmp_path), "seconds": 30.0}),
        Job(once_started, {"folder": str(tmp_path), "fail": True}),
    ]
    with pytest.raises(ValueError, match="fails while another runs"):
        LocalExecutor(workers=2).map(jobs)
    pids = worker_pids(tmp_path)
    assert len(pids) == 1
    assert not (tmp_path / "finished").exists()  # stopped, not waited for
    assert not is_running(pids[0])


def test_an_interrupted_sweep_kills_a_worker_that_ignores_sigterm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(taskrel.execution, "TERMINATE_GRACE_S", 0.5)
    jobs = [
        Job(sleep_then_mark, {"folder": str(tmp_path), "seconds": 30.0, "ignore_sigterm": True}),
        Job(once_started, {"folder": str(tmp_path), "fail": False}),
    ]

    def interrupt_after_first(done: int, total: int) -> None:
        if done >= 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        LocalExecutor(workers=2).map(jobs, progress=interrupt_after_first)
    pids = worker_pids(tmp_path)
    assert len(pids) == 1
    assert not (tmp_path / "finished").exists()
    assert not is_running(pids[0])


# -- a killed and restarted sweep ----------------------------------------------------------
SWEEP_SCRIPT = """
import pickle, sys
sys.path.insert(0, {tests!r})
from test_execution import sweep_jobs
from taskrel.execution import LocalExecutor

if __name__ == "__main__":
    results = LocalExecutor(workers=2).map(sweep_jobs(8, pause=0.4), cache=sys.argv[1])
    with open(sys.argv[2], "wb") as fh:
        pickle.dump([pickle.dumps(r) for r in results], fh)
"""


def test_killed_and_restarted_sweep_equals_an_uninterrupted_one(
    tmp_path: Path, markers: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = tmp_path / "sweep.py"
    script.write_text(textwrap.dedent(SWEEP_SCRIPT.format(tests=str(TESTS_DIR))))
    cache_dir, out = tmp_path / "cache", tmp_path / "results.pkl"
    cache = ResultCache(cache_dir)
    n_jobs = 8

    proc = subprocess.Popen(
        [sys.executable, str(script), str(cache_dir), str(out)], start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while len(cache) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its worker processes
        proc.wait()
    finished = set(cache.keys())
    assert 2 <= len(finished) < n_jobs and not out.exists(), "the kill came too late"
    before = executions(markers)

    subprocess.run([sys.executable, str(script), str(cache_dir), str(out)], check=True)
    after = executions(markers)

    jobs = sweep_jobs(n_jobs, pause=0.4)
    for job in jobs:  # jobs finished before the kill did not run again; the others ran
        expected_runs = before[job_id(job)] if job.key() in finished else before[job_id(job)] + 1
        assert after[job_id(job)] == expected_runs, job.kwargs
    assert sum(before.values()) - len(finished) <= 2  # at most the 2 jobs in flight

    reference_dir = tmp_path / "reference"  # an uninterrupted sweep
    monkeypatch.delenv(MARKERS)
    reference = LocalExecutor(workers=1).map(jobs, cache=reference_dir)
    assert pickle.loads(out.read_bytes()) == as_bytes(reference)
    assert sorted(cache.keys()) == sorted(ResultCache(reference_dir).keys())
    for key in finished | set(cache.keys()):
        assert (cache_dir / f"{key}.pkl").read_bytes() == (
            reference_dir / f"{key}.pkl"
        ).read_bytes()


# -- Ray ----------------------------------------------------------------------------------
needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="ray is not installed"
)


@pytest.fixture(scope="module")
def ray_executor(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """One local Ray instance with 2 CPUs for the whole module; its workers count
    executions in a module-wide marker folder."""
    from taskrel.execution import RayExecutor

    folder = tmp_path_factory.mktemp("ray-markers")
    previous = os.environ.get(MARKERS)
    os.environ[MARKERS] = str(folder)  # inherited by the Ray workers started below
    executor = RayExecutor(num_cpus=2)
    try:
        yield executor, folder
    finally:
        executor.shutdown()
        if previous is None:
            os.environ.pop(MARKERS, None)
        else:
            os.environ[MARKERS] = previous


@needs_ray
def test_ray_sweep_matches_plain_runs_and_reuses_the_cache(
    ray_executor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    executor, folder = ray_executor
    import ray

    assert ray.cluster_resources().get("CPU") == 2
    jobs = sweep_jobs(4)
    results = executor.map(jobs, cache=tmp_path / "ray")
    assert executions(folder) == Counter({job_id(j): 1 for j in jobs})
    for got, want in zip(results, plain_results(jobs, monkeypatch), strict=True):
        np.testing.assert_array_equal(got, want)
    again = executor.map(jobs + sweep_jobs(5)[4:], cache=tmp_path / "ray")
    assert executions(folder)[job_id(sweep_jobs(5)[4])] == 1
    assert sum(executions(folder)[job_id(j)] for j in sweep_jobs(5)) == 5  # only the new ran
    assert as_bytes(again[:4]) == as_bytes(results)


@needs_ray
def test_ray_failure_is_raised_and_finished_results_are_kept(
    ray_executor,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    executor, _ = ray_executor
    jobs = [Job(fail_on, {"tasks": [1, 5], "seed": s, "bad": 0}) for s in range(2)]
    with pytest.raises(ValueError, match="seed 0 fails"):
        executor.map(jobs[:1], cache=tmp_path)
    executor.map(jobs[1:], cache=tmp_path)
    assert ResultCache(tmp_path).keys() == [jobs[1].key()]
