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
from taskrel.relatedness.result import _jsonable

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
        RunDirError: ``out`` already holds results and ``resume`` is not set, or
            ``resume`` is set and ``out`` does not exist.
    """
    if out is not None:
        path = Path(out)
        if resume:
            if not path.is_dir():
                raise RunDirError(f"{path}: no run folder to resume")
            return path
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise RunDirError(
                f"{path}: already holds results; choose a new --out folder "
                "or pass --resume to continue that run"
            )
        path.mkdir(parents=True, exist_ok=True)
        return path
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{kind}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = Path(f"{base}-{n}")
    path.mkdir(parents=True)
    return path


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
    path = Path(path)
    if path.exists() and not overwrite:
        raise RunDirError(f"{path}: exists already; refusing to overwrite it")
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_jsonable(obj), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def record_run(run_dir: str | Path, config: dict[str, Any]) -> None:
    """Write ``config.json`` and ``environment.json`` into ``run_dir``."""
    run_dir = Path(run_dir)
    write_json(run_dir / "config.json", config, overwrite=True)
    write_json(run_dir / "environment.json", environment_info(), overwrite=True)
