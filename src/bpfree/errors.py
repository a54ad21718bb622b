"""Exceptions for mistakes a user can make.

Everything that is the user's fault (a bad name, a bad value, a missing or corrupt file) raises a
subclass of :class:`BpfreeError`. The command line turns these into a one-line message and exit
code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class BpfreeError(Exception):
    """A problem the user can fix; the message says how."""

    exit_code = 2


class ConfigError(BpfreeError, ValueError):
    """An unknown name or an invalid value in a configuration."""


class DataError(BpfreeError):
    """A dataset that is missing, truncated or corrupt."""


def suggest(name: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean: a, b?)' for close matches of ``name``, or ''."""
    choices = list(choices)
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    if not close:
        # Prefix matches help for names like "mlp" -> "mlp_2x1000".
        close = [c for c in choices if c.startswith(name) or name.startswith(c)][:3]
    return f" (did you mean: {', '.join(close)}?)" if close else ""


def unknown(kind: str, name: str, choices: Iterable[str]) -> ConfigError:
    """Build the standard 'unknown X' error naming the valid choices."""
    choices = sorted(choices)
    hint = suggest(name, choices)
    listing = ", ".join(choices) if len(choices) <= 12 else ", ".join(choices[:12]) + ", ..."
    return ConfigError(f"unknown {kind} {name!r}{hint}; valid: {listing}")
