"""HTTP routes: the original emulator's route set and dcdc_v2 per unit, and bad input."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from apis.emulator import World
from apis.emulator.server import create_emulator_app


@pytest.fixture
def world() -> World:
    w = World.with_units(4, initial_rsoc=50.0)
    for unit in w.unit_ids:
        w.set_house_override(unit, pv_w=0.0, load_w=0.0)
    return w


@pytest.fixture
async def client(world: World) -> AsyncIterator[httpx.AsyncClient]:
    app = create_emulator_app(world)
    transport = httpx.ASGITransport(app=app)
    async with asyncio.TaskGroup() as tasks:
        stepping = tasks.create_task(world.run(period_s=0.01))
        async with httpx.AsyncClient(transport=transport, base_url="http://emulator") as c:
            yield c
        stepping.cancel()


async def test_get_unit_shape(client: httpx.AsyncClient) -> None:
    r = await client.get("/get/unit/E001")
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"emu", "dcdc", "oesunit", "time"}
    assert set(body["dcdc"]) == {"status", "meter", "vdis", "param"}
    assert set(body["dcdc"]["status"]) == {"status", "alarmState", "operationMode"}
    assert set(body["dcdc"]["meter"]) == {"wg", "tmp", "vb", "wb", "vg", "ib", "ig"}
    assert body["dcdc"]["status"]["status"] == "0x0000"
    assert body["emu"]["rsoc"] == pytest.approx(50.0, abs=0.01)
    assert body["emu"]["battery_operation_status"] == 3
    assert body["time"].startswith("2020/01/01-")
    status = (await client.get("/get/dcdc/status/E002")).json()
    assert set(status) == {"status", "meter"}


async def test_grid_balance_through_the_original_routes(
    client: httpx.AsyncClient, world: World
) -> None:
    r = await client.post("/set/dcdc/E001", params={"mode": "0x0014", "dvg": 350, "dig": 2.3})
    assert r.status_code == 200
    assert r.json()["status"]["operationMode"] == "Grid Autonomy"
    world.advance(15)  # the ramp
    await client.post("/set/dcdc/E002", params={"mode": "0x0002", "dvg": 350, "dig": 2})
    await client.post("/set/dcdc/E003", params={"mode": "0x0041", "dvg": 350, "dig": 2})
    world.advance(5)
    units = (await client.get("/get/log")).json()
    assert units["E002"]["dcdc"]["meter"]["ig"] == pytest.approx(-2.0)
    assert units["E003"]["dcdc"]["meter"]["ig"] == pytest.approx(2.0)
    assert units["E001"]["dcdc"]["meter"]["ig"] == pytest.approx(0.0, abs=1e-6)
    assert "powermeter" in units["E001"]["dcdc"]
    r = await client.post("/set/dcdc/current/E002", params={"dig": 2.3})
    assert set(r.json()) == {"meter", "param"}
    world.advance(5)
    unit = (await client.get("/get/unit/E001")).json()
    assert unit["dcdc"]["meter"]["ig"] == pytest.approx(0.3, abs=1e-3)
    r = await client.post("/set/dcdc/voltage/E001", params={"dvg": 352.5, "drg": 0.1})
    assert set(r.json()) == {"meter", "vdis"}
    assert r.json()["vdis"] == {"dvg": 352.5, "drg": 0.1}  # decimals kept
    await client.post("/set/dcdc/E001", params={"mode": "0x0000", "dvg": 350, "dig": 0})
    world.advance(1)
    units = (await client.get("/get/log")).json()
    assert all(u["dcdc"]["meter"]["vg"] == 0 for u in units.values())
    assert all(u["dcdc"]["meter"]["ig"] == 0 for u in units.values())


async def test_set_emu_acc_and_unit_count(client: httpx.AsyncClient, world: World) -> None:
    r = await client.post("/set/emu/E001", params={"rsoc": 30, "battery_operation_status": 0})
    assert r.status_code == 200
    assert r.json()["E001"]["emu"]["rsoc"] == pytest.approx(30.0)
    assert r.json()["E001"]["emu"]["battery_operation_status"] == 0
    r = await client.post("/set/emu/E002", params={"ups_output_power": 400})
    assert r.json()["E002"]["emu"]["ups_output_power"] == 400.0
    assert (await client.get("/get/acc")).json() == 1.0
    assert (await client.post("/set/acc/1")).status_code == 200
    assert (await client.post("/set/acc/10")).status_code == 400
    r = await client.post("/add/unit")
    assert r.status_code == 200 and "E005" in r.json()
    assert (await client.get("/units/E005/battery/get")).status_code == 200
    r = await client.post("/remove/unit")
    assert "E005" not in r.json()
    assert (await client.get("/get/unit/E005")).status_code == 404


async def test_dcdc_v2_routes_of_a_removed_or_unknown_unit_answer_404(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.post("/add/unit")).status_code == 200
    assert (await client.get("/units/E005/all/get")).status_code == 200
    await client.post("/remove/unit")
    for path in ("/units/E005/all/get", "/units/E005/battery/get", "/units/E099/dcdc/get"):
        r = await client.get(path)
        assert r.status_code == 404, path
        assert "E0" in r.json()["err"]
    r = await client.post("/units/E005/dcdc/set", params={"mode": "0x0000", "dvg": 350, "dig": 0})
    assert r.status_code == 404
    # Added again, the unit answers on the same routes.
    assert (await client.post("/add/unit")).status_code == 200
    assert (await client.get("/units/E005/battery/get")).status_code == 200


async def test_dcdc_v2_routes_per_unit(client: httpx.AsyncClient, world: World) -> None:
    r = await client.get("/units/E001/version/get")
    assert r.status_code == 200 and r.json()["comm_interface_version"].startswith("2.")
    r = await client.get("/units/E002/all/get")
    assert r.status_code == 200
    assert {"rsoc", "battery_operation_status", "meter", "param", "status", "vdis"} <= set(
        r.json()
    )
    r = await client.post(
        "/units/E001/dcdc/set", params={"mode": "0x0014", "dvg": 350, "dig": 2.0, "drg": 0}
    )
    assert r.status_code == 200 and r.json()["status"]["status"] == "0x0014"
    assert world.mode[0] == 0x14
    r = await client.post("/units/E001/dcdc/set", params={"dig": 9})
    assert r.status_code == 400 and "dig" in r.json()["err"]


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("/get/unit/E099", {}, 404),
        ("/get/dcdc/status/E099", {}, 404),
        ("/get/emu/E099", {}, 404),
        ("/set/dcdc/E099", {"mode": "0x0014", "dvg": 350, "dig": 2}, 404),
        ("/set/dcdc/E001", {"mode": "0x0005", "dvg": 350, "dig": 2}, 400),
        ("/set/dcdc/E001", {"mode": "0x0014", "dig": 2}, 400),
        ("/set/dcdc/E001", {"mode": "0x0014", "dvg": "abc", "dig": 2}, 400),
        ("/set/dcdc/E001", {"mode": "0x0014", "dvg": 500, "dig": 2}, 400),
        ("/set/dcdc/E001", {"mode": "0x0014", "dvg": 350, "dig": -1}, 400),
        ("/set/dcdc/E001", {"dvg": 350, "dig": 2}, 400),
        ("/set/dcdc/voltage/E001", {"dvg": ""}, 400),
        ("/set/dcdc/current/E001", {"dig": "nan"}, 400),
        ("/set/emu/E001", {"colour": 1}, 400),
        ("/set/emu/E001", {"rsoc": 101}, 400),
        ("/set/emu/E001", {"rsoc": "x"}, 400),
        ("/set/acc/fast", {}, 400),
    ],
)
async def test_bad_input_is_refused_and_the_clock_keeps_running(
    client: httpx.AsyncClient, world: World, path: str, params: dict[str, object], status: int
) -> None:
    method = "GET" if "/get" in path else "POST"
    r = await client.request(method, path, params=params)  # type: ignore[arg-type]
    assert r.status_code == status
    assert "err" in r.json() and r.json()["err"]
    before = world.t
    await asyncio.sleep(0.05)
    r = await asyncio.wait_for(client.get("/get/log"), timeout=1.0)
    assert r.status_code == 200
    assert world.t > before
    assert world.mode[0] == 0  # nothing was applied


COMMANDS = [
    ("/set/dcdc/E001", {"mode": "0x0014", "dvg": 350, "dig": 2}),
    ("/set/dcdc/voltage/E001", {"dvg": 351}),
    ("/set/dcdc/current/E001", {"dig": 1}),
    ("/set/emu/E001", {"rsoc": 30}),
    ("/set/acc/1", {}),
    ("/add/unit", {}),
    ("/remove/unit", {}),
    ("/units/E001/dcdc/set", {"mode": "0x0014", "dvg": 350, "dig": 2}),
]


async def test_commands_by_get_only_with_legacy_get(world: World) -> None:
    """A page can make a browser GET any URL (an image tag): what changes the world is POST,
    unless the original apis-main's GET forms are asked for."""
    app = create_emulator_app(world)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://emulator") as c:
        for path, params in COMMANDS:
            r = await c.get(path, params=params)  # type: ignore[arg-type]
            assert r.status_code == 405, (path, r.text)
            assert "--legacy-get" in r.json()["err"] and r.headers["allow"] == "POST"
        assert world.mode[0] == 0 and world.n_units == 4
        assert world.rsoc[0] == pytest.approx(50.0, abs=0.01)
    legacy = create_emulator_app(world, legacy_get=True)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=legacy),
                                 base_url="http://emulator") as c:
        for path, params in COMMANDS:
            r = await c.get(path, params=params)  # type: ignore[arg-type]
            assert r.status_code == 200, (path, r.text)
        assert world.mode[0] == 0x14


async def test_foreign_host_origin_and_cross_site_fetches_are_refused(world: World) -> None:
    app = create_emulator_app(world)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://127.0.0.1:4390") as c:
        for headers in ({"Host": "rebound.example:4390"}, {"Origin": "http://evil.example"},
                        {"Sec-Fetch-Site": "cross-site"}):
            r = await c.post("/set/dcdc/E001", params={"mode": "0x0014", "dvg": 350, "dig": 2},
                             headers=headers)
            assert r.status_code == 403, r.text
            assert repr(next(iter(headers.values()))) in r.json()["err"]
            assert (await c.get("/get/log", headers=headers)).status_code == 403
        assert world.mode[0] == 0
        r = await c.post("/set/dcdc/E001", params={"mode": "0x0014", "dvg": 350, "dig": 2},
                         headers={"Origin": "http://localhost:4390"})
        assert r.status_code == 200
