"""Identifiers of deals, negotiations and unit instances: how they are drawn, what they look
like.

A real unit draws its ids from the operating system (`uuid.uuid4`): a restarted process, or
another run of a cluster, never draws the same deal id again (a seeded generator did, and a
new deal overwrote an old deal's file and history row). Only the simulation, which must give
the same result for a seed, draws them from the unit's seeded generator, and says so
explicitly (`seeded_ids`).

A deal id names a file of the deal log, so one from outside is checked against the one form
every id has (`check_deal_id`) before it is used.
"""

from __future__ import annotations

import random
import re
import uuid
from collections.abc import Callable

# str(uuid.UUID(...)): lower-case hex digits 8-4-4-4-12, nothing else (no separators of a path)
DEAL_ID_FORM = "8-4-4-4-12 lower-case hex digits (a UUID)"
_DEAL_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

# Given the unit's random generator, a function drawing one id each call.
IdSource = Callable[[random.Random], Callable[[], str]]


class InvalidDealId(ValueError):
    """A deal id not of the one form ids have; the message names the value and the form."""


def _os_id() -> str:
    return str(uuid.uuid4())


def os_ids(rng: random.Random) -> Callable[[], str]:
    """Ids from the operating system's random source; `rng` is left untouched."""
    return _os_id


def seeded_ids(rng: random.Random) -> Callable[[], str]:
    """Ids drawn from `rng`: the same sequence for the same seed. For the simulation only:
    ids repeat across runs and restarts."""

    def draw() -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    return draw


def is_deal_id(value: object) -> bool:
    return isinstance(value, str) and _DEAL_ID.fullmatch(value) is not None


def check_deal_id(value: object) -> str:
    """`value` if it is a deal id; InvalidDealId otherwise."""
    if not is_deal_id(value):
        raise InvalidDealId(f"dealId = {str(value)[:80]!r} (must be {DEAL_ID_FORM})")
    assert isinstance(value, str)
    return value
