"""A small generic registry: lowercase names that are also CLI and result names."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from bpfree.errors import ConfigError, unknown

T = TypeVar("T")

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class Registry(Generic[T]):
    """Maps names to entries. Duplicate names are an error; unknown names suggest close ones.

    A registry may also hold *patterns* (e.g. ``mlp_<depth>x<width>``): a resolver that turns a
    matching name into an entry, listed under an example name.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._patterns: list[tuple[re.Pattern[str], Callable[[re.Match[str]], T], str]] = []

    def register(self, name: str, entry: T) -> T:
        if not _NAME.match(name):
            raise ValueError(f"{self.kind} name {name!r} must be lowercase letters, digits, '_'")
        if name in self._entries:
            raise ValueError(f"duplicate {self.kind} name {name!r}")
        self._entries[name] = entry
        return entry

    def register_pattern(
        self, pattern: str, resolve: Callable[[re.Match[str]], T], display: str
    ) -> None:
        self._patterns.append((re.compile(pattern), resolve, display))

    def get(self, name: str) -> T:
        if name in self._entries:
            return self._entries[name]
        for pattern, resolve, _ in self._patterns:
            match = pattern.fullmatch(name)
            if match:
                return resolve(match)
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
            names += [display for _, _, display in self._patterns]
        return names

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(self._entries.items())
