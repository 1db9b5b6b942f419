"""The voltage reference claim: one converter of the cluster in CV, decided in the store.

Key `voltageReference` in bucket `apis_voltage_reference` (`apis.unit.registry`; entries
expire `VOLTAGE_REFERENCE_CLAIM_TTL_S` after their last write), value ``{"unitId": "E003",
"claimId": "9f3c..."}``. A unit's Controller takes it *before* it puts its converter in
VOLTAGE_REFERENCE, whoever chose the converter (the Grid Master's first deal, an operator in
Manual mode), with create-if-absent: of two concurrent choices exactly one wins, the other is
refused naming the holder. Each unit read the grid (no voltage yet: nobody holds it) and then
set its mode, so both used to win; the grid check stays, as a second line.

The holder rewrites the claim (compare-and-set on its revision) at every acquisition tick
while its converter stays in CV, and deletes it when the converter leaves CV; a holder that
dies stops renewing and its claim expires. In a hand-over (spec 6.5) the new reference moves
the claim from the old holder to itself by compare-and-set as it enters CV (step 2); the old
one, still in CV with droop until step 3, then finds the claim gone to the new holder, which
is no error while it hands over.

A claim that names this unit under another claim ID (an earlier run of the unit, whose
converter is the same) is taken over; a value that is not a claim blocks everybody until it
expires (nothing is trusted to be free that does not say so).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from apis.bus.base import Entry, KeyExists, KeyValue, RevisionMismatch
from apis.unit.registry import VOLTAGE_REFERENCE_KEY

log = logging.getLogger(__name__)

ATTEMPTS = 3  # races lost in a row before a take gives up


class ClaimRefused(Exception):
    """Another unit holds the voltage reference claim; the message names it."""


@dataclass(frozen=True, slots=True)
class Claim:
    unit_id: str | None  # None: the stored value is not a claim
    claim_id: str
    revision: int
    raw: Any = None  # the stored value (for a message about a malformed one)

    @classmethod
    def from_entry(cls, entry: Entry) -> Claim:
        value = entry.value
        if isinstance(value, dict):
            unit_id, claim_id = value.get("unitId"), value.get("claimId")
            if isinstance(unit_id, str) and unit_id and isinstance(claim_id, str):
                return cls(unit_id, claim_id, entry.revision)
        return cls(None, "", entry.revision, value)

    def to_json(self) -> dict[str, Any]:
        return {"unitId": self.unit_id, "claimId": self.claim_id}

    def __str__(self) -> str:
        if self.unit_id is None:
            return f"an unreadable claim {self.raw!r} (revision {self.revision})"
        return f"{self.unit_id} (claim {self.claim_id}, revision {self.revision})"


def new_claim_id() -> str:
    return uuid.uuid4().hex[:12]


class VoltageReferenceClaim:
    """One unit's side of the claim. Its operations run one at a time (a take, a renewal by
    the tick and a release after a scram's WAIT could otherwise cross on a real bus)."""

    def __init__(
        self, kv: KeyValue, unit_id: str, claim_ids: Callable[[], str] = new_claim_id
    ) -> None:
        self.kv = kv
        self.unit_id = unit_id
        self._claim_ids = claim_ids
        self.held: Claim | None = None  # what this unit last wrote and still believes it holds
        self.handing_over = False  # spec 6.5 steps 1-3: the claim may go to the new reference
        self._lock = asyncio.Lock()

    async def holder(self) -> Claim | None:
        entry = await self.kv.get(VOLTAGE_REFERENCE_KEY)
        return Claim.from_entry(entry) if entry is not None else None

    async def take(self, from_unit: str | None = None) -> Claim:
        """Hold the claim: create it when absent, keep it when this unit holds it, move it
        from `from_unit` (a hand-over) by compare-and-set. ClaimRefused otherwise."""
        async with self._lock:
            for _ in range(ATTEMPTS):
                entry = await self.kv.get(VOLTAGE_REFERENCE_KEY)
                if entry is None:
                    mine = Claim(self.unit_id, self._claim_ids(), 0)
                    try:
                        revision = await self.kv.create(VOLTAGE_REFERENCE_KEY, mine.to_json())
                    except KeyExists:
                        continue  # somebody was quicker: see who
                    self.held = replace(mine, revision=revision)
                    return self.held
                current = Claim.from_entry(entry)
                held = self.held
                if held is not None and current == held:
                    return held  # ours, unchanged since we wrote it
                if current.unit_id is None or current.unit_id not in (self.unit_id, from_unit):
                    raise ClaimRefused(f"the voltage reference is claimed by {current}")
                keep = (
                    current.claim_id
                    if held is not None and current.claim_id == held.claim_id
                    else self._claim_ids()
                )
                mine = Claim(self.unit_id, keep, 0)
                try:
                    revision = await self.kv.update(
                        VOLTAGE_REFERENCE_KEY, mine.to_json(), entry.revision
                    )
                except RevisionMismatch:
                    continue
                if current.unit_id != self.unit_id:
                    log.info("%s: voltage reference claim taken over from %s",
                             self.unit_id, current)
                self.held = replace(mine, revision=revision)
                return self.held
            raise ClaimRefused(
                f"the voltage reference claim changed {ATTEMPTS} times while {self.unit_id} "
                "took it"
            )

    async def renew(self) -> bool:
        """Rewrite the held claim (its TTL starts again); False, and nothing held any more,
        when it expired or another unit holds it now."""
        async with self._lock:
            held = self.held
            if held is None:
                return False
            try:
                revision = await self.kv.update(
                    VOLTAGE_REFERENCE_KEY, held.to_json(), held.revision
                )
            except RevisionMismatch:
                self.held = None
                return False
            self.held = replace(held, revision=revision)
            return True

    async def release(self) -> None:
        """Delete the held claim unless it is another's by now (a hand-over moved it)."""
        async with self._lock:
            held = self.held
            if held is None:
                return
            try:
                await self.kv.delete(VOLTAGE_REFERENCE_KEY, revision=held.revision)
            except RevisionMismatch:
                pass  # expired, or taken over: not ours to delete
            self.held = None
