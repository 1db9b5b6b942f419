"""Microseconds per emulator step (all units, one nodal solve) for 10, 100 and 1000 units.

Run: .venv/bin/python benchmarks/emulator_step.py
Each world has one voltage reference, a third of the units in CC discharge and a third in
CC charge, built-in PV and load profiles, one bus bar. The "limited" line: the same world
with the reference's dig too small for the chargers, so it is current-limited, the grid sits
at the chargers' under-voltage limit and every step runs the limited (active-set) solve.
"""

from __future__ import annotations

import time

from apis.config.hwconfig import HwConfig
from apis.emulator import World
from apis.hardware.modes import ConverterMode

STEPS = 2000


def bench(n: int, limited: bool = False) -> float:
    world = World.with_units(n, hw=HwConfig(grid_current_capacity_a=8.0), initial_rsoc=50.0)
    dig = 0.05 if limited else 8.0
    world.set_converter("E001", ConverterMode.VOLTAGE_REFERENCE, 350.0, dig, 0.0)
    for k, unit in enumerate(world.unit_ids[1:], start=1):
        if k % 3 == 1:
            world.set_converter(unit, ConverterMode.DISCHARGE, 350.0, 0.1, 0.0)
        elif k % 3 == 2:
            world.set_converter(unit, ConverterMode.CHARGE, 350.0, 0.2 if limited else 0.1, 0.0)
    world.advance(30)  # past the CV ramp
    start = time.perf_counter()
    for _ in range(STEPS):
        world.step(1.0)
    return (time.perf_counter() - start) / STEPS * 1e6


def main() -> None:
    for limited in (False, True):
        for n in (10, 100, 1000):
            us = bench(n, limited)
            label = "limited" if limited else "normal "
            print(f"{label} {n:5d} units: {us:8.1f} us/step  ({us / n:6.2f} us per unit-step)")


if __name__ == "__main__":
    main()
