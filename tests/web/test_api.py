"""Every route of the operations app against a fake cluster on an in-memory bus,
including the refusals: no token, wrong token, bad parameters, manual control or shutdown
outside Manual, deal injection in Force Stop."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from apis.bus.base import signed
from apis.bus.memory import MemoryHub
from apis.config import load_cluster
from apis.config.generate import default_cluster_dir
from apis.emulator import World
from apis.store.history import HistoryStore
from apis.web.app import create_app
from apis.web.service import Operations
from tests.web.fakes import FakeCluster, deal

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Env:
    client: httpx.AsyncClient
    fake: FakeCluster
    ops: Operations
    store: HistoryStore
    hub: MemoryHub

    async def publish_deal_log(self, sender: str, record: dict[str, Any]) -> None:
        """A deal record from the bus client whose identity is `sender` (signed)."""
        await self.hub.connect(sender).publish(signed("apis.Mediator.deal.log", sender), record)


async def _env(mode_handlers: bool = True, world: World | None = None) -> AsyncIterator[Env]:
    hub = MemoryHub()
    fake = await FakeCluster(hub, mode_handlers=mode_handlers).start()
    store = HistoryStore()
    app = create_app(hub.connect("web"), token=TOKEN, store=store, world=world)
    ops: Operations = app.state.ops
    async with ops.running():
        await ops.refresh()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield Env(client, fake, ops, store, hub)
    await fake.close()
    store.close()


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    async for e in _env():
        yield e


@pytest.fixture
async def env_kv_only() -> AsyncIterator[Env]:
    """A cluster whose units do not handle `apis.operationMode`: the app writes the key."""
    async for e in _env(mode_handlers=False):
        yield e


async def eventually(check, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


# ---- page, static files, docs ------------------------------------------------------------


async def test_page_static_files_and_docs(env: Env) -> None:
    c = env.client
    page = await c.get("/")
    assert page.status_code == 200 and "APIS operations" in page.text
    for path in ("/static/app.js", "/static/style.css", "/static/vendor/uplot/uPlot.iife.min.js",
                 "/static/vendor/uplot/uPlot.min.css", "/static/vendor/uplot/LICENSE",
                 "/static/favicon.svg"):
        assert (await c.get(path)).status_code == 200, path
    docs = await c.get("/docs")
    assert docs.status_code == 200 and "/static/vendor/swagger-ui/swagger-ui-bundle.js" in docs.text
    assert "cdn" not in docs.text.lower() and "http" not in docs.text.replace("http-equiv", "")
    for path in ("/static/vendor/swagger-ui/swagger-ui-bundle.js",
                 "/static/vendor/swagger-ui/swagger-ui.css"):
        assert (await c.get(path)).status_code == 200, path
    assert "http://" not in page.text and "https://" not in page.text  # nothing from a CDN
    spec = (await c.get("/openapi.json")).json()
    for path in ("/api/cluster", "/api/units", "/api/deals", "/api/deals/history", "/api/grid",
                 "/api/errors", "/api/operation-mode", "/api/stop-all", "/api/events",
                 "/get/log", "/deals", "/getStatus", "/active", "/setOperationMode"):
        assert path in spec["paths"], path


async def test_unknown_paths(env: Env) -> None:
    r = await env.client.get("/nope")
    assert r.status_code == 404 and r.json() == {"error": "not found : /nope"}
    r = await env.client.get("/api/nope")
    assert r.status_code == 404 and "detail" in r.json()
    assert (await env.client.get("/static/nope.js")).status_code == 404


# ---- reading -----------------------------------------------------------------------------


async def test_cluster_view(env: Env) -> None:
    view = (await env.client.get("/api/cluster")).json()
    assert [u["id"] for u in view["units"]] == ["E001", "E002", "E003"]
    assert view["gridMaster"] == "E001"
    assert view["snapshot"]["ok"] is True and view["snapshot"]["ageS"] >= 0
    e1 = view["units"][0]
    assert e1["isVoltageReference"] and e1["isGridMaster"] and e1["rsoc"] == 40.0
    assert view["modes"]["global"] == "autonomous"
    assert view["grid"]["available"] is False


async def test_units_and_unit_ids(env: Env) -> None:
    c = env.client
    units = (await c.get("/api/units")).json()
    assert set(units["units"]) == {"E001", "E002", "E003"}
    assert units["error"] is None and units["ageS"] >= 0 and units["takenAt"] > 0
    one = (await c.get("/api/units/E002")).json()
    assert one["data"]["battery"]["rsoc"] == 50.0
    r = await c.get("/api/units/E999")
    assert r.status_code == 404 and "E999" in r.json()["detail"]
    assert (await c.get("/api/unit-ids")).json() == ["E001", "E002", "E003"]
    assert (await c.get("/unitIds")).json() == ["E001", "E002", "E003"]
    get_log = await c.get("/get/log")
    assert get_log.text.endswith("\n") and set(get_log.json()) == {"E001", "E002", "E003"}
    assert set((await c.get("/get/logInfo")).json()) == {"E001", "E002", "E003"}
    assert (await c.get("/get/unit/E003")).json()["oesunit"]["id"] == "E003"
    assert (await c.get("/get/unit/E999")).status_code == 404


async def test_last_good_snapshot_is_served_with_its_age(env: Env) -> None:
    env.fake.grid_master_up = False
    await env.ops.refresh()
    units = (await env.client.get("/api/units")).json()
    assert set(units["units"]) == {"E001", "E002", "E003"}  # the cached answer
    assert units["error"] and "RemoteFailure" in units["error"]
    assert units["ageS"] >= 0
    view = (await env.client.get("/api/cluster")).json()
    assert view["snapshot"]["ok"] is False
    assert set((await env.client.get("/get/log")).json()) == {"E001", "E002", "E003"}


async def test_deals_full_and_budo(env: Env) -> None:
    env.fake.deals = [deal("d1", cumulateAmountWh=25.0, startDateTime="2026/01/01-10:01:00")]
    await env.ops.refresh()
    full = (await env.client.get("/api/deals")).json()["deals"]
    assert full[0]["dealId"] == "d1" and full[0]["cumulateAmountWh"] == 25.0
    view = (await env.client.get("/api/cluster")).json()
    flow = view["deals"][0]
    assert (flow["dischargeUnitId"], flow["chargeUnitId"]) == ("E001", "E002")
    assert flow["progress"] == 0.25 and flow["state"] == "started"
    budo = [{"chargingUnit": "E002", "dischargingUnit": "E001", "isMasterDeal": True,
             "request": "DISCHARGE", "requester": "E001", "responder": "E002",
             "startTime": "2026/01/01-10:00:00"}]
    assert (await env.client.get("/deals")).json() == budo
    assert (await env.client.get("/get/dealsInfo")).json() == budo


async def test_deals_fall_back_to_the_registry(env: Env) -> None:
    env.fake.deals = []
    kv = await env.fake.bus.kv("apis_deals")
    await kv.put("d9", deal("d9"))
    await env.fake.close()  # no Mediator answers any more
    await env.ops.refresh()
    assert [d["dealId"] for d in (await env.client.get("/api/deals")).json()["deals"]] == ["d9"]


async def test_deal_history(env: Env) -> None:
    live = deal("live")
    done = deal("done", deactivateDateTime="2026/01/01-10:30:00", cumulateAmountWh=100.0)
    aborted = deal("gone", discharge="E003", charge="E002",
                   abortDateTime="2026/01/01-10:10:00", deactivateDateTime="--")
    for record in (live, done, aborted):  # published by one of the deal's units
        await env.publish_deal_log(record["chargeUnitId"], record)
    await eventually(lambda: env.store.deal_count() == 2)
    c = env.client
    history = (await c.get("/api/deals/history")).json()
    assert history["count"] == 2
    assert {d["dealId"]: d["ended"] for d in history["deals"]} == {
        "done": "completed", "gone": "aborted"}
    only = (await c.get("/api/deals/history", params={"unitId": "E003"})).json()["deals"]
    assert [d["dealId"] for d in only] == ["gone"]
    assert len((await c.get("/api/deals/history", params={"limit": 1})).json()["deals"]) == 1
    for bad in ({"limit": 0}, {"limit": 5000}, {"limit": "x"}, {"offset": -1}):
        assert (await c.get("/api/deals/history", params=bad)).status_code == 422, bad
    await env.ops.refresh()
    view = (await c.get("/api/cluster")).json()
    assert view["history"] == {"count": 2, "energyWh": 100.0}


async def test_deal_history_keeps_a_deal_from_forged_records(env: Env) -> None:
    """The Grid Master (E001 here) or a unit of the deal may record it; a record from
    another unit, or of another deal under the same dealId, replaces nothing."""
    done = deal("x1", discharge="E003", charge="E002",
                deactivateDateTime="2026/01/01-10:30:00", cumulateAmountWh=100.0)
    await env.publish_deal_log("E001", done)  # the Grid Master
    await eventually(lambda: env.store.deal_count() == 1)
    forged = [
        ({**done, "cumulateAmountWh": 0.0}, "E004"),  # not a unit of the cluster's deal
        ({**done, "cumulateAmountWh": 1.0}, "fake-cluster"),  # a client that is no unit
        ({**done, "chargeUnitId": "E004", "requestUnitId": "E004", "cumulateAmountWh": 2.0},
         "E004"),  # another deal, by one of its units
        ({**done, "createDateTime": "2026/01/02-10:00:00", "cumulateAmountWh": 3.0}, "E002"),
    ]
    for record, sender in forged:
        await env.publish_deal_log(sender, record)
    # a client claiming in the headers to be a unit of the deal
    await env.fake.bus.publish(signed("apis.Mediator.deal.log", "fake-cluster"),
                               {**done, "cumulateAmountWh": 4.0}, {"unitId": "E003"})
    marker = deal("x2", deactivateDateTime="2026/01/01-10:40:00")  # delivered after them
    await env.publish_deal_log("E002", marker)
    await eventually(lambda: env.store.deal_count() == 2)
    kept = next(d for d in env.store.deals() if d["dealId"] == "x1")
    assert kept["cumulateAmountWh"] == 100.0
    assert env.store.energy_wh() == 100.0
    later = {**done, "cumulateAmountWh": 101.0}
    await env.publish_deal_log("E003", later)
    await eventually(lambda: env.store.energy_wh() != 100.0)
    [stored] = [d for d in env.store.deals() if d["dealId"] == "x1"]
    assert stored["cumulateAmountWh"] == 101.0 and stored["chargeUnitId"] == "E002"
    assert stored["createDateTime"] == done["createDateTime"]


async def test_grid_not_available_without_emulator(env: Env) -> None:
    grid = (await env.client.get("/api/grid")).json()
    assert grid["available"] is False and grid["reason"]


async def test_grid_with_emulator() -> None:
    config = load_cluster(default_cluster_dir())
    world = World([(u.unit_id, u.hw_config) for u in config.units], config.grid)
    world.step(0.0)
    async for env in _env(world=world):
        grid = (await env.client.get("/api/grid")).json()
        assert grid["available"] is True
        assert {n["id"] for n in grid["nodes"]} >= {"E001", "E002", "E003", "E004"}
        assert all(n["voltageV"] is not None for n in grid["nodes"])
        assert grid["lines"] and all("currentA" in ln and "lossWh" in ln for ln in grid["lines"])
        assert grid["voltageConflicts"] == []
        view = (await env.client.get("/api/cluster")).json()
        assert view["grid"]["available"] and "E001" in view["grid"]["nodeVoltages"]


async def test_errors_seen_on_the_bus(env: Env) -> None:
    error = {"unitId": "E002", "category": "HARDWARE", "extent": "LOCAL", "level": "ERROR",
             "message": "converter alarm"}
    await env.fake.bus.publish("apis.error", error)
    await eventually(lambda: env.store.error_count() == 1)
    got = (await env.client.get("/api/errors")).json()
    assert got["count"] == 1
    assert got["errors"][0] | error == got["errors"][0] and got["errors"][0]["source"] == "cluster"
    assert (await env.client.get("/api/errors", params={"unitId": "E001"})).json()["errors"] == []
    assert (await env.client.get("/api/errors", params={"limit": 0})).status_code == 422


async def test_operation_mode_read(env: Env) -> None:
    modes = (await env.client.get("/api/operation-mode")).json()
    assert modes["global"] == "autonomous" and modes["globalLabel"] == "Run"
    assert modes["globalErrors"] is False
    assert modes["units"]["E002"] == {"local": None, "effective": "autonomous",
                                      "changedBy": None, "changedAt": None}


# ---- the token -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PUT", "/api/operation-mode", {"mode": "stop"}),
        ("PUT", "/api/units/E001/operation-mode", {"mode": "stop"}),
        ("POST", "/api/units/E001/dcdc", {"mode": "WAIT"}),
        ("POST", "/api/units/E001/shutdown", None),
        ("POST", "/api/shutdown", None),
        ("POST", "/api/stop-all", None),
        ("POST", "/api/deals", deal()),
        ("POST", "/api/errors", {"unitId": "E001", "category": "USER", "extent": "LOCAL",
                                 "level": "WARN"}),
        ("GET", "/api/auth", None),
        ("PUT", "/api/schedules", {"softStopAt": "2099-01-01T00:00:00+00:00"}),
        ("DELETE", "/api/schedules", None),
        ("GET", "/setSchedule?value=2099-01-01T00:00:00%2B00:00", None),
        ("GET", "/active", None),
        ("GET", "/quiet", None),
        ("GET", "/stop", None),
        ("GET", "/manual", None),
        ("GET", "/set/budo/stop", None),
        ("GET", "/setOperationMode?value=stop", None),
        ("GET", "/shutdown", None),
        ("GET", "/stopAll", None),
        ("GET", "/set/dcdc/E001?mode=0x0000", None),
        ("POST", "/deal", deal()),
        ("POST", "/error", {"unitId": "E001"}),
    ],
)
async def test_actions_need_the_token(env: Env, method: str, path: str,
                                      body: dict[str, object] | None) -> None:
    r = await env.client.request(method, path, json=body)
    assert r.status_code == 401, r.text
    r = await env.client.request(method, path, json=body, headers={"X-APIS-Token": "wrong"})
    assert r.status_code == 403, r.text
    sep = "&" if "?" in path else "?"
    r = await env.client.request(method, f"{path}{sep}token=wrong", json=body)
    assert r.status_code == 403, r.text
    # nothing reached the cluster
    assert env.fake.global_mode == "autonomous" and env.fake.local["E001"] is None
    assert not env.fake.manual_commands and not env.fake.created and not env.fake.errors
    assert not env.fake.shutdowns and env.fake.scrams == 0
    assert env.ops.schedules_json() == []


async def test_token_check_route(env: Env) -> None:
    r = await env.client.get("/api/auth", headers={**AUTH, "X-APIS-Operator": "alice"})
    assert r.json() == {"ok": True, "operator": "alice"}
    r = await env.client.get("/api/auth", params={"token": TOKEN})
    assert r.status_code == 200 and r.json()["operator"].startswith("web ")


def test_empty_token_is_refused() -> None:
    with pytest.raises(ValueError):
        create_app(MemoryHub().connect("web"), token="")


# ---- modes -----------------------------------------------------------------------------


async def test_set_global_mode(env: Env) -> None:
    c = env.client
    r = await c.put("/api/operation-mode", json={"mode": "stop"},
                    headers={**AUTH, "X-APIS-Operator": "alice"})
    assert r.status_code == 200, r.text
    assert r.json()["global"] == "stop" and r.json()["via"] == "apis.operationMode"
    assert env.fake.global_mode == "stop"
    await env.ops.refresh()
    modes = (await c.get("/api/operation-mode")).json()
    assert modes["global"] == "stop" and modes["changedBy"] == "alice" and modes["changedAt"] > 0
    history = (await c.get("/api/operation-mode/history")).json()
    assert history[0] | {"at": 0} == {"at": 0, "scope": "global", "from": "autonomous",
                                      "to": "stop", "by": "alice"}
    for bad in ({"mode": "run"}, {"mode": None}, {}, {"mode": "stop", "extra": 1}):
        assert (await c.put("/api/operation-mode", json=bad, headers=AUTH)).status_code == 422
    assert (await c.get("/api/operation-mode/history", params={"limit": 0})).status_code == 422


async def test_set_global_mode_writes_the_key_when_no_unit_handles_it(env_kv_only: Env) -> None:
    env = env_kv_only
    r = await env.client.put("/api/operation-mode", json={"mode": "heteronomous"}, headers=AUTH)
    assert r.status_code == 200 and r.json()["via"] == "apis_state/operationMode"
    kv = await env.fake.bus.kv("apis_state")
    entry = await kv.get("operationMode")
    assert entry is not None and entry.value == "heteronomous"


async def test_mode_changed_by_the_cluster_is_recorded(env: Env) -> None:
    await env.fake.set_stored_mode("autonomous")
    await env.ops.refresh()
    await env.fake.set_stored_mode("stop")  # e.g. the Grid Master after a hardware error
    await env.ops.refresh()
    modes = (await env.client.get("/api/operation-mode")).json()
    assert modes["global"] == "stop" and modes["changedBy"] == "cluster"
    # With the units' audit record, the change names who made it.
    kv = await env.fake.bus.kv("apis_state")
    audit = {"mode": "heteronomous", "previous": "stop", "by": "tester",
             "at": "2026-01-01T10:00:00", "unitId": "E002"}
    await kv.put("operationMode.audit", audit)
    await env.fake.set_stored_mode("heteronomous")
    await env.ops.refresh()
    modes = (await env.client.get("/api/operation-mode")).json()
    assert modes["global"] == "heteronomous" and modes["changedBy"] == "tester"
    assert modes["audit"] == audit


async def test_set_local_mode(env: Env) -> None:
    c = env.client
    r = await c.put("/api/units/E002/operation-mode", json={"mode": "stop"}, headers=AUTH)
    assert r.status_code == 200 and env.fake.local["E002"] == "stop"
    await env.ops.refresh()
    modes = (await c.get("/api/operation-mode")).json()["units"]["E002"]
    assert modes["local"] == "stop" and modes["effective"] == "stop"
    assert modes["changedBy"].startswith("web ")
    r = await c.put("/api/units/E002/operation-mode", json={"mode": None}, headers=AUTH)
    assert r.status_code == 200 and env.fake.local["E002"] is None
    assert (await c.get("/api/operation-mode/history", params={"scope": "E002"})).json()[0][
        "to"] is None
    for bad in ({"mode": "manual"}, {"mode": "autonomous"}, {}):
        r = await c.put("/api/units/E002/operation-mode", json=bad, headers=AUTH)
        assert r.status_code == 422, bad
    r = await c.put("/api/units/E999/operation-mode", json={"mode": "stop"}, headers=AUTH)
    assert r.status_code == 404


# ---- manual control, shutdown ------------------------------------------------------------


async def test_manual_control_refused_outside_manual(env: Env) -> None:
    for mode in ("autonomous", "heteronomous", "stop"):
        await env.fake.set_stored_mode(mode)
        r = await env.client.post("/api/units/E001/dcdc", json={"mode": "WAIT"}, headers=AUTH)
        assert r.status_code == 409, (mode, r.text)
        assert "manual" in r.json()["detail"]
        r = await env.client.get("/set/dcdc/E001", params={"mode": "0x0000", "token": TOKEN})
        assert r.status_code == 409
    assert env.fake.manual_commands == []


async def test_manual_control_in_manual(env: Env) -> None:
    await env.fake.set_stored_mode("manual")
    r = await env.client.post(
        "/api/units/E001/dcdc",
        json={"mode": "VOLTAGE_REFERENCE", "gridVoltageV": 350, "gridCurrentA": 2.3},
        headers=AUTH,
    )
    assert r.status_code == 200, r.text
    assert env.fake.manual_commands == [
        ("E001", {"command": "VOLTAGE_REFERENCE",
                  "params": {"gridVoltageV": 350.0, "gridCurrentA": 2.3}})]
    r = await env.client.get("/set/dcdc/E002",
                             params={"mode": "0x0002", "dvg": 370, "dig": 1, "token": TOKEN})
    assert r.status_code == 200 and r.json() == {"status": {"status": "0x0014"}}
    assert env.fake.manual_commands[-1] == (
        "E002", {"command": "DISCHARGE", "params": {"gridVoltageV": 370.0, "gridCurrentA": 1.0}})


@pytest.mark.parametrize(
    "body",
    [
        {"mode": "CHARGE"},  # no current
        {"mode": "VOLTAGE_REFERENCE", "gridCurrentA": 2.0},  # no voltage
        {"mode": "CHARGE", "gridCurrentA": -1},
        {"mode": "CHARGE", "gridCurrentA": 500},
        {"mode": "VOLTAGE_REFERENCE", "gridVoltageV": 0, "gridCurrentA": 2},
        {"mode": "BOOST", "gridCurrentA": 1},
        {"mode": "WAIT", "dvg": 1},
    ],
)
async def test_manual_control_bad_parameters(env: Env, body: dict[str, object]) -> None:
    await env.fake.set_stored_mode("manual")
    r = await env.client.post("/api/units/E001/dcdc", json=body, headers=AUTH)
    assert r.status_code == 422, r.text
    assert env.fake.manual_commands == []


async def test_manual_control_bad_compat_parameters_and_unknown_unit(env: Env) -> None:
    await env.fake.set_stored_mode("manual")
    r = await env.client.get("/set/dcdc/E001", params={"mode": "0x9999", "token": TOKEN})
    assert r.status_code == 422
    r = await env.client.get("/set/dcdc/E001", params={"mode": "0x0041", "token": TOKEN})
    assert r.status_code == 422  # charge without dig
    r = await env.client.post("/api/units/E999/dcdc", json={"mode": "WAIT"}, headers=AUTH)
    assert r.status_code == 404
    assert env.fake.manual_commands == []


async def test_shutdown_only_in_manual(env: Env) -> None:
    c = env.client
    assert (await c.post("/api/units/E001/shutdown", headers=AUTH)).status_code == 409
    assert (await c.post("/api/shutdown", headers=AUTH)).status_code == 409
    r = await c.get("/shutdown", params={"unitId": "E001", "token": TOKEN})
    assert r.status_code == 409 and r.json()["succeeded"] is False
    assert env.fake.shutdowns == []
    await env.fake.set_stored_mode("manual")
    assert (await c.post("/api/units/E001/shutdown", headers=AUTH)).status_code == 200
    r = await c.get("/shutdown", params={"token": TOKEN})
    assert r.json() == {"succeeded": True}
    await eventually(lambda: env.fake.shutdowns == ["E001", "all"])


# ---- Stop all --------------------------------------------------------------------------


async def test_stop_all_sets_force_stop(env: Env) -> None:
    r = await env.client.post("/api/stop-all", headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["method"] == "forceStop" and env.fake.global_mode == "stop"
    assert set(body["units"]) == {"E001", "E002", "E003"}
    assert all(u["ok"] for u in body["units"].values())
    assert env.fake.scrams == 0


async def test_stop_all_with_global_errors_still_sets_force_stop(env: Env) -> None:
    env.fake.global_errors = True
    r = await env.client.get("/stopAll", params={"token": TOKEN})
    assert r.status_code == 200 and r.text.endswith("\n")
    assert r.json()["stopAll"] == "done." and r.json()["method"] == "forceStop"
    assert env.fake.global_mode == "stop" and env.fake.scrams == 0


async def test_stop_all_sends_wait_when_the_grid_master_does_not_answer(env: Env) -> None:
    env.fake.grid_master_up = False
    r = await env.client.post("/api/stop-all", headers=AUTH)
    body = r.json()
    assert body["method"] == "directWait" and "Grid Master" in body["detail"]
    await eventually(lambda: env.fake.scrams == 1)
    assert all(u == {"ok": True, "mode": "0x0000"} or u["mode"] == "0x0014"
               for u in body["units"].values())
    kv = await env.fake.bus.kv("apis_state")
    entry = await kv.get("operationMode")
    assert entry is not None and entry.value == "stop"


async def test_stop_all_reports_units_that_do_not_answer(env: Env) -> None:
    await env.fake.close()  # nobody answers at all
    r = await env.client.post("/api/stop-all", headers=AUTH)
    body = r.json()
    assert r.status_code == 200 and body["method"] == "directWait"
    assert set(body["units"]) == {"E001", "E002", "E003"}
    assert all(u["ok"] is False and u["error"] for u in body["units"].values())


# ---- injection -------------------------------------------------------------------------


async def test_inject_deal(env: Env) -> None:
    minimal = {"createDateTime": "2026/01/01-10:00:00", "type": "discharge",
               "unitId": "E001", "requestUnitId": "E001", "dischargeUnitId": "E001",
               "acceptUnitId": "E002", "chargeUnitId": "E002", "dealGridCurrentA": 2,
               "dealAmountWh": 100, "pointPerWh": 10,
               "testFeature": {"dcdc": {"failBeforeActivate": True}}}
    r = await env.client.post("/api/deals", json=minimal, headers=AUTH)
    assert r.status_code == 200, r.text
    created = env.fake.created[0]
    assert created["testFeature"] == {"dcdc": {"failBeforeActivate": True}}
    assert created["negotiationId"] and r.json()["deal"]["dealId"] == "injected-1"
    short = {"chargeUnitId": "E003", "dischargeUnitId": "E002", "dealGridCurrentA": 1,
             "dealAmountWh": 50}
    assert (await env.client.post("/api/deals", json=short, headers=AUTH)).status_code == 200
    assert env.fake.created[1]["requestUnitId"] == "E002"
    # the Mediator refuses: 409 with its reason
    same = {**short, "chargeUnitId": "E002"}
    r = await env.client.post("/api/deals", json=same, headers=AUTH)
    assert r.status_code == 409 and "same" in r.json()["detail"]


@pytest.mark.parametrize(
    "body",
    [
        {"chargeUnitId": "E002", "dischargeUnitId": "E001", "dealGridCurrentA": 0,
         "dealAmountWh": 10},
        {"chargeUnitId": "E002", "dischargeUnitId": "E001", "dealGridCurrentA": 1,
         "dealAmountWh": -5},
        {"chargeUnitId": "E002", "dealGridCurrentA": 1, "dealAmountWh": 10},
        {"chargeUnitId": "E002", "dischargeUnitId": "E001", "dealGridCurrentA": 1,
         "dealAmountWh": 10, "type": "sideways"},
    ],
)
async def test_inject_deal_bad_parameters(env: Env, body: dict[str, object]) -> None:
    r = await env.client.post("/api/deals", json=body, headers=AUTH)
    assert r.status_code == 422
    assert env.fake.created == []


async def test_inject_deal_refused_in_force_stop(env: Env) -> None:
    await env.fake.set_stored_mode("stop")
    r = await env.client.post("/api/deals", json=deal(), headers=AUTH)
    assert r.status_code == 409 and "stop" in r.json()["detail"]
    assert env.fake.created == []


async def test_compat_deal_form_and_json(env: Env) -> None:
    form = "json=" + quote(json.dumps(deal()))
    r = await env.client.post(
        f"/deal?token={TOKEN}", content=form,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200 and r.text.startswith("requesting deal creation : ")
    r = await env.client.post("/deal", json=deal(), headers=AUTH)
    assert r.status_code == 200 and len(env.fake.created) == 2
    r = await env.client.post("/deal", content="{not json", headers=AUTH)
    assert r.status_code == 500
    await env.fake.set_stored_mode("stop")
    r = await env.client.post("/deal", json=deal(), headers=AUTH)
    assert r.status_code == 500 and len(env.fake.created) == 2


async def test_inject_error(env: Env) -> None:
    error = {"unitId": "E003", "category": "USER", "extent": "LOCAL", "level": "WARN",
             "message": "test"}
    r = await env.client.post("/api/errors", json=error, headers=AUTH)
    assert r.status_code == 200
    await eventually(lambda: env.fake.errors == [error] and env.store.error_count() == 1)
    assert env.store.errors()[0]["source"] == "injected"
    for bad in ({**error, "category": "COSMIC"}, {**error, "level": "INFO"},
                {**error, "extent": "SOMEWHERE"}, {**error, "unitId": ""}):
        assert (await env.client.post("/api/errors", json=bad, headers=AUTH)).status_code == 422
    form = "unitId=E001&category=HARDWARE&extent=GLOBAL&level=ERROR&message=x"
    r = await env.client.post(f"/error?token={TOKEN}", content=form,
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200 and r.text.startswith("publishing error : ")
    r = await env.client.post(f"/error?token={TOKEN}", content="unitId=E001&category=NOPE",
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 500
    await eventually(lambda: len(env.fake.errors) == 2)


# ---- the original apis-web mode routes -----------------------------------------------


async def test_get_status(env: Env) -> None:
    c = env.client
    assert (await c.get("/getStatus")).json() == {"active": True}
    assert (await c.get("/get/globalmode")).json() == {"active": True}
    env.fake.global_errors = True
    assert (await c.get("/getStatus")).json() == {"active": False}
    env.fake.global_errors = False
    await env.fake.set_stored_mode("stop")
    assert (await c.get("/getStatus")).json() == {"active": False}


@pytest.mark.parametrize(
    ("path", "mode", "active"),
    [("/active", "autonomous", True), ("/quiet", "heteronomous", True),
     ("/stop", "stop", False), ("/manual", "manual", False),
     ("/set/budo/quiet", "heteronomous", True)],
)
async def test_compat_verbs(env: Env, path: str, mode: str, active: bool) -> None:
    await env.fake.set_stored_mode("stop" if mode != "stop" else "autonomous")
    r = await env.client.get(path, params={"token": TOKEN})
    assert r.status_code == 200 and r.json() == {"active": active}
    assert env.fake.global_mode == mode


async def test_compat_set_operation_mode(env: Env) -> None:
    c = env.client
    r = await c.get("/setOperationMode", params={"value": "heteronomous", "token": TOKEN})
    assert r.json() == {"succeeded": True} and env.fake.global_mode == "heteronomous"
    r = await c.get("/setOperationMode",
                    params={"value": "stop", "unitId": "E003", "token": TOKEN})
    assert r.json() == {"succeeded": True} and env.fake.local["E003"] == "stop"
    r = await c.get("/setOperationMode", params={"value": "", "unitId": "E003", "token": TOKEN})
    assert r.json() == {"succeeded": True} and env.fake.local["E003"] is None
    r = await c.get("/setOperationMode", params={"value": "bogus", "token": TOKEN})
    assert r.json()["succeeded"] is False and "bogus" in r.json()["error"]
    r = await c.get("/setOperationMode",
                    params={"value": "manual", "unitId": "E003", "token": TOKEN})
    assert r.json()["succeeded"] is False
    r = await c.get("/setOperationMode", params={"value": "stop", "unitId": "E9",
                                                  "token": TOKEN})
    assert r.json()["succeeded"] is False and "E9" in r.json()["error"]


# ---- Soft Stop schedules ------------------------------------------------------------------


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat()


async def test_schedules_set_list_clear(env: Env) -> None:
    c = env.client
    assert (await c.get("/api/schedules")).json() == []
    at = time.time() + 3600
    r = await c.put("/api/schedules", json={"softStopAt": _iso(at)},
                    headers={**AUTH, "X-APIS-Operator": "bob"})
    assert r.status_code == 200, r.text
    r = await c.put("/api/schedules", json={"unitId": "E002", "softStopAt": _iso(at + 60)},
                    headers=AUTH)
    assert r.status_code == 200
    listed = (await c.get("/api/schedules")).json()
    assert [(s["scope"], s["unitId"], s["by"]) for s in listed] == [
        ("global", None, "bob"), ("E002", "E002", listed[1]["by"])]
    assert abs(listed[0]["at"] - at) < 1e-3
    compat_view = (await c.get("/schedules")).json()
    assert set(compat_view) == {"", "E002"}
    compat_at = datetime.fromisoformat(compat_view[""]["softStop"]).timestamp()
    assert compat_at == pytest.approx(at, abs=1)
    await env.ops.refresh()
    assert len((await c.get("/api/cluster")).json()["schedules"]) == 2
    r = await c.delete("/api/schedules", params={"unitId": "E002"}, headers=AUTH)
    assert r.json() == {"removed": True}
    r = await c.delete("/api/schedules", params={"unitId": "E002"}, headers=AUTH)
    assert r.json() == {"removed": False}
    r = await c.get("/setSchedule", params={"operation": "softStop", "token": TOKEN})
    assert r.json() == {"removed": True}
    assert (await c.get("/api/schedules")).json() == []
    r = await c.get("/setSchedule", params={"operation": "softStop", "unitId": "E003",
                                             "value": _iso(at), "token": TOKEN})
    assert r.status_code == 200 and (await c.get("/schedules")).json().keys() == {"E003"}


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"softStopAt": "2001-01-01T00:00:00+00:00"}, 422),  # in the past
        ({"softStopAt": "tomorrow"}, 422),
        ({}, 422),
        ({"unitId": "E999", "softStopAt": _iso(time.time() + 86400)}, 404),
    ],
)
async def test_schedule_bad_parameters(env: Env, body: dict[str, object], status: int) -> None:
    r = await env.client.put("/api/schedules", json=body, headers=AUTH)
    assert r.status_code == status, r.text
    r = await env.client.get("/setSchedule", params={"operation": "shutDown",
                                                      "value": "2099-01-01T00:00:00+00:00",
                                                      "token": TOKEN})
    assert r.status_code == 422
    assert env.ops.schedules_json() == []


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("0001-01-01T00:00:00", "softStopAt = '0001-01-01T00:00:00' (must be in the future"),
        ("9999-12-31T23:59:59-12:00", "softStopAt = '9999-12-31T23:59:59-12:00' (must be at "
         "most 3660 days ahead: before "),
        ("2027-06-01T00:00:00+20:00", "UTC offset +2000 is not one of Earth's: must be within "
         "-12:00..+14:00"),
    ],
)
async def test_schedule_times_out_of_range_are_422_naming_key_value_and_limit(
    env: Env, value: str, needle: str
) -> None:
    r = await env.client.put("/api/schedules", json={"softStopAt": value}, headers=AUTH)
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body", "softStopAt"] and needle in error["msg"], error
    r = await env.client.get("/setSchedule", params={"value": value, "token": TOKEN})
    assert r.status_code == 422 and needle in r.text, r.text
    assert env.ops.schedules_json() == []
    assert (await env.client.get("/schedules")).status_code == 200


async def test_every_accepted_or_stored_schedule_can_be_listed(env: Env) -> None:
    c = env.client
    latest = _iso(time.time() + 3659 * 86400)
    r = await c.put("/api/schedules", json={"softStopAt": latest}, headers=AUTH)
    assert r.status_code == 200, r.text
    # One the calendar cannot show (stored by an older version, or set straight through
    # Operations): listed all the same.
    await env.ops.set_schedule("E002", datetime(9999, 12, 31, 23, 0, tzinfo=UTC).timestamp()
                               + 2 * 86400, "old")
    r = await c.get("/schedules")
    assert r.status_code == 200, r.text
    listed = r.json()
    assert datetime.fromisoformat(listed[""]["softStop"]) == datetime.fromisoformat(latest)
    assert listed["E002"]["softStop"]
    assert (await c.get("/api/schedules")).status_code == 200
    await env.ops.refresh()
    assert (await c.get("/api/cluster")).status_code == 200


async def test_due_schedules_run_once_and_are_removed(env: Env) -> None:
    now = time.time()
    await env.ops.set_schedule(None, now + 10, "bob")
    await env.ops.set_schedule("E002", now + 10, "bob")
    await env.ops.set_schedule("E003", now + 1000, "bob")
    assert await env.ops.run_due_schedules(now) == []
    assert sorted(await env.ops.run_due_schedules(now + 11)) == ["E002", "global"]
    assert env.fake.global_mode == "heteronomous" and env.fake.local["E002"] == "heteronomous"
    assert [s["scope"] for s in env.ops.schedules_json()] == ["E003"]
    history = (await env.client.get("/api/operation-mode/history")).json()
    assert {h["by"] for h in history[:2]} == {"schedule by bob"}


async def test_due_schedule_does_nothing_unless_running(env: Env) -> None:
    await env.fake.set_stored_mode("stop")
    env.fake.local["E002"] = "stop"
    await env.ops.refresh()
    now = time.time()
    await env.ops.set_schedule(None, now + 5, "bob")
    await env.ops.set_schedule("E002", now + 5, "bob")
    assert await env.ops.run_due_schedules(now + 6) == []
    assert env.fake.global_mode == "stop" and env.fake.local["E002"] == "stop"
    assert env.ops.schedules_json() == []  # removed all the same


async def test_schedule_runs_on_time(env: Env) -> None:
    r = await env.client.put("/api/schedules", json={"softStopAt": _iso(time.time() + 1.5)},
                             headers=AUTH)
    assert r.status_code == 200
    await eventually(lambda: env.fake.global_mode == "heteronomous", timeout=15)
    assert env.ops.schedules_json() == []
