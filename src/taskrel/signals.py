"""Interrupt signals handled one way: Ctrl-C (SIGINT) and SIGTERM both raise
KeyboardInterrupt, so a terminated run stops the way an interrupted one does (checkpoint
saved, exit status 130, one line saying how to resume), and an interrupt that arrives
inside a finaliser is not lost. Kept free of heavy imports: the CLI uses it before torch
is loaded."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

REDELIVERY_DELAY_S = 0.05
"""Seconds after which a signal that arrived inside a finaliser is sent again."""


def _in_finaliser(frame: FrameType | None) -> bool:
    """Whether ``frame`` or one of its callers is a ``__del__`` method, where Python
    prints an exception and swallows it ("Exception ignored in ...")."""
    while frame is not None:
        if frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


def raise_interrupt(signum: int, frame: Any) -> None:
    """Signal handler: raise KeyboardInterrupt, as Ctrl-C does. Inside a finaliser the
    exception would be swallowed (the run would go on and exit 0), so there the same
    signal is sent again after :data:`REDELIVERY_DELAY_S`, once the finaliser returned."""
    if _in_finaliser(frame):
        timer = threading.Timer(REDELIVERY_DELAY_S, os.kill, (os.getpid(), signum))
        timer.daemon = True
        timer.start()
        return
    raise KeyboardInterrupt


@contextmanager
def interrupt_signals() -> Iterator[None]:
    """Inside the block SIGTERM, and SIGINT unless someone replaced Python's default
    Ctrl-C handler (e.g. a notebook kernel), raise KeyboardInterrupt through
    :func:`raise_interrupt` (main thread only; elsewhere a signal handler cannot be
    installed and the block runs unchanged)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, raise_interrupt)}
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, raise_interrupt)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
