"""Atomic checkpoint files for interruptible training.

A checkpoint is a ``torch.save`` dict with a ``format`` field; it is written to a
temporary file and renamed, so a crash never leaves a half-written checkpoint."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from taskrel.errors import RunDirError

CHECKPOINT_FORMAT = 1


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` atomically to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({**state, "format": CHECKPOINT_FORMAT}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        RunDirError: the file is missing, unreadable, or of another format version.
    """
    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"{path}: no checkpoint to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise RunDirError(
            f"{path}: corrupt checkpoint ({type(err).__name__}); delete it to start over"
        ) from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise RunDirError(f"{path}: checkpoint format {found!r}, expected {CHECKPOINT_FORMAT}")
    return state
