"""What `World.step` keeps between steps (the setup of the settings, the settled references,
the last unlimited grid solve) changes nothing: every change of a setting, fault or line is
seen at once, and a world that forgets them before every step computes the same bits."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import numpy as np
import pytest

from apis.config.grid import GridConfig, GridLine, GridNode
from apis.config.hwconfig import HwConfig
from apis.emulator import Alarm, World
from apis.emulator.grid import GridNetwork
from apis.emulator.world import _UNIT_ARRAYS
from apis.hardware.modes import ConverterMode

HW = HwConfig(grid_current_capacity_a=2.3)


def _world() -> World:
    world = World.with_units(4, hw=HW, initial_rsoc=[50.0, 60.0, 40.0, 55.0], seed=3)
    world.set_converter("E001", ConverterMode.VOLTAGE_REFERENCE, 350.0, 2.3, 0.0)
    world.set_converter("E002", ConverterMode.DISCHARGE, 380.0, 1.5, 0.0)
    world.set_converter("E003", ConverterMode.CHARGE, 350.0, 1.0, 0.0)
    return world


def _forget(world: World) -> None:
    world._forget_setup()


def _state(world: World) -> dict[str, bytes]:
    state = {name: getattr(world, name).tobytes() for name in _UNIT_ARRAYS}
    state["line_loss_wh"] = world.line_loss_wh.tobytes()
    assert world.last_solution is not None
    state["node_v"] = world.last_solution.node_v.tobytes()
    return state


_SCENARIO: list[Callable[[World], None]] = [
    lambda w: None,
    lambda w: w.set_current("E002", 2.0),
    lambda w: w.set_voltage("E001", 360.0, 0.0),
    lambda w: w.inject_converter_alarm("E003"),
    lambda w: w.clear_faults("E003"),
    lambda w: w.break_line("E003-BUS"),
    lambda w: w.break_line("E003-BUS", broken=False),
    lambda w: w.set_house_override("E004", pv_w=0.0, load_w=900.0),
    lambda w: w.set_auto_permission("E004", 45.0, 50.0),
    lambda w: w.set_converter("E001", ConverterMode.WAITING, 350.0, 0.0, 0.0),
    lambda w: w.set_converter("E004", ConverterMode.VOLTAGE_REFERENCE, 350.0, 2.3, 0.0),
    lambda w: w.add_unit(hw=HW),
    lambda w: w.set_converter("E005", ConverterMode.CHARGE, 350.0, 3.0, 0.0),
    lambda w: w.remove_unit("E002"),
]


def test_a_world_that_forgets_its_caches_steps_to_the_same_bits() -> None:
    cached, fresh = _world(), _world()
    for change in _SCENARIO:
        change(cached)
        _forget(fresh)
        change(fresh)
        for _ in range(40):
            cached.step(0.5)
            _forget(fresh)
            fresh.step(0.5)
        assert _state(cached) == _state(fresh)


def _settled() -> World:
    world = _world()
    world.advance(30)
    return world


def test_a_settled_grid_is_not_solved_again_until_a_setting_changes() -> None:
    world = _settled()
    solution = world.last_solution
    world.step(1.0)
    assert world.last_solution is solution
    world.set_current("E002", 1.0)
    assert world.last_solution is not solution
    world.advance(5)
    assert world.ig[1] == pytest.approx(-1.0)


def test_a_command_is_seen_by_the_next_step() -> None:
    world = _settled()
    world.set_converter("E001", ConverterMode.WAITING, 350.0, 0.0, 0.0)
    world.step(1.0)
    assert np.all(world.vg == 0.0)  # no reference left: the grid is dead
    assert world.alarm_flags("E003") & Alarm.GRID_UNDER_VOLTAGE


def test_a_fault_is_seen_by_the_next_step() -> None:
    world = _settled()
    world.inject_converter_alarm("E001")
    assert np.all(world.vg == 0.0)
    world.clear_faults("E001")
    world.advance(30)
    assert world.vg[0] == pytest.approx(350.0, abs=0.1)


def test_a_broken_line_is_seen_by_the_next_step() -> None:
    world = _settled()
    world.break_line("E003-BUS")
    assert world.vg[2] == 0.0 and world.ig[2] == 0.0
    assert world.alarm_flags("E003") & Alarm.GRID_UNDER_VOLTAGE
    world.break_line("E003-BUS", broken=False)
    world.advance(5)
    assert world.ig[2] == pytest.approx(1.0)


def test_a_setting_written_directly_is_seen_by_the_next_step() -> None:
    world = _settled()
    world.dig[1] = 0.5
    world._changed()
    world.advance(5)
    assert world.ig[1] == pytest.approx(-0.5)


def test_prepared_sources_solve_as_solve_does() -> None:
    config = GridConfig(
        nodes=[GridNode(id="A", kind="unit"), GridNode(id="B", kind="unit")],
        lines=[GridLine(id="AB", from_node="A", to_node="B", resistance_ohm=0.5)],
    )
    grid = GridNetwork(config)
    injection = np.array([0.0, -2.0])
    # Two sources on one node add up (np.add.at), as one of their summed conductance.
    nodes, g, v = np.array([0, 0]), np.array([1.0, 3.0]), np.array([340.0, 360.0])
    shared = grid.solve_prepared(grid.prepare(nodes, g), v, injection)
    single = grid.solve(np.array([0]), np.array([4.0]), np.array([355.0]), injection)
    assert shared.node_v == pytest.approx(single.node_v)
    assert shared.source_i.sum() == pytest.approx(single.source_i[0])
    distinct = grid.solve_prepared(grid.prepare(np.array([0]), np.array([4.0])), v[:1], injection)
    plain = grid.solve(np.array([0]), np.array([4.0]), v[:1], injection)
    assert distinct.node_v.tobytes() == plain.node_v.tobytes()


def test_now_follows_the_world_time_and_its_start() -> None:
    world = World.with_units(1, start=datetime(2020, 1, 1))
    assert world.now() == datetime(2020, 1, 1)
    world.advance(90.5)
    assert world.now() == datetime(2020, 1, 1, 0, 1, 30, 500000)
    world.start = datetime(2021, 6, 1)
    assert world.now() == datetime(2021, 6, 1, 0, 1, 30, 500000)
