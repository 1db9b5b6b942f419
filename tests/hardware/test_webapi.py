"""The Device Driver Web API over httpx.ASGITransport (and once over uvicorn)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from apis.config.hwconfig import HwConfig
from apis.hardware.driver import CommandLimits, CommandRefused, DeviceDriver, DriverError
from apis.hardware.modes import ConverterMode
from apis.hardware.webapi import MAX_BODY_BYTES, DeviceDriverClient, create_driver_app
from apis.httpguard import HostNames
from tests.rawhttp import SIXTY_MB, announce_body, endless_chunks, serving

from .fakes import AlarmFakeDriver, FakeDriver, wait_until

HW_LIMITS = CommandLimits.from_hwconfig(HwConfig())  # dvg 260..380 V, dig 0..2.3 A


@pytest.fixture
def driver() -> FakeDriver:
    return FakeDriver()


@pytest.fixture
async def http(driver: FakeDriver) -> AsyncIterator[httpx.AsyncClient]:
    app = create_driver_app(driver, HW_LIMITS)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://driver"
    ) as client:
        yield client


async def get(http: httpx.AsyncClient, url: str) -> tuple[int, dict[str, Any]]:
    response = await http.get(url)
    body = response.json()
    assert isinstance(body, dict)
    return response.status_code, body


async def post(http: httpx.AsyncClient, url: str) -> tuple[int, dict[str, Any]]:
    """A command: POST with the values in the query, as the original sends them by GET."""
    response = await http.post(url)
    body = response.json()
    assert isinstance(body, dict)
    return response.status_code, body


def test_limits_from_hwconfig() -> None:
    assert HW_LIMITS == CommandLimits(dvg_min=260, dvg_max=380, dig_max=2.3, drg_max=3.999)
    hw = HwConfig.model_validate({"gridCurrentCapacityA": 20})
    assert CommandLimits.from_hwconfig(hw).dig_max == 8.5162
    bad = HwConfig.model_validate({"safety": {"range": {"dcdc": {"meter": {
        "vg": {"min": 0, "max": 200}}}}}})
    with pytest.raises(ValueError, match="must overlap"):
        CommandLimits.from_hwconfig(bad)


async def test_protocol_conformance(driver: FakeDriver) -> None:
    assert isinstance(driver, DeviceDriver)
    client = DeviceDriverClient("http://x")
    assert isinstance(client, DeviceDriver)
    await client.aclose()


async def test_read_routes(http: httpx.AsyncClient) -> None:
    assert await get(http, "/version/get") == (
        200, {"comm_interface_version": "2.0", "dcdc_batt_comm_version": "fake"})
    status, body = await get(http, "/all/get")
    assert status == 200
    assert set(body) == {"rsoc", "battery_operation_status", "meter", "param", "status", "vdis"}
    assert body["rsoc"] == 70.5 and body["battery_operation_status"] == 3
    assert await get(http, "/battery/get") == (200, {"rsoc": 70.5,
                                                     "battery_operation_status": 3})
    status, body = await get(http, "/dcdc/get")
    assert set(body) == {"status", "meter", "vdis", "param"}
    assert set(body["meter"]) == {"wg", "tmp", "vb", "wb", "vg", "ib", "ig"}
    status, body = await get(http, "/dcdc/get/status")
    assert set(body) == {"status", "meter"}
    assert body["status"]["status"] == "0x0000"
    assert body["status"]["operationMode"] == "Waiting"


async def test_set_dispatch_and_cache(http: httpx.AsyncClient, driver: FakeDriver) -> None:
    assert await post(http, "/dcdc/set?mode=0x0014") == (400, {"err": "No dig", "refused": True})
    assert (await post(http, "/dcdc/set?dig=2"))[1]["err"] == "No operationMode"
    assert (await post(http, "/dcdc/set?mode=0x0014&dig=2"))[1]["err"] == "No dvg"
    assert (await post(http, "/dcdc/set?dvg=350"))[1]["err"] == "No operationMode"
    assert driver.calls == []
    status, body = await post(http, "/dcdc/set?mode=0x0014&dig=2&dvg=350")
    assert status == 200
    assert body["status"]["status"] == "0x0014"
    assert body["status"]["operationMode"] == "Grid Autonomy"
    assert body["vdis"] == {"dvg": 350.0, "drg": 0.0}
    status, body = await post(http, "/dcdc/set?dig=1.5")
    assert status == 200 and set(body) == {"meter", "param"} and body["param"]["dig"] == 1.5
    status, body = await post(http, "/dcdc/set?dvg=360&drg=0.1")
    assert status == 200 and set(body) == {"meter", "vdis"}
    status, body = await post(http, "/dcdc/set?dvg=355")  # reuses the cached drg
    assert body["vdis"] == {"dvg": 355.0, "drg": 0.1}
    # A full set with only the mode takes dvg, dig, drg from the cache.
    assert (await post(http, "/dcdc/set?mode=0x0000"))[0] == 200
    assert driver.calls == [
        ("set", (ConverterMode.VOLTAGE_REFERENCE, 350.0, 2.0, 0.0)),
        ("set_current", (1.5,)),
        ("set_voltage", (360.0, 0.1)),
        ("set_voltage", (355.0, 0.1)),
        ("set", (ConverterMode.WAITING, 355.0, 1.5, 0.1)),
    ]
    assert (await post(http, "/essx/hello"))[1] == {"message": "hello world"}
    assert (await post(http, "/dcdc/set?dig=1"))[1]["err"] == "No operationMode"


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ("mode=0x0005&dvg=350&dig=1", "mode = '0x0005'"),
        ("mode=20&dvg=350&dig=1", "mode = '20'"),
        ("mode=0x0014&dvg=500&dig=1", "dvg = 500.0 (must be within 260.0..380.0 V)"),
        ("mode=0x0014&dvg=200&dig=1", "dvg = 200.0 (must be within 260.0..380.0 V)"),
        ("mode=0x0014&dvg=385&dig=1", "dvg = 385.0 (must be within 260.0..380.0 V)"),
        ("mode=0x0014&dvg=350&dig=9", "dig = 9.0 (must be within 0..2.3 A)"),
        ("mode=0x0014&dvg=350&dig=2.31", "dig = 2.31 (must be within 0..2.3 A)"),
        ("mode=0x0014&dvg=350&dig=-1", "dig = -1.0 (must be within 0..2.3 A)"),
        ("mode=0x0014&dvg=350&dig=1&drg=5", "drg = 5.0 (must be within 0..3.999)"),
        ("mode=0x0014&dvg=abc&dig=1", "dvg = 'abc' (must be a decimal number)"),
        ("mode=0x0014&dvg=&dig=1", "dvg = '' (must be a decimal number)"),
        ("mode=0x0014&dvg=nan&dig=1", "dvg = 'nan' (must be a finite decimal number)"),
        ("dig=abc", "dig = 'abc'"),
        ("dig=3", "dig = 3.0 (must be within 0..2.3 A)"),
        ("dvg=inf", "dvg = 'inf'"),
        ("dvg=391&drg=0", "dvg = 391.0"),
    ],
)
async def test_bad_queries_never_reach_the_converter(
    http: httpx.AsyncClient, driver: FakeDriver, query: str, needle: str
) -> None:
    assert (await post(http, "/dcdc/set?mode=0x0000&dvg=350&dig=0"))[0] == 200
    driver.calls.clear()
    status, body = await post(http, f"/dcdc/set?{query}")
    assert status == 400
    assert needle in body["err"]
    assert driver.calls == []
    # The driver keeps serving.
    assert (await get(http, "/dcdc/get"))[0] == 200


async def test_driver_errors_are_400_and_serving_goes_on(
    http: httpx.AsyncClient, driver: FakeDriver
) -> None:
    driver.fail_next = 1
    assert await get(http, "/all/get") == (400, {"err": "converter read timeout (injected)"})
    assert (await get(http, "/all/get"))[0] == 200
    assert (await http.get("/nope")).status_code == 404


async def test_client_dcdc_v2(driver: FakeDriver) -> None:
    app = create_driver_app(driver, HW_LIMITS)
    async with DeviceDriverClient(
        "http://driver", transport=httpx.ASGITransport(app=app)
    ) as client:
        assert (await client.version()).comm_interface_version == "2.0"
        unit = await client.read()
        assert unit.battery.rsoc == 70.5 and unit.battery.sharing_permitted
        assert unit.dcdc.param.cib == 52.0
        data = await client.set(ConverterMode.CHARGE, 350.0, 2.0, 0.0)
        assert data.mode is ConverterMode.CHARGE and data.param.dig == 2.0
        data = await client.set_current(1.0)
        assert data.mode is ConverterMode.CHARGE and data.param.dig == 1.0
        data = await client.set_voltage(340.0, 0.0)
        assert data.vdis.dvg == 340.0 and data.param.dig == 1.0
        assert (await client.read_converter()).mode is ConverterMode.CHARGE
        calls = len(driver.calls)
        with pytest.raises(CommandRefused, match=r"dig = 5\.0"):
            await client.set_current(5.0)
        assert len(driver.calls) == calls


async def test_client_retries_then_fails() -> None:
    attempts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        attempts.append(request.url.path)
        if len(attempts) < 3:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={"comm_interface_version": "2.1"})

    async with DeviceDriverClient("http://d", transport=httpx.MockTransport(handler)) as client:
        assert (await client.version()).comm_interface_version == "2.1"
    assert len(attempts) == 3

    attempts.clear()

    def broken(request: httpx.Request) -> httpx.Response:
        attempts.append(request.url.path)
        return httpx.Response(400, json={"err": "checksum error"})

    async with DeviceDriverClient(
        "http://d", transport=httpx.MockTransport(broken), retry_limit=3
    ) as client:
        with pytest.raises(DriverError, match="failed 3 times, last: HTTP 400: checksum error"):
            await client.read()
    assert attempts == ["/all/get"] * 3


def fake_emulator() -> tuple[FastAPI, list[str]]:
    """The original emulator's per-unit routes, just enough to test the client."""
    app = FastAPI()
    seen: list[str] = []
    dcdc: dict[str, Any] = {
        "status": {"status": "0x0000", "alarmState": "Light alarm", "operationMode": "Waiting"},
        "meter": {"wg": 0, "tmp": 26.59, "vb": 48, "wb": -4.5, "vg": 0, "ib": -0.27, "ig": 0},
        "vdis": {"dvg": 359.98, "drg": 0.0},
        "param": {"dig": 2.0},
    }

    @app.get("/get/unit/{unit_id}")
    async def unit(unit_id: str) -> dict[str, Any]:
        seen.append(f"unit {unit_id}")
        if unit_id != "E001":
            return {}
        return {"emu": {"rsoc": 49.88}, "dcdc": dcdc, "oesunit": {},
                "time": "2020/01/01-00:00:40"}

    @app.get("/get/dcdc/status/{unit_id}")
    async def status(unit_id: str) -> dict[str, Any]:
        seen.append(f"status {unit_id}")
        return {"status": dcdc["status"], "meter": dcdc["meter"]}

    @app.get("/set/dcdc/{unit_id}")
    async def set_all(unit_id: str, mode: str, dvg: float, dig: float,
                      drg: float = 0.0) -> dict[str, Any]:
        seen.append(f"set {unit_id} {mode} {dvg} {dig} {drg}")
        dcdc["status"] = {"status": mode, "alarmState": "Light alarm",
                          "operationMode": ConverterMode.from_code(mode).operation_mode}
        dcdc["vdis"] = {"dvg": dvg, "drg": drg}
        dcdc["param"] = {"dig": dig}
        return dcdc

    @app.get("/set/dcdc/voltage/{unit_id}")
    async def set_voltage(unit_id: str, dvg: float, drg: float = 0.0) -> dict[str, Any]:
        seen.append(f"voltage {unit_id} {dvg} {drg}")
        dcdc["vdis"] = {"dvg": dvg, "drg": drg}
        return {"meter": dcdc["meter"], "vdis": dcdc["vdis"]}

    @app.get("/set/dcdc/current/{unit_id}")
    async def set_current(unit_id: str, dig: float) -> dict[str, Any]:
        seen.append(f"current {unit_id} {dig}")
        dcdc["param"] = {"dig": dig}
        return {"meter": dcdc["meter"], "param": dcdc["param"]}

    return app, seen


async def test_client_emulator_routes() -> None:
    app, seen = fake_emulator()
    transport = httpx.ASGITransport(app=app)
    async with DeviceDriverClient("http://emu", routes="dcdc_emulator", unit_id="E001",
                                  transport=transport) as client:
        unit = await client.read()
        assert unit.battery.rsoc == 49.88
        assert unit.battery.battery_operation_status == 3  # the emulator has no such key
        assert unit.time.isoformat() == "2020-01-01T00:00:40"
        assert unit.dcdc.vdis.dvg == 359.98
        data = await client.set(ConverterMode.DISCHARGE, 380.0, 2.0, 0.0)
        assert data.mode is ConverterMode.DISCHARGE
        assert (await client.set_voltage(370.0, 0.0)).vdis.dvg == 370.0
        assert (await client.set_current(1.0)).param.dig == 1.0
        assert (await client.read_converter()).mode is ConverterMode.DISCHARGE
        assert (await client.version()).comm_interface_version.startswith("2.")
    assert seen == [
        "unit E001", "set E001 0x0002 380.0 2.0 0.0", "voltage E001 370.0 0.0",
        "current E001 1.0", "status E001",
    ]
    async with DeviceDriverClient("http://emu", routes="dcdc_emulator", unit_id="E009",
                                  transport=transport) as client:
        with pytest.raises(DriverError, match="E009"):
            await client.read()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_over_uvicorn(driver: FakeDriver) -> None:
    port = free_port()
    config = uvicorn.Config(create_driver_app(driver, HW_LIMITS), host="127.0.0.1", port=port,
                            log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        await wait_until(lambda: server.started, 30)
        async with DeviceDriverClient(f"http://127.0.0.1:{port}") as client:
            unit = await client.read()
            assert unit.battery.rsoc == 70.5
            data = await client.set(ConverterMode.VOLTAGE_REFERENCE, 350.0, 2.3, 0.0)
            assert data.status.operation_mode == "Grid Autonomy"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


# --- what the server refuses before a route sees the request ------------------------------


@pytest.mark.parametrize("path", ["/dcdc/set?mode=0x0014&dvg=350&dig=2",
                                  "/remote/set?mode=0x0014&dvg=350&dig=2",
                                  "/remote/set/voltage?dvg=350", "/remote/set/current?dig=1",
                                  "/essx/hello"])
async def test_commands_by_get_only_with_legacy_get(driver: FakeDriver, path: str) -> None:
    """A page can make a browser GET any URL (an image): commands are POST unless the
    original apis-main's GET forms are asked for."""
    app = create_driver_app(driver, HW_LIMITS)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://driver") as http:
        await post(http, "/dcdc/set?mode=0x0000&dvg=350&dig=0")  # fills the set-point cache
        driver.calls.clear()
        r = await http.get(path)
        assert r.status_code == 405 and r.headers["allow"] == "POST"
        assert "--legacy-get" in r.json()["err"] and path.split("?")[0] in r.json()["err"]
        assert driver.calls == []
        assert (await http.post(path)).status_code == 200
    legacy = create_driver_app(driver, HW_LIMITS, legacy_get=True)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=legacy),
                                 base_url="http://driver") as http:
        await http.get("/dcdc/set?mode=0x0000&dvg=350&dig=0")
        r = await http.get(path)
        assert r.status_code == 200, r.text
        assert (await http.post(path)).status_code == 200


async def test_clr_alarm_is_a_command_too() -> None:
    driver = AlarmFakeDriver()
    app = create_driver_app(driver, HW_LIMITS)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://driver") as http:
        assert (await http.get("/remote/ioctl/clr_alarm")).status_code == 405
        assert driver.calls == []
        assert (await http.post("/remote/ioctl/clr_alarm")).status_code == 200
        assert driver.calls == [("clear_alarm", ())]


async def test_a_foreign_host_or_origin_is_refused_over_uvicorn(driver: FakeDriver) -> None:
    """DNS rebinding (a page's own name resolving to 127.0.0.1) and pages of other sites."""
    app = create_driver_app(driver, HW_LIMITS, legacy_get=True,
                            allowed_hosts=HostNames.parse(["apis-box", "gw.example:8443"]))
    command = "/dcdc/set?mode=0x0014&dvg=350&dig=2"
    async with serving(app) as port, httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        refused = [
            {"Host": f"rebound.example:{port}"},
            {"Host": "127.0.0.1:1"},  # another port of this machine: another server
            {"Origin": "http://evil.example"},
            {"Origin": f"http://127.0.0.1:{port + 1}"},
            {"Origin": "null"},
            {"Sec-Fetch-Site": "cross-site"},  # <img src=...>: no Origin on a GET
            {"Host": "gw.example:80"},
        ]
        for headers in refused:
            for method in ("GET", "POST"):
                r = await http.request(method, command, headers=headers)
                assert r.status_code == 403, (headers, r.text)
                value = next(iter(headers.values()))
                assert repr(value) in r.json()["err"], r.json()
        assert driver.calls == []
        r = await http.post(command, headers={"Host": "evil.example"})
        assert "allowed: 127.0.0.1:" in r.json()["err"] and "--allow-host" in r.json()["err"]
        allowed = [
            {}, {"Host": f"localhost:{port}"}, {"Origin": f"http://127.0.0.1:{port}"},
            {"Origin": f"http://localhost:{port}", "Sec-Fetch-Site": "same-origin"},
            {"Host": "apis-box:80"}, {"Host": "apis-box"}, {"Host": "gw.example:8443"},
        ]
        for headers in allowed:
            r = await http.post(command, headers=headers)
            assert r.status_code == 200, (headers, r.text)
        assert len(driver.calls) == len(allowed)


async def test_a_60_mb_body_is_refused_unread(driver: FakeDriver) -> None:
    """413 at once, before the command route runs: the body is announced and never sent."""
    async with serving(create_driver_app(driver, HW_LIMITS)) as port:
        answer = await announce_body(port, "POST", "/dcdc/set?mode=0x0014&dvg=350&dig=2")
        assert answer.status == 413
        assert answer.json() == {"err": f"request body of {SIXTY_MB} bytes (the limit is "
                                        f"{MAX_BODY_BYTES} bytes)"}
        answer = await endless_chunks(port, "POST", "/dcdc/set?mode=0x0014&dvg=350&dig=2",
                                      MAX_BODY_BYTES + 16 * 1024)
        # The command route reads no body: answered without waiting for the end of it.
        assert answer.status == 200
        assert driver.calls == [("set", (ConverterMode.VOLTAGE_REFERENCE, 350.0, 2.0, 0.0))]


async def test_client_sends_commands_as_post_and_learns_a_get_only_server() -> None:
    seen: list[str] = []
    get_only = False

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        if request.url.path.endswith("/set") and request.method == "POST" and get_only:
            return httpx.Response(405, headers={"Allow": "GET"}, text="Method Not Allowed")
        if request.url.path == "/dcdc/get/status":
            return httpx.Response(200, json={"status": {"status": "0x0041"}, "meter": {}})
        return httpx.Response(200, json={"status": {"status": "0x0041"}, "meter": {},
                                         "vdis": {}, "param": {}})

    async with DeviceDriverClient("http://d", transport=httpx.MockTransport(handler)) as client:
        await client.set(ConverterMode.CHARGE, 350.0, 1.0, 0.0)
        await client.set_current(1.5)
        await client.set_voltage(360.0, 0.0)
        await client.read_converter()
    assert seen == ["POST /dcdc/set"] * 3 + ["GET /dcdc/get/status"]
    seen.clear()
    get_only = True  # the original driver: Bottle answers POST with 405, Allow: GET
    async with DeviceDriverClient("http://d", transport=httpx.MockTransport(handler)) as client:
        await client.set(ConverterMode.CHARGE, 350.0, 1.0, 0.0)
        await client.set_current(1.5)
    assert seen == ["POST /dcdc/set", "GET /dcdc/set", "GET /dcdc/set"]
