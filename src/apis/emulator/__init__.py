"""Emulated hardware: batteries, houses, DC/DC converters and the shared DC grid.

Physics without I/O. `World` steps every unit together (numpy arrays, one sparse nodal solve
of the grid per step); `EmulatedDriver` serves one unit as a `DeviceDriver`; `server` and
`cli` expose the world over HTTP.
"""

from apis.emulator.converter import Alarm, ConverterModel
from apis.emulator.world import (
    DroopParallel,
    UnitCounters,
    VoltageConflict,
    World,
    unit_ids_for,
)

__all__ = [
    "Alarm",
    "ConverterModel",
    "DroopParallel",
    "UnitCounters",
    "VoltageConflict",
    "World",
    "unit_ids_for",
]
