"""Web API -> serial driver -> Modbus and EZA2500 twins, over real socat pty pairs."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from apis.hardware import eza2500 as eza
from apis.hardware import modbus
from apis.hardware.commwatchdog import CommunicationWatchdog
from apis.hardware.converter import ConverterSettings
from apis.hardware.driver import CommandLimits
from apis.hardware.modbus import ModbusExceptionReply, ModbusSettings
from apis.hardware.modes import MODE_CHANGE_ORDER, ConverterMode, ModeChangeStep
from apis.hardware.real import WatchdogSettings
from apis.hardware.rig import TwinRig, twin_rig
from apis.hardware.twins import (
    BAD_CHECKSUM,
    GARBAGE_FIRST,
    SILENT,
    WRONG_CMD,
    ConverterModel,
    SimpleBattery,
)
from apis.hardware.webapi import create_driver_app

from .fakes import wait_until

pytestmark = [
    pytest.mark.skipif(shutil.which("socat") is None, reason="socat not installed"),
    pytest.mark.timeout(120),
]

W, CV = ConverterMode.WAITING, ConverterMode.VOLTAGE_REFERENCE
DIS, CHG = ConverterMode.DISCHARGE, ConverterMode.CHARGE
STEP_FRAME = {ModeChangeStep.SET_VOLTAGE: "4-4", ModeChangeStep.SET_CURRENT: "6-4",
              ModeChangeStep.SET_MODE: "1-4"}
# Generous for a loaded machine; the faults below still finish in seconds.
BATTERY = ModbusSettings(baudrate=115200, timeout_s=1.0, attempts=2, retry_wait_s=0.1)
CONVERTER = ConverterSettings(baudrate=115200, timeout_s=0.5, retry_wait_s=0.05)
LIMITS = CommandLimits(dvg_min=260, dvg_max=380, dig_max=2.3)


class Rig:
    def __init__(self, rig: TwinRig, http: httpx.AsyncClient, battery: SimpleBattery,
                 converter: ConverterModel) -> None:
        self.rig, self.http, self.battery, self.converter = rig, http, battery, converter

    async def get(self, url: str) -> tuple[int, dict[str, Any]]:
        """A read as GET, a command (`/dcdc/set`) as POST."""
        response = await self.http.request("POST" if "/set" in url else "GET", url)
        body = response.json()
        assert isinstance(body, dict)
        return response.status_code, body

    def writes(self) -> list[str]:
        return [name for name in self.rig.converter_twin.received if name.endswith("-4")]


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    battery = SimpleBattery(rsoc=70.5, sharing_permitted=True)
    converter = ConverterModel()
    async with twin_rig(LIMITS, battery=battery, converter=converter, battery_settings=BATTERY,
                        converter_settings=CONVERTER,
                        watchdog=WatchdogSettings(force_waiting=False)) as r:
        app = create_driver_app(r.driver, LIMITS)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://driver") as http:
            yield Rig(r, http, battery, converter)
    assert converter_was_never_given_bad_values(converter)


def converter_was_never_given_bad_values(model: ConverterModel) -> bool:
    # The converter holds a value truncated to its resolution: 260 V is 259.9976 V.
    step = eza.GRID_VOLTAGE.fields[0].resolution
    return 260 - step <= model.dvg <= 380 and 0 <= model.dig <= 2.3


async def test_battery_over_modbus(rig: Rig) -> None:
    assert await rig.get("/battery/get") == (200, {"rsoc": 70.5, "battery_operation_status": 3})
    assert rig.rig.battery_twin.requests[-1] == bytes.fromhex("01 04 00 1D 00 02 E1 CD")
    rig.battery.sharing_permitted = False
    rig.battery.rsoc = 100.0
    assert await rig.get("/battery/get") == (200, {"rsoc": 100.0,
                                                   "battery_operation_status": 0})
    status, body = await rig.get("/all/get")
    assert status == 200
    assert set(body) == {"rsoc", "battery_operation_status", "meter", "param", "status", "vdis"}
    assert body["param"]["cib"] == 52.0


async def reach(rig: Rig, mode: ConverterMode) -> None:
    """Drive the converter from anywhere to `mode` along changes APIS makes."""
    if rig.converter.mode != W:
        assert (await rig.get("/dcdc/set?mode=0x0000&dvg=350&dig=0&drg=0"))[0] == 200
    if mode != W:
        status, body = await rig.get(f"/dcdc/set?mode={mode.code}&dvg=350&dig=1&drg=0")
        assert status == 200, body


@pytest.mark.parametrize(("current", "target"), list(MODE_CHANGE_ORDER))
async def test_every_mode_change_in_the_seed_order(
    rig: Rig, current: ConverterMode, target: ConverterMode
) -> None:
    await reach(rig, current)
    rig.rig.converter_twin.received.clear()
    status, body = await rig.get(f"/dcdc/set?mode={target.code}&dvg=360&dig=2&drg=0.1")
    assert status == 200, body
    expected = [STEP_FRAME[s] for s in MODE_CHANGE_ORDER[(current, target)]]
    assert rig.writes() == expected
    # Read back after the writes, and the reply describes the state after the change.
    received = rig.rig.converter_twin.received
    last_write = max(i for i, name in enumerate(received) if name.endswith("-4"))
    assert received[last_write + 1] == "1-1"
    assert body["status"]["status"] == target.code
    assert body["status"]["operationMode"] == target.operation_mode
    assert body["vdis"]["dvg"] == pytest.approx(360, abs=0.03)
    assert body["vdis"]["drg"] == pytest.approx(0.1, abs=0.001)
    assert body["param"]["dig"] == pytest.approx(2, abs=0.001)
    assert rig.converter.mode == target


@pytest.mark.parametrize(("current", "target"), [(CHG, DIS), (DIS, CHG), (CV, CV)])
async def test_changes_apis_never_makes_are_refused(
    rig: Rig, current: ConverterMode, target: ConverterMode
) -> None:
    await reach(rig, current)
    rig.rig.converter_twin.received.clear()
    status, body = await rig.get(f"/dcdc/set?mode={target.code}&dvg=350&dig=1&drg=0")
    assert status == 400
    assert f"mode = {target.code} from {current.code}" in body["err"]
    assert rig.writes() == []
    assert rig.converter.mode == current


async def test_current_and_voltage_only(rig: Rig) -> None:
    # Another unit's converter holds the grid, so the charge current can flow.
    ConverterModel(grid=rig.converter.grid, mode=CV, dvg=350.0)
    await reach(rig, CHG)
    rig.rig.converter_twin.received.clear()
    status, body = await rig.get("/dcdc/set?dig=2")
    assert status == 200 and set(body) == {"meter", "param"}
    assert body["param"]["dig"] == pytest.approx(1.9999, abs=1e-3)
    assert body["meter"]["ig"] == pytest.approx(2.0, abs=1e-3)
    status, body = await rig.get("/dcdc/set?dvg=370&drg=0")
    assert status == 200 and set(body) == {"meter", "vdis"}
    assert rig.writes() == ["6-4", "4-4"]
    assert rig.converter.mode == CHG


async def test_watchdog_stops_a_denied_battery() -> None:
    battery = SimpleBattery(rsoc=40.0, sharing_permitted=True)
    converter = ConverterModel()
    async with twin_rig(LIMITS, battery=battery, converter=converter, battery_settings=BATTERY,
                        converter_settings=CONVERTER,
                        watchdog=WatchdogSettings(force_waiting=True, period_s=0.3)) as r:
        await r.driver.set(CV, 350.0, 2.0, 0.0)
        assert converter.mode == CV
        battery.sharing_permitted = False
        await wait_until(lambda: converter.mode == W, timeout_s=60)
        await wait_until(lambda: r.driver.watchdog_stops == 1, timeout_s=30)
        assert "1-4" in r.converter_twin.received
        # The driver keeps serving and knows the new mode.
        assert (await r.driver.read_converter()).mode is W


async def test_the_converter_twin_stops_when_its_driver_falls_silent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    converter = ConverterModel()
    async with twin_rig(LIMITS, converter=converter, battery_settings=BATTERY,
                        converter_settings=CONVERTER,
                        watchdog=WatchdogSettings(force_waiting=False),
                        converter_watchdog=CommunicationWatchdog(1.0)) as r:
        await r.driver.set(DIS, 380.0, 1.0, 0.0)
        loop = asyncio.get_running_loop()
        end = loop.time() + 2.5
        while loop.time() < end:  # reads keep it alive (2.5 timeouts)
            assert (await r.driver.read_converter()).mode is DIS
            await asyncio.sleep(0.1)
        assert converter.mode == DIS and r.converter_twin.watchdog_stops == 0
        await wait_until(lambda: converter.mode == W, timeout_s=30)  # silence: it stops
        assert r.converter_twin.watchdog_stops == 1
        # The driver believed DISCHARGE; it reads the change, confirms it and says so.
        with caplog.at_level(logging.WARNING, "apis.hardware.converter"):
            assert (await r.driver.read_converter()).mode is W
        assert any("now holds mode = 0 (was mode = 2)" in m for m in caplog.messages)
        await r.driver.set(CV, 350.0, 2.0, 0.0)  # from Waiting, in the Waiting order
        assert converter.mode == CV


# --- faults on the lines ----------------------------------------------------------------------


async def test_modbus_crc_error_and_silence(rig: Rig) -> None:
    faults = rig.rig.battery_twin.faults
    faults.append(BAD_CHECKSUM)  # first attempt bad, second good
    assert (await rig.get("/battery/get"))[0] == 200
    faults.append(SILENT)
    assert (await rig.get("/battery/get"))[0] == 200
    faults.extend([BAD_CHECKSUM, BAD_CHECKSUM])
    status, body = await rig.get("/battery/get")
    assert status == 400 and "crc" in body["err"] and "2 attempts" in body["err"]
    faults.extend([SILENT, SILENT])
    status, body = await rig.get("/battery/get")
    assert status == 400 and "timeout" in body["err"]
    assert await rig.get("/battery/get") == (200, {"rsoc": 70.5, "battery_operation_status": 3})


@pytest.mark.parametrize("code", [1, 2, 3, 4])
async def test_modbus_exception_replies(rig: Rig, code: int) -> None:
    rig.rig.battery_twin.faults.extend([f"exception:{code}"] * 2)
    status, body = await rig.get("/battery/get")
    assert status == 400
    assert body["err"] == str(ModbusExceptionReply(code))
    assert f"modbus exception {code}" in body["err"]
    assert (await rig.get("/battery/get"))[0] == 200


async def test_modbus_twin_exception_codes(rig: Rig) -> None:
    battery = rig.rig.driver.battery
    for start, count, code in ((0x270F, 1, 2), (0x2700, 125, 2), (0x1D, 0, 3),
                               (0x1D, 126, 3)):
        with pytest.raises(ModbusExceptionReply) as info:
            await battery.read_registers(start, count)
        assert info.value.code == code
    # Function 0x03 is not served: exception 01.
    twin = rig.rig.battery_twin
    reply = twin.answer(modbus.with_crc(bytes.fromhex("01 03 00 1D 00 02")))
    assert reply == modbus.encode_exception_reply(1, 0x03, 1)
    assert await battery.read_registers(0x270E, 1) == [0]


async def test_a_set_point_at_the_lower_limit_is_applied_and_reported(rig: Rig) -> None:
    # 260 V is sent as raw 11210, which the converter holds (and echoes) as 259.9976 V.
    held = eza.GRID_VOLTAGE.fields[0].from_raw(11210)
    status, body = await rig.get("/dcdc/set?mode=0x0014&dvg=260&dig=1&drg=0")
    assert status == 200, body
    assert body["vdis"]["dvg"] == held == rig.converter.dvg
    assert rig.converter.mode == CV
    # The Web API's set-point cache took the command: a current-only set works.
    status, body = await rig.get("/dcdc/set?dig=2")
    assert status == 200, body
    status, body = await rig.get("/dcdc/get")
    assert body["vdis"]["dvg"] == held and body["status"]["status"] == CV.code


async def test_a_lone_converter_sees_a_dead_grid(rig: Rig) -> None:
    status, body = await rig.get("/dcdc/get")
    assert status == 200 and body["meter"]["vg"] == 0.0  # nothing holds the grid up
    await reach(rig, CV)
    status, body = await rig.get("/dcdc/get")
    assert body["meter"]["vg"] == pytest.approx(350, abs=0.03)


async def test_a_converter_at_another_address_stays_silent(rig: Rig) -> None:
    rig.rig.converter_twin.address = eza.Address(1, 16)  # the driver talks to AD1=0 AD2=16
    status, body = await rig.get("/dcdc/get")
    assert status == 400
    assert "1-1 to AD1=0 AD2=16: read timeout after 4 attempts" in body["err"], body
    assert rig.rig.converter_twin.received == [] and rig.rig.converter_twin.ignored == 4


async def test_converter_checksum_silence_nak(rig: Rig) -> None:
    faults = rig.rig.converter_twin.faults
    for fault in (BAD_CHECKSUM, SILENT, GARBAGE_FIRST, WRONG_CMD, "nak:fffd", "nak:fffc"):
        faults.append(fault)
        status, body = await rig.get("/dcdc/get")
        assert status == 200, (fault, body)
    faults.extend([BAD_CHECKSUM] * 4)
    status, body = await rig.get("/dcdc/get")
    assert status == 400 and "checksum error" in body["err"]
    faults.extend([SILENT] * 4)
    status, body = await rig.get("/dcdc/get")
    assert status == 400 and "read timeout" in body["err"]
    faults.extend(["nak:fffd"] * 4)
    status, body = await rig.get("/dcdc/get")
    assert status == 400 and "timeout" in body["err"]
    for ercd in ("fffe", "ffff", "fffb"):
        faults.append(f"nak:{ercd}")
        rig.rig.converter_twin.received.clear()
        status, body = await rig.get("/dcdc/get")
        assert status == 400 and f"ERCD={ercd}" in body["err"]
        assert rig.rig.converter_twin.received == ["1-1"]  # exactly one frame, no retry
    assert (await rig.get("/dcdc/get"))[0] == 200


@pytest.mark.parametrize(
    "query",
    ["mode=0x0005&dvg=350&dig=1", "mode=20&dvg=350&dig=1", "mode=0x0014&dvg=500&dig=1",
     "mode=0x0014&dvg=200&dig=1", "mode=0x0014&dvg=350&dig=9", "mode=0x0014&dvg=350&dig=-1",
     "mode=0x0014&dvg=350&dig=1&drg=5", "mode=0x0014&dvg=abc&dig=1", "dig=2.5", "dvg=390"],
)
async def test_bad_queries_send_no_frame(rig: Rig, query: str) -> None:
    await reach(rig, W)
    rig.rig.converter_twin.received.clear()
    status, body = await rig.get(f"/dcdc/set?{query}")
    assert status == 400 and body["err"]
    assert rig.rig.converter_twin.received == []
    assert rig.rig.converter_twin.refused_values == []
    assert (await rig.get("/dcdc/get"))[0] == 200
