"""Stepping the emulated world for a simulation, and the drivers the units see.

The emulator steps lazily: every driver read or command first brings the world up to the
loop's time. Twenty units reading twice per control period would then step the world several
times per simulated second, although nothing interesting happens while every converter
waits. `WorldStepper` keeps two paces:

- *active* (some converter is switching): every read and command sees the world at exactly
  the loop's time, in steps of at most `fine_step_s`, as the emulator alone would;
- *quiet* (every converter waiting): the world advances on a fixed grid of `quiet_step_s`
  seconds, so a read may see the house up to that long ago. Batteries only follow PV and
  load then; the grid is the same for the baseline run, which steps on it too.

Commands always bring the world to the exact loop time first, so a converter starts and stops
at the moment the unit asks. Reads of the same world state share one reading (the world
caches them by its state `version`; they are frozen dataclasses), and the stepper counts how
long each converter switched, which the report needs to split the converter losses.
"""

from __future__ import annotations

import asyncio
import math

import numpy as np
from numpy.typing import NDArray

from apis.emulator.converter import WAITING
from apis.emulator.world import World
from apis.hardware.driver import CommandLimits, ConverterData, DriverVersion, UnitData
from apis.hardware.modes import ConverterMode

SIM_DRIVER_VERSION = "apis-sim 0.1"
DEFAULT_QUIET_STEP_S = 10.0
DEFAULT_FINE_STEP_S = 1.0


class WorldStepper:
    """Decides when and how far the world steps; counts converter switching time."""

    def __init__(
        self,
        world: World,
        quiet_step_s: float = DEFAULT_QUIET_STEP_S,
        fine_step_s: float = DEFAULT_FINE_STEP_S,
    ) -> None:
        if quiet_step_s <= 0 or fine_step_s <= 0:
            raise ValueError(
                f"quiet_step_s = {quiet_step_s}, fine_step_s = {fine_step_s} (must be > 0)"
            )
        self.world = world
        self.quiet_step_s = quiet_step_s
        self.fine_step_s = fine_step_s
        self.origin: float | None = None  # loop time at world time 0 of this run
        self.generation = 0  # bumped by every command
        self.switching_s = np.zeros(world.n_units)  # per unit: time spent switching
        self.steps_taken = 0  # calls that advanced the world (for the run info)
        self._active = False

    def attach(self) -> None:
        """Bind to the running loop: loop time now is the world's present time."""
        loop_time = asyncio.get_running_loop().time()
        self.origin = loop_time - self.world.t
        self.world.sync()  # the world's own loop binding (used by its commands) agrees
        self._active = self._any_switching()

    def _any_switching(self) -> bool:
        world = self.world
        switching: NDArray[np.bool_] = (world.mode != WAITING) & ~(
            world.fault_alarm | world.over_temperature
        )
        return bool(switching.any())

    def _loop_world_time(self) -> float:
        if self.origin is None:
            self.attach()
        assert self.origin is not None
        return asyncio.get_running_loop().time() - self.origin

    @property
    def active(self) -> bool:
        return self._active

    def _advance(self, target: float) -> None:
        world = self.world
        span = target - world.t
        if span <= 1e-12:
            return
        if self._active:
            world.max_step_s = self.fine_step_s
            switching = (world.mode != WAITING) & ~(world.fault_alarm | world.over_temperature)
            self.switching_s += np.where(switching, span, 0.0)
        else:
            world.max_step_s = self.quiet_step_s
        world.advance_to(target)
        self.steps_taken += 1

    def sync_exact(self) -> None:
        """Bring the world to the loop's time exactly (before commands and samples)."""
        self._advance(self._loop_world_time())

    def sync_for_read(self) -> None:
        """Bring the world far enough for a reading (exact when active, grid when quiet)."""
        now = self._loop_world_time()
        if self._active:
            self._advance(now)
            return
        grid = self.quiet_step_s
        target = math.floor(now / grid + 1e-9) * grid
        if target > self.world.t + 1e-9:
            self._advance(target)

    def commanded(self) -> None:
        """After a command: the world changed; re-check whether anything switches."""
        self.generation += 1
        self._active = self._any_switching()


class SimDriver:
    """The DeviceDriver of one emulated unit in a simulation (in process, no HTTP)."""

    def __init__(
        self, stepper: WorldStepper, unit_id: str, limits: CommandLimits | None = None
    ) -> None:
        world = stepper.world
        index = world.index(unit_id)
        self.stepper = stepper
        self.world = world
        self.unit_id = unit_id
        self.limits = (
            limits if limits is not None else CommandLimits.from_hwconfig(world.hw_configs[index])
        )

    async def read(self) -> UnitData:
        self.stepper.sync_for_read()
        self.world.heard(self.unit_id)  # a read resets the converter's watchdog
        return self.world.unit_data(self.unit_id)

    async def read_converter(self) -> ConverterData:
        return (await self.read()).dcdc

    def _after_command(self) -> ConverterData:
        self.stepper.commanded()
        return self.world.converter_data(self.unit_id)

    async def set(
        self, mode: ConverterMode, dvg: float, dig: float, drg: float
    ) -> ConverterData:
        self.limits.check(mode=mode, dvg=dvg, dig=dig, drg=drg)
        self.stepper.sync_exact()
        self.world.set_converter(self.unit_id, mode, dvg, dig, drg)
        return self._after_command()

    async def set_voltage(self, dvg: float, drg: float) -> ConverterData:
        self.limits.check(dvg=dvg, drg=drg)
        self.stepper.sync_exact()
        self.world.set_voltage(self.unit_id, dvg, drg)
        return self._after_command()

    async def set_current(self, dig: float) -> ConverterData:
        self.limits.check(dig=dig)
        self.stepper.sync_exact()
        self.world.set_current(self.unit_id, dig)
        return self._after_command()

    async def version(self) -> DriverVersion:
        return DriverVersion(comm_interface_version="2.0", driver_version=SIM_DRIVER_VERSION)


def sim_drivers(stepper: WorldStepper) -> dict[str, SimDriver]:
    """One driver per unit of the stepper's world, by unit ID."""
    return {u: SimDriver(stepper, u) for u in stepper.world.unit_ids}
