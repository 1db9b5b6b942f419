"""A unit's side of the lease service: its writes of the lease and the claim as requests.

On a secured bus (`apis.bus.security`) a unit may read and watch the Grid Master lease and
the voltage reference claim but not write them; `Registry` (`apis.unit.registry`) and
`VoltageReferenceClaim` (`apis.unit.vrclaim`) send each write through this client to the
lease service (`apis.unit.leaseservice`) on ``apis.lease.<op>.from.<this unit>``, a subject
only this unit may publish on. A refusal comes back typed and is raised as the exception the
direct write raises (`KeyExists`, `RevisionMismatch`, `ClaimRefused`), so the lease, the
election and the claim keep their logic.

Each request waits at most `LEASE_REQUEST_TIMEOUT_S` (a quarter of the lease's TTL: the
Grid Master renews every quarter, counting its lease from when it *sent* the request, see
`apis.unit.lease`). When no copy of the service answers the unit can neither become nor stay
Grid Master nor take the claim (fail safe): `LeaseServiceUnavailable`, logged once per
episode (the first failure after an answer), not at every attempt.
"""

from __future__ import annotations

import logging
from typing import Any

from apis.bus.base import (
    JSON,
    Bus,
    BusError,
    KeyExists,
    NoHandlers,
    RequestTimeout,
    RevisionMismatch,
)
from apis.unit import subjects
from apis.unit.registry import GRID_MASTER_LEASE_TTL_S, GridMasterLock
from apis.unit.vrclaim import Claim, ClaimRefused

log = logging.getLogger(__name__)

LEASE_REQUEST_TIMEOUT_S = GRID_MASTER_LEASE_TTL_S / 4

# the refusals a reply may name, and what the unit raises for each
REFUSALS: dict[str, type[Exception]] = {
    "KeyExists": KeyExists,
    "RevisionMismatch": RevisionMismatch,
    "ClaimRefused": ClaimRefused,
}


class LeaseServiceUnavailable(BusError):
    """No copy of the lease service answered (none runs, or none is reachable)."""


class LeaseServiceClient:
    """The lease and claim writes of `unit_id`, asked of the lease service over `bus`."""

    def __init__(self, bus: Bus, unit_id: str, timeout: float = LEASE_REQUEST_TIMEOUT_S) -> None:
        self.bus = bus
        self.unit_id = unit_id
        self.timeout = timeout
        self.unavailable = False  # since the last failure to get an answer

    async def _ask(self, op: str, body: dict[str, Any]) -> dict[str, Any]:
        subject = subjects.lease_request(op, self.unit_id)
        try:
            reply = await self.bus.request(subject, body, timeout=self.timeout)
        except (NoHandlers, RequestTimeout) as e:
            if not self.unavailable:
                self.unavailable = True
                log.error(
                    "(FRAMEWORK:LOCAL:ERROR:%s) no lease service answers (%s): this unit can "
                    "neither become nor stay Grid Master nor take the voltage reference "
                    "claim until one does (start 'apis lease-service')", self.unit_id, e,
                )
            raise LeaseServiceUnavailable(f"no lease service answered {op}: {e}") from None
        if self.unavailable:
            self.unavailable = False
            log.warning("%s: the lease service answers again", self.unit_id)
        if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
            raise BusError(f"lease service: {op}: malformed reply {_short(reply)}")
        if not reply["ok"]:
            refusal = REFUSALS.get(str(reply.get("refused")))
            message = str(reply.get("message"))
            if refusal is None:
                raise BusError(f"lease service: {op}: unknown refusal {_short(reply)}")
            raise refusal(message)
        return reply

    # ---- the Grid Master lease -----------------------------------------------------------

    def _mine(self, unit_id: str) -> None:
        if unit_id != self.unit_id:
            raise ValueError(
                f"unit_id = {unit_id!r} (the lease service acts only for {self.unit_id!r})"
            )

    async def acquire(self, unit_id: str) -> GridMasterLock:
        """`Registry.acquire_grid_master`: KeyExists when anybody holds the lease."""
        self._mine(unit_id)
        reply = await self._ask("acquire", {})
        return self._lock(reply.get("lock"))

    async def renew(self, lock: GridMasterLock, global_errors: bool) -> GridMasterLock:
        """`Registry.renew_grid_master`: RevisionMismatch unless the lease is still this
        unit's at `lock.epoch`."""
        self._mine(lock.unit_id)
        reply = await self._ask("renew", {
            "epoch": lock.epoch, "revision": lock.revision, "globalErrors": global_errors,
        })
        return self._lock(reply.get("lock"))

    async def release(self, unit_id: str) -> bool:
        """`Registry.release_grid_master`: only this unit's own lease (another's is left to
        expire); a failure is logged, not raised."""
        if unit_id != self.unit_id:
            log.info("%s: the Grid Master lease of %s is not this unit's to release (it "
                     "expires by itself)", self.unit_id, unit_id)
            return False
        try:
            reply = await self._ask("release", {})
        except BusError as e:
            log.warning("%s: Grid Master lease not released (it will expire): %s",
                        self.unit_id, e)
            return False
        return reply.get("released") is True

    def _lock(self, value: JSON) -> GridMasterLock:
        if not isinstance(value, dict) or value.get("unitId") != self.unit_id or not all(
            _is_revision(value.get(key)) for key in ("epoch", "revision")
        ) or not isinstance(value.get("globalErrors"), bool):
            raise BusError(f"lease service: malformed lock {_short(value)}")
        return GridMasterLock(
            self.unit_id, value["epoch"], value["revision"], value["globalErrors"]
        )

    # ---- the voltage reference claim -----------------------------------------------------

    async def take_claim(
        self, held: Claim | None, from_unit: str | None, new_claim_id: str
    ) -> Claim:
        """`apis.unit.vrclaim.take_claim` for this unit (a hand-over only from a claim its
        holder marked); ClaimRefused otherwise."""
        reply = await self._ask("claimTake", {
            "held": _held(held) if held is not None else None,
            "from": from_unit,
            "newClaimId": new_claim_id,
        })
        claim = self._claim(reply.get("claim"))
        if claim is None:
            raise BusError("lease service: claimTake: no claim in the reply")
        return claim

    async def renew_claim(self, held: Claim) -> Claim | None:
        """`apis.unit.vrclaim.renew_claim`: None when the claim is not this unit's any more."""
        reply = await self._ask("claimRenew", _held(held))
        return self._claim(reply.get("claim"))

    async def release_claim(self, held: Claim) -> None:
        """`apis.unit.vrclaim.release_claim`: deleted only while it is this unit's."""
        await self._ask("claimRelease", _held(held))

    async def mark_hand_over(self, held: Claim) -> Claim:
        """Mark the held claim as handed over (spec 6.5 step 1); ClaimRefused when it is
        not this unit's any more."""
        try:
            reply = await self._ask("claimHandOver", _held(held))
        except RevisionMismatch as e:
            raise ClaimRefused(str(e)) from None
        claim = self._claim(reply.get("claim"))
        if claim is None:
            raise ClaimRefused("the voltage reference claim is no longer this unit's")
        return claim

    def _claim(self, value: JSON) -> Claim | None:
        if value is None:
            return None
        if not isinstance(value, dict) or value.get("unitId") != self.unit_id or not (
            isinstance(value.get("claimId"), str) and _is_revision(value.get("revision"))
            and isinstance(value.get("handOver"), bool)
        ):
            raise BusError(f"lease service: malformed claim {_short(value)}")
        return Claim(self.unit_id, value["claimId"], value["revision"],
                     hand_over=value["handOver"])


def _held(claim: Claim) -> dict[str, Any]:
    return {"claimId": claim.claim_id, "revision": claim.revision, "handOver": claim.hand_over}


def _is_revision(value: object) -> bool:
    return type(value) is int and value > 0


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."
