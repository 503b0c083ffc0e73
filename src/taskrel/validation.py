"""Validation of keyword options at the public entry points (``load``, ``relate``), the way
scikit-learn validates parameters at the boundary: option names against the signature of
the function they go to, values against its type hints, before any work is done.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Collection, Mapping
from typing import Any

import numpy as np

from taskrel.errors import ConfigError


def accepted_options(fn: Callable[..., Any], skip: Collection[str] = ()) -> list[str]:
    """Keyword options ``fn`` takes, in signature order, without ``skip`` and ``*args``;
    then those of ``fn.forwards_to``, if ``fn`` declares that its ``**kwargs`` go there."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    names = [
        name
        for name, p in inspect.signature(fn).parameters.items()
        if p.kind in kinds and name not in skip
    ]
    target = getattr(fn, "forwards_to", None)
    if target is not None:
        names += [n for n in accepted_options(target, skip) if n not in names]
    return names


def check_options(
    where: str,
    fn: Callable[..., Any],
    options: Mapping[str, Any],
    skip: Collection[str] = (),
) -> None:
    """Check that ``options`` are keyword options of ``fn`` with values of the hinted types
    (a function with ``**kwargs`` takes any name and checks those itself, unless it names
    the function they go to as its ``forwards_to`` attribute: then that one's options count).

    A value passes if it matches its type hint strictly (numbers are not parsed from
    strings, booleans are not numbers), or loosely when it is a NumPy scalar
    (``np.int64(3)`` for an ``int``). Hints pydantic cannot check (arbitrary classes) are
    skipped; so are ``Sequence`` hints (the functions accept a lone string there).

    Args:
        where: the call, for the message (e.g. ``"load('synthetic')"``).
        fn: the function the options go to.
        options: the keyword options.
        skip: parameters the caller sets itself (not options for the user).

    Raises:
        ConfigError: an unknown option (the accepted ones are listed) or a value of the
            wrong type (the expected type is named).
    """
    accepted = accepted_options(fn, skip)
    target = getattr(fn, "forwards_to", None)  # where fn's **kwargs go: checked as its own
    open_ended = target is None and any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(fn).parameters.values()
    )
    for name in options:
        if name not in accepted and not open_ended:
            raise ConfigError(
                f"{where}: unknown option {name!r}; accepted options: "
                f"{', '.join(accepted) or 'none'}"
            )
    try:
        hints = {**(typing.get_type_hints(target) if target else {}), **typing.get_type_hints(fn)}
    except (NameError, TypeError):  # unresolvable hints: names are checked, values not
        return
    for name, value in options.items():
        hint = hints.get(name) if name in accepted else None
        if hint is None or "Sequence" in str(hint) or _matches(hint, value):
            continue
        raise ConfigError(f"{where}: option {name}={value!r} must be {describe_type(hint)}")


def describe_type(hint: Any) -> str:
    """A type hint in words: ``float | int`` -> ``a float or an int``,
    ``Literal['a', 'b']`` -> ``'a' or 'b'``."""
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return " or ".join(repr(v) for v in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "None"
    if isinstance(hint, type):
        article = "an" if hint.__name__[0] in "aeiou" else "a"
        return f"{article} {hint.__name__}"
    return str(hint)


def _matches(hint: Any, value: Any) -> bool:
    from pydantic import TypeAdapter, ValidationError
    from pydantic.errors import PydanticSchemaGenerationError

    try:
        adapter = TypeAdapter(hint)
    except (PydanticSchemaGenerationError, TypeError):
        return True  # not checkable here; the function checks it
    try:
        adapter.validate_python(value, strict=True)
        return True
    except ValidationError:
        pass
    if not isinstance(value, np.generic):
        return False
    try:
        adapter.validate_python(value)
        return True
    except ValidationError:
        return False
