"""A rule's hyperparameters: a frozen dataclass with paper defaults and declared ranges.

Fields are declared with :func:`positive`, :func:`nonnegative`, :func:`at_least` or
:func:`in_range`, so ``validate`` can check every value; ``from_dict`` rejects unknown keys with
close-match suggestions. The Optuna search space lives next to the defaults, in ``suggest``.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any

from bpfree.errors import ConfigError, shorten, suggest
from bpfree.settings import coerce


def _range(
    low: float | None = None, high: float | None = None, *, low_open: bool = False
) -> dict[str, Any]:
    return {"low": low, "high": high, "low_open": low_open}


def positive(default: float) -> Any:
    """A dataclass field that must be > 0."""
    return dataclasses.field(default=default, metadata=_range(0.0, low_open=True))


def nonnegative(default: float) -> Any:
    """A dataclass field that must be >= 0."""
    return dataclasses.field(default=default, metadata=_range(0.0))


def at_least(default: int, low: int) -> Any:
    """A dataclass field that must be >= ``low``."""
    return dataclasses.field(default=default, metadata=_range(low))


def in_range(default: float, low: float, high: float, *, low_open: bool = False) -> Any:
    """A dataclass field that must lie in [low, high] (or (low, high])."""
    return dataclasses.field(default=default, metadata=_range(low, high, low_open=low_open))


@dataclass(frozen=True)
class Hparams:
    """Base for a rule's frozen hyperparameters. Subclasses add fields with paper defaults."""

    batch_size: int = at_least(128, 1)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any], rule: str = "") -> Hparams:
        """Build from overrides; unknown keys and invalid values raise ConfigError."""
        names = cls.field_names()
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for key, value in values.items():
            if key not in names:
                where = f" for rule {rule!r}" if rule else ""
                hint = suggest(key, names)
                raise ConfigError(
                    f"unknown setting {shorten(key)}{where}{hint}; valid: {', '.join(names)}"
                )
            kwargs[key] = coerce(key, value, hints[key])
        hp = cls(**kwargs)
        hp.validate()
        return hp

    def validate(self) -> None:
        """Check every field against its declared range; subclasses may add cross-field checks."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            low, high = f.metadata.get("low"), f.metadata.get("high")
            if isinstance(value, float) and not math.isfinite(value) and low is not None:
                raise ConfigError(f"{f.name} must be a finite number, got {value}")
            if low is not None and (value < low or (f.metadata.get("low_open") and value == low)):
                op = ">" if f.metadata.get("low_open") else ">="
                raise ConfigError(f"{f.name} must be {op} {low}, got {value}")
            if high is not None and value > high:
                raise ConfigError(f"{f.name} must be <= {high}, got {value}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def suggest(cls, trial: Any) -> Hparams:
        """Sample from the rule's search space (an ``optuna.Trial``). Overridden per rule."""
        raise NotImplementedError(f"{cls.__qualname__} defines no search space")
