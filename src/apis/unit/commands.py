"""How the Grid Master reaches the units: converter commands and fresh unit data.

Every converter command is signed by the Grid Master (its subject ends with its unit ID, which
the bus vouches for) and carries its fencing epoch.
"""

from __future__ import annotations

import logging
from typing import Any

from apis.bus.base import Bus, BusError
from apis.unit import subjects
from apis.unit.data import UnitSnapshot

log = logging.getLogger(__name__)

COMMAND_TIMEOUT_S = 30.0  # the original's bus default
DATA_TIMEOUT_S = 10.0


class UnitUnreachable(Exception):
    """A unit did not answer, or refused; the message names the unit and the cause."""


class UnitLink:
    """The Grid Master's side of the Controller protocol."""

    def __init__(self, bus: Bus, grid_master_unit_id: str, epoch: int) -> None:
        self.bus = bus
        self.grid_master_unit_id = grid_master_unit_id
        self.epoch = epoch
        self.sent: list[tuple[str, str, dict[str, Any]]] = []  # (unit, command, params)

    @property
    def headers(self) -> dict[str, str]:
        return {
            subjects.GRID_MASTER_UNIT_ID: self.grid_master_unit_id,
            subjects.GRID_MASTER_EPOCH: str(self.epoch),
        }

    async def command(self, unit_id: str, command: str, **params: Any) -> dict[str, Any]:
        """Send a converter command; return the unit's `dcdc` status after it."""
        clean = {k: v for k, v in params.items() if v is not None}
        body = {"command": command, "params": clean}
        log.debug("GM %s -> %s: %s %s", self.grid_master_unit_id, unit_id, command, clean)
        self.sent.append((unit_id, command, clean))
        try:
            reply = await self.bus.request(
                subjects.controller_control(unit_id, self.grid_master_unit_id), body, self.headers,
                COMMAND_TIMEOUT_S,
            )
        except BusError as e:
            raise UnitUnreachable(f"{unit_id} : {command} failed: {e}") from None
        return reply if isinstance(reply, dict) else {}

    async def data(self, unit_id: str, urgent: bool = True) -> UnitSnapshot:
        headers = {**self.headers, subjects.URGENT: "true" if urgent else "false"}
        try:
            reply = await self.bus.request(
                subjects.controller_data(unit_id), None, headers, DATA_TIMEOUT_S
            )
        except BusError as e:
            raise UnitUnreachable(f"{unit_id} : no unit data: {e}") from None
        if not isinstance(reply, dict):
            raise UnitUnreachable(f"{unit_id} : unit data is not an object")
        return UnitSnapshot.from_json(unit_id, reply)
