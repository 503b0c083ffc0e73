"""``taskrel predict RUN_DIR SENTENCE``: tag a sentence with the intent and slots of a
trained SLU model (``slu`` or ``feedback`` on ATIS/SNIPS or an SLU folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from taskrel.cli import app

console = Console()


@app.command()
def predict(
    run_dir: Annotated[Path, typer.Argument(help="run folder of a finished SLU training run")],
    sentence: Annotated[str, typer.Argument(help="the sentence (tokenised by whitespace)")],
) -> None:
    """Print the intent and the slot tag of every word of SENTENCE."""
    from taskrel.experiment import load_model
    from taskrel.models.slu import tag_sentence

    model, taskset, _ = load_model(run_dir)
    result = tag_sentence(model, taskset, sentence)
    console.print(f"intent: {result.intent}  (p = {result.intent_probability:.3f})")
    table = Table()
    table.add_column("word")
    table.add_column("slot")
    for word, tag in zip(result.tokens, result.slots, strict=True):
        table.add_row(word, tag)
    console.print(table)
