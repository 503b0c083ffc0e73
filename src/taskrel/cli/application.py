"""The Typer application and what the running command has done so far.

Kept free of heavy imports: ``taskrel --help`` and ``taskrel --version`` load only this
module and the command modules, which import torch and friends inside their commands.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="taskrel",
    help="Measure and exploit task relatedness in multi-task learning.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


@dataclass
class Session:
    """The running command and its run folder, for the line printed on interruption.

    Attributes:
        command: the sub-command's name (None before one started).
        run_dir: its run folder, once created or reopened.
        created: whether this invocation made ``run_dir`` a new run (a failed command
            removes what it created there if that holds no results).
        existed: whether ``run_dir`` existed (empty) before, so it is kept.
        resumable: whether the command accepts ``--resume``.
    """

    command: str | None = None
    run_dir: Path | None = None
    created: bool = False
    existed: bool = False
    resumable: bool = False

    def reset(self) -> None:
        """Forget the previous command (the CLI can run several in one process)."""
        for f in fields(self):
            setattr(self, f.name, f.default)

    def opened(self, run_dir: Path, created: bool, existed: bool, resumable: bool) -> None:
        """Record the run folder the command writes into."""
        self.run_dir, self.created, self.existed = run_dir, created, existed
        self.resumable = resumable


SESSION = Session()


def _print_version(value: bool) -> None:
    if value:
        from taskrel import __version__

        typer.echo(f"taskrel {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    SESSION.command = ctx.invoked_subcommand
