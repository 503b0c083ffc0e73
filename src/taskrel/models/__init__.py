"""Multi-task models behind one interface (:class:`MTLModel`) and their registry.

``build_model(name, taskset, config)`` builds a registered model; ``MODELS`` maps each
name to ``"module:Class"`` so optional models are imported only when used.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from taskrel.data.taskset import TaskSet
from taskrel.errors import ConfigError, format_validation_error
from taskrel.models.base import Batch, ModelConfig, MTLModel, TaskSpec, per_example_loss
from taskrel.registry import MODELS


def model_class(name: str) -> type[MTLModel]:
    """The class registered as ``name``."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; available models: {', '.join(MODELS)}")
    module, cls = MODELS[name].split(":")
    model: type[MTLModel] = getattr(importlib.import_module(module), cls)
    return model


def build_model(
    name: str, taskset: TaskSet, config: ModelConfig | Mapping[str, Any] | None = None
) -> MTLModel:
    """Build model ``name`` for ``taskset``; ``config`` is validated by the model's
    ``Config`` class (unknown keys and wrong types raise :class:`ConfigError`)."""
    cls = model_class(name)
    try:
        return cls.from_taskset(taskset, config)
    except ValueError as err:
        if isinstance(err, ConfigError):
            raise
        detail = format_validation_error(err, accepted=cls.Config.model_fields)
        raise ConfigError(f"model {name!r}: invalid config: {detail}") from None


__all__ = [
    "MODELS",
    "Batch",
    "MTLModel",
    "ModelConfig",
    "TaskSpec",
    "build_model",
    "model_class",
    "per_example_loss",
]
