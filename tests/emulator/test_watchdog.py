"""The emulated converter's communication watchdog: silence for its timeout stops it."""

from __future__ import annotations

import asyncio

import pytest

from apis.emulator import ConverterModel, World
from apis.emulator.driver import EmulatedDriver
from apis.hardware.commwatchdog import DEFAULT_TIMEOUT_S, CommunicationWatchdog
from apis.hardware.modes import ConverterMode

CV, DIS, W = ConverterMode.VOLTAGE_REFERENCE, ConverterMode.DISCHARGE, ConverterMode.WAITING


def _world(**kwargs: object) -> World:
    return World.with_units(2, initial_rsoc=60.0, **kwargs)


def test_a_silent_discharging_converter_goes_back_to_waiting() -> None:
    world = _world()
    world.set_converter("E001", CV, 350.0, 2.0, 0.0)
    world.set_converter("E002", DIS, 380.0, 1.0, 0.0)
    world.advance(DEFAULT_TIMEOUT_S - 1.0)
    assert world.ig[1] == pytest.approx(-1.0, abs=0.01)  # still discharging
    world.heard("E001")  # E001's driver still reads; E002's has gone quiet
    world.advance(2.0)
    assert world.mode.tolist() == [int(CV), int(W)]
    assert world.ig[1] == 0.0
    assert [u for u, _ in world.watchdog_stops] == ["E002"]
    # stopped in the step (at most 1 s) in which its timeout ran out
    assert DEFAULT_TIMEOUT_S - 1.0 <= world.watchdog_stops[0][1] <= DEFAULT_TIMEOUT_S
    world.advance(DEFAULT_TIMEOUT_S)
    assert world.mode.tolist() == [int(W), int(W)]  # and E001 too, once silent long enough


def test_commands_reset_the_watchdog_and_none_turns_it_off() -> None:
    world = _world()
    world.set_converter("E001", CV, 350.0, 2.0, 0.0)
    for _ in range(5):
        world.advance(DEFAULT_TIMEOUT_S / 2)
        world.set_voltage("E001", 350.0, 0.0)
    assert world.mode[0] == int(CV) and world.watchdog_stops == []
    off = _world(converter=ConverterModel(watchdog=CommunicationWatchdog(None)))
    off.set_converter("E001", CV, 350.0, 2.0, 0.0)
    off.advance(10 * DEFAULT_TIMEOUT_S)
    assert off.mode[0] == int(CV)


async def test_driver_reads_count_as_communication() -> None:
    world = _world(converter=ConverterModel(watchdog=CommunicationWatchdog(1.0)))
    driver = EmulatedDriver(world, "E001")
    await driver.set(CV, 350.0, 2.0, 0.0)
    loop = asyncio.get_running_loop()
    end = loop.time() + 2.5
    while loop.time() < end:  # reads 20 times a second, for 2.5 timeouts
        assert (await driver.read()).dcdc.mode is CV
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.5)  # silence beyond the timeout
    assert (await driver.read()).dcdc.mode is W
    assert [u for u, _ in world.watchdog_stops] == ["E001"]


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match=r"timeout_s = 0 \(must be a finite number > 0\)"):
        CommunicationWatchdog(0)
