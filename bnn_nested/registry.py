"""One registry style for every concept a config names by string: models, width samplers,
regularizers, data sets and OOD scores.

A :class:`Registry` maps names to objects (builders, classes, functions). Looking up an unknown
name raises :class:`UnknownName`, a one-line ``ValueError`` naming the config field and the
accepted names. User code adds entries with :meth:`Registry.register` (a decorator); configs reach
them after importing the module that registers them (the config's top-level ``imports`` list).

Example:
    >>> SHAPES = Registry("shape", field="model.shape")
    >>> @SHAPES.register("square")
    ... def square(n):
    ...     return n * n
    >>> SHAPES["square"](3)
    9
    >>> try:
    ...     SHAPES["circle"]
    ... except ValueError as err:
    ...     print(err)
    model.shape: unknown shape 'circle'; accepted: square
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")

__all__ = ["Registry", "UnknownName"]


class UnknownName(ValueError, KeyError):
    """A name no entry of the registry has (a ``ValueError`` with a one-line message; also a
    ``KeyError``, as a mapping lookup raises)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Registry(Mapping[str, T], Generic[T]):
    """Names of one concept. ``concept`` reads in messages ("unknown model 'x'"), ``field`` is the
    config key that names an entry ("model.name")."""

    def __init__(self, concept: str, field: str) -> None:
        self.concept = concept
        self.field = field
        self._entries: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None, *, replace: bool = False):
        """Add ``obj`` under ``name``; without ``obj``, a decorator. Re-registering a name raises
        unless ``replace``."""

        def add(o: T) -> T:
            if not isinstance(name, str) or not name:
                raise ValueError(f"{self.concept} names are non-empty strings, got {name!r}")
            if name in self._entries and not replace:
                raise ValueError(f"{self.concept} {name!r} is already registered")
            self._entries[name] = o
            return o

        if obj is not None:
            return add(obj)
        return add

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise UnknownName(
                f"{self.field}: unknown {self.concept} {str(name)[:80]!r}; accepted: "
                f"{', '.join(self.names())}"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.concept!r}, {self.names()})"


#: Signature of a builder kept in a registry (for type checkers).
Builder = Callable[..., object]
