"""`Registry.deals_involving`: a unit's own deals, reading foreign deals only when changed."""

from __future__ import annotations

import asyncio

from apis.bus.memory import MemoryHub, MemoryKeyValue
from apis.unit.deal import Deal
from apis.unit.registry import Registry


def deal(deal_id: str, charge: str, discharge: str, amount: float = 300.0) -> Deal:
    return Deal(charge, "n-" + deal_id, charge, discharge, "charge", charge, discharge, 1.0,
                amount, deal_id=deal_id)


def test_foreign_deals_are_read_again_only_when_they_change() -> None:
    async def main() -> None:
        hub = MemoryHub()
        gm = await Registry.open(hub.connect("E001"))
        unit = await Registry.open(hub.connect("E003"))
        gets: list[str] = []
        assert isinstance(unit.deals, MemoryKeyValue)
        real_get = unit.deals.get

        async def counted_get(key: str):  # type: ignore[no-untyped-def]
            gets.append(key)
            return await real_get(key)

        unit.deals.get = counted_get  # type: ignore[method-assign]

        await gm.create_deal(deal("d1", "E001", "E002"))
        await gm.create_deal(deal("d2", "E003", "E004"))
        assert [s.deal.deal_id for s in await unit.deals_involving("E003")] == ["d2"]
        assert sorted(gets) == ["d1", "d2"]

        gets.clear()
        assert [s.deal.deal_id for s in await unit.deals_involving("E003")] == ["d2"]
        assert gets == ["d2"]  # its own deal is read each time, the foreign one not

        # a foreign deal that changes is read again, and may now involve this unit
        stored = await gm.deal("d1")
        assert stored is not None
        changed = stored.deal
        changed.discharge_unit_id = "E003"
        await gm.update_deal(changed, stored.revision)
        gets.clear()
        mine = {s.deal.deal_id: s.deal for s in await unit.deals_involving("E003")}
        assert sorted(gets) == ["d1", "d2"]
        assert set(mine) == {"d1", "d2"} and mine["d1"].discharge_unit_id == "E003"

        # removed and created again under the same id: a new revision, read again
        await gm.remove_deal("d2")
        await gm.create_deal(deal("d2", "E001", "E002", amount=100.0))
        assert [s.deal.deal_id for s in await unit.deals_involving("E003")] == ["d1"]
        await gm.remove_deal("d2")
        await gm.create_deal(deal("d2", "E003", "E002", amount=200.0))
        mine = {s.deal.deal_id: s.deal for s in await unit.deals_involving("E003")}
        assert set(mine) == {"d1", "d2"} and mine["d2"].deal_amount_wh == 200.0

        # asked for another unit: nothing remembered for E003 is trusted
        assert [s.deal.deal_id for s in await unit.deals_involving("E002")] == ["d2"]

    asyncio.run(main())
