"""Microseconds per `World.unit_data` read and per 20-unit step, as `apis sim` uses them.

Run: .venv/bin/python benchmarks/world_read.py
A 20-unit world with one voltage reference and CC chargers and dischargers (past the ramp).
"reads, same state": every unit read once without a step between (the world's readings are
shared by all units of one state). "read after step": one step, then one unit's read (the
worst case: every read sees a new state). "step": one 1 s step of all 20 units.
"""

from __future__ import annotations

import time

from apis.config.hwconfig import HwConfig
from apis.emulator import World
from apis.hardware.modes import ConverterMode

ROUNDS = 2000


def world_20() -> World:
    world = World.with_units(20, hw=HwConfig(grid_current_capacity_a=8.0), initial_rsoc=50.0)
    world.set_converter("E001", ConverterMode.VOLTAGE_REFERENCE, 350.0, 8.0, 0.0)
    for k, unit in enumerate(world.unit_ids[1:], start=1):
        if k % 3 == 1:
            world.set_converter(unit, ConverterMode.DISCHARGE, 350.0, 0.1, 0.0)
        elif k % 3 == 2:
            world.set_converter(unit, ConverterMode.CHARGE, 350.0, 0.1, 0.0)
    world.advance(30)  # past the CV ramp
    return world


def main() -> None:
    world = world_20()
    units = world.unit_ids
    clock = time.perf_counter
    same = after = stepping = 0.0
    for k in range(ROUNDS):
        t0 = clock()
        world.step(1.0)
        t1 = clock()
        world.unit_data(units[k % len(units)])
        t2 = clock()
        for u in units:
            world.unit_data(u)
        t3 = clock()
        stepping += t1 - t0
        after += t2 - t1
        same += t3 - t2
    n = len(units)
    print(f"reads, same state: {same / ROUNDS / n * 1e6:7.2f} us per unit read")
    print(f"read after step:   {after / ROUNDS * 1e6:7.2f} us per unit read")
    print(f"step ({n} units):   {stepping / ROUNDS * 1e6:7.1f} us")


if __name__ == "__main__":
    main()
