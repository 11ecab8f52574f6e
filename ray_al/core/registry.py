"""Name -> implementation maps with one helpful error (pure: no Ray, no torch).

SSL methods, backbones and acquisition strategies each keep one `Registry`; the config checks call
`registry.get(name)` and get an error naming the config key and every valid name.
"""
from __future__ import annotations

from typing import Generic, Iterator, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError, ValueError):
    """A name that is not registered: a KeyError for mapping code, a ValueError (user error) for callers."""

    def __str__(self) -> str:  # KeyError would repr-quote the message
        return str(self.args[0])


class Registry(Generic[T]):
    """An ordered name -> implementation map. `kind` and `key` only word the error message:
    Registry("SSL method", "train.method") -> "unknown SSL method 'x'; valid: ... Set train.method to one of them."
    `extra` names values the key also takes that are not registered (e.g. 'none')."""

    def __init__(self, kind: str, key: str, extra: tuple[str, ...] = ()):
        self.kind, self.key, self.extra = kind, key, tuple(extra)
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._items[name] = item
        return item

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            valid = ", ".join([*self.extra, *sorted(self._items)])
            raise UnknownNameError(f"unknown {self.kind} {name!r}; valid: {valid}. "
                                   f"Set {self.key} to one of them.") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def items(self):
        return self._items.items()

    def values(self):
        return self._items.values()

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
