"""SIGTERM handled like Ctrl-C, so a terminated run stops the way an interrupted one does
(checkpoint saved, exit status 130, one line saying how to resume). Kept free of heavy
imports: the CLI uses it before torch is loaded."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def raise_interrupt(signum: int, frame: Any) -> None:
    """Signal handler: raise KeyboardInterrupt, as Ctrl-C does."""
    raise KeyboardInterrupt


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Inside the block SIGTERM raises KeyboardInterrupt (main thread only; elsewhere a
    signal handler cannot be installed and the block runs unchanged)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
