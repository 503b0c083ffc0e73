"""One-line notices for users: caveats that do not stop a computation (a Hessian that is
not positive definite, a model that has not converged, a task with one class in training).

A notice is logged on the ``taskrel`` logger at WARNING level (never a Python
``warnings.warn``, so nothing prints a source line or a stack). The CLI shows each as
``taskrel: warning: MESSAGE`` on stderr. Library users see them through the standard
``logging`` machinery (a one-line handler is attached to the ``taskrel`` logger the first
time a notice is given, unless the application configured that logger itself).

Code that produces a result should also record its notices in the result (e.g.
``Relatedness.meta['caveats']``); :func:`collect` captures every notice given inside a
``with`` block for that purpose.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

LOGGER = logging.getLogger("taskrel")
_collectors: list[list[str]] = []


def _ensure_handler() -> None:
    if LOGGER.handlers or LOGGER.propagate is False:
        return
    if logging.getLogger().handlers:  # the application configured logging: defer to it
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("taskrel: warning: %(message)s"))
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False


def notice(message: str) -> str:
    """Report ``message`` (one line) as a warning and record it in every active
    :func:`collect` block; returns the message."""
    line = " ".join(message.split())
    _ensure_handler()
    LOGGER.warning(line.rstrip("."))
    for bucket in _collectors:
        bucket.append(line)
    return line


@contextmanager
def collect() -> Iterator[list[str]]:
    """Collect the notices given inside the block, in order::

    with collect() as caveats:
        ...
    result.meta["caveats"] = caveats
    """
    bucket: list[str] = []
    _collectors.append(bucket)
    try:
        yield bucket
    finally:  # by identity: nested blocks may hold equal lists
        del _collectors[next(i for i, b in enumerate(_collectors) if b is bucket)]
