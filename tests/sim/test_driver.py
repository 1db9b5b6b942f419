"""The world stepper's two paces, the drivers' read cache, and the switching-time count."""

from __future__ import annotations

import asyncio

from apis import clock
from apis.emulator import World
from apis.hardware.modes import ConverterMode
from apis.sim.driver import WorldStepper, sim_drivers


def test_quiet_world_steps_on_a_grid_and_reads_come_from_the_cache() -> None:
    world = World.with_units(2, seed=1)
    stepper = WorldStepper(world, quiet_step_s=10.0)
    drivers = sim_drivers(stepper)

    async def main() -> None:
        stepper.attach()
        await asyncio.sleep(23.0)
        first = await drivers["E001"].read()
        assert world.t == 20.0  # the grid point before 23 s
        again = await drivers["E001"].read()
        assert again is first  # same world state: same reading object
        await asyncio.sleep(5.0)  # 28 s: still before the next grid point
        assert await drivers["E001"].read() is first
        await asyncio.sleep(3.0)
        later = await drivers["E001"].read()
        assert world.t == 30.0 and later is not first

    clock.run(main, "virtual")
    assert stepper.switching_s.tolist() == [0.0, 0.0]


def test_commands_act_at_the_exact_time_and_active_reads_are_exact() -> None:
    world = World.with_units(2, seed=1, initial_rsoc=50.0)
    stepper = WorldStepper(world, quiet_step_s=10.0)
    drivers = sim_drivers(stepper)

    async def main() -> None:
        stepper.attach()
        await asyncio.sleep(12.5)
        await drivers["E001"].set(ConverterMode.VOLTAGE_REFERENCE, 350.0, 2.0, 0.0)
        assert world.t == 12.5 and stepper.active
        await asyncio.sleep(0.3)
        await drivers["E002"].read()
        assert abs(world.t - 12.8) < 1e-9  # exact while a converter switches
        await asyncio.sleep(7.2)
        await drivers["E001"].set(ConverterMode.WAITING, 350.0, 0.0, 0.0)
        assert not stepper.active

    clock.run(main, "virtual")
    assert abs(stepper.switching_s[0] - 7.5) < 1e-9  # E001 switched from 12.5 s to 20 s
    assert stepper.switching_s[1] == 0.0
