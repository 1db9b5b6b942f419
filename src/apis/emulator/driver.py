"""`EmulatedDriver`: one emulated unit served as a `DeviceDriver`, in process (no HTTP).

Every call first steps the world up to the running loop's time, so readings are current in
real, scaled or virtual time. Commands outside the unit's `CommandLimits` are refused before
they reach the emulated converter; an injected driver timeout makes every call hang for its
delay (loop time) and then raise `DriverError` (and does not reach the converter, whose
communication watchdog then runs out). Every other call, read or command, resets it.
"""

from __future__ import annotations

import asyncio

from apis.emulator.world import World
from apis.hardware.driver import (
    CommandLimits,
    ConverterData,
    DriverError,
    DriverVersion,
    UnitData,
)
from apis.hardware.modes import ConverterMode

EMULATOR_DRIVER_VERSION = "apis-emulator 0.1"


class EmulatedDriver:
    """The DeviceDriver of one emulated unit."""

    def __init__(
        self, world: World, unit_id: str, limits: CommandLimits | None = None
    ) -> None:
        index = world.index(unit_id)
        self.world = world
        self.unit_id = unit_id
        self.limits = (
            limits if limits is not None else CommandLimits.from_hwconfig(world.hw_configs[index])
        )

    async def _reach_device(self) -> None:
        delay = self.world.driver_delay_s.get(self.unit_id)
        if delay is not None:
            if delay > 0:
                await asyncio.sleep(delay)
            raise DriverError(
                f"unit {self.unit_id}: converter read timeout (injected fault, after {delay} s)"
            )
        self.world.sync()
        self.world.heard(self.unit_id)  # the converter's communication watchdog

    async def read(self) -> UnitData:
        await self._reach_device()
        return self.world.unit_data(self.unit_id)

    async def read_converter(self) -> ConverterData:
        await self._reach_device()
        return self.world.converter_data(self.unit_id)

    async def set(
        self, mode: ConverterMode, dvg: float, dig: float, drg: float
    ) -> ConverterData:
        self.limits.check(mode=mode, dvg=dvg, dig=dig, drg=drg)
        await self._reach_device()
        self.world.set_converter(self.unit_id, mode, dvg, dig, drg)
        return self.world.converter_data(self.unit_id)

    async def set_voltage(self, dvg: float, drg: float) -> ConverterData:
        self.limits.check(dvg=dvg, drg=drg)
        await self._reach_device()
        self.world.set_voltage(self.unit_id, dvg, drg)
        return self.world.converter_data(self.unit_id)

    async def set_current(self, dig: float) -> ConverterData:
        self.limits.check(dig=dig)
        await self._reach_device()
        self.world.set_current(self.unit_id, dig)
        return self.world.converter_data(self.unit_id)

    async def version(self) -> DriverVersion:
        await self._reach_device()
        return DriverVersion(comm_interface_version="2.0", driver_version=EMULATOR_DRIVER_VERSION)


def emulated_drivers(
    world: World, limits: CommandLimits | None = None
) -> dict[str, EmulatedDriver]:
    """One driver per unit of the world, by unit ID."""
    return {u: EmulatedDriver(world, u, limits) for u in world.unit_ids}
