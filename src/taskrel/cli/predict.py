"""``taskrel predict RUN_DIR SENTENCE``: tag a sentence with the intent and slots of a
trained SLU model (``slu``, ``slu-stack``, or ``feedback`` on either, trained on
ATIS/SNIPS or an SLU folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from taskrel.cli.application import app
from taskrel.cli.core import print_markdown


@app.command()
def predict(
    run_dir: Annotated[
        Path,
        typer.Argument(metavar="RUN_DIR", help="run folder of a finished SLU training run"),
    ],
    sentence: Annotated[
        str, typer.Argument(metavar="SENTENCE", help="the sentence (tokenised by whitespace)")
    ],
) -> None:
    """Print the intent and the slot tag of every word of SENTENCE."""
    from taskrel.models.slu import tag_sentence
    from taskrel.pipelines.experiment import load_model

    model, taskset, _ = load_model(run_dir)
    result = tag_sentence(model, taskset, sentence)
    typer.echo(f"intent: {result.intent}  (p = {result.intent_probability:.3f})\n")
    rows = [f"| {word} | {tag} |" for word, tag in zip(result.tokens, result.slots, strict=True)]
    print_markdown("\n".join(["| word | slot |", "|---|---|", *rows]))
