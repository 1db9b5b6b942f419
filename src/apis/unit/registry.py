"""The cluster's shared state in the bus key-value store.

- The Grid Master lock (`gridMasterUnitId` in bucket `apis_state`), taken with
  create-if-absent. Its revision is the *fencing token* (epoch): every converter command
  carries it, and a Controller refuses a command whose epoch is older than one it has seen
  or is not the lock's present revision.
- The global operation mode (`operationMode` in `apis_state`).
- The deal registry (bucket `apis_deals`, key = dealId), updated by compare-and-set on the
  revision so a concurrent change makes an update fail instead of being lost.
- Need-to-stop reasons (bucket `apis_need_to_stop`, key = dealId, entries expire after 30
  minutes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from apis.bus.base import Bus, KeyExists, KeyValue, RevisionMismatch
from apis.unit.deal import Deal

STATE_BUCKET = "apis_state"
DEALS_BUCKET = "apis_deals"
NEED_TO_STOP_BUCKET = "apis_need_to_stop"
GRID_MASTER_KEY = "gridMasterUnitId"
OPERATION_MODE_KEY = "operationMode"
NEED_TO_STOP_TTL_S = 30 * 60.0
OPERATION_MODES = ("autonomous", "heteronomous", "stop", "manual")


@dataclass(frozen=True, slots=True)
class GridMasterLock:
    unit_id: str
    epoch: int  # the lock entry's revision: the fencing token


@dataclass(frozen=True, slots=True)
class StoredDeal:
    deal: Deal
    revision: int


class Registry:
    """Typed access to the shared buckets; open it once per unit with `open`."""

    def __init__(self, state: KeyValue, deals: KeyValue, need_to_stop: KeyValue) -> None:
        self.state = state
        self.deals = deals
        self.need_to_stop = need_to_stop

    @classmethod
    async def open(cls, bus: Bus) -> Registry:
        return cls(
            await bus.kv(STATE_BUCKET),
            await bus.kv(DEALS_BUCKET),
            await bus.kv(NEED_TO_STOP_BUCKET, ttl=NEED_TO_STOP_TTL_S),
        )

    # ---- Grid Master lock ----------------------------------------------------------------

    async def grid_master(self) -> GridMasterLock | None:
        entry = await self.state.get(GRID_MASTER_KEY)
        if entry is None or not isinstance(entry.value, str):
            return None
        return GridMasterLock(entry.value, entry.revision)

    async def acquire_grid_master(self, unit_id: str) -> GridMasterLock:
        """Take the lock; raise KeyExists when anybody (even `unit_id`) holds it."""
        revision = await self.state.create(GRID_MASTER_KEY, unit_id)
        return GridMasterLock(unit_id, revision)

    async def release_grid_master(self, unit_id: str) -> bool:
        """Release the lock if `unit_id` holds it; True if released."""
        lock = await self.grid_master()
        if lock is None or lock.unit_id != unit_id:
            return False
        try:
            await self.state.delete(GRID_MASTER_KEY, revision=lock.epoch)
        except RevisionMismatch:
            return False
        return True

    async def clear_grid_master(self) -> None:
        await self.state.delete(GRID_MASTER_KEY)

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
            return None
        return StoredDeal(Deal.from_json(entry.value), entry.revision)

    async def all_deals(self) -> list[StoredDeal]:
        out = []
        for key in await self.deals.keys():
            stored = await self.deal(key)
            if stored is not None:
                out.append(stored)
        return out

    async def update_deal(self, deal: Deal, revision: int) -> int:
        """Compare-and-set; RevisionMismatch if somebody changed the deal meanwhile."""
        return await self.deals.update(deal.deal_id, deal.to_json(), revision)

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
