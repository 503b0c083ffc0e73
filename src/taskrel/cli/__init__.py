"""The ``taskrel`` command line: a thin layer over the Python API.

Each command group lives in its own module and registers itself on :data:`app`.
User errors (:class:`taskrel.errors.TaskrelError`) are printed on one line and exit with
status 2; an interrupted run exits with status 130 after saving its checkpoint.
"""

from __future__ import annotations

import sys

import typer
from typer.exceptions import TyperException

app = typer.Typer(
    name="taskrel",
    help="Measure and exploit task relatedness in multi-task learning.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Command modules register themselves on `app` when imported.
from taskrel.cli import core, mtif, predict, relate  # noqa: E402,F401


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``taskrel`` script; returns the exit status."""
    from taskrel.errors import TaskrelError
    from taskrel.training.trainer import TrainingInterrupted

    try:
        app(args=argv, standalone_mode=False)
    except TaskrelError as err:
        print(f"taskrel: error: {err}", file=sys.stderr)
        return 2
    except TrainingInterrupted as err:
        print(f"taskrel: {err}; continue with the same command and --resume", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("taskrel: interrupted", file=sys.stderr)
        return 130
    except TyperException as err:  # usage errors: unknown option, bad value, missing argument
        show = getattr(err, "show", None)
        if callable(show):
            show()
        else:  # pragma: no cover - every usage error of typer's parser has show()
            print(f"taskrel: error: {err.format_message()}", file=sys.stderr)
        return err.exit_code
    except typer.Exit as err:
        return int(err.exit_code)
    except typer.Abort:
        print("taskrel: aborted", file=sys.stderr)
        return 130
    return 0


def run() -> None:  # pragma: no cover - console script
    sys.exit(main())
