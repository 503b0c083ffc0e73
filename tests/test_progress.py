"""Progress reporting: plain lines on a non-terminal stream, throttled by a fake clock, with
an ETA extrapolated from the speed since the first update."""

from __future__ import annotations

import io
import time

import pytest

from taskrel.errors import ConfigError
from taskrel.execution import Job, LocalExecutor
from taskrel.progress import (
    INTERVAL_ENV,
    Progress,
    default_interval,
    duration,
    progress,
    shown,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def square(x: int) -> int:
    return x * x


def test_plain_lines_are_throttled_and_estimate_the_time_left() -> None:
    clock, out = Clock(), io.StringIO()
    with Progress("ground truth", "retrainings", 10, stream=out, interval=5, clock=clock) as p:
        for t, done in [(0, 0), (2, 1), (4, 2), (6, 3), (8, 4), (11, 5), (12, 6), (16, 7)]:
            clock.now = 100.0 + t
            p(done)
        clock.now = 130.0
        p(10)
    lines = out.getvalue().splitlines()
    # first line once 5 s have passed (t=6), then none before t=11, then none before t=16
    assert lines == [
        "taskrel: ground truth 3/10 retrainings, 6 s elapsed, ~14 s left",  # 7 left at 0.5/s
        "taskrel: ground truth 5/10 retrainings, 11 s elapsed, ~11 s left",
        "taskrel: ground truth 7/10 retrainings, 16 s elapsed, ~7 s left",
        "taskrel: ground truth 10/10 retrainings in 30 s",
    ]


def test_units_done_before_the_first_update_do_not_count_as_speed() -> None:
    """A resumed sweep: 8 of 10 cached; 1 more in 10 s leaves ~10 s, not ~1 s."""
    clock, out = Clock(), io.StringIO()
    p = Progress("sweep", "jobs", None, stream=out, interval=0, clock=clock)
    p(6, 10)
    clock.now += 0.1
    p(7)  # reported one by one, but at once: cached too
    p(8)
    clock.now += 10
    p(9)
    assert p.left_s(clock.now) == pytest.approx(10.0)
    assert out.getvalue().splitlines()[-1] == "taskrel: sweep 9/10 jobs, 10 s elapsed, ~10 s left"


def test_a_short_step_prints_nothing_and_a_failed_one_no_closing_line() -> None:
    clock, out = Clock(), io.StringIO()
    with Progress("quick", "jobs", 3, stream=out, interval=5, clock=clock) as p:
        clock.now += 4
        p(3)
    assert out.getvalue() == ""
    with pytest.raises(RuntimeError), Progress("slow", "jobs", 3, stream=out, clock=clock) as p:
        clock.now += 20
        p(1)
        raise RuntimeError
    # no speed is known from a single update, and no closing line follows a failure
    assert out.getvalue().splitlines() == ["taskrel: slow 1/3 jobs, 20 s elapsed"]


def test_executor_sweep_reports_through_the_callback() -> None:
    out = io.StringIO()
    jobs = [Job(square, {"x": i}) for i in (1, 2, 2, 3)]  # 3 distinct keys
    with shown(), progress("squares", "jobs", len(jobs), stream=out, interval=0) as report:
        assert LocalExecutor().map(jobs, progress=report) == [1, 4, 4, 9]
    lines = out.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "taskrel: squares 0/3 jobs",
        "taskrel: squares 1/3 jobs",
        "taskrel: squares 2/3 jobs",
        "taskrel: squares 3/3 jobs in 0 s",
    ]


def test_disabled_and_terminal_reporters_print_no_lines() -> None:
    out = io.StringIO()
    with progress("off", "jobs", 2, enabled=False, stream=out, interval=0) as p:
        p(1)
        p(2)
    with progress("library default", "jobs", 2, stream=out, interval=0) as p:  # not shown()
        p(1)
    with shown(), shown(False), progress("hidden", "jobs", 2, stream=out, interval=0) as p:
        p(1)
    assert out.getvalue() == ""
    # a terminal gets a transient rich bar; nested reporters share one display
    with (
        Progress("outer", "seeds", 2, stream=out, terminal=True) as outer,
        Progress("inner", "jobs", 3, stream=out, terminal=True) as inner,
    ):
        inner(3)
        outer(1)
    assert "taskrel:" not in out.getvalue()


def test_interval_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(INTERVAL_ENV, "2.5")
    assert default_interval() == 2.5
    monkeypatch.setenv(INTERVAL_ENV, "soon")
    with pytest.raises(ConfigError, match=INTERVAL_ENV):
        default_interval()
    assert [duration(s) for s in (41.4, 204, 7500)] == ["41 s", "3 min 24 s", "2 h 05 min"]


def test_a_heartbeat_reports_a_long_unit_without_updates() -> None:
    out = io.StringIO()
    with Progress("one long fit", "fits", 2, stream=out, interval=0.05) as p:
        p(0)
        time.sleep(0.4)  # no update meanwhile: the heartbeat prints
        p(1)
    lines = out.getvalue().splitlines()
    assert len(lines) >= 3
    assert lines[0].startswith("taskrel: one long fit 0/2 fits, 0 s elapsed")
    assert lines[-1] == "taskrel: one long fit 1/2 fits in 0 s"


def test_lines_thin_out_during_a_long_step() -> None:
    """After 50 s the gap is a tenth of the elapsed time (at most 60 s)."""
    clock, out = Clock(), io.StringIO()
    p = Progress("long", "fits", 10_000, stream=out, interval=5, clock=clock)
    for t in range(0, 2000):
        clock.now = 100.0 + t
        p(t)
    elapsed = [line.split(", ")[1] for line in out.getvalue().splitlines()]
    starts = [float(e.split()[0]) for e in elapsed if "min" not in e]
    assert starts[:10] == [5, 10, 15, 20, 25, 30, 35, 40, 45, 50]
    assert len(elapsed) < 80  # 2000 s at one line per 5 s would be 400
    assert p.gap(100.0 + 120) == 12 and p.gap(100.0 + 1200) == 60
