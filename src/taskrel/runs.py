"""Run folders: every run writes into a new folder holding its config, the versions it
ran with and its results. Nothing is overwritten silently.

Deterministic outputs (metrics, matrices) are kept apart from non-deterministic ones
(``timings.json``, ``environment.json``) so two runs of the same command give
byte-identical result files on CPU.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from taskrel.errors import RunDirError

TRACKED_PACKAGES = (
    "taskrel",
    "torch",
    "numpy",
    "scipy",
    "scikit-learn",
    "matplotlib",
    "pydantic",
    "typer",
    "seqeval",
    "ray",
    "dattri",
)


RECORD_FILES = ("config.json", "environment.json")


class RunComplete(Exception):
    """``--resume`` named a run folder whose results are all written: nothing to do."""


def check_run_dir(out: str | Path | None, resume: bool = False) -> None:
    """Check, without creating anything, that ``out`` can hold a new run (or, with
    ``resume``, that it is a folder to continue).

    Raises:
        RunDirError: ``out`` already holds results and ``resume`` is not set, or
            ``resume`` is set and ``out`` does not exist.
    """
    if out is None:
        return
    path = Path(out)
    if resume:
        if not path.is_dir():
            raise RunDirError(f"{path}: no run folder to resume")
    elif path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise RunDirError(
            f"{path}: already holds results; choose a new --out folder "
            "or pass --resume to continue that run"
        )


def new_run_dir(
    out: str | Path | None = None,
    kind: str = "run",
    root: str | Path = "runs",
    resume: bool = False,
) -> Path:
    """Create (or, with ``resume``, reopen) a run folder.

    ``out`` names the folder; it must not hold files unless ``resume`` is set. Without
    ``out`` a fresh ``ROOT/KIND-YYYYmmdd-HHMMSS[-N]`` folder is made.

    Raises:
        RunDirError: see :func:`check_run_dir`; also when the folder cannot be created or
            written (e.g. permission denied), naming the path.
    """
    check_run_dir(out, resume)
    if out is not None:
        path = Path(out)
        if resume:
            return path
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = Path(root) / f"{kind}-{stamp}"
        path, n = base, 1
        while path.exists():
            n += 1
            path = Path(f"{base}-{n}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK):
            raise PermissionError(13, "Permission denied", str(path))
    except OSError as err:
        raise RunDirError(
            f"{path}: cannot create the run folder ({err.strerror or err}); choose another --out"
        ) from None
    return path


def check_not_complete(run_dir: str | Path, result: str) -> None:
    """Before resuming: stop if ``run_dir/result`` (the file a command writes last)
    exists, so a finished run is left exactly as it is.

    Raises:
        RunComplete: the run is finished.
    """
    if (Path(run_dir) / result).exists():
        raise RunComplete(
            f"{run_dir}: this run is complete ({result} is written); nothing to resume, "
            "nothing changed"
        )


def remove_if_unused(run_dir: str | Path, keep_dir: bool = False) -> bool:
    """After a failed command: delete ``run_dir`` if it holds nothing but its records
    (:data:`RECORD_FILES`) and empty folders. ``keep_dir`` keeps the (then empty)
    folder itself, for a folder that existed before the command. Returns whether the
    records were removed."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return False
    entries = sorted(run_dir.rglob("*"), key=lambda p: len(p.parts), reverse=True)
    if any(p.is_file() and p.relative_to(run_dir).as_posix() not in RECORD_FILES for p in entries):
        return False
    for p in entries:  # deepest first: files, then their emptied folders
        p.unlink() if p.is_file() else p.rmdir()
    if not keep_dir:
        run_dir.rmdir()
    return True


def git_revision() -> str | None:
    """The git commit of the taskrel source tree, if it is a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment_info() -> dict[str, Any]:
    """Versions of Python, the platform and the libraries taskrel uses."""
    versions: dict[str, str | None] = {}
    for pkg in TRACKED_PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    import torch

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "packages": versions,
        "git_revision": git_revision(),
        "command": sys.argv,
    }


def write_json(path: str | Path, obj: Any, overwrite: bool = False) -> Path:
    """Write ``obj`` as indented JSON; refuses to replace an existing file unless
    ``overwrite``."""
    from taskrel.relatedness.result import _jsonable

    path = Path(path)
    if path.exists() and not overwrite:
        raise RunDirError(f"{path}: exists already; refusing to overwrite it")
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        tmp.write_text(json.dumps(_jsonable(obj), indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
    except OSError as err:
        raise RunDirError(f"{path}: cannot write ({err.strerror or err})") from None
    return path


def read_run_record(run_dir: str | Path) -> dict[str, Any]:
    """The ``config.json`` a run folder was started with ({} when it has none)."""
    path = Path(run_dir) / "config.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def record_run(run_dir: str | Path, config: dict[str, Any]) -> None:
    """Write ``config.json`` and ``environment.json`` into ``run_dir``."""
    run_dir = Path(run_dir)
    write_json(run_dir / "config.json", config, overwrite=True)
    write_json(run_dir / "environment.json", environment_info(), overwrite=True)
