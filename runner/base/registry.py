"""A registry of named kinds, one per extension point (axis kinds, model sources, output formats,
comparison metrics), filled by the built-ins and by plugins through the plugin manager.

Two providers registering one name is a collision: refused, naming both. Light module.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Collision(ValueError):
    """A name registered twice; says which providers."""


class Registry(Generic[T]):
    """Kinds by name, with the plugin that provided each."""

    def __init__(self, what: str) -> None:
        self.what = what  # "axis kind", "model source", ...: for messages
        self._kinds: dict[str, T] = {}
        self.providers: dict[str, str] = {}

    def register(self, name: str, kind: T, provider: str) -> None:
        if name in self._kinds and self.providers[name] != provider:
            raise Collision(f"{self.what} {name!r} is provided by both {self.providers[name]!r} and {provider!r}")
        self._kinds[name] = kind
        self.providers[name] = provider

    def reset(self) -> None:
        """Back to the built-in kinds (a subclass registers them; none here)."""
        self.clear()

    def clear(self) -> None:
        self._kinds.clear()
        self.providers.clear()

    def drop_provider(self, provider: str) -> None:
        """Forget every kind ``provider`` registered (a plugin that failed to load)."""
        for name in [n for n, p in self.providers.items() if p == provider]:
            del self._kinds[name], self.providers[name]

    def get(self, name: str) -> T | None:
        return self._kinds.get(name)

    def require(self, name: str) -> T:
        """The kind registered as ``name``; KeyError naming what is registered when none is."""
        if name not in self._kinds:
            raise KeyError(f"no {self.what} {name!r}; registered: {', '.join(self._kinds) or 'none'}")
        return self._kinds[name]

    def names(self) -> list[str]:
        return list(self._kinds)

    def values(self) -> list[T]:
        return list(self._kinds.values())

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(list(self._kinds.items()))

    def __contains__(self, name: object) -> bool:
        return name in self._kinds
