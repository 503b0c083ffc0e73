"""The one result type every relatedness method returns.

Convention (all methods): ``matrix[i, j]`` is the effect of *source* task ``j`` on
*target* task ``i``; **positive means task j helps task i** (its training data lowers task
i's test loss, or the method's analogue of that). Rows are targets, columns sources.

``instance_scores[n, i]`` (optional) is the effect of training example ``instance_ids[n]``
= ``(task, row)`` on target task ``i``, with the same sign convention.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from taskrel.errors import RunDirError

FORMAT_VERSION = 1


@dataclass
class Relatedness:
    """A task x task relatedness matrix with optional instance-level scores.

    Attributes:
        matrix: ``(T, T)`` float array, rows = target tasks, columns = source tasks.
        task_names: the ``T`` task names, in matrix order.
        method: name of the method that produced it (e.g. ``mtif``, ``loto``).
        instance_scores: optional ``(N, T)`` scores of N training examples on each task.
        instance_ids: ``(N, 2)`` global ids ``(task, row)`` of those examples.
        meta: units, wall time (``wall_time_s``), options and anything else to record.
    """

    matrix: np.ndarray
    task_names: list[str]
    method: str
    instance_scores: np.ndarray | None = None
    instance_ids: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.matrix = np.asarray(self.matrix, dtype=np.float64)
        t = len(self.task_names)
        if self.matrix.shape != (t, t):
            raise ValueError(
                f"relatedness matrix has shape {self.matrix.shape}, "
                f"expected ({t}, {t}) for {t} task names"
            )
        if (self.instance_scores is None) != (self.instance_ids is None):
            raise ValueError("instance_scores and instance_ids go together")
        if self.instance_scores is not None and self.instance_ids is not None:
            self.instance_scores = np.asarray(self.instance_scores, dtype=np.float64)
            self.instance_ids = np.asarray(self.instance_ids, dtype=np.int64).reshape(-1, 2)
            if self.instance_scores.shape != (len(self.instance_ids), t):
                raise ValueError(
                    f"instance_scores has shape {self.instance_scores.shape}, "
                    f"expected ({len(self.instance_ids)}, {t})"
                )

    # -- views --------------------------------------------------------------------------
    def off_diagonal(self) -> np.ndarray:
        """Entries with ``i != j``, row-major, shape ``(T*(T-1),)``."""
        mask = ~np.eye(len(self.task_names), dtype=bool)
        return self.matrix[mask]

    def to_records(self) -> list[dict[str, Any]]:
        """One dict per (target, source) pair: ``{"target", "source", "value"}``."""
        return [
            {"target": a, "source": b, "value": float(self.matrix[i, j])}
            for i, a in enumerate(self.task_names)
            for j, b in enumerate(self.task_names)
        ]

    def to_markdown(self, digits: int = 3) -> str:
        """The matrix as a markdown table (rows = targets, columns = sources)."""
        head = "| target \\ source | " + " | ".join(self.task_names) + " |"
        sep = "|---" * (len(self.task_names) + 1) + "|"
        rows = [
            f"| {n} | " + " | ".join(f"{v:.{digits}g}" for v in row) + " |"
            for n, row in zip(self.task_names, self.matrix, strict=True)
        ]
        return "\n".join([head, sep, *rows])

    # -- persistence --------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``PATH.json`` (matrix, names, method, meta) and, with instance scores,
        ``PATH.npz``. Returns the JSON path."""
        base = Path(path)
        base = base.with_suffix("") if base.suffix in (".json", ".npz") else base
        base.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "task_names": list(self.task_names),
            "matrix": self.matrix.tolist(),
            "meta": _jsonable(self.meta),
            "instance_scores": None,
        }
        if self.instance_scores is not None and self.instance_ids is not None:
            npz = base.with_suffix(".npz")
            np.savez_compressed(
                npz, instance_scores=self.instance_scores, instance_ids=self.instance_ids
            )
            doc["instance_scores"] = npz.name
        out = base.with_suffix(".json")
        out.write_text(json.dumps(doc, indent=2))
        return out

    @classmethod
    def load(cls, path: str | Path) -> Relatedness:
        """Read a file written by :meth:`save` (``PATH.json`` or ``PATH``).

        Raises:
            RunDirError: missing or malformed file, or another format version.
        """
        p = Path(path)
        p = p if p.suffix == ".json" else p.with_suffix(".json")
        try:
            doc = json.loads(p.read_text())
        except FileNotFoundError:
            raise RunDirError(f"{p}: no such relatedness file") from None
        except (OSError, ValueError) as err:
            raise RunDirError(f"{p}: not a relatedness JSON file ({err})") from None
        version = doc.get("format_version") if isinstance(doc, dict) else None
        if version != FORMAT_VERSION:
            raise RunDirError(
                f"{p}: relatedness format version {version!r}, this taskrel "
                f"reads version {FORMAT_VERSION}"
            )
        scores = ids = None
        if doc.get("instance_scores"):
            with np.load(p.with_name(doc["instance_scores"])) as z:
                scores, ids = z["instance_scores"], z["instance_ids"]
        try:
            return cls(
                np.asarray(doc["matrix"]),
                list(doc["task_names"]),
                doc["method"],
                scores,
                ids,
                dict(doc.get("meta", {})),
            )
        except (KeyError, ValueError) as err:
            raise RunDirError(f"{p}: malformed relatedness file ({err})") from None

    # -- plotting -----------------------------------------------------------------------
    def plot(
        self, path: str | Path | None = None, title: str | None = None, annotate: bool | None = None
    ) -> Any:
        """Heatmap (diverging colours centred on 0): the off-diagonal on its own colour
        scale, the diagonal hatched (:func:`taskrel.plots.relatedness_heatmap`); values
        written in the cells (default when ``T <= 12``) in black or white, whichever
        contrasts. Saves a PNG when ``path`` is given; returns the matplotlib Figure."""
        from taskrel.plots import off_diagonal_limit, plt, relatedness_heatmap

        t = len(self.task_names)
        fig = relatedness_heatmap(
            self.matrix, self.task_names, title or f"{self.method}: R[i, j] > 0 means j helps i"
        )
        if annotate if annotate is not None else t <= 12:
            lim = off_diagonal_limit(np.asarray(self.matrix, dtype=np.float64))
            ax = fig.axes[0]
            for i in range(t):
                for j in range(t):
                    value = self.matrix[i, j]
                    if not np.isfinite(value):
                        continue
                    dark = i != j and abs(value) > 0.55 * lim  # the diagonal is light grey
                    ax.text(
                        j,
                        i,
                        f"{value:.2g}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if dark else "black",
                    )
        if path is not None:
            fig.savefig(path, dpi=110)
            plt.close(fig)
        return fig


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value
