"""The legacy `dcdc_v1` aliases of the Device Driver Web API (`/remote/...`, `/1/log/data`)."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator

import httpx
import pytest

from apis.hardware.converter import ConverterSettings
from apis.hardware.driver import BatteryData, CommandLimits
from apis.hardware.modbus import ModbusSettings
from apis.hardware.modes import ConverterMode
from apis.hardware.real import WatchdogSettings
from apis.hardware.rig import twin_rig
from apis.hardware.twins import ConverterModel, SimpleBattery
from apis.hardware.webapi import create_driver_app

from .fakes import AlarmFakeDriver, FakeDriver
from .test_webapi import HW_LIMITS, get, post

CV, W = ConverterMode.VOLTAGE_REFERENCE, ConverterMode.WAITING
CHG, DIS = ConverterMode.CHARGE, ConverterMode.DISCHARGE

POWERMETER_ZEROS = {"p1": 0.0, "p2": 0.0, "v1": 0.0, "i1": 0.0, "kwh1": 0.0, "kwh2": 0.0}
LOG_KEYS = {
    "system_time", "rsoc", "dischargeable_time", "battery_voltage", "battery_current",
    "battery_rsoc", "battery_status", "battery_warning", "battery_operation_status",
    "battery_comm_err", "charge_discharge_power", "ups_operation_schedule",
    "ups_operation_mode",
}


@pytest.fixture
def driver() -> FakeDriver:
    return FakeDriver()


async def client_for(driver: FakeDriver) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_driver_app(driver,
                                                                                 HW_LIMITS)),
                             base_url="http://driver")


@pytest.fixture
async def http(driver: FakeDriver) -> AsyncIterator[httpx.AsyncClient]:
    async with await client_for(driver) as client:
        yield client


# --- reads ------------------------------------------------------------------------------------


async def test_remote_get_is_dcdc_get_plus_zero_powermeter(http: httpx.AsyncClient) -> None:
    assert (await post(http, "/dcdc/set?mode=0x0041&dvg=350&dig=1.25"))[0] == 200
    status, dcdc = await get(http, "/dcdc/get")
    assert status == 200
    status, remote = await get(http, "/remote/get")
    assert status == 200
    assert remote == {**dcdc, "powermeter": POWERMETER_ZEROS}
    assert remote["status"]["status"] == "0x0041"
    assert remote["status"]["operationMode"] == "Heteronomy CV"
    assert remote["param"] == {"dig": 1.25, "ogv": 400.0, "ugv": 300.0, "cib": 52.0,
                               "obv": 59.0, "ubv": 40.0}
    assert remote["vdis"] == {"dvg": 350.0, "drg": 0.0}


async def test_remote_get_status_is_dcdc_get_status(http: httpx.AsyncClient) -> None:
    dcdc = await get(http, "/dcdc/get/status")
    remote = await get(http, "/remote/get/status")
    assert remote == dcdc
    assert remote[0] == 200 and set(remote[1]) == {"status", "meter"}
    assert remote[1]["status"]["status"] == "0x0000"
    assert remote[1]["meter"]["vg"] == 350.0 and remote[1]["meter"]["vb"] == 48.0


async def test_log_data_is_the_full_battery_log(http: httpx.AsyncClient) -> None:
    assert await get(http, "/1/log/data") == (200, {
        "system_time": {"year": 0, "month": 0, "day": 0, "hour": 0, "minute": 0},
        "rsoc": 70.5,
        "dischargeable_time": {"hour": 0, "minute": 0},
        "battery_voltage": 52.0,
        "battery_current": 20.0,
        "battery_rsoc": 70.5,
        "battery_status": 0,
        "battery_warning": 0,
        "battery_operation_status": 3,
        "battery_comm_err": 0,
        "charge_discharge_power": 1040.0,
        "ups_operation_schedule": 0,
        "ups_operation_mode": {"mode": 0, "parameter": 0, "stop_mode": 0},
    })


async def test_log_data_follows_the_battery(http: httpx.AsyncClient, driver: FakeDriver) -> None:
    driver.battery = BatteryData(12.25, 0)
    status, body = await get(http, "/1/log/data")
    assert status == 200
    assert body["rsoc"] == body["battery_rsoc"] == 12.25
    assert body["battery_operation_status"] == 0
    # The same reading as the dcdc_v2 route.
    assert await get(http, "/battery/get") == (200, {"rsoc": 12.25,
                                                     "battery_operation_status": 0})


async def test_ioctl_get_is_log_data_plus_converter(http: httpx.AsyncClient) -> None:
    assert (await post(http, "/dcdc/set?mode=0x0002&dvg=360&dig=2&drg=0.05"))[0] == 200
    status, body = await get(http, "/remote/ioctl/get")
    assert status == 200
    assert set(body) == LOG_KEYS | {"status", "powermeter", "meter", "vdis", "param"}
    log = (await get(http, "/1/log/data"))[1]
    assert {k: body[k] for k in LOG_KEYS} == log
    remote = (await get(http, "/remote/get"))[1]
    assert {k: body[k] for k in ("status", "powermeter", "meter", "vdis", "param")} == remote
    assert body["status"]["status"] == "0x0002"
    assert body["vdis"] == {"dvg": 360.0, "drg": 0.05}
    assert body["param"]["dig"] == 2.0
    assert body["powermeter"] == POWERMETER_ZEROS


async def test_legacy_reads_answer_driver_errors_with_400(
    http: httpx.AsyncClient, driver: FakeDriver
) -> None:
    for path in ("/remote/get", "/remote/get/status", "/1/log/data", "/remote/ioctl/get"):
        driver.fail_next = 1
        assert await get(http, path) == (400, {"err": "converter read timeout (injected)"})
        assert (await get(http, path))[0] == 200


# --- /remote/set: always a full set -----------------------------------------------------------


async def test_remote_set_with_an_empty_cache_fails_as_a_full_set(
    http: httpx.AsyncClient, driver: FakeDriver
) -> None:
    # /dcdc/set?dig=1 would be a current-only set; /remote/set?dig=1 is a full set, so the
    # first missing value (the mode) is reported.
    assert await post(http, "/remote/set?dig=1") == (
        400, {"err": "No operationMode", "refused": True})
    # /dcdc/set?dvg=350 would be voltage-only; here it is a full set lacking the mode.
    assert (await post(http, "/remote/set?dvg=350"))[1]["err"] == "No operationMode"
    assert (await post(http, "/remote/set?mode=0x0014"))[1]["err"] == "No dig"
    assert (await post(http, "/remote/set?mode=0x0014&dig=1"))[1]["err"] == "No dvg"
    assert (await post(http, "/remote/set?mode=0x0014&dig=1&drg=0.1"))[1]["err"] == "No dvg"
    assert (await post(http, "/remote/set"))[1]["err"] == "No operationMode"
    assert driver.calls == []


async def test_remote_set_full_reply_and_default_drg(
    http: httpx.AsyncClient, driver: FakeDriver
) -> None:
    status, body = await post(http, "/remote/set?mode=0x0014&dvg=350&dig=2")
    assert status == 200
    assert set(body) == {"status", "meter", "vdis", "param"}
    assert set(body["status"]) == {"status", "alarmState", "statusName", "alarm",
                                   "runningState", "operationMode"}
    assert body["status"]["status"] == "0x0014"
    assert body["status"]["operationMode"] == "Grid Autonomy"
    assert body["vdis"] == {"dvg": 350.0, "drg": 0.0}
    assert body["param"]["dig"] == 2.0
    assert driver.calls == [("set", (CV, 350.0, 2.0, 0.0))]


async def test_remote_set_never_dispatches(http: httpx.AsyncClient, driver: FakeDriver) -> None:
    assert (await post(http, "/remote/set?mode=0x0014&dvg=350&dig=2&drg=0.1"))[0] == 200
    # Only dig: a full set with the cached mode, dvg and drg, and a full reply.
    status, body = await post(http, "/remote/set?dig=1.5")
    assert status == 200 and set(body) == {"status", "meter", "vdis", "param"}
    assert body["param"]["dig"] == 1.5 and body["status"]["status"] == "0x0014"
    # Only dvg (and drg): a full set too.
    status, body = await post(http, "/remote/set?dvg=360")
    assert status == 200 and set(body) == {"status", "meter", "vdis", "param"}
    assert body["vdis"] == {"dvg": 360.0, "drg": 0.1}
    assert (await post(http, "/remote/set?dvg=355&drg=0.2"))[0] == 200
    assert driver.calls == [
        ("set", (CV, 350.0, 2.0, 0.1)),
        ("set", (CV, 350.0, 1.5, 0.1)),
        ("set", (CV, 360.0, 1.5, 0.1)),
        ("set", (CV, 355.0, 1.5, 0.2)),
    ]


# --- /remote/set/voltage and /remote/set/current ----------------------------------------------


async def test_remote_partial_sets_need_the_cache(
    http: httpx.AsyncClient, driver: FakeDriver
) -> None:
    assert await post(http, "/remote/set/current?dig=1") == (
        400, {"err": "No operationMode", "refused": True})
    assert (await post(http, "/remote/set/voltage?dvg=350"))[1]["err"] == "No operationMode"
    assert (await post(http, "/remote/set/current"))[1]["err"] == "No dig"
    assert (await post(http, "/remote/set/voltage?drg=0.1"))[1]["err"] == "No dvg"
    assert driver.calls == []
    # A cache with mode and dvg only (no dig) cannot come from a full set; after /essx/hello
    # the cache is empty again and both refuse.
    assert (await post(http, "/remote/set?mode=0x0000&dvg=350&dig=0"))[0] == 200
    assert (await post(http, "/essx/hello"))[0] == 200
    assert (await post(http, "/remote/set/current?dig=1"))[1]["err"] == "No operationMode"
    assert (await post(http, "/remote/set/voltage?dvg=350"))[1]["err"] == "No operationMode"
    assert driver.calls == [("set", (W, 350.0, 0.0, 0.0))]


async def test_remote_partial_sets_shapes_and_calls(
    http: httpx.AsyncClient, driver: FakeDriver
) -> None:
    assert (await post(http, "/remote/set?mode=0x0041&dvg=350&dig=2&drg=0.1"))[0] == 200
    status, body = await post(http, "/remote/set/current?dig=1.5")
    assert status == 200 and set(body) == {"meter", "param"}
    assert body["param"]["dig"] == 1.5
    # Other parameters on the current-only route do not turn it into a full set.
    status, body = await post(http, "/remote/set/current?dig=1.25&mode=0x0014&dvg=300")
    assert status == 200 and set(body) == {"meter", "param"}
    status, body = await post(http, "/remote/set/voltage?dvg=360&drg=0.2")
    assert status == 200 and set(body) == {"meter", "vdis"}
    assert body["vdis"] == {"dvg": 360.0, "drg": 0.2}
    status, body = await post(http, "/remote/set/voltage?dvg=365")  # cached drg
    assert status == 200 and body["vdis"] == {"dvg": 365.0, "drg": 0.2}
    assert driver.calls == [
        ("set", (CHG, 350.0, 2.0, 0.1)),
        ("set_current", (1.5,)),
        ("set_current", (1.25,)),
        ("set_voltage", (360.0, 0.2)),
        ("set_voltage", (365.0, 0.2)),
    ]
    # Neither changed the mode.
    assert (await get(http, "/remote/get/status"))[1]["status"]["status"] == "0x0041"


# --- one cache for both route sets ------------------------------------------------------------


async def test_cache_is_shared_between_remote_and_dcdc_routes(
    http: httpx.AsyncClient, driver: FakeDriver
) -> None:
    # A full set through /dcdc/set fills the cache /remote/set reads.
    assert (await post(http, "/dcdc/set?mode=0x0014&dvg=350&dig=2&drg=0.1"))[0] == 200
    assert (await post(http, "/remote/set?mode=0x0000"))[0] == 200
    # A current-only set through the alias updates the dig a /dcdc/set full set reuses.
    assert (await post(http, "/remote/set/current?dig=0.5"))[0] == 200
    assert (await post(http, "/dcdc/set?mode=0x0002"))[0] == 200
    # A voltage-only /dcdc/set updates dvg and drg for /remote/set.
    assert (await post(http, "/dcdc/set?dvg=340&drg=0.3"))[0] == 200
    assert (await post(http, "/remote/set?mode=0x0041"))[0] == 200
    # /remote/set/voltage updates the cache /dcdc/set's full set reads.
    assert (await post(http, "/remote/set/voltage?dvg=330"))[0] == 200
    assert (await post(http, "/dcdc/set?mode=0x0000"))[0] == 200
    # A full /remote/set fills the cache for a current-only /dcdc/set.
    assert (await post(http, "/remote/set?mode=0x0014&dvg=345&dig=1&drg=0"))[0] == 200
    assert (await post(http, "/dcdc/set?dig=2.25"))[0] == 200
    assert (await post(http, "/dcdc/set?mode=0x0000"))[0] == 200
    assert driver.calls == [
        ("set", (CV, 350.0, 2.0, 0.1)),
        ("set", (W, 350.0, 2.0, 0.1)),
        ("set_current", (0.5,)),
        ("set", (DIS, 350.0, 0.5, 0.1)),
        ("set_voltage", (340.0, 0.3)),
        ("set", (CHG, 340.0, 0.5, 0.3)),
        ("set_voltage", (330.0, 0.3)),
        ("set", (W, 330.0, 0.5, 0.3)),
        ("set", (CV, 345.0, 1.0, 0.0)),
        ("set_current", (2.25,)),
        ("set", (W, 345.0, 2.25, 0.0)),
    ]
    # /essx/hello clears the one cache for both route sets.
    assert (await post(http, "/essx/hello"))[0] == 200
    assert (await post(http, "/remote/set?dig=1"))[1]["err"] == "No operationMode"
    assert (await post(http, "/dcdc/set?mode=0x0014"))[1]["err"] == "No dig"


# --- limits: refused before the driver sees anything ------------------------------------------


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("/remote/set?mode=0x0014&dvg=390&dig=1", "dvg = 390.0 (must be within 260.0..380.0 V)"),
        ("/remote/set?mode=0x0014&dvg=350&dig=2.4", "dig = 2.4 (must be within 0..2.3 A)"),
        ("/remote/set?mode=0x0014&dvg=350&dig=1&drg=4", "drg = 4.0 (must be within 0..3.999)"),
        ("/remote/set?dig=3", "dig = 3.0 (must be within 0..2.3 A)"),
        ("/remote/set?dvg=250", "dvg = 250.0 (must be within 260.0..380.0 V)"),
        ("/remote/set?mode=0x0005", "mode = '0x0005'"),
        ("/remote/set?mode=20", "mode = '20'"),
        ("/remote/set?dig=nan", "dig = 'nan' (must be a finite decimal number)"),
        ("/remote/set/current?dig=2.31", "dig = 2.31 (must be within 0..2.3 A)"),
        ("/remote/set/current?dig=-0.1", "dig = -0.1 (must be within 0..2.3 A)"),
        ("/remote/set/current?dig=abc", "dig = 'abc' (must be a decimal number)"),
        ("/remote/set/voltage?dvg=500", "dvg = 500.0 (must be within 260.0..380.0 V)"),
        ("/remote/set/voltage?dvg=350&drg=-1", "drg = -1.0 (must be within 0..3.999)"),
        ("/remote/set/voltage?dvg=inf", "dvg = 'inf' (must be a finite decimal number)"),
    ],
)
async def test_legacy_sets_outside_the_limits_never_reach_the_driver(
    http: httpx.AsyncClient, driver: FakeDriver, url: str, needle: str
) -> None:
    assert (await post(http, "/remote/set?mode=0x0000&dvg=350&dig=0"))[0] == 200
    driver.calls.clear()
    status, body = await post(http, url)
    assert status == 400
    assert body == {"err": body["err"], "refused": True}
    assert needle in body["err"]
    assert driver.calls == []
    # The refused values did not enter the cache.
    assert (await post(http, "/remote/set?mode=0x0014"))[0] == 200
    assert driver.calls == [("set", (CV, 350.0, 0.0, 0.0))]


# --- ioctl ------------------------------------------------------------------------------------


async def test_clr_alarm_only_for_drivers_that_can(http: httpx.AsyncClient) -> None:
    assert (await http.post("/remote/ioctl/clr_alarm")).status_code == 404
    # ioctl/set is not served at all (it would need parameters this driver does not keep).
    assert (await http.get("/remote/ioctl/set")).status_code == 404


async def test_clr_alarm_clears_and_answers_as_remote_get() -> None:
    driver = AlarmFakeDriver()
    async with await client_for(driver) as http:
        status, before = await get(http, "/remote/get")
        assert status == 200 and before["status"]["alarmState"] == "Light alarm"
        status, body = await post(http, "/remote/ioctl/clr_alarm")
        assert status == 200
        assert set(body) == {"status", "meter", "vdis", "param", "powermeter"}
        assert body["status"]["alarm"] == "0000 0000 0000"
        assert body["status"]["alarmState"] == "No alarm"
        assert body["powermeter"] == POWERMETER_ZEROS
        assert await get(http, "/remote/get") == (200, body)
        assert driver.calls == [("clear_alarm", ())]
        driver.fail_next = 1
        assert await post(http, "/remote/ioctl/clr_alarm") == (
            400, {"err": "converter read timeout (injected)"})


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat not installed")
@pytest.mark.timeout(120)
async def test_clr_alarm_over_the_serial_driver_sends_9_4() -> None:
    limits = CommandLimits(dvg_min=260, dvg_max=380, dig_max=2.3)
    converter = ConverterModel(alm1=0x4010)
    async with twin_rig(
        limits, battery=SimpleBattery(rsoc=70.5, sharing_permitted=True), converter=converter,
        battery_settings=ModbusSettings(baudrate=115200, timeout_s=1.0),
        converter_settings=ConverterSettings(baudrate=115200, timeout_s=0.5, retry_wait_s=0.05),
        watchdog=WatchdogSettings(force_waiting=False),
    ) as rig:
        app = create_driver_app(rig.driver, limits)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://driver") as http:
            status, before = await get(http, "/remote/get")
            assert status == 200 and before["status"]["alarm"].startswith("4010 ")
            received = len(rig.converter_twin.received)
            status, body = await post(http, "/remote/ioctl/clr_alarm")
            assert status == 200
            assert body["status"]["alarm"] == "0000 0000 0000"
            assert body["powermeter"] == POWERMETER_ZEROS
            sent = rig.converter_twin.received[received:]
            assert sent[0] == "9-4"
            assert [name for name in sent if name.endswith("-4")] == ["9-4"]
            assert converter.alm1 == 0
            # Set-points and mode unchanged.
            assert body["status"]["status"] == before["status"]["status"]
            assert body["vdis"] == before["vdis"] and body["param"] == before["param"]
