"""The cluster's shared state in the bus key-value store.

- The Grid Master lock, a *lease*: key `gridMasterUnitId` in bucket `apis_grid_master`,
  whose entries expire `GRID_MASTER_LEASE_TTL_S` after their last write. It is taken with
  create-if-absent; the revision of that create is the *fencing token* (epoch), stored in
  the value (``{"unitId": "E001", "epoch": 17}``) because every renewal (a compare-and-set
  rewrite, see `apis.unit.lease`) gives the entry a new revision. Every converter command
  carries the epoch, and a Controller refuses a command whose epoch is older than one it has
  seen or is not the present lock's. A Grid Master that dies stops renewing: the key
  expires and the other units (watching it) elect a new one with a higher epoch.
- The global operation mode (`operationMode` in `apis_state`).
- The deal registry (bucket `apis_deals`, key = dealId), updated by compare-and-set on the
  revision so a concurrent change makes an update fail instead of being lost.
- Need-to-stop reasons (bucket `apis_need_to_stop`, key = dealId, entries expire after 30
  minutes).
- The voltage reference claim (key `voltageReference` in bucket `apis_voltage_reference`,
  entries expire `VOLTAGE_REFERENCE_CLAIM_TTL_S` after their last write): which unit may hold
  the grid voltage, see `apis.unit.vrclaim`.

On a secured bus a unit may read and watch the lease and the claim but not write them: it
opens the registry with a `LeaseServiceClient` (`apis.unit.leaseclient`) and every write of
the lock (and of the claim, `apis.unit.vrclaim`) is a request to the lease service
(`apis.unit.leaseservice`), which runs the very methods below on its own connection for the
identity the bus vouches for. Without one (the in-memory bus, the simulation, a plain NATS
server) the unit writes them itself.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from apis.bus.base import JSON, Bus, BusError, Entry, KeyExists, KeyValue, RevisionMismatch
from apis.bus.memory import ReadOnlyDict
from apis.unit.deal import Deal
from apis.unit.memo import IdentityMemo

if TYPE_CHECKING:
    from apis.unit.leaseclient import LeaseServiceClient

log = logging.getLogger(__name__)

# Stored deal values parsed, shared by every Registry of the process: on the in-memory bus
# the Grid Master and both units of a deal read the very same stored value (a read-only
# snapshot), which is then parsed once between them instead of once each. The parsed deals
# are never handed out (callers get copies).
_shared_parses: IdentityMemo[Deal] = IdentityMemo(Deal.from_json)

STATE_BUCKET = "apis_state"
GRID_MASTER_BUCKET = "apis_grid_master"
GRID_MASTER_LEASE_TTL_S = 4.0
DEALS_BUCKET = "apis_deals"
NEED_TO_STOP_BUCKET = "apis_need_to_stop"
GRID_MASTER_KEY = "gridMasterUnitId"
OPERATION_MODE_KEY = "operationMode"
NEED_TO_STOP_TTL_S = 30 * 60.0
VOLTAGE_REFERENCE_BUCKET = "apis_voltage_reference"
VOLTAGE_REFERENCE_KEY = "voltageReference"
# Renewed at every acquisition tick (controller.dataAcquisitionPeriodMsec, 5 s in the
# samples) while the holder stays in CV; long enough for a tick delayed by a driver that
# retries (requestTimeoutMsec x retryLimit, 15 s), short enough that a crashed holder's
# claim is gone by the time its grid voltage has decayed.
VOLTAGE_REFERENCE_CLAIM_TTL_S = 30.0
OPERATION_MODES = ("autonomous", "heteronomous", "stop", "manual")


@dataclass(frozen=True, slots=True)
class GridMasterLock:
    unit_id: str
    epoch: int  # the revision that created the lock: the fencing token
    revision: int = 0  # the entry's present revision (renewals advance it)
    # The Grid Master's "has global errors" at its last renewal: what a unit deciding on a
    # request or an accept needs, read here instead of asking the Grid Master each time.
    global_errors: bool = False

    def to_json(self) -> JSON:
        return {"unitId": self.unit_id, "epoch": self.epoch, "globalErrors": self.global_errors}

    @classmethod
    def from_entry(cls, entry: Entry) -> GridMasterLock | None:
        value = entry.value
        if isinstance(value, str):  # just created, not yet stamped: its own revision
            return cls(value, entry.revision, entry.revision)
        if isinstance(value, dict) and isinstance(value.get("unitId"), str):
            epoch = value.get("epoch")
            return cls(
                value["unitId"], epoch if isinstance(epoch, int) else entry.revision,
                entry.revision, value.get("globalErrors") is True,
            )
        return None


class StoredDeal(NamedTuple):
    # a named tuple, not a frozen dataclass: one is made per deal on every read (every unit
    # reads its deals at each acquisition), and a tuple is made in a third of the time
    deal: Deal
    revision: int


class Registry:
    """Typed access to the shared buckets; open it once per unit with `open`."""

    def __init__(
        self,
        state: KeyValue,
        deals: KeyValue,
        need_to_stop: KeyValue,
        grid_master: KeyValue,
        voltage_reference: KeyValue,
        lease_service: LeaseServiceClient | None = None,
    ) -> None:
        self.state = state
        self.lease_service = lease_service  # the lock's writes go through it when set
        self.deals = deals
        self.need_to_stop = need_to_stop
        self.grid_master_kv = grid_master
        self.voltage_reference_kv = voltage_reference
        # deal id -> (stored JSON, its Deal): a deal is parsed again only when it changed
        self._parsed: dict[str, tuple[JSON, Deal]] = {}
        # deal id -> revision at which it did not involve `_foreign_of` (deals_involving)
        self._foreign: dict[str, int] = {}
        self._foreign_of: str | None = None
        self._highest_revision = 0
        # the lease last read: (revision, stored value, its lock), parsed again on a change
        self._lock: tuple[int, JSON, GridMasterLock | None] | None = None

    @classmethod
    async def open(
        cls, bus: Bus, lease_service: LeaseServiceClient | None = None
    ) -> Registry:
        return cls(
            await bus.kv(STATE_BUCKET),
            await bus.kv(DEALS_BUCKET),
            await bus.kv(NEED_TO_STOP_BUCKET, ttl=NEED_TO_STOP_TTL_S),
            await bus.kv(GRID_MASTER_BUCKET, ttl=GRID_MASTER_LEASE_TTL_S),
            await bus.kv(VOLTAGE_REFERENCE_BUCKET, ttl=VOLTAGE_REFERENCE_CLAIM_TTL_S),
            lease_service,
        )

    # ---- Grid Master lock ----------------------------------------------------------------

    async def grid_master(self) -> GridMasterLock | None:
        entry = await self.grid_master_kv.get(GRID_MASTER_KEY)
        if entry is None:
            return None
        last = self._lock
        if last is not None and last[0] == entry.revision and last[1] == entry.value:
            return last[2]  # every unit reads it before each decision: mostly unchanged
        lock = GridMasterLock.from_entry(entry)
        self._lock = (entry.revision, entry.value, lock)
        return lock

    async def acquire_grid_master(self, unit_id: str) -> GridMasterLock:
        """Take the lease; raise KeyExists when anybody (even `unit_id`) holds it.

        The create's revision becomes the epoch, stamped into the value at once (a lock
        read before the stamp gets the same epoch from the revision).
        """
        if self.lease_service is not None:
            return await self.lease_service.acquire(unit_id)
        revision = await self.grid_master_kv.create(GRID_MASTER_KEY, unit_id)
        return await self.renew_grid_master(GridMasterLock(unit_id, revision, revision))

    async def renew_grid_master(
        self, lock: GridMasterLock, global_errors: bool = False
    ) -> GridMasterLock:
        """Rewrite the lease by compare-and-set (its TTL starts again) with the Grid Master's
        present `global_errors`; RevisionMismatch when it expired, was cleared or was taken
        by somebody else meanwhile."""
        if self.lease_service is not None:
            return await self.lease_service.renew(lock, global_errors)
        renewed = GridMasterLock(lock.unit_id, lock.epoch, lock.revision, global_errors)
        revision = await self.grid_master_kv.update(
            GRID_MASTER_KEY, renewed.to_json(), lock.revision
        )
        return GridMasterLock(lock.unit_id, lock.epoch, revision, global_errors)

    async def release_grid_master(self, unit_id: str) -> bool:
        """Release the lease if `unit_id` holds it; True if released.

        A bus failure is logged, not raised: the lease then expires by itself.
        """
        if self.lease_service is not None:
            return await self.lease_service.release(unit_id)
        try:
            lock = await self.grid_master()
            if lock is None or lock.unit_id != unit_id:
                return False
            await self.grid_master_kv.delete(GRID_MASTER_KEY, revision=lock.revision)
        except RevisionMismatch:
            return False
        except BusError as e:
            log.warning("%s: Grid Master lease not released (it will expire): %s", unit_id, e)
            return False
        return True

    async def clear_grid_master(self) -> None:
        """Delete the lease whoever holds it (a reset, spec 11.5). Through the lease service
        only the holder may: this unit's own lease is released, another's is left to expire
        (within `GRID_MASTER_LEASE_TTL_S`)."""
        if self.lease_service is not None:
            await self.lease_service.release(self.lease_service.unit_id)
            return
        await self.grid_master_kv.delete(GRID_MASTER_KEY)

    async def grid_master_gone(self) -> AsyncIterator[None]:
        """Once every time the lease is released or expires (renewals are not seen: a watcher
        is not woken by the Grid Master's rewrite every second)."""
        async for change in self.grid_master_kv.watch(GRID_MASTER_KEY, gone_only=True):
            if change.key == GRID_MASTER_KEY and change.entry is None:
                yield None

    # ---- operation mode ------------------------------------------------------------------

    async def global_mode(self, default: str) -> str:
        entry = await self.state.get(OPERATION_MODE_KEY)
        if entry is not None and entry.value in OPERATION_MODES:
            return str(entry.value)
        return default if default in OPERATION_MODES else "stop"

    async def set_global_mode(self, mode: str | None) -> None:
        if mode is None or mode not in OPERATION_MODES:
            await self.state.delete(OPERATION_MODE_KEY)
        else:
            await self.state.put(OPERATION_MODE_KEY, mode)

    # ---- deals ---------------------------------------------------------------------------

    async def create_deal(self, deal: Deal) -> int:
        """Store a new deal; KeyExists if its dealId is taken."""
        return await self.deals.create(deal.deal_id, deal.to_json())

    async def deal(self, deal_id: str) -> StoredDeal | None:
        entry = await self.deals.get(deal_id)
        if entry is None:
            self._parsed.pop(deal_id, None)
            return None
        return self._stored(deal_id, entry)

    def _stored(self, deal_id: str, entry: Entry) -> StoredDeal:
        parsed = self._parsed.get(deal_id)
        # On the in-memory bus an unchanged entry gives the very value read before (a shared
        # read-only snapshot): the identity test spares the deep compare of the whole deal.
        if parsed is None or (parsed[0] is not entry.value and parsed[0] != entry.value):
            parsed = (entry.value, _parse(entry.value))
            self._parsed[deal_id] = parsed
        return StoredDeal(parsed[1].copy(), entry.revision)  # the caller may edit its deal

    def _forget_all_but(self, keys: Collection[str]) -> None:
        if len(self._parsed) > len(keys):
            for gone in self._parsed.keys() - set(keys):
                del self._parsed[gone]

    async def all_deals(self) -> list[StoredDeal]:
        out = []
        keys = await self.deals.keys()
        for key in keys:
            stored = await self.deal(key)
            if stored is not None:
                out.append(stored)
        self._forget_all_but(keys)
        return out

    async def deals_involving(self, unit_id: str) -> list[StoredDeal]:
        """The deals `unit_id` takes part in (what `all_deals` gives, filtered): every unit
        asks at each acquisition, so a deal seen not to involve it is read again only when
        its revision changed (revisions only grow within a bucket; should they go back, a
        bucket made anew, everything is read again)."""
        revisions = await self.deals.revisions()
        foreign = self._foreign
        highest = max(revisions.values()) if revisions else None
        if self._foreign_of != unit_id or (
            highest is not None and highest < self._highest_revision
        ):
            foreign.clear()
            self._foreign_of = unit_id
        if highest is not None:
            self._highest_revision = highest
        out = []
        for key, revision in revisions.items():
            if foreign.get(key) == revision:
                continue  # unchanged since it was seen not to be ours
            entry = await self.deals.get(key)
            if entry is None:
                continue
            value = entry.value
            if isinstance(value, dict):
                charge, discharge = value.get("chargeUnitId"), value.get("dischargeUnitId")
                if isinstance(charge, str) and isinstance(discharge, str) and (
                    unit_id != charge and unit_id != discharge
                ):
                    # well-formed and not ours (a malformed one is parsed: it fails)
                    foreign[key] = entry.revision
                    continue
            foreign.pop(key, None)
            out.append(self._stored(key, entry))
        if len(foreign) > len(revisions):
            for gone in foreign.keys() - revisions.keys():
                del foreign[gone]
        self._forget_all_but(revisions)
        return out

    async def update_deal(self, deal: Deal, revision: int) -> int:
        """Compare-and-set; RevisionMismatch if somebody changed the deal meanwhile."""
        return await self.update_deal_json(deal.deal_id, deal.to_json(), revision)

    async def update_deal_json(self, deal_id: str, value: JSON, revision: int) -> int:
        """`update_deal` with the deal's JSON form (``deal.to_json()``) already made."""
        return await self.deals.update(deal_id, value, revision)

    async def remove_deal(self, deal_id: str) -> None:
        await self.deals.delete(deal_id)

    # ---- need to stop --------------------------------------------------------------------

    async def add_need_to_stop(self, deal_id: str, reasons: list[str]) -> None:
        """Merge `reasons` into the deal's need-to-stop list (duplicates dropped)."""
        for _ in range(3):  # optimistic retry, as the original
            entry = await self.need_to_stop.get(deal_id)
            present: list[Any] = list(entry.value) if entry is not None else []
            merged = present + [r for r in reasons if r not in present]
            try:
                if entry is None:
                    await self.need_to_stop.create(deal_id, merged)
                else:
                    await self.need_to_stop.update(deal_id, merged, entry.revision)
                return
            except (KeyExists, RevisionMismatch):
                continue
        raise RevisionMismatch(f"need-to-stop {deal_id}: changed concurrently 3 times")

    async def need_to_stop_reasons(self, deal_id: str) -> list[str]:
        entry = await self.need_to_stop.get(deal_id)
        return [str(r) for r in entry.value] if entry is not None else []

    async def clear_need_to_stop(self, deal_id: str) -> None:
        await self.need_to_stop.delete(deal_id)


def _parse(value: JSON) -> Deal:
    """`Deal.from_json(value)`, shared with the other registries when `value` is a stored
    read-only snapshot (it cannot change, so its parse cannot go stale)."""
    if type(value) is not ReadOnlyDict:
        return Deal.from_json(value)
    return _shared_parses.get(value)
