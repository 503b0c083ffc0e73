"""Distributed fault test: a leave-one-task-out sweep on a local two-node Ray cluster
(a head and one extra worker node) survives a worker process killed with SIGKILL in the
middle of a job, and returns exactly what an undisturbed in-process sweep returns.

The kill comes from a thread of the test: it watches the processes under the extra
node's raylet (read from ``/proc``) and kills the first one that is running a job (Ray
names a busy worker's process ``ray::_run_job``). Ray then runs that job again
(``RayExecutor(max_retries=...)``)."""

from __future__ import annotations

import importlib.util
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from taskrel.errors import ConfigError
from taskrel.execution import ResultCache
from taskrel.relatedness import RelateContext, relate
from taskrel.relatedness.ground_truth import load_data
from taskrel.training.trainer import TrainConfig

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="ray is not installed"
)
on_linux = pytest.mark.skipif(
    not Path("/proc/self/stat").is_file(), reason="finds Ray's worker processes in /proc"
)

DATA = {
    "name": "synthetic-regression",
    "options": {
        "clusters": 1,
        "cluster_size": 2,
        "n_unrelated": 1,
        "n_adversarial": 1,
        "n_per_task": 100,
        "n_features": 5,
        "seed": 3,
    },
    "standardize": "task",
}
# a small non-convex model trained by mini-batch Adam: a fraction of a second per
# retraining on an idle core, long enough to catch a job running, and bit-reproducible
# from its seed
MODEL = {"hidden": [16], "l2": 1e-3, "l2_task": 1e-2}
TRAIN = TrainConfig(optimizer="adam", lr=1e-2, epochs=15, batch_size=16, patience=None, seed=0)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A head node and one extra worker node, one CPU each, on this machine."""
    import ray
    from ray.cluster_utils import Cluster

    assert not ray.is_initialized(), "another test left Ray running"
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()


def raylet_pid(node: Any) -> int:
    from ray._private import ray_constants

    return int(node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid)


def busy_workers(raylet: int) -> list[int]:
    """PIDs of the processes under ``raylet`` that are running a job right now (read from
    ``/proc``)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:  # "pid (name) state ppid ...": the name may hold spaces and parentheses
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # the process ended while we looked
            continue

    def under_raylet(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == raylet:
                return True
        return False

    busy = []
    for pid in filter(under_raylet, parents):
        with suppress(OSError):
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::_run_job"):
                busy.append(pid)
    return busy


def kill_first_busy_worker(raylet: int, stop: threading.Event, killed: list[int]) -> None:
    """SIGKILL the first worker under ``raylet`` seen running a job; give up at ``stop``."""
    while not stop.is_set():
        for pid in busy_workers(raylet):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.01)


def gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (no longer exists, or is a zombie)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_retries_must_not_be_negative() -> None:
    from taskrel.execution import RayExecutor

    with pytest.raises(ConfigError, match="max_retries must be >= 0, got -1"):
        RayExecutor(max_retries=-1)


@pytest.mark.slow
@on_linux
def test_loto_sweep_survives_a_killed_worker(cluster: Any, tmp_path: Path) -> None:
    import ray

    from taskrel.execution import RayExecutor

    tasks = load_data(DATA)
    ctx = RelateContext(model="hard", model_config=MODEL, train_config=TRAIN)
    reference = relate(tasks, "ground-truth", ctx)  # undisturbed, in-process (one thread,
    # as in the Ray workers: the same arithmetic)

    extra = raylet_pid(next(iter(cluster.worker_nodes)))
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=kill_first_busy_worker, args=(extra, stop, killed))
    with RayExecutor(address=cluster.address, max_retries=2) as executor:
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        ctx.executor, ctx.cache_dir = executor, tmp_path
        killer.start()
        try:
            swept = relate(tasks, "ground-truth", ctx)
        finally:
            stop.set()
            killer.join()
    assert len(killed) == 1, "no job ran on the extra node"
    assert gone(killed[0])
    assert len(ResultCache(tmp_path / "retrain")) == len(tasks) + 1  # every job finished
    np.testing.assert_array_equal(swept.matrix, reference.matrix)
    np.testing.assert_array_equal(swept.meta["base_test_loss"], reference.meta["base_test_loss"])
