"""Nodal solve of the DC grid: hand-computed networks, droop sharing, broken lines."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from apis.config.grid import GridConfig, GridLine, GridNode
from apis.config.hwconfig import HwConfig
from apis.emulator import Alarm, ConverterModel, World
from apis.emulator.grid import GridNetwork
from apis.hardware.modes import ConverterMode

CV = ConverterMode.VOLTAGE_REFERENCE


def _three_node_grid() -> GridConfig:
    # A --1 ohm-- B --2 ohm-- C
    return GridConfig(
        nodes=[GridNode(id="A"), GridNode(id="B", kind="junction"), GridNode(id="C")],
        lines=[
            GridLine(id="AB", from_node="A", to_node="B", resistance_ohm=1.0),
            GridLine(id="BC", from_node="B", to_node="C", resistance_ohm=2.0),
        ],
    )


def test_three_node_network_matches_hand_computation() -> None:
    grid = GridNetwork(_three_node_grid())
    # Source at A: 350 V behind 0.5 ohm. C draws 2 A, B draws 1 A.
    injection = np.array([0.0, -1.0, -2.0])
    sol = grid.solve(np.array([0]), np.array([2.0]), np.array([350.0]), injection)
    # 3 A leaves the source: v_A = 350 - 0.5 * 3; then 3 A over AB and 2 A over BC.
    assert sol.node_v == pytest.approx([348.5, 345.5, 341.5])
    assert sol.source_i == pytest.approx([3.0])
    assert sol.line_i == pytest.approx([3.0, 2.0])
    assert sol.line_loss_w == pytest.approx([9.0, 8.0])
    # Power balance: sources and injections deliver exactly the line losses.
    delivered = float(sol.source_i @ sol.node_v[[0]] + injection @ sol.node_v)
    assert delivered == pytest.approx(17.0)


def test_factorization_is_reused_until_the_sources_change() -> None:
    grid = GridNetwork(_three_node_grid())
    src, g = np.array([0]), np.array([2.0])
    for v in (300.0, 320.0, 350.0):
        grid.solve(src, g, np.array([v]), np.zeros(3))
    assert grid.factorizations == 1
    grid.solve(src, np.array([4.0]), np.array([350.0]), np.zeros(3))
    assert grid.factorizations == 2
    grid.set_line_broken("BC", True)
    grid.solve(src, np.array([4.0]), np.array([350.0]), np.zeros(3))
    assert grid.factorizations == 3


def test_broken_line_isolates_a_node() -> None:
    grid = GridNetwork(_three_node_grid())
    grid.set_line_broken("BC", True)
    sol = grid.solve(np.array([0]), np.array([2.0]), np.array([350.0]), np.zeros(3))
    assert sol.live.tolist() == [True, True, False]
    assert sol.node_v == pytest.approx([350.0, 350.0, 0.0])
    assert sol.line_i == pytest.approx([0.0, 0.0])


def _world(n: int, **kwargs: object) -> World:
    world = World.with_units(n, initial_rsoc=50.0, **kwargs)  # type: ignore[arg-type]
    for unit in world.unit_ids:
        world.set_house_override(unit, pv_w=0.0, load_w=0.0)
    return world


def test_droop_sharing_between_two_voltage_references() -> None:
    model = ConverterModel()
    world = _world(3, hw=HwConfig(grid_current_capacity_a=8.0))
    world.set_converter("E001", CV, 350.0, 8.0, 0.5)
    world.set_converter("E002", CV, 350.0, 8.0, 1.5)
    world.set_converter("E003", ConverterMode.CHARGE, 350.0, 3.0, 0.0)
    world.advance(60)
    # Same reference voltage, common bus: currents split inversely to the source resistances
    # (output + droop (dvg * drg / 100) + the unit's line to the bus).
    line = 0.05
    r1 = model.output_resistance_ohm + 350.0 * 0.5 / 100 + line
    r2 = model.output_resistance_ohm + 350.0 * 1.5 / 100 + line
    i1, i2 = -world.ig[0], -world.ig[1]
    assert i1 + i2 == pytest.approx(3.0, rel=1e-9)
    assert i1 == pytest.approx(3.0 * r2 / (r1 + r2), rel=1e-9)
    # The bus sits below the set-point by the droop.
    bus = world.node_voltages()["BUS"]
    assert bus == pytest.approx(350.0 - i1 * r1, rel=1e-9)


def test_two_references_fight_and_the_conflict_is_recorded() -> None:
    world = _world(2)
    world.set_converter("E001", CV, 350.0, 2.3, 0.0)
    world.advance(20)
    assert world.voltage_conflicts == []
    world.set_converter("E002", CV, 360.0, 2.3, 0.0)
    world.advance(1)
    assert world.voltage_conflict_active
    assert len(world.voltage_conflicts) == 1
    conflict = world.voltage_conflicts[0]
    assert conflict.unit_ids == ("E001", "E002")
    # Stiff sources 10 V apart over 2 x 0.05 ohm of line: a large circulating current.
    assert world.ig[0] > 40.0 and world.ig[1] < -40.0
    assert conflict.fight_current_a > 40.0
    assert Alarm.VOLTAGE_CONFLICT in world.alarm_flags("E001")
    assert Alarm.CURRENT_LIMIT in world.alarm_flags("E002")
    # Kilowatts of loss: the fight ends when a converter trips on over-temperature.
    world.advance(60)
    tripped = [u for u in ("E001", "E002") if Alarm.OVER_TEMPERATURE in world.alarm_flags(u)]
    assert tripped
    assert not world.voltage_conflict_active
    assert len(world.voltage_conflicts) == 1  # one record per onset, not per step


def test_droop_softens_a_fight_between_references() -> None:
    world = _world(2)
    world.set_converter("E001", CV, 350.0, 2.3, 1.0)
    world.advance(20)
    world.set_converter("E002", CV, 354.0, 2.3, 1.0)
    world.advance(5)
    r = ConverterModel().output_resistance_ohm + 0.05
    expected = (354.0 - 350.0) / (2 * r + 3.5 + 3.54)
    assert world.ig[0] == pytest.approx(expected, rel=1e-9)
    assert world.voltage_conflict_active
    world.set_converter("E001", ConverterMode.WAITING, 350.0, 0.0, 0.0)
    world.advance(1)
    assert not world.voltage_conflict_active
    assert Alarm.VOLTAGE_CONFLICT not in world.alarm_flags("E002")


def test_references_on_separate_islands_do_not_conflict() -> None:
    world = _world(2)
    world.break_line("E002-BUS")
    world.set_converter("E001", CV, 350.0, 2.3, 0.0)
    world.set_converter("E002", CV, 350.0, 2.3, 0.0)
    world.advance(30)
    assert world.voltage_conflicts == []
    world.break_line("E002-BUS", broken=False)
    world.advance(1)
    assert [c.unit_ids for c in world.voltage_conflicts] == [("E001", "E002")]


def test_broken_line_leaves_a_cc_unit_dead_with_an_alarm() -> None:
    world = _world(3)
    world.set_converter("E001", CV, 350.0, 2.3, 0.0)
    world.set_converter("E002", ConverterMode.DISCHARGE, 350.0, 1.0, 0.0)
    world.set_converter("E003", ConverterMode.CHARGE, 350.0, 1.0, 0.0)
    world.advance(30)
    assert world.ig[2] == pytest.approx(1.0)
    world.break_line("E003-BUS")
    world.advance(5)
    assert world.vg[2] == 0.0 and world.ig[2] == 0.0
    assert Alarm.GRID_UNDER_VOLTAGE in world.alarm_flags("E003")
    assert world.ig[0] == pytest.approx(1.0, abs=1e-6)  # the CV unit now absorbs E002 1 A
    assert world.line_currents()["E003-BUS"] == 0.0


def test_dead_grid_moves_no_current() -> None:
    world = _world(2)
    world.set_converter("E001", ConverterMode.DISCHARGE, 350.0, 2.0, 0.0)
    world.set_converter("E002", ConverterMode.CHARGE, 350.0, 2.0, 0.0)
    world.advance(10)
    assert world.vg.tolist() == [0.0, 0.0] and world.ig.tolist() == [0.0, 0.0]
    for unit in ("E001", "E002"):
        assert Alarm.GRID_UNDER_VOLTAGE in world.alarm_flags(unit)


def test_cv_start_ramps_the_grid_from_zero() -> None:
    world = _world(2)
    world.set_converter("E001", CV, 350.0, 2.3, 0.0)
    seen = []
    for _ in range(14):
        world.advance(1)
        seen.append(world.vg[1])
    assert seen[0] == pytest.approx(30.0, abs=0.01)
    assert all(b >= a for a, b in itertools.pairwise(seen))
    assert seen[-1] == pytest.approx(350.0, abs=0.01)
