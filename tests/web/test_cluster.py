"""The app against a real in-process cluster (emulated units, in-memory bus) in virtual time:
finished deals reach the history, mode changes reach the units, injected deals and errors
reach the cluster."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from apis import clock
from apis.config import load_cluster
from apis.config.generate import default_cluster_dir
from apis.demo import emulated_cluster
from apis.web.app import create_app
from apis.web.service import Operations

pytestmark = pytest.mark.timeout(600)
TOKEN = "t"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, f"{what}: not within {timeout} simulated s"
        await asyncio.sleep(5.0)


def test_history_modes_and_injection_on_a_real_cluster(tmp_path: Path) -> None:
    async def main() -> None:
        config = load_cluster(default_cluster_dir())
        world, cluster = emulated_cluster(config, deal_log_tmpdir=str(tmp_path))
        async with cluster.running():
            app = create_app(cluster.hub.connect("web"), token=TOKEN, world=world)
            ops: Operations = app.state.ops
            transport = httpx.ASGITransport(app=app)
            async with ops.running(), httpx.AsyncClient(
                transport=transport, base_url="http://test"
            ) as c:
                async def units_ok() -> bool:
                    units = (await c.get("/api/units")).json()["units"]
                    return len(units) == 4

                await until(units_ok, 300, "all four units")
                units = (await c.get("/api/units")).json()["units"]
                grid_masters = [u for u, d in units.items() if d["apis"].get("is_grid_master")]
                assert len(grid_masters) == 1
                view = (await c.get("/api/cluster")).json()
                assert view["gridMaster"] == grid_masters[0]
                assert view["grid"]["available"] is True

                async def finished() -> bool:
                    return bool((await c.get("/api/deals/history")).json()["count"])

                await until(finished, 4 * 3600, "a finished deal")
                record = (await c.get("/api/deals/history")).json()["deals"][0]
                assert record["ended"] in ("completed", "aborted", "scrammed")
                assert record["deactivateDateTime"] and record["dealId"]

                # Soft Stop through the API reaches every unit's data.
                r = await c.put("/api/operation-mode", json={"mode": "heteronomous"},
                                headers=AUTH)
                assert r.status_code == 200, r.text

                async def units_heteronomous() -> bool:
                    data = (await c.get("/api/units")).json()["units"].values()
                    return all(d["apis"]["operation_mode"]["global"] == "heteronomous"
                               for d in data)

                await until(units_heteronomous, 120, "units in Soft Stop")
                modes = (await c.get("/api/operation-mode")).json()
                assert modes["global"] == "heteronomous" and modes["changedBy"].startswith("web")

                # An error published through the API is seen on the bus and listed.
                error = {"unitId": "E003", "category": "USER", "extent": "LOCAL",
                         "level": "WARN", "message": "from the web test"}
                assert (await c.post("/api/errors", json=error, headers=AUTH)).status_code == 200

                async def listed() -> bool:
                    errors = (await c.get("/api/errors")).json()["errors"]
                    return any(e["message"] == "from the web test" for e in errors)

                await until(listed, 60, "the injected error")

                # Soft Stop drains the running deals; then an injected deal is created.
                async def drained() -> bool:
                    return not (await c.get("/api/deals")).json()["deals"]

                await until(drained, 2 * 3600, "running deals to finish in Soft Stop")
                deal = {"dischargeUnitId": "E001", "chargeUnitId": "E002",
                        "dealGridCurrentA": 1.0, "dealAmountWh": 20.0}
                r = await c.post("/api/deals", json=deal, headers=AUTH)
                assert r.status_code == 200, r.text
                new_id = r.json()["deal"]["dealId"]

                async def listed_deal() -> bool:
                    deals = (await c.get("/api/deals")).json()["deals"]
                    history = (await c.get("/api/deals/history")).json()["deals"]
                    return any(d["dealId"] == new_id for d in deals + history)

                await until(listed_deal, 120, "the injected deal")
                # Force Stop refuses injection.
                r = await c.put("/api/operation-mode", json={"mode": "stop"}, headers=AUTH)
                assert r.status_code == 200
                r = await c.post("/api/deals", json=deal, headers=AUTH)
                assert r.status_code == 409
        assert not world.voltage_conflicts

    clock.run(main, "virtual")
