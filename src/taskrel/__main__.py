"""``python -m taskrel`` runs the command line."""

from taskrel.cli import run

run()
