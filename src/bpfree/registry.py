"""A small generic registry: lowercase names that are also CLI and result names."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from bpfree.errors import ConfigError, unknown

T = TypeVar("T")

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Pattern(Generic[T]):
    """A family of names (e.g. ``mlp_<depth>x<width>``) resolved to entries on demand."""

    regex: re.Pattern[str]
    resolve: Callable[[re.Match[str]], T]
    display: str  # how the pattern is listed
    examples: tuple[str, ...] = ()


class Registry(Generic[T]):
    """Maps names to entries. Duplicate names are an error; unknown names suggest close ones.

    A registry may also hold *patterns*: a resolver that turns a matching name into an entry,
    listed under a display name with examples.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._patterns: list[Pattern[T]] = []

    def register(self, name: str, entry: T) -> T:
        if not _NAME.match(name):
            raise ValueError(f"{self.kind} name {name!r} must be lowercase letters, digits, '_'")
        if name in self._entries:
            raise ValueError(f"duplicate {self.kind} name {name!r}")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> T:
        """Remove ``name`` (for a rule registered only for a while, e.g. in a test)."""
        return self._entries.pop(name)

    def register_pattern(
        self,
        pattern: str,
        resolve: Callable[[re.Match[str]], T],
        display: str,
        examples: tuple[str, ...] = (),
    ) -> None:
        self._patterns.append(Pattern(re.compile(pattern), resolve, display, examples))

    def get(self, name: str) -> T:
        if name in self._entries:
            return self._entries[name]
        for pattern in self._patterns:
            match = pattern.regex.fullmatch(name)
            if match:
                return pattern.resolve(match)
        raise unknown(self.kind, name, self.names(include_patterns=True))

    def __contains__(self, name: str) -> bool:
        try:
            self.get(name)
        except ConfigError:
            return False
        return True

    def names(self, include_patterns: bool = False) -> list[str]:
        names = list(self._entries)
        if include_patterns:
            names += [p.display for p in self._patterns]
        return names

    def patterns(self) -> list[Pattern[T]]:
        return list(self._patterns)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(list(self._entries.items()))
