"""A bounded memo keyed by the identity of the objects a value is computed from.

Units derive the same values over and over from objects that never change in place:
configuration read from a file (frozen models, replaced by new objects when a file is
reloaded) and stored deal values on the in-memory bus (read-only snapshots). Comparing such
objects by value costs as much as recomputing; their identity says enough. An entry keeps its
objects alive, so their ids cannot pass to other objects while it is held; every new object
adds an entry, hence the bound (the oldest entry goes first).

Only for objects that cannot change: a value computed from a mutable object would go stale.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")


def _key(objects: tuple[object, ...]) -> int | tuple[int, ...]:
    # One object (the common case): its id; a tuple of ids costs more to build.
    return id(objects[0]) if len(objects) == 1 else tuple(map(id, objects))


class IdentityMemo(Generic[V]):
    """`compute(*objects)`, remembered per identity of `objects`, for at most `kept` of them.

    Asked with `get` (a method call is cheaper than calling the instance)."""

    def __init__(self, compute: Callable[..., V], kept: int = 256) -> None:
        if kept < 1:
            raise ValueError(f"kept = {kept} (must be >= 1)")
        self.compute = compute
        self.kept = kept
        self._entries: dict[int | tuple[int, ...], tuple[tuple[object, ...], V]] = {}

    def get(self, *objects: object) -> V:
        key = _key(objects)
        entry = self._entries.get(key)
        if entry is not None:
            return entry[1]
        value = self.compute(*objects)
        entries = self._entries
        if len(entries) >= self.kept:
            del entries[next(iter(entries))]
        entries[key] = (objects, value)
        return value

    def __len__(self) -> int:
        return len(self._entries)

    def holds(self, *objects: object) -> bool:
        """Whether a value for exactly these objects is remembered."""
        return _key(objects) in self._entries

    def clear(self) -> None:
        self._entries.clear()
