"""One voltage reference through the operations API (issue 21, item 2): in Manual mode,
concurrent `POST /api/units/<id>/dcdc {"mode": "VOLTAGE_REFERENCE"}` for different units
on a real in-process cluster (emulated units, in-memory bus, virtual time). Each unit used to
read the grid (no voltage yet) and then set its mode, so every request won and the emulator
recorded a voltage conflict; now the units' claim in the store lets exactly one win and the
others get a 409 naming the holder."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from apis import clock
from apis.config import load_cluster
from apis.config.generate import default_cluster_dir
from apis.demo import emulated_cluster
from apis.hardware.modes import ConverterMode
from apis.web.app import create_app
from apis.web.service import Operations
from tests.web.checks import manual_and_waiting, until

pytestmark = pytest.mark.timeout(600)
TOKEN = "t"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TRIALS = 20


def test_concurrent_manual_voltage_reference_requests_one_wins(tmp_path: Path) -> None:
    """20 trials, E003 and E004 at once (odd trials: all four units at once): exactly one
    request succeeds, the others are refused naming the winner; 10 s later only the winner
    is in CV and the emulator has recorded no voltage conflict; the winner's WAIT frees the
    voltage reference for the next trial."""

    async def main() -> list[str]:
        config = load_cluster(default_cluster_dir())
        world, cluster = emulated_cluster(config, deal_log_tmpdir=str(tmp_path))
        policy = config.policy
        free_v = policy.operation_grid_voltage_v_range.min + 2 * policy.grid_voltage_separation_v
        async with cluster.running():
            app = create_app(cluster.hub.connect("web"), token=TOKEN, world=world)
            ops: Operations = app.state.ops
            transport = httpx.ASGITransport(app=app)
            async with ops.running(), httpx.AsyncClient(
                transport=transport, base_url="http://test"
            ) as c:
                async def units_ok() -> bool:
                    return len((await c.get("/api/units")).json()["units"]) == 4

                await until(units_ok, 300, "all four units", step=1.0)
                r = await c.put("/api/operation-mode", json={"mode": "manual"}, headers=AUTH)
                assert r.status_code == 200, r.text

                await until(lambda: manual_and_waiting(c), 300,
                            "Manual with every converter waiting", step=1.0)
                # Deals found in Manual are scrammed (the voltage reference a few seconds
                # after the others) and the cluster reset: let that be over.
                await asyncio.sleep(60)

                async def grid_free() -> bool:  # what the units' own check asks
                    return all(world.unit_data(u).dcdc.meter.vg <= free_v
                               for u in config.unit_ids)

                winners = []
                for trial in range(TRIALS):
                    await until(grid_free, 300, f"trial {trial}: grid voltage decayed", step=1.0)
                    units = config.unit_ids if trial % 2 else ["E003", "E004"]
                    body = {"mode": "VOLTAGE_REFERENCE", "gridVoltageV": 350,
                            "gridCurrentA": 2.0}
                    replies = await asyncio.gather(*(
                        c.post(f"/api/units/{u}/dcdc", json=body, headers=AUTH) for u in units
                    ))
                    won = [u for u, r in zip(units, replies, strict=True)
                           if r.status_code == 200]
                    assert len(won) == 1, (trial, [(r.status_code, r.text) for r in replies])
                    winner = won[0]
                    for u, r in zip(units, replies, strict=True):
                        if u != winner:
                            assert r.status_code == 409, (trial, u, r.text)
                            detail = r.json()["detail"]
                            assert detail.startswith(
                                f"manual VOLTAGE_REFERENCE on {u} refused by the unit: "), detail
                            assert f"claimed by {winner} (claim " in detail, detail
                    await asyncio.sleep(10.0)  # the conflict was still on after 10 s
                    in_cv = [u for u in config.unit_ids
                             if world.unit_data(u).dcdc.mode is ConverterMode.VOLTAGE_REFERENCE]
                    assert in_cv == [winner], (trial, in_cv)
                    assert world.voltage_conflicts == [], (trial, world.voltage_conflicts)
                    r = await c.post(f"/api/units/{winner}/dcdc", json={"mode": "WAIT"},
                                     headers=AUTH)
                    assert r.status_code == 200, r.text
                    winners.append(winner)
                assert world.voltage_conflicts == []
                assert world.droop_parallels == []
                return winners

    winners = clock.run(main, "virtual")
    assert len(winners) == TRIALS
