"""Typed run configuration: data, model and training options, read from a TOML or JSON
file and overridden from the command line with ``section.key=value``.

Example (``examples/run.toml``)::

    seed = 0
    [data]
    name = "office-caltech"
    options = { train = 0.1 }
    [model]
    name = "hard"
    hidden = [64]
    [train]
    epochs = 200
    lr = 0.01
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from taskrel.errors import ConfigError, format_validation_error
from taskrel.training.trainer import TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field("synthetic", description="built-in dataset name or a file path")
    options: dict[str, Any] = Field(default_factory=dict, description="loader options")
    standardize: Literal["task", "pooled", "none"] = "task"


class RunConfig(BaseModel):
    """A whole run: ``data``, ``model`` (``name`` + that model's options), ``train``."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    model: dict[str, Any] = Field(default_factory=lambda: {"name": "hard"})
    train: TrainConfig = Field(default_factory=TrainConfig)

    @property
    def model_name(self) -> str:
        return str(self.model.get("name", "hard"))

    @property
    def model_options(self) -> dict[str, Any]:
        return {k: v for k, v in self.model.items() if k != "name"}


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def apply_overrides(doc: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as JSON, else kept as strings)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. train.lr=0.01")
        key, value = item.split("=", 1)
        node = doc
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a section")
        node[parts[-1]] = _parse_value(value)
    return doc


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a ``.toml`` or ``.json`` config file into a dict."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    if p.suffix not in (".toml", ".json"):
        raise ConfigError(f"{p}: config files must be .toml or .json")
    try:
        text = p.read_text()
        doc = tomllib.loads(text) if p.suffix == ".toml" else json.loads(text)
    except (ValueError, UnicodeDecodeError) as err:
        raise ConfigError(f"{p}: not valid {p.suffix[1:].upper()} ({err})") from None
    if not isinstance(doc, dict):
        raise ConfigError(
            f"{p}: the top level must be an object of sections (seed, data, model, train), "
            f"got a {type(doc).__name__}"
        )
    return doc


def load_run_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
) -> RunConfig:
    """Build a validated :class:`RunConfig` from an optional file plus overrides.

    Raises:
        ConfigError: unreadable file, unknown key or wrong type (the message names the
            field, e.g. ``train.lr``).
    """
    doc = read_config_file(path) if path is not None else {}
    doc = apply_overrides(doc, overrides or [])
    return validate(RunConfig, doc, str(path) if path else "config")


def validate(cls: type[BaseModel], doc: dict[str, Any], source: str) -> Any:
    """``cls(**doc)`` with pydantic errors turned into a one-line :class:`ConfigError`
    naming every invalid field (e.g. ``config: train.lr: input should be greater than 0
    (got -1)``)."""
    try:
        return cls.model_validate(doc)
    except ValidationError as err:
        raise ConfigError(f"{source}: {format_validation_error(err)}") from None
