"""World stepping: energy conservation, RSOC bounds, battery, house, converter, faults."""

from __future__ import annotations

import math
from datetime import datetime

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apis.config.hwconfig import HwConfig
from apis.emulator import Alarm, ConverterModel, World
from apis.emulator.house import BuiltinProfiles
from apis.hardware.commwatchdog import CommunicationWatchdog
from apis.hardware.modes import ConverterMode

UNWATCHED = ConverterModel(watchdog=CommunicationWatchdog(None))

UNITS = ("E001", "E002", "E003")


def assert_conserved(world: World) -> None:
    """Per unit and for the grid, to 1e-6 of the energy moved."""
    for unit in world.unit_ids:
        c = world.counters(unit)
        assert abs(c.balance_error_wh) <= 1e-6 * max(c.moved_wh, 1.0), (unit, c)
    moved = float(np.sum(world.grid_out_wh + world.grid_in_wh))
    assert abs(world.grid_balance_error_wh) <= 1e-6 * max(moved, 1.0)


command = st.one_of(
    st.tuples(
        st.just("set"),
        st.sampled_from(UNITS),
        st.sampled_from(list(ConverterMode)),
        st.floats(300.0, 380.0),
        st.floats(0.0, 9.0),  # beyond the hardware maximum too: the emulator limits
        st.floats(0.0, 2.0),
    ),
    st.tuples(st.just("current"), st.sampled_from(UNITS), st.floats(0.0, 9.0)),
    st.tuples(st.just("rsoc"), st.sampled_from(UNITS), st.floats(0.0, 100.0)),
    st.tuples(
        st.just("house"), st.sampled_from(UNITS), st.floats(0.0, 5000.0), st.floats(0.0, 5000.0)
    ),
    st.tuples(st.just("break"), st.sampled_from(UNITS), st.booleans()),
    st.tuples(st.just("advance"), st.floats(0.0, 900.0)),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(command, min_size=1, max_size=25), st.integers(0, 10_000))
def test_energy_is_conserved_and_rsoc_bounded(
    commands: list[tuple[object, ...]], seed: int
) -> None:
    world = World.with_units(3, seed=seed, hw=HwConfig(battery_nominal_capacity_wh=500.0))
    for cmd in commands:
        kind = cmd[0]
        if kind == "set":
            _, unit, mode, dvg, dig, drg = cmd
            world.set_converter(unit, mode, dvg, dig, drg)  # type: ignore[arg-type]
        elif kind == "current":
            world.set_current(cmd[1], cmd[2])  # type: ignore[arg-type]
        elif kind == "rsoc":
            world.set_rsoc(cmd[1], cmd[2])  # type: ignore[arg-type]
        elif kind == "house":
            world.set_house_override(cmd[1], cmd[2], cmd[3])  # type: ignore[arg-type]
        elif kind == "break":
            world.break_line(f"{cmd[1]}-BUS", cmd[2])  # type: ignore[arg-type]
        else:
            world.advance(cmd[1])  # type: ignore[arg-type]
        rsoc = world.rsoc
        assert np.all((rsoc >= 0.0) & (rsoc <= 100.0))
        assert np.all((world.energy_wh >= 0.0) & (world.energy_wh <= world.capacity_wh))
        assert_conserved(world)


def _quiet_world(n: int = 3, rsoc: float = 50.0, **kwargs: object) -> World:
    # The tests step the world by hand and no driver polls it: the converters' communication
    # watchdog is off (tests/emulator/test_watchdog.py covers it).
    kwargs.setdefault("converter", UNWATCHED)
    world = World.with_units(n, initial_rsoc=rsoc, **kwargs)  # type: ignore[arg-type]
    for unit in world.unit_ids:
        world.set_house_override(unit, pv_w=0.0, load_w=0.0)
    return world


def test_full_battery_curtails_pv_and_empty_battery_buys() -> None:
    world = _quiet_world(2)
    world.set_rsoc("E001", 100.0)
    world.set_house_override("E001", pv_w=2000.0, load_w=500.0)
    world.set_rsoc("E002", 0.0)
    world.set_house_override("E002", pv_w=0.0, load_w=800.0)
    world.advance(3600)
    assert world.rsoc[0] == 100.0 and world.rsoc[1] == 0.0
    one, two = world.counters("E001"), world.counters("E002")
    # Waiting converter: only the standby loss besides the house.
    assert one.curtailed_wh == pytest.approx(2000 - 500 - 4.5, rel=1e-9)
    assert two.bought_wh == pytest.approx(800 + 4.5, rel=1e-9)
    assert_conserved(world)


def test_battery_voltage_and_current_follow_rsoc() -> None:
    world = _quiet_world(1, rsoc=10.0)
    low = world.vb[0]
    world.set_rsoc("E001", 90.0)
    high = world.vb[0]
    hw = HwConfig().meter_ranges.vb
    assert hw.min < low < high < hw.max
    world.set_house_override("E001", pv_w=0.0, load_w=0.0)
    assert world.ib[0] == pytest.approx(world.wb[0] / world.vb[0])


def test_automatic_permission_with_hysteresis() -> None:
    world = _quiet_world(1, rsoc=30.0)
    world.set_auto_permission("E001", deny_below=20.0, permit_above=25.0)
    world.set_house_override("E001", pv_w=0.0, load_w=1000.0)
    assert world.battery_data("E001").sharing_permitted
    world.advance(0.12 * 4800 * 3.6)  # about 12 % of the battery
    assert world.rsoc[0] < 20.0
    assert not world.battery_data("E001").sharing_permitted
    world.set_house_override("E001", pv_w=1000.0, load_w=0.0)
    world.advance(0.04 * 4800 * 3.6)
    assert 20.0 < world.rsoc[0] < 25.0
    assert not world.battery_data("E001").sharing_permitted
    world.advance(0.04 * 4800 * 3.6)
    assert world.battery_data("E001").sharing_permitted


def test_cc_stops_at_battery_limits() -> None:
    world = _quiet_world(3)
    world.set_rsoc("E002", 0.0)
    world.set_converter("E001", ConverterMode.VOLTAGE_REFERENCE, 350.0, 2.3, 0.0)
    world.set_converter("E002", ConverterMode.DISCHARGE, 350.0, 1.0, 0.0)
    world.advance(30)
    assert world.ig[1] == 0.0
    assert Alarm.BATTERY_LIMIT in world.alarm_flags("E002")


def test_converter_efficiency_depends_on_power() -> None:
    world = _quiet_world(2, hw=HwConfig(grid_current_capacity_a=8.0))
    world.set_converter("E001", ConverterMode.VOLTAGE_REFERENCE, 350.0, 8.0, 0.0)
    efficiency = []
    for dig in (0.5, 2.0, 7.0):
        world.set_converter("E002", ConverterMode.DISCHARGE, 350.0, dig, 0.0)
        world.advance(30)
        efficiency.append(world.wg[1] / world.wb[1])
    assert 0.85 < efficiency[0] < efficiency[1]
    assert 0.93 < efficiency[2] < efficiency[1] < 0.97


def test_temperature_follows_losses() -> None:
    world = _quiet_world(2, rsoc=100.0, hw=HwConfig(grid_current_capacity_a=8.0))
    world.set_rsoc("E001", 0.0)
    world.set_converter("E001", ConverterMode.VOLTAGE_REFERENCE, 350.0, 8.0, 0.0)
    world.set_converter("E002", ConverterMode.DISCHARGE, 350.0, 7.0, 0.0)
    world.advance(3000)
    steady = world.model.ambient_c + world.model.thermal_resistance_k_per_w * world.loss_w[1]
    assert world.temperature_c[1] == pytest.approx(steady, rel=0.01)
    assert world.temperature_c[1] > world.temperature_c[0] > world.model.ambient_c


def test_faults_over_temperature_and_converter_alarm_trip_the_converter() -> None:
    world = _quiet_world(3)
    world.set_converter("E001", ConverterMode.VOLTAGE_REFERENCE, 350.0, 2.3, 0.0)
    world.set_converter("E002", ConverterMode.DISCHARGE, 350.0, 1.0, 0.0)
    world.advance(30)
    world.inject_over_temperature("E002")
    world.advance(1)
    data = world.converter_data("E002")
    assert Alarm.OVER_TEMPERATURE in world.alarm_flags("E002")
    assert data.status.alarm_state == "Heavy alarm" and data.meter.ig == 0.0
    assert data.status.alarm.startswith("0001 0002")
    world.clear_faults("E002")
    world.advance(3600)  # cools below the re-arm point
    assert world.ig[1] == pytest.approx(-1.0)
    world.inject_converter_alarm("E001")
    world.advance(1)
    assert Alarm.INJECTED in world.alarm_flags("E001")
    assert world.vg.tolist() == [0.0, 0.0, 0.0]  # the voltage reference is gone: dead grid


def test_denied_sharing_fault_overrides_the_battery_flag() -> None:
    world = _quiet_world(1)
    world.inject_sharing_denied("E001")
    assert world.battery_data("E001").battery_operation_status == 0
    world.clear_faults("E001")
    assert world.battery_data("E001").battery_operation_status == 3


def test_builtin_profiles_need_no_files_and_units_differ() -> None:
    profiles = BuiltinProfiles(4, seed=7)
    noon = datetime(2020, 6, 21, 12)
    night = datetime(2020, 6, 21, 2)
    pv, load = profiles.power_w(0.0, noon)
    assert np.all(pv > 0) and len(set(pv.round(3))) == 4
    pv_night, load_night = profiles.power_w(0.0, night)
    assert np.all(pv_night == 0)
    assert np.all(load > 0) and np.all(load_night > 0)
    # Daily load energy near the unit's kWh per day (noise averages out over a month).
    hours = [datetime(2020, 3, d, h, 30) for d in range(1, 31) for h in range(24)]
    energy = sum(profiles.power_w(0.0, t)[1] for t in hours) / 30 / 1000
    assert energy == pytest.approx(profiles.kwh_per_day, rel=0.1)
    again = BuiltinProfiles(4, seed=7).power_w(0.0, noon)
    assert np.array_equal(again[0], pv) and np.array_equal(again[1], load)


def test_add_and_remove_units() -> None:
    world = _quiet_world(2)
    assert world.add_unit() == "E003"
    world.set_converter("E001", ConverterMode.VOLTAGE_REFERENCE, 350.0, 2.3, 0.0)
    world.set_converter("E003", ConverterMode.CHARGE, 350.0, 1.0, 0.0)
    world.set_house_override("E003", pv_w=0.0, load_w=0.0)
    world.advance(30)
    assert world.ig[2] == pytest.approx(1.0)
    assert world.remove_unit() == "E003"
    world.advance(1)
    assert world.unit_ids == ["E001", "E002"] and world.ig[0] == pytest.approx(0.0, abs=1e-9)
    assert_conserved(world)


def test_ups_bypass_and_ac_charging_keep_energy_balanced() -> None:
    from apis.emulator.ups import BYPASS_MODE, NORMAL_MODE, UpsModel

    world = World.with_units(
        2, initial_rsoc=40.0, ups=UpsModel(), hw=HwConfig(battery_nominal_capacity_wh=500.0),
        max_step_s=10.0, converter=UNWATCHED,
    )
    world.set_house_override("E001", pv_w=0.0, load_w=800.0)
    world.set_house_override("E002", pv_w=0.0, load_w=0.0)
    world.set_converter("E002", ConverterMode.VOLTAGE_REFERENCE, 350.0, 2.3, 0.0)
    world.set_converter("E001", ConverterMode.DISCHARGE, 350.0, 2.0, 0.0)
    world.advance(600)  # E001 drains below 30 %: bypass; below 20 %: the mains charge it
    assert world.ups_mode("E001") == BYPASS_MODE
    assert world.ups_ac_charging[0]
    world.advance(4 * 3600)
    assert 0.0 <= world.rsoc[0] <= 35.0
    assert world.counters("E001").bought_wh > 800.0  # the house load came from the mains
    assert world.ups_mode("E002") == NORMAL_MODE
    assert_conserved(world)


def _reading_from_arrays(world: World, unit: str) -> tuple[object, ...]:
    """What a reading must say, straight from the state arrays (no cache)."""
    i = world.index(unit)
    return (
        int(world.mode[i]), int(world.alarms[i]), world.tripped(i),
        float(world.vg[i]) + 0.0, float(world.ig[i]) + 0.0, float(world.wg[i]) + 0.0,
        float(world.vb[i]), float(world.ib[i]) + 0.0, float(world.wb[i]) + 0.0,
        float(world.temperature_c[i]), float(world.dvg[i]), float(world.drg[i]),
        float(world.dig[i]), float(world.rsoc[i]), bool(world.sharing_permitted[i]),
        world.now(),
    )


def _reading(world: World, unit: str) -> tuple[object, ...]:
    data = world.unit_data(unit)
    d, m = data.dcdc, data.dcdc.meter
    i = world.index(unit)
    return (
        int(d.mode), int(d.status.alarm.split()[0], 16), world.tripped(i),
        m.vg, m.ig, m.wg, m.vb, m.ib, m.wb, m.tmp, d.vdis.dvg, d.vdis.drg, d.param.dig,
        data.battery.rsoc, data.battery.sharing_permitted, data.time,
    )


def test_readings_follow_every_change_of_the_world() -> None:
    """Readings are cached per state version: every mutator must show in the next read."""
    world = World.with_units(3, initial_rsoc=50.0)

    def check() -> None:
        for unit in world.unit_ids:
            assert _reading(world, unit) == _reading_from_arrays(world, unit), unit
            assert world.converter_data(unit) is world.unit_data(unit).dcdc
            assert world.battery_data(unit) is world.unit_data(unit).battery

    check()
    first = world.unit_data("E001")
    assert world.unit_data("E001") is first  # same state: same reading
    world.set_converter("E001", ConverterMode.VOLTAGE_REFERENCE, 350.0, 2.0, 0.0)
    check()
    world.set_converter("E002", ConverterMode.DISCHARGE, 350.0, 1.0, 0.0)
    check()
    world.advance(5.0)
    check()
    world.set_voltage("E001", 360.0, 0.1)
    check()
    world.set_current("E002", 0.5)
    check()
    world.set_rsoc("E003", 80.0)
    check()
    before = world.version
    world.set_sharing_permitted("E003", False)  # no step
    assert world.version != before
    assert not world.battery_data("E003").sharing_permitted
    check()
    world.set_sharing_permitted("E003", True)
    world.inject_sharing_denied("E002")  # no step
    assert not world.battery_data("E002").sharing_permitted
    check()
    world.set_auto_permission("E001", 10.0, 20.0)
    check()
    world.set_house_override("E003", pv_w=500.0, load_w=100.0)
    check()
    world.inject_converter_alarm("E002")
    check()
    world.inject_over_temperature("E001")
    check()
    world.clear_faults("E001")
    world.clear_faults("E002")
    check()
    world.break_line(world.grid.line_ids[0])
    check()
    world.add_unit(rsoc=90.0)
    check()
    world.remove_unit("E001")  # indices shift: no reading may follow the old index
    check()
    assert world.battery_data("E004").rsoc == pytest.approx(90.0, abs=1.0)


def test_reading_turns_negative_zero_into_zero() -> None:
    world = World.with_units(2, initial_rsoc=50.0)
    world.ig[0] = -0.0
    world.wg[0] = -0.0
    world._changed()  # a direct write to the arrays must say so
    meter = world.converter_data("E001").meter
    assert math.copysign(1.0, meter.ig) == 1.0 and math.copysign(1.0, meter.wg) == 1.0
