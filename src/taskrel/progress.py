"""Progress of long steps (retraining sweeps, training epochs, MTIF solves, benchmark loops).

One reporter, :class:`Progress`, fed with ``(done, total)`` counts (the signature of the
``progress`` callback of :meth:`taskrel.execution.Executor.map`):

- on a terminal (the stream's ``isatty()``) it draws a rich progress bar that disappears
  when the step ends; reporters opened while another is active share its display;
- otherwise (a pipe, a log file, a captured stream) it prints plain lines such as
  ``taskrel: ground truth 12/37 retrainings, 41 s elapsed, ~80 s left``, the first once the
  step has run ``interval`` seconds and then one per ``interval`` (default 5 s; environment
  variable ``TASKREL_PROGRESS_INTERVAL``; after the first minutes one per tenth of the
  elapsed time, at most one a minute apart), on updates and, while a unit takes longer,
  from a background heartbeat; then a closing line with the total time. A step shorter
  than ``interval`` prints nothing.

The time left is extrapolated from the speed since the first update, so units already
done then or reported within :data:`BURST_S` of it (e.g. cached retrainings of a resumed
sweep) do not count as speed.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import IO, Any

from taskrel.errors import ConfigError

INTERVAL_ENV = "TASKREL_PROGRESS_INTERVAL"
DEFAULT_INTERVAL_S = 5.0
BURST_S = 0.5
"""Updates this soon after the first count as already done (e.g. cached units), not as
speed."""

_live: dict[str, Any] = {"bar": None, "users": 0}  # the rich display reporters share
_shown = {"default": False}


@contextmanager
def shown(on: bool = True) -> Iterator[None]:
    """Inside the block, show (or hide) the progress of steps whose caller leaves it to
    the application (``enabled=None``). The CLI shows it for the whole command; a library
    user sees nothing unless it asks (``with taskrel.progress.shown(): ...``, or
    ``RelateContext(progress=True)``)."""
    before = _shown["default"]
    _shown["default"] = on
    try:
        yield
    finally:
        _shown["default"] = before


def default_interval() -> float:
    """Seconds between plain progress lines: ``$TASKREL_PROGRESS_INTERVAL`` or 5.

    Raises:
        ConfigError: the variable is not a number >= 0.
    """
    text = os.environ.get(INTERVAL_ENV)
    if text is None:
        return DEFAULT_INTERVAL_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0.0 or math.isinf(value):
        raise ConfigError(f"{INTERVAL_ENV}={text!r}: expected a number of seconds >= 0")
    return value


def duration(seconds: float) -> str:
    """``"41 s"``, ``"3 min 24 s"`` or ``"2 h 05 min"``."""
    s = int(round(seconds))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s // 60 % 60:02d} min"


class Progress:
    """Progress of one step, counted in ``unit`` (e.g. ``"retrainings"``, ``"epochs"``).

    Call it as ``report(done, total)`` (``total`` may change, e.g. when equal jobs merge),
    or use :meth:`advance`; use it as a context manager (or call :meth:`close`).

    Args:
        label: what runs, e.g. ``"ground truth"``.
        unit: what is counted, plural.
        total: number of units, if known in advance.
        stream: where to report (default: ``sys.stderr`` at creation).
        interval: seconds between plain lines (default :func:`default_interval`).
        clock: monotonic clock in seconds (tests pass a fake one).
        terminal: draw a rich bar (default: ``stream.isatty()``).
        heartbeat: on a non-terminal, also print from a background thread when no update
            came for ``interval`` seconds (default: with the real clock and
            ``interval > 0``).
    """

    def __init__(
        self,
        label: str,
        unit: str,
        total: int | None = None,
        stream: IO[str] | None = None,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        terminal: bool | None = None,
        heartbeat: bool | None = None,
    ) -> None:
        self.label, self.unit, self.total = label, unit, total
        self.stream = stream if stream is not None else sys.stderr
        self.interval = default_interval() if interval is None else interval
        self.clock = clock
        isatty = getattr(self.stream, "isatty", None)
        self.terminal = bool(isatty and isatty()) if terminal is None else terminal
        self.done = 0
        self.started = clock()
        self.base: tuple[int, float] | None = None  # (done, time) at the first update
        self.last_line: float | None = None
        self.closed = False
        self._task: Any = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        if self.terminal:
            self._open_bar()
        elif (clock is time.monotonic if heartbeat is None else heartbeat) and self.interval > 0:
            self._beat = threading.Thread(target=self._heartbeat, daemon=True)
            self._beat.start()

    # -- counting ------------------------------------------------------------------------
    def __call__(self, done: int, total: int | None = None) -> None:
        """``done`` units of ``total`` (None: unchanged) are finished."""
        if total is not None:
            self.total = total
        self.done = done
        now = self.clock()
        if self.base is None or now - self.base[1] < BURST_S:  # e.g. cached units
            self.base = (done, now)
        if self.terminal:
            self._bar().update(self._task, completed=done, total=self.total)
            return
        if self.total is None or done < self.total:  # else the closing line reports it
            self._maybe_line()

    def advance(self, n: int = 1) -> None:
        """``n`` more units are finished."""
        self(self.done + n)

    def left_s(self, now: float) -> float | None:
        """Seconds left, extrapolated from the speed since the first update (None:
        unknown)."""
        if self.total is None or self.base is None or self.done <= self.base[0]:
            return None
        return (self.total - self.done) * (now - self.base[1]) / (self.done - self.base[0])

    def status(self, now: float) -> str:
        """The plain line, e.g. ``taskrel: selection 2/3 retrainings, 41 s elapsed, ~20 s
        left``."""
        text = f"taskrel: {self.label}{self._count()}, {duration(now - self.started)} elapsed"
        left = self.left_s(now)
        if left is not None and self.done < (self.total or 0):
            text += f", ~{duration(left)} left"
        return text

    def _maybe_line(self) -> None:
        """Print the status if ``interval`` seconds passed since the last line (or the
        start)."""
        with self._lock:
            now = self.clock()
            since = now - (self.last_line if self.last_line is not None else self.started)
            if since >= self.gap(now) and not self.closed:
                print(self.status(now), file=self.stream, flush=True)
                self.last_line = now

    def gap(self, now: float) -> float:
        """Seconds between lines: ``interval``, growing to a tenth of the elapsed time
        (at most a minute) so a long step's log stays short."""
        if self.interval <= 0:
            return 0.0
        return max(self.interval, min(60.0, (now - self.started) / 10))

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.interval / 4):
            self._maybe_line()

    # -- the rich bar --------------------------------------------------------------------
    def _open_bar(self) -> None:
        if _live["bar"] is None:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as Bar

            bar = Bar(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[unit]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(file=self.stream, force_terminal=True),
                transient=True,
            )
            bar.start()
            _live["bar"] = bar
        _live["users"] += 1
        self._task = self._bar().add_task(self.label, total=self.total, unit=self.unit)

    @staticmethod
    def _bar() -> Any:
        return _live["bar"]

    # -- closing -------------------------------------------------------------------------
    def close(self, failed: bool = False) -> None:
        """End the report: remove the bar, or print a closing line (unless ``failed``)
        when the step printed lines or took ``interval`` seconds or more."""
        if self.closed:
            return
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        self.closed = True
        if self.terminal:
            bar = self._bar()
            bar.remove_task(self._task)
            _live["users"] -= 1
            if _live["users"] == 0:
                bar.stop()
                _live["bar"] = None
            return
        now = self.clock()
        if not failed and (self.last_line is not None or now - self.started >= self.interval):
            print(
                f"taskrel: {self.label}{self._count()} in {duration(now - self.started)}",
                file=self.stream,
                flush=True,
            )

    def _count(self) -> str:
        """``" 12/37 retrainings"``; ``" 12 retrainings"`` without a total; nothing
        for a step counted in no units (``total`` None and nothing done)."""
        if self.total is not None:
            return f" {self.done}/{self.total} {self.unit}"
        return f" {self.done} {self.unit}" if self.done else ""

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(failed=exc_type is not None)


class _Silent(Progress):
    """A reporter that shows nothing (progress turned off)."""

    def __init__(self, label: str = "", unit: str = "", total: int | None = None) -> None:
        super().__init__(
            label, unit, total, stream=sys.stderr, interval=0.0, terminal=False, heartbeat=False
        )
        self.closed = True

    def __call__(self, done: int, total: int | None = None) -> None:
        self.done = done


def progress(
    label: str, unit: str, total: int | None = None, enabled: bool | None = None, **options: Any
) -> Progress:
    """A :class:`Progress` reporter, or one that shows nothing when ``enabled`` is False
    (None: as set by :func:`shown`, off by default); ``options``: those of
    :class:`Progress`."""
    if not (_shown["default"] if enabled is None else enabled):
        return _Silent(label, unit, total)
    return Progress(label, unit, total, **options)
