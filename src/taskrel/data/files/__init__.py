"""Data files bundled with taskrel (provenance in ``ATTRIBUTION.md``) and helpers to open them.

Files are located with :mod:`importlib.resources`, so the loaders work from an installed
package as well as from a source checkout.
"""

from __future__ import annotations

from importlib.resources import files
from typing import TYPE_CHECKING, Any

import scipy.io

from taskrel.errors import DataError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable


def bundled(*parts: str) -> Traversable:
    """The bundled file or folder ``files/<parts...>``.

    Raises:
        DataError: it is not part of the installed package.
    """
    resource = files("taskrel.data") / "files"
    for part in parts:
        resource = resource / part
    if not (resource.is_file() or resource.is_dir()):
        raise DataError(
            f"bundled data file files/{'/'.join(parts)} is missing from the "
            "taskrel installation (reinstall the package)"
        )
    return resource


def load_mat(*parts: str) -> dict[str, Any]:
    """The variables of the bundled MATLAB file ``files/<parts...>`` (``scipy.io.loadmat``)."""
    with bundled(*parts).open("rb") as f:
        return scipy.io.loadmat(f)
