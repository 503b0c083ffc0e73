"""Errors that taskrel reports to users.

Every error raised because of *user input* (a file, a config field, a dataset or method
name) is a :class:`TaskrelError`. Its message names the offending input and what was
expected, so the CLI can print it on one line without a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class TaskrelError(ValueError):
    """Bad user input: the message names the input and what was expected."""


class DataError(TaskrelError):
    """A data file or array is missing, malformed or inconsistent."""


class ConfigError(TaskrelError):
    """A configuration file or option is invalid."""


class RunDirError(TaskrelError):
    """A run folder or checkpoint cannot be used (exists already, corrupt, incompatible)."""


class NotApplicableError(TaskrelError):
    """A method does not apply to these data or this model (e.g. a classification-only
    method on regression tasks). Workflows that run several methods skip it and say why."""


def format_validation_error(
    err: Any, prefix: str = "", accepted: Iterable[str] | None = None
) -> str:
    """A pydantic ``ValidationError`` as one readable line: ``field: message`` per error,
    joined by ``"; "``, without pydantic's documentation URL or input dump.

    Args:
        err: a ``pydantic.ValidationError`` (anything with ``errors()``; other exceptions
            are written as ``str(err)`` on one line).
        prefix: prepended to every field path (e.g. ``"train."``).
        accepted: the valid option names, listed after an unknown one.

    Example: ``lr: must be > 0 (got -1); epochs: must be an integer (got 'x')``.
    """
    if not hasattr(err, "errors"):
        return " ".join(str(err).split())
    parts = []
    for item in err.errors():
        loc = ".".join(str(p) for p in item.get("loc", ())) or "(value)"
        msg = str(item.get("msg", "invalid value"))
        kind = str(item.get("type", ""))
        if kind == "extra_forbidden":
            msg = "unknown option"
            if accepted is not None:
                msg += f" (accepted: {', '.join(accepted)})"
        elif kind == "missing":
            msg = "required option is missing"
        else:
            msg = msg[0].lower() + msg[1:] if msg else msg
            if "input" in item:
                msg += f" (got {item['input']!r})"
        parts.append(f"{prefix}{loc}: {msg}")
    return "; ".join(parts)
