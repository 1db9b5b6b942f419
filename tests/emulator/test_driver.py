"""EmulatedDriver over virtual time: a one-hour scenario, limits, injected faults."""

from __future__ import annotations

import asyncio

import pytest

from apis import clock
from apis.emulator import World
from apis.emulator.driver import EmulatedDriver, emulated_drivers
from apis.hardware.driver import CommandRefused, DeviceDriver, DriverError
from apis.hardware.modes import ConverterMode


def _world() -> World:
    world = World.with_units(3, initial_rsoc=50.0)
    for unit in world.unit_ids:
        world.set_house_override(unit, pv_w=0.0, load_w=0.0)
    return world


def test_driver_satisfies_the_protocol() -> None:
    assert isinstance(EmulatedDriver(_world(), "E001"), DeviceDriver)


def test_one_hour_one_voltage_reference_two_cc_units() -> None:
    world = _world()
    drivers = emulated_drivers(world)

    async def scenario() -> dict[str, float]:
        loop = asyncio.get_running_loop()
        async with asyncio.TaskGroup() as tasks:
            stepping = tasks.create_task(world.run(period_s=1.0))
            start = loop.time()
            await drivers["E001"].set(ConverterMode.VOLTAGE_REFERENCE, 350.0, 2.3, 0.0)
            await asyncio.sleep(15)  # the CV start ramps the grid up
            assert (await drivers["E002"].read()).dcdc.meter.vg == pytest.approx(350.0)
            await drivers["E002"].set(ConverterMode.DISCHARGE, 350.0, 2.0, 0.0)
            await drivers["E003"].set(ConverterMode.CHARGE, 350.0, 1.0, 0.0)
            moved_from = loop.time()
            # The units read their converters every 5 s, which keeps the converters'
            # communication watchdogs (60 s) from stopping them.
            while (left := 3600 - (loop.time() - start)) > 0:
                await asyncio.sleep(min(5.0, left))
                for driver in drivers.values():
                    await driver.read()
            readings = {u: await d.read() for u, d in drivers.items()}
            stepping.cancel()
        assert world.t == pytest.approx(3600.0)
        assert readings["E001"].time == world.now()
        meters = {u: r.dcdc.meter for u, r in readings.items()}
        assert meters["E002"].ig == pytest.approx(-2.0)
        assert meters["E003"].ig == pytest.approx(1.0)
        # The voltage reference takes the difference, less what the lines lose.
        assert meters["E001"].ig == pytest.approx(1.0, abs=0.01)
        assert meters["E001"].vg == pytest.approx(350.0, abs=0.01)
        return {"moved_s": 3600 - (moved_from - start)}

    result = clock.run(scenario, "virtual")
    hours = result["moved_s"] / 3600
    two, three, one = (world.counters(u) for u in ("E002", "E003", "E001"))
    assert two.grid_out_wh == pytest.approx(2.0 * 350.0 * hours, rel=2e-3)
    assert three.grid_in_wh == pytest.approx(1.0 * 350.0 * hours, rel=2e-3)
    assert one.grid_in_wh == pytest.approx(350.0 * hours, rel=5e-3)
    # Battery side: the grid energy less the converter loss.
    assert two.battery_start_wh - two.battery_wh == pytest.approx(
        two.grid_out_wh + two.converter_loss_wh, rel=1e-9
    )
    line_loss = world.total_line_loss_wh
    assert line_loss == pytest.approx((2**2 + 1**2 + 1**2) * 0.05 * hours, rel=0.02)
    for c in (one, two, three):
        assert abs(c.balance_error_wh) <= 1e-6 * c.moved_wh
    assert abs(world.grid_balance_error_wh) <= 1e-6 * line_loss
    assert world.voltage_conflicts == []


def test_commands_outside_the_limits_are_refused() -> None:
    world = _world()
    driver = EmulatedDriver(world, "E001")

    async def scenario() -> None:
        with pytest.raises(CommandRefused, match="dig"):
            await driver.set(ConverterMode.VOLTAGE_REFERENCE, 350.0, 5.0, 0.0)
        with pytest.raises(CommandRefused, match="dvg"):
            await driver.set_voltage(395.0, 0.0)
        with pytest.raises(CommandRefused, match="drg"):
            await driver.set_voltage(350.0, 4.5)
        data = await driver.read_converter()
        assert data.mode is ConverterMode.WAITING

    clock.run(scenario, "virtual")


def test_injected_driver_timeout_hangs_then_raises() -> None:
    world = _world()
    driver = EmulatedDriver(world, "E001")
    world.inject_driver_timeout("E001", delay_s=5.0)

    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(DriverError, match="timeout"):
            await driver.read()
        waited = loop.time() - start
        world.inject_driver_timeout("E001", None)
        assert (await driver.version()).comm_interface_version == "2.0"
        return waited

    assert clock.run(scenario, "virtual") == pytest.approx(5.0)


def test_reads_step_lazily_to_the_loop_time() -> None:
    world = _world()
    driver = EmulatedDriver(world, "E001")

    async def scenario() -> None:
        await driver.read()
        await asyncio.sleep(120)
        data = await driver.read()
        assert world.t == pytest.approx(120.0)
        assert data.battery.rsoc < 50.0  # standby loss drained a little

    clock.run(scenario, "virtual")
