"""Microseconds per `World.unit_data` read and per 20-unit step, as `apis sim` uses them.

Run: .venv/bin/python benchmarks/world_read.py
The world of `apis sim --units 20` at midday (its community's hardware, grid and profiles,
12:00 on 2020-01-01) in the state the simulation holds it most of the time then: one voltage
reference, two dischargers and a charger moving current, everything settled, stepped at the
simulation's fine step (1 s). "reads, same state": every unit read once without a step between
(the world's readings are shared by all units of one state). "read after step": one step, then
one unit's read (the worst case: every read sees a new state). "step": one step of all units;
"step, caches cold": the same with other work between steps that evicts the CPU caches (a
sweep over some 3 MB of objects), as the simulation's units, bus and scheduler do between two
steps: `World.step` timed inside `apis sim` at midday comes close to this figure (1.2-2x the
warm one, depending on the host's load).
"""

from __future__ import annotations

import time
from datetime import datetime

from apis.emulator import World
from apis.hardware.modes import ConverterMode
from apis.sim.community import SimSettings, community
from apis.sim.run import build_world

ROUNDS = 2000
MIDDAY = SimSettings(units=20, days=0.05, seed=0, start=datetime(2020, 1, 1, 12))
_CACHE_SWEEP = list(range(100_000))


def world_midday() -> World:
    """As the simulation holds it at 12:10 (a snapshot of its converter settings)."""
    with community(MIDDAY) as cluster:
        world = build_world(MIDDAY, cluster)
    world.set_converter("E007", ConverterMode.VOLTAGE_REFERENCE, 350.0, 2.3, 0.0)
    for unit in ("E012", "E018"):
        world.set_converter(unit, ConverterMode.DISCHARGE, 380.0, 2.018, 0.0)
    world.set_converter("E019", ConverterMode.CHARGE, 350.0, 2.0, 0.0)
    world.advance(30)  # past the ramps
    return world


def evict_caches() -> None:
    sum(_CACHE_SWEEP)


def main() -> None:
    world = world_midday()
    units = world.unit_ids
    clock = time.perf_counter
    same = after = stepping = cold = 0.0
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
    for _ in range(ROUNDS):
        evict_caches()
        t0 = clock()
        world.step(1.0)
        cold += clock() - t0
    n = len(units)
    print(f"reads, same state:    {same / ROUNDS / n * 1e6:7.2f} us per unit read")
    print(f"read after step:      {after / ROUNDS * 1e6:7.2f} us per unit read")
    print(f"step ({n} units):      {stepping / ROUNDS * 1e6:7.1f} us")
    print(f"step, caches cold:    {cold / ROUNDS * 1e6:7.1f} us")


if __name__ == "__main__":
    main()
