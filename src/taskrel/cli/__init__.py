"""The ``taskrel`` command line: a thin layer over the Python API.

The Typer application lives in :mod:`taskrel.cli.app`; each command group is its own
module that registers itself there when imported (:data:`COMMAND_MODULES`). Exit status:

- 0: success, or ``--resume`` of a run that is already complete (nothing changed);
- 2: bad input (:class:`taskrel.errors.TaskrelError`, a usage error, permission denied),
  printed on one line; a run folder the command created and filled with nothing but its
  records is removed again;
- 130: interrupted (Ctrl-C or SIGTERM), with one line naming the command and, where it
  accepts ``--resume``, the command line that continues it.
"""

from __future__ import annotations

import importlib
import shlex
import sys
from typing import TYPE_CHECKING, Any

from taskrel.signals import interrupt_signals

if TYPE_CHECKING:
    import typer

    from taskrel.cli.application import Session

COMMAND_MODULES = ("core", "relate", "mtif", "predict")


def load_app() -> typer.Typer:
    """The application with every command registered."""
    from taskrel.cli.application import app

    for name in COMMAND_MODULES:
        importlib.import_module(f"taskrel.cli.{name}")
    return app


def __getattr__(name: str) -> Any:
    if name == "app":
        return load_app()
    raise AttributeError(f"module 'taskrel.cli' has no attribute {name!r}")


def resume_command(argv: list[str], run_dir: object) -> str:
    """``argv`` as a ``taskrel`` command line that continues the run in ``run_dir``:
    any ``--out``/``--resume`` replaced by ``--out RUN_DIR --resume``."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--out":
            skip = True
        elif not (arg.startswith("--out=") or arg == "--resume"):
            kept.append(arg)
    return shlex.join(["taskrel", *kept, "--out", str(run_dir), "--resume"])


def interrupted_line(session: Session, argv: list[str], detail: str = "") -> str:
    """The one line printed after an interruption: what stopped, what was kept and how
    to continue."""
    what = f"taskrel {session.command}" if session.command else "taskrel"
    head = f"{what}: interrupted{f' {detail}' if detail else ''}"
    if session.run_dir is None:
        return f"{head} before writing anything; run the command again"
    if session.resumable:
        return (
            f"{head}; finished work is kept in {session.run_dir}; continue with: "
            + resume_command(argv, session.run_dir)
        )
    return f"{head}; partial results are in {session.run_dir}; run it again with a new --out"


def _training_interrupted(err: BaseException | None) -> bool:
    trainer = sys.modules.get("taskrel.training.trainer")
    return trainer is not None and isinstance(err, trainer.TrainingInterrupted)


def _given(err: Exception, args: list[str]) -> str:
    """`` (got VALUE)`` for a usage error about an option's value, from ``args``."""
    opts = getattr(getattr(err, "param", None), "opts", None) or []
    for i, arg in enumerate(args):
        for opt in opts:
            if arg == opt and i + 1 < len(args):
                return f" (got {args[i + 1]!r})"
            if arg.startswith(f"{opt}="):
                return f" (got {arg[len(opt) + 1 :]!r})"
    return ""


def _cleanup(session: Session) -> None:
    """Remove what a failed command created and never filled with results."""
    if session.created and session.run_dir is not None:
        from taskrel.runs import remove_if_unused

        remove_if_unused(session.run_dir, keep_dir=session.existed)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``taskrel`` script; returns the exit status."""
    import typer

    from taskrel.cli.application import SESSION
    from taskrel.errors import TaskrelError
    from taskrel.progress import shown
    from taskrel.runs import RunComplete

    args = list(sys.argv[1:] if argv is None else argv)
    SESSION.reset()
    detail = ""
    try:
        with interrupt_signals(), shown():  # progress: a bar on a terminal, else lines
            status = load_app()(args=args, prog_name="taskrel", standalone_mode=False)
    except (KeyboardInterrupt, typer.Abort) as err:  # Ctrl-C, SIGTERM (click: Abort)
        interrupt = err if _training_interrupted(err) else err.__cause__
        if SESSION.command == "train" and _training_interrupted(interrupt):
            # elsewhere the epoch is that of one retraining among many
            detail = f"after epoch {getattr(interrupt, 'epoch', '?')}"
        status = 130
    except RunComplete as done:
        print(f"taskrel: {done}", file=sys.stderr)
        return 0
    except TaskrelError as err:
        print(f"taskrel: error: {' '.join(str(err).split())}", file=sys.stderr)
        status = 2
    except typer.TyperException as err:  # usage: unknown option, bad value, missing argument
        where = getattr(getattr(err, "ctx", None), "command_path", "taskrel")
        message = " ".join(err.format_message().split()) + _given(err, args)
        print(f"taskrel: error: {message} (see '{where} --help')", file=sys.stderr)
        status = err.exit_code
    except PermissionError as err:
        print(f"taskrel: error: {err.filename or err}: permission denied", file=sys.stderr)
        status = 2
    except Exception as err:
        pydantic = sys.modules.get("pydantic")
        if pydantic is not None and isinstance(err, pydantic.ValidationError):
            from taskrel.errors import format_validation_error

            print(f"taskrel: error: {format_validation_error(err)}", file=sys.stderr)
            _cleanup(SESSION)
            return 2
        _cleanup(SESSION)
        raise
    status = 0 if status is None else int(status)
    if status == 130:
        print(interrupted_line(SESSION, args, detail), file=sys.stderr)
    elif status != 0:
        _cleanup(SESSION)
    return status


def run() -> None:  # pragma: no cover - console script
    try:
        status = main()
    except KeyboardInterrupt:  # while main() imports its helpers, or a second Ctrl-C
        print("taskrel: interrupted", file=sys.stderr)
        status = 130
    sys.exit(status)
