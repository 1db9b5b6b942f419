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

On a secured bus the unit may not write the key: every write is a request to the lease
service (`apis.unit.leaseclient`, `apis.unit.leaseservice`), which runs the same functions
(`take_claim`, `renew_claim`, `release_claim`) for the identity the bus vouches for, and
moves a claim to another unit only once its holder marked it (``"handOver": true``, on the
Grid Master's ``voltageReferenceWillHandOver``): a unit cannot take a claim by saying it
takes over.

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
from typing import TYPE_CHECKING, Any

from apis.bus.base import Entry, KeyExists, KeyValue, RevisionMismatch
from apis.unit.registry import VOLTAGE_REFERENCE_KEY

if TYPE_CHECKING:
    from apis.unit.leaseclient import LeaseServiceClient

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
    # marked by its holder in a hand-over through the lease service (spec 6.5 step 1)
    hand_over: bool = False

    @classmethod
    def from_entry(cls, entry: Entry) -> Claim:
        value = entry.value
        if isinstance(value, dict):
            unit_id, claim_id = value.get("unitId"), value.get("claimId")
            if isinstance(unit_id, str) and unit_id and isinstance(claim_id, str):
                return cls(unit_id, claim_id, entry.revision,
                           hand_over=value.get("handOver") is True)
        return cls(None, "", entry.revision, value)

    def to_json(self) -> dict[str, Any]:
        value: dict[str, Any] = {"unitId": self.unit_id, "claimId": self.claim_id}
        if self.hand_over:
            value["handOver"] = True
        return value

    def __str__(self) -> str:
        if self.unit_id is None:
            return f"an unreadable claim {self.raw!r} (revision {self.revision})"
        return f"{self.unit_id} (claim {self.claim_id}, revision {self.revision})"


def new_claim_id() -> str:
    return uuid.uuid4().hex[:12]


async def take_claim(
    kv: KeyValue,
    unit_id: str,
    held: Claim | None,
    from_unit: str | None,
    claim_ids: Callable[[], str],
    *,
    hand_over_marked: bool = False,
) -> Claim:
    """`unit_id` holds the claim: create it when absent, keep it when `unit_id` holds it
    (`held`: what it last wrote), move it from `from_unit` (a hand-over) by compare-and-set;
    with `hand_over_marked` only from a claim its holder marked as handed over (the lease
    service's ``claimHandOver``). ClaimRefused otherwise. The rules of the direct path and the lease
    service's alike (`apis.unit.leaseservice` calls this with the attested requester)."""
    for _ in range(ATTEMPTS):
        entry = await kv.get(VOLTAGE_REFERENCE_KEY)
        if entry is None:
            mine = Claim(unit_id, claim_ids(), 0)
            try:
                revision = await kv.create(VOLTAGE_REFERENCE_KEY, mine.to_json())
            except KeyExists:
                continue  # somebody was quicker: see who
            return replace(mine, revision=revision)
        current = Claim.from_entry(entry)
        if held is not None and current == held:
            return held  # ours, unchanged since we wrote it
        movable = from_unit is not None and current.unit_id == from_unit and (
            current.hand_over or not hand_over_marked
        )
        if current.unit_id is None or (current.unit_id != unit_id and not movable):
            raise ClaimRefused(f"the voltage reference is claimed by {current}")
        keep = (
            current.claim_id
            if held is not None and current.claim_id == held.claim_id
            else claim_ids()
        )
        mine = Claim(unit_id, keep, 0)
        try:
            revision = await kv.update(VOLTAGE_REFERENCE_KEY, mine.to_json(), entry.revision)
        except RevisionMismatch:
            continue
        if current.unit_id != unit_id:
            log.info("%s: voltage reference claim taken over from %s", unit_id, current)
        return replace(mine, revision=revision)
    raise ClaimRefused(
        f"the voltage reference claim changed {ATTEMPTS} times while {unit_id} took it"
    )


async def renew_claim(kv: KeyValue, held: Claim) -> Claim | None:
    """Rewrite `held` by compare-and-set on its revision (its TTL starts again); None when
    it expired or another unit holds it now."""
    try:
        revision = await kv.update(VOLTAGE_REFERENCE_KEY, held.to_json(), held.revision)
    except RevisionMismatch:
        return None
    return replace(held, revision=revision)


async def release_claim(kv: KeyValue, held: Claim) -> None:
    """Delete `held` unless the key changed since (expired, or taken over: not ours)."""
    try:
        await kv.delete(VOLTAGE_REFERENCE_KEY, revision=held.revision)
    except RevisionMismatch:
        pass


class VoltageReferenceClaim:
    """One unit's side of the claim. Its operations run one at a time (a take, a renewal by
    the tick and a release after a scram's WAIT could otherwise cross on a real bus).

    With `service` (a secured bus: the unit may not write the claim's bucket) every write
    is a request to the lease service, which applies the same rules for the identity the
    bus vouches for; without, the unit writes the key itself."""

    def __init__(
        self,
        kv: KeyValue,
        unit_id: str,
        claim_ids: Callable[[], str] = new_claim_id,
        service: LeaseServiceClient | None = None,
    ) -> None:
        self.kv = kv
        self.unit_id = unit_id
        self._claim_ids = claim_ids
        self.service = service
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
            if self.service is not None:
                self.held = await self.service.take_claim(
                    self.held, from_unit, self._claim_ids()
                )
            else:
                self.held = await take_claim(
                    self.kv, self.unit_id, self.held, from_unit, self._claim_ids
                )
            return self.held

    async def renew(self) -> bool:
        """Rewrite the held claim (its TTL starts again); False, and nothing held any more,
        when it expired or another unit holds it now."""
        async with self._lock:
            held = self.held
            if held is None:
                return False
            if self.service is not None:
                if held.hand_over and not self.handing_over:
                    held = replace(held, hand_over=False)  # no longer open to a take-over
                self.held = await self.service.renew_claim(held)
            else:
                self.held = await renew_claim(self.kv, held)
            return self.held is not None

    async def begin_hand_over(self) -> None:
        """Spec 6.5 step 1: the new reference may take the claim from this unit now. Through
        the lease service the held claim is marked so (only then may another unit move it);
        ClaimRefused when it is not this unit's any more."""
        self.handing_over = True
        if self.service is None:
            return  # any unit may move it when told to by the Grid Master: nothing to mark
        async with self._lock:
            held = self.held
            if held is not None and not held.hand_over:
                self.held = await self.service.mark_hand_over(held)

    async def release(self) -> None:
        """Delete the held claim unless it is another's by now (a hand-over moved it)."""
        async with self._lock:
            held = self.held
            if held is None:
                return
            if self.service is not None:
                await self.service.release_claim(held)
            else:
                await release_claim(self.kv, held)
            self.held = None
