"""timm-style registries: ``register``, ``create``, ``names``, with a clear error on unknown names."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from dlhw.core.errors import UsageError, suggest

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of factories; ``kind`` names the entries in error messages ("backbone", ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str | None = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator that registers a factory under ``name`` (default: its ``__name__``)."""

        def wrap(fn: Callable[..., T]) -> Callable[..., T]:
            key = name or fn.__name__
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._entries[key] = fn
            return fn

        return wrap

    def get(self, name: str) -> Callable[..., T]:
        """The factory registered as ``name``; unknown names raise UsageError with close matches."""
        try:
            return self._entries[name]
        except KeyError:
            raise UsageError(f"unknown {self.kind} {name!r}{suggest(name, self._entries)}; "
                             f"choose one of: {', '.join(sorted(self._entries))}") from None

    def create(self, name: str, /, *args: Any, **kwargs: Any) -> T:
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
