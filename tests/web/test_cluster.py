"""The app against a real in-process cluster (emulated units, in-memory bus) in virtual time:
finished deals reach the history, mode changes reach the units, injected deals and errors
reach the cluster."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from apis import clock
from apis.config import load_cluster
from apis.config.generate import default_cluster_dir
from apis.demo import emulated_cluster
from apis.web.app import create_app
from apis.web.service import Operations
from tests.web.checks import manual_and_waiting, until

pytestmark = pytest.mark.timeout(600)
TOKEN = "t"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


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


def test_local_mode_and_manual_control_on_a_real_cluster(tmp_path: Path) -> None:
    """Spec 13 scenarios 7 and 10 through the API: a local Force Stop shows as the unit's
    effective mode; in Manual a CV command on E001 and a discharge on E002 drive the
    converters; outside Manual the same command is refused."""

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
                async def unit(unit_id: str) -> dict[str, object]:
                    data: dict[str, object] = (await c.get(f"/api/units/{unit_id}")).json()[
                        "data"]
                    return data

                async def units_ok() -> bool:
                    return len((await c.get("/api/units")).json()["units"]) == 4

                await until(units_ok, 300, "all four units")
                r = await c.put("/api/units/E003/operation-mode", json={"mode": "stop"},
                                headers=AUTH)
                assert r.status_code == 200, r.text

                async def e003_stopped() -> bool:
                    modes = (await unit("E003"))["apis"]["operation_mode"]  # type: ignore[index]
                    return modes == {"global": "autonomous", "local": "stop",
                                     "effective": "stop"}

                await until(e003_stopped, 60, "E003 local stop")
                r = await c.put("/api/units/E003/operation-mode", json={"mode": None},
                                headers=AUTH)
                assert r.status_code == 200

                cv = {"mode": "VOLTAGE_REFERENCE", "gridVoltageV": 350, "gridCurrentA": 2.3}
                r = await c.post("/api/units/E001/dcdc", json=cv, headers=AUTH)
                assert r.status_code == 409  # not in Manual
                assert (await c.put("/api/operation-mode", json={"mode": "manual"},
                                    headers=AUTH)).status_code == 200

                await until(lambda: manual_and_waiting(c), 300,
                            "Manual with every converter waiting")
                # Let the grid voltage decay: a CV start is refused on a live grid.
                await asyncio.sleep(60)
                r = await c.post("/api/units/E001/dcdc", json=cv, headers=AUTH)
                assert r.status_code == 200, r.text

                async def grid_up() -> bool:
                    meter = (await unit("E001"))["dcdc"]["meter"]  # type: ignore[index]
                    return bool(abs(meter["vg"] - 350) <= 5)

                # The operator's rule: let the grid voltage settle before the CC side starts.
                await until(grid_up, 120, "the grid voltage from E001")
                r = await c.post("/api/units/E002/dcdc",
                                 json={"mode": "DISCHARGE", "gridVoltageV": 370,
                                       "gridCurrentA": 1.0}, headers=AUTH)
                assert r.status_code == 200, r.text

                async def driven() -> bool:
                    e1, e2 = await unit("E001"), await unit("E002")
                    m1 = e1["dcdc"]["meter"]  # type: ignore[index]
                    m2 = e2["dcdc"]["meter"]  # type: ignore[index]
                    return (e1["dcdc"]["status"]["status"] == "0x0014"  # type: ignore[index]
                            and e2["dcdc"]["status"]["status"] == "0x0002"  # type: ignore[index]
                            and abs(m1["vg"] - 350) <= 5 and abs(m2["ig"] + 1.0) < 0.2)

                await until(driven, 60, "E001 CV and E002 discharging 1 A")
                r = await c.post("/api/units/E002/dcdc", json={"mode": "WAIT"}, headers=AUTH)
                assert r.status_code == 200
                r = await c.post("/api/units/E001/dcdc", json={"mode": "WAIT"}, headers=AUTH)
                assert r.status_code == 200

    clock.run(main, "virtual")
