"""The emulator's read-only /get/conflicts route: the alarm the cluster tests watch."""

from __future__ import annotations

import asyncio

import httpx

from apis.emulator import ConverterModel, World
from apis.emulator.server import create_emulator_app


async def test_conflicts_route_reports_two_stiff_voltage_references() -> None:
    world = World.with_units(
        3, initial_rsoc=50.0, converter=ConverterModel(voltage_ramp_v_per_s=3000.0)
    )
    for unit in world.unit_ids:
        world.set_house_override(unit, pv_w=0.0, load_w=0.0)
    transport = httpx.ASGITransport(app=create_emulator_app(world))
    async with asyncio.TaskGroup() as tasks:
        stepping = tasks.create_task(world.run(period_s=0.01))
        async with httpx.AsyncClient(transport=transport, base_url="http://emulator") as c:
            quiet = (await c.get("/get/conflicts")).json()
            assert quiet == {"active": False, "voltageConflicts": [], "droopParallels": []}
            for unit in ("E001", "E002"):
                r = await c.post(f"/set/dcdc/{unit}",
                                 params={"mode": "0x0014", "dvg": 350, "drg": 0, "dig": 2})
                assert r.status_code == 200
            await asyncio.sleep(0.5)
            fight = (await c.get("/get/conflicts")).json()
            await c.post("/set/dcdc/E002", params={"mode": "0x0000", "dvg": 350, "dig": 0})
            await asyncio.sleep(0.3)
            after = (await c.get("/get/conflicts")).json()
        stepping.cancel()
    assert fight["active"] is True, fight
    assert fight["voltageConflicts"][0]["unitIds"] == ["E001", "E002"]
    assert fight["voltageConflicts"][0]["endS"] is None
    assert after["active"] is False
    assert after["voltageConflicts"][0]["endS"] is not None
