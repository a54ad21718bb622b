"""Typed settings from text: parse a ``--set`` value, coerce a value to a field's type.

Shared by the run configuration, rule hyperparameters and tuning budgets, so every setting is
checked the same way: an unknown name or a value of the wrong type is an error, never a
silent default.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal

from bpfree.errors import ConfigError, shorten, suggest


def parse_value(text: str) -> Any:
    """Parse a ``--set`` value: int, float, true/false, else the string itself."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip()


def coerce(key: str, value: Any, hint: Any) -> Any:
    """``value`` as the type ``hint`` of setting ``key``; ConfigError when it is not one."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(
                f"{key} must be one of {', '.join(map(repr, allowed))}, got {shorten(value)}"
                + suggest(str(value)[:100], map(str, allowed))
            )
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            return None
        return coerce(key, value, args[0])
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {shorten(value)}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key} must be an integer, got {shorten(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {shorten(value)}")
        return float(value)
    if hint is str:
        return str(value)
    return value
