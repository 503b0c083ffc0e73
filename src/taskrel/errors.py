"""Errors that taskrel reports to users.

Every error raised because of *user input* (a file, a config field, a dataset or method
name) is a :class:`TaskrelError`. Its message names the offending input and what was
expected, so the CLI can print it on one line without a traceback.
"""

from __future__ import annotations


class TaskrelError(ValueError):
    """Bad user input: the message names the input and what was expected."""


class DataError(TaskrelError):
    """A data file or array is missing, malformed or inconsistent."""


class ConfigError(TaskrelError):
    """A configuration file or option is invalid."""


class RunDirError(TaskrelError):
    """A run folder or checkpoint cannot be used (exists already, corrupt, incompatible)."""
