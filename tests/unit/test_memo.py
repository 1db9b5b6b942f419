"""IdentityMemo: values remembered per identity of their objects, bounded, oldest out first."""

from __future__ import annotations

import gc

import pytest

from apis.unit.memo import IdentityMemo


class Frozen:
    """An object equal to every other Frozen: only identity tells them apart."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Frozen)

    __hash__ = object.__hash__


def test_computes_once_per_identity_not_per_equality() -> None:
    calls: list[tuple[object, ...]] = []

    def compute(*objects: object) -> int:
        calls.append(objects)
        return len(calls)

    memo = IdentityMemo(compute)
    a, b = Frozen(), Frozen()
    assert memo.get(a) == 1 and memo.get(a) == 1
    assert memo.get(b) == 2  # equal but another object
    assert memo.get(a, b) == 3 and memo.get(b, a) == 4  # order of the objects counts
    assert memo.get(a, b) == 3
    assert len(calls) == 4 and len(memo) == 4


def test_bounded_oldest_first_and_entries_hold_their_objects() -> None:
    memo: IdentityMemo[int] = IdentityMemo(lambda o: id(o), kept=3)
    objects = [Frozen() for _ in range(5)]
    for o in objects:
        memo.get(o)
    assert len(memo) == 3
    assert [memo.holds(o) for o in objects] == [False, False, True, True, True]

    # A held object stays alive, so its id cannot be taken by a new object meanwhile.
    memo.clear()
    memo.get(Frozen())
    gc.collect()
    (objs, value), = memo._entries.values()
    assert objs[0] is not None and value == id(objs[0])


def test_kept_must_be_positive() -> None:
    with pytest.raises(ValueError, match=r"kept = 0 \(must be >= 1\)"):
        IdentityMemo(lambda: 0, kept=0)
