"""The lease service: the only writer of the Grid Master lease and the voltage reference claim.

JetStream's key-value permissions cannot tell a create from a put (a client may leave out
the expected-revision header), and a stored entry does not say who wrote it: a unit allowed
to write the lease's bucket could overwrite the live lease in its own name. On a secured bus
(`apis.bus.security`) the units therefore may only read and watch the buckets
``apis_grid_master`` and ``apis_voltage_reference``; the identity ``apis-lease`` alone writes
them, on the units' requests.

A request arrives on ``apis.lease.<op>.from.<unit>`` (`apis.unit.subjects.lease_request`);
the servers let only `<unit>` publish there, so the requester is the subject's identity
(`Message.sender`), never anything in the body. The service is stateless: every copy (a
queue group; `apis cluster up` runs one per nats-server, `apis lease-service --bus-config
FILE` in production) applies the rules by compare-and-set on the strongly consistent store,
with the same code as a unit writing directly (`Registry`, `apis.unit.vrclaim`), so
concurrent copies are safe. Operations (body -> reply):

- ``acquire`` ``{}`` -> ``{"lock"}``: create-if-absent, the lock naming the requester
  (`Registry.acquire_grid_master`); refused ``KeyExists`` while anybody holds it.
- ``renew`` ``{"epoch", "revision", "globalErrors"}`` -> ``{"lock"}``: only while the lock
  names the requester at that epoch; rewritten by compare-and-set on the revision read (a
  revision newer than the request's is the requester's own renewal whose answer was lost;
  a compare-and-set crossed by such a renewal is tried again on a fresh read). Refused
  ``RevisionMismatch`` otherwise.
- ``release`` ``{}`` -> ``{"released"}``: deleted at its revision if the requester holds it.
- ``claimTake`` ``{"held", "from", "newClaimId"}`` -> ``{"claim"}``: `take_claim` for the
  requester; a claim of another unit moves only in a hand-over *marked by its holder*
  (``claimHandOver``, which the holder does on the Grid Master's command
  ``voltageReferenceWillHandOver``). Refused ``ClaimRefused``.
- ``claimRenew`` / ``claimRelease`` / ``claimHandOver`` ``{"claimId", "revision",
  "handOver"}`` -> ``{"claim"}`` (null: not the requester's any more) / ``{"released"}`` /
  ``{"claim"}``: only the claim's holder, the claim it names.

A reply is ``{"ok": true, ...}`` or ``{"ok": false, "refused": "KeyExists" |
"RevisionMismatch" | "ClaimRefused", "message"}`` (`apis.unit.leaseclient` raises the
named exception); a malformed request fails (the requester gets a `RemoteFailure` naming
the key, the value and the rule).

There is no "clear the lease of another unit": a reset (spec 11.5) releases the requester's
own lease only, and another's expires within its TTL.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from apis.bus.base import JSON, Bus, KeyExists, Message, RevisionMismatch, Subscription
from apis.unit import subjects
from apis.unit.registry import VOLTAGE_REFERENCE_KEY, GridMasterLock, Registry
from apis.unit.vrclaim import Claim, ClaimRefused, release_claim, renew_claim, take_claim

log = logging.getLogger(__name__)

_UNIT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CLAIM_ID = re.compile(r"[A-Za-z0-9._:-]{1,80}")
MAX_REVISION = 2**63 - 1
# A holder's renewal retried after a lost answer can cross the first one: both read the same
# revision and one compare-and-set fails; reading again then finds the lease still the
# holder's (at a newer revision) and the renewal goes through.
RENEW_ATTEMPTS = 3


class BadLeaseRequest(ValueError):
    """A request the service does not take; the message names the key, the value, the rule."""


def _fields(body: JSON, keys: frozenset[str], op: str) -> dict[str, Any]:
    if body is None and not keys:
        return {}
    if not isinstance(body, dict):
        raise BadLeaseRequest(f"{op}: body = {_short(body)} (must be an object)")
    unknown = sorted(set(body) - keys)
    if unknown:
        raise BadLeaseRequest(
            f"{op}: {unknown[0]!r} (unknown key; must be one of {sorted(keys) or 'none'})"
        )
    missing = sorted(keys - set(body))
    if missing:
        raise BadLeaseRequest(f"{op}: {missing[0]!r} missing")
    return body


def _revision(body: dict[str, Any], key: str, op: str) -> int:
    value = body[key]
    if type(value) is not int or not 1 <= value <= MAX_REVISION:
        raise BadLeaseRequest(
            f"{op}: {key} = {_short(value)} (must be an integer within 1..{MAX_REVISION})"
        )
    return value


def _flag(body: dict[str, Any], key: str, op: str) -> bool:
    value = body[key]
    if not isinstance(value, bool):
        raise BadLeaseRequest(f"{op}: {key} = {_short(value)} (must be true or false)")
    return value


def _claim_id(value: object, key: str, op: str) -> str:
    if not isinstance(value, str) or not _CLAIM_ID.fullmatch(value):
        raise BadLeaseRequest(
            f"{op}: {key} = {_short(value)} (must be 1..80 letters, digits, '.', ':', '_' "
            "or '-')"
        )
    return value


def _unit_id(value: object, key: str, op: str) -> str:
    if not isinstance(value, str) or not _UNIT_ID.fullmatch(value):
        raise BadLeaseRequest(
            f"{op}: {key} = {_short(value)} (must be a unit ID: 1..64 letters, digits, '_' "
            "or '-')"
        )
    return value


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 100 else text[:100] + "..."


def lock_json(lock: GridMasterLock) -> dict[str, Any]:
    return {"unitId": lock.unit_id, "epoch": lock.epoch, "revision": lock.revision,
            "globalErrors": lock.global_errors}


def claim_json(claim: Claim | None) -> dict[str, Any] | None:
    if claim is None:
        return None
    return {"unitId": claim.unit_id, "claimId": claim.claim_id, "revision": claim.revision,
            "handOver": claim.hand_over}


Operation = Callable[[str, JSON], Awaitable[dict[str, Any]]]

_HELD = frozenset({"claimId", "revision", "handOver"})


class LeaseService:
    """One copy of the service on `bus` (its own connection as ``apis-lease``)."""

    def __init__(self, bus: Bus, registry: Registry) -> None:
        self.bus = bus
        self.registry = registry
        self.handled = 0
        self.refused = 0
        self._operations: dict[str, Operation] = {
            "acquire": self._acquire,
            "renew": self._renew,
            "release": self._release,
            "claimTake": self._claim_take,
            "claimRenew": self._claim_renew,
            "claimRelease": self._claim_release,
            "claimHandOver": self._claim_hand_over,
        }

    @classmethod
    async def open(cls, bus: Bus) -> LeaseService:
        return cls(bus, await Registry.open(bus))

    async def subscribe(self) -> Subscription:
        return await self.bus.subscribe(
            subjects.lease_request("*", "*"), self.handle, queue=subjects.LEASE_QUEUE
        )

    async def serve(self, ready: Callable[[], None] = lambda: None) -> None:
        """Answer requests until cancelled."""
        subscription = await self.subscribe()
        try:
            ready()
            await asyncio.Event().wait()
        finally:
            await subscription.unsubscribe()

    async def handle(self, msg: Message) -> JSON:
        requester = msg.sender  # the bus vouches for it: the subject's identity
        prefix = subjects.LEASE_PREFIX + "."
        op = msg.subject[len(prefix):].split(".", 1)[0] if msg.subject.startswith(prefix) else ""
        operation = self._operations.get(op)
        if operation is None:
            raise BadLeaseRequest(
                f"operation = {_short(op)} (must be one of {', '.join(self._operations)})"
            )
        if requester is None:
            raise BadLeaseRequest(f"{op}: {msg.subject} names no requester")
        _unit_id(requester, "requester", op)
        try:
            reply = await operation(requester, msg.payload)
        except BadLeaseRequest as e:
            log.warning("lease service: %s refused: %s", requester, e)
            raise
        except (KeyExists, RevisionMismatch, ClaimRefused) as e:
            self.refused += 1
            log.debug("lease service: %s %s refused: %s", requester, op, e)
            return {"ok": False, "refused": type(e).__name__, "message": str(e)}
        self.handled += 1
        return {"ok": True, **reply}

    # ---- the Grid Master lease -----------------------------------------------------------

    async def _acquire(self, requester: str, body: JSON) -> dict[str, Any]:
        _fields(body, frozenset(), "acquire")
        lock = await self.registry.acquire_grid_master(requester)
        log.info("lease service: Grid Master lease taken by %s (epoch %d)", requester,
                 lock.epoch)
        return {"lock": lock_json(lock)}

    async def _renew(self, requester: str, body: JSON) -> dict[str, Any]:
        fields = _fields(body, frozenset({"epoch", "revision", "globalErrors"}), "renew")
        epoch = _revision(fields, "epoch", "renew")
        revision = _revision(fields, "revision", "renew")
        global_errors = _flag(fields, "globalErrors", "renew")
        for attempt in range(1, RENEW_ATTEMPTS + 1):
            current = await self.registry.grid_master()
            if current is None or current.unit_id != requester or current.epoch != epoch:
                raise RevisionMismatch(
                    f"the Grid Master lease is {current}, not {requester}'s at epoch {epoch}"
                )
            if current.revision < revision:
                raise RevisionMismatch(
                    f"revision = {revision} (the lease is at revision {current.revision})"
                )
            try:
                renewed = await self.registry.renew_grid_master(
                    GridMasterLock(requester, epoch, current.revision), global_errors
                )
            except RevisionMismatch:
                if attempt == RENEW_ATTEMPTS:
                    raise
                continue  # another renewal of the holder's crossed this one: read again
            return {"lock": lock_json(renewed)}
        raise AssertionError("unreachable")

    async def _release(self, requester: str, body: JSON) -> dict[str, Any]:
        _fields(body, frozenset(), "release")
        released = await self.registry.release_grid_master(requester)
        if released:
            log.info("lease service: Grid Master lease released by %s", requester)
        return {"released": released}

    # ---- the voltage reference claim -----------------------------------------------------

    async def _claim_now(self) -> Claim | None:
        entry = await self.registry.voltage_reference_kv.get(VOLTAGE_REFERENCE_KEY)
        return Claim.from_entry(entry) if entry is not None else None

    async def _claim_take(self, requester: str, body: JSON) -> dict[str, Any]:
        fields = _fields(body, frozenset({"held", "from", "newClaimId"}), "claimTake")
        new_id = _claim_id(fields["newClaimId"], "newClaimId", "claimTake")
        from_unit = fields["from"]
        if from_unit is not None:
            _unit_id(from_unit, "from", "claimTake")
        held = None
        if fields["held"] is not None:
            held = self._held(requester, fields["held"], "claimTake.held")
        claim = await take_claim(
            self.registry.voltage_reference_kv, requester, held, from_unit, lambda: new_id,
            hand_over_marked=True,
        )
        return {"claim": claim_json(claim)}

    def _held(self, requester: str, body: JSON, op: str) -> Claim:
        fields = _fields(body, _HELD, op)
        return Claim(
            requester, _claim_id(fields["claimId"], "claimId", op),
            _revision(fields, "revision", op), hand_over=_flag(fields, "handOver", op),
        )

    async def _holding(self, requester: str, body: JSON, op: str) -> tuple[Claim, Claim | None]:
        """The claim the request names, and the stored one if it is that claim of the
        requester (at the request's revision or later: a renewal whose answer was lost)."""
        held = self._held(requester, body, op)
        current = await self._claim_now()
        if current is None or current.unit_id != requester or (
            current.claim_id != held.claim_id or current.revision < held.revision
        ):
            return held, None
        return held, current

    async def _claim_renew(self, requester: str, body: JSON) -> dict[str, Any]:
        for _ in range(RENEW_ATTEMPTS):
            held, current = await self._holding(requester, body, "claimRenew")
            if current is None:
                return {"claim": None}
            renewed = await renew_claim(
                self.registry.voltage_reference_kv, replace(held, revision=current.revision)
            )
            if renewed is not None:
                return {"claim": claim_json(renewed)}
            # changed since the read: another renewal of the holder's, or somebody else's now
        return {"claim": None}

    async def _claim_release(self, requester: str, body: JSON) -> dict[str, Any]:
        _held, current = await self._holding(requester, body, "claimRelease")
        if current is None:
            return {"released": False}
        await release_claim(self.registry.voltage_reference_kv, current)
        return {"released": True}

    async def _claim_hand_over(self, requester: str, body: JSON) -> dict[str, Any]:
        held, current = await self._holding(requester, body, "claimHandOver")
        if current is None:
            raise ClaimRefused(f"the voltage reference claim is not {requester}'s any more")
        marked = await renew_claim(
            self.registry.voltage_reference_kv,
            replace(held, revision=current.revision, hand_over=True),
        )
        if marked is None:
            raise ClaimRefused(f"the voltage reference claim changed while {requester} "
                               "marked it")
        log.info("lease service: voltage reference claim of %s open to a hand-over",
                 requester)
        return {"claim": claim_json(marked)}
