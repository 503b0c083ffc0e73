"""Interrupts are never lost: Ctrl-C inside a finaliser still stops the run."""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

import pytest

from taskrel.signals import interrupt_signals


class _SlowFinaliser:
    """Sends Ctrl-C to its own process from ``__del__`` and stays there while the signal
    is handled (like ``ZipFile.__del__`` caught by a Ctrl-C in a real run)."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)


def _wait(seconds: float) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        time.sleep(0.01)


def test_ctrl_c_inside_a_finaliser_is_raised_once_it_returns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        # Python's own handler: the KeyboardInterrupt dies inside __del__, the run goes on
        _SlowFinaliser()
        _wait(0.3)
        assert [type(u.exc_value) for u in unraisable] == [KeyboardInterrupt]
        unraisable.clear()
        started = time.time()
        with pytest.raises(KeyboardInterrupt), interrupt_signals():
            _SlowFinaliser()
            _wait(5.0)
        assert time.time() - started < 2.0  # raised right after the finaliser, not lost
        assert unraisable == []  # nothing printed as "Exception ignored in ..."
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_replaced_ctrl_c_handler_is_left_alone() -> None:
    calls: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: calls.append(signum))
    try:
        with interrupt_signals():
            os.kill(os.getpid(), signal.SIGINT)
            _wait(0.1)
        assert calls == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, previous)
