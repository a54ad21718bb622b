"""Exceptions for mistakes a user can make.

Everything that is the user's fault (a bad name, a bad value, a missing or corrupt file) raises a
subclass of :class:`BpfreeError`. The command line turns these into a one-line message and exit
code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Iterable


class BpfreeError(Exception):
    """A problem the user can fix; the message says how."""

    exit_code = 2


class ConfigError(BpfreeError, ValueError):
    """An unknown name or an invalid value in a configuration."""


class DataError(BpfreeError):
    """A dataset that is missing, truncated or corrupt."""


def shorten(value: object, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters: a message never echoes a huge input."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 15] + f"... ({len(text)} chars)"


def one_line(message: str, longest: int = 300) -> str:
    """A message as one line, each word over ``longest`` characters cut: a safety net, so that
    no message echoes a huge input whole or spreads over lines."""
    words = message.split()
    return " ".join(w if len(w) <= longest else w[:60] + f"...({len(w)} chars)" for w in words)


def suggest(name: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean: a, b?)' for close matches of ``name`` (ignoring case), or ''."""
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    key = name.lower()
    if key in lowered:  # only the case differs
        return f" (did you mean: {lowered[key]}?)"
    close = [lowered[c] for c in difflib.get_close_matches(key, lowered, n=3, cutoff=0.5)]
    if not close:
        # Prefix matches help for names like "mlp" -> "mlp_2x1000".
        close = [c for c in choices if c.lower().startswith(key) or key.startswith(c.lower())]
        close = close[:3]
    return f" (did you mean: {', '.join(close)}?)" if close and name else ""


def unknown(kind: str, name: str, choices: Iterable[str]) -> ConfigError:
    """Build the standard 'unknown X' error naming the valid choices."""
    choices = sorted(choices)
    hint = suggest(name, choices)
    listing = ", ".join(choices) if len(choices) <= 12 else ", ".join(choices[:12]) + ", ..."
    return ConfigError(f"unknown {kind} {shorten(name)}{hint}; valid: {listing}")


def nonempty(text: str) -> str:
    """An argparse ``type`` for paths and names: an empty value is a mistake, never ``.``."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty; give a value")
    return text


def split_commas(text: str, what: str) -> list[str]:
    """``"a, b"`` -> ``["a", "b"]``; an empty item (``a,,b`` or a lone ``,``) is an error."""
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or any(not item for item in items):
        raise ConfigError(
            f"{what} has an empty item in {shorten(text)}; separate items by one comma"
        )
    return items
