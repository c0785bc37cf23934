"""Choices selected by name (packers, replacement policies, dedup methods), with old names kept.

Each choice is named by its technique. "weightdb" once named the default of all three, so
configs, scripts and command lines that say so must keep working: a ``Registry`` finds an entry
by its name or by an alias, while listing it (iteration, ``len``, help text) shows each entry
once, by name, so comparisons that run every choice run each once.
"""

from collections.abc import Iterator, Mapping
from typing import TypeVar

T = TypeVar("T")


class Registry(Mapping[str, T]):
    """Name -> entry; ``name in registry`` and ``registry[name]`` also accept an alias."""

    def __init__(self, entries: Mapping[str, T], aliases: Mapping[str, str]) -> None:
        unknown = set(aliases.values()) - set(entries)
        if unknown:
            raise ValueError(f"aliases of unknown entries: {', '.join(sorted(unknown))}")
        self._entries = dict(entries)
        self._aliases = dict(aliases)

    def canonical(self, name: str) -> str:
        """The name ``name`` stands for (itself unless it is an alias)."""
        return self._aliases.get(name, name)

    @property
    def aliases(self) -> tuple[str, ...]:
        """The alias names (the command line accepts them too)."""
        return tuple(self._aliases)

    def extended(self, entries: Mapping[str, T]) -> "Registry[T]":
        """This registry with more entries, under the same aliases."""
        return Registry({**self._entries, **entries}, self._aliases)

    def __getitem__(self, name: str) -> T:
        return self._entries[self.canonical(name)]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({list(self._entries)}, aliases={self._aliases})"
