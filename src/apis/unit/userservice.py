"""The User service (spec 1.3, 2.2, 3): when this unit may trade, and what it wants.

The decisions themselves are the pure functions of `apis.unit.user`; this service supplies
them with the unit's data and scenario and checks the preconditions every decision shares:
in operation, no local errors (nor within the sustaining window), a Grid Master exists and
has no global errors, effective mode `autonomous`, not busy.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

from apis.bus.base import Bus, BusError, Message
from apis.config.hwconfig import HwConfig
from apis.config.policy import Policy
from apis.config.scenario import Scenario, ScenarioBlock
from apis.hardware.driver import UnitData
from apis.unit import subjects
from apis.unit.capacity import BatteryCapacityLocks
from apis.unit.controller import Controller
from apis.unit.registry import Registry
from apis.unit.state import UnitState
from apis.unit.user import (
    Offer,
    ScenarioEvaluationError,
    evaluate_accept,
    evaluate_request,
    remaining_capacity_wh,
    select_accept,
)

log = logging.getLogger(__name__)


class UserService:
    def __init__(
        self,
        *,
        state: UnitState,
        hw: HwConfig,
        policy: Policy,
        scenario: Scenario,
        controller: Controller,
        bus: Bus,
        registry: Registry,
        capacity: BatteryCapacityLocks | None = None,
    ) -> None:
        self.state = state
        self.registry = registry
        self.capacity = capacity
        self.hw = hw
        self.policy = policy
        self.scenario = scenario
        self.controller = controller
        self.bus = bus
        self.unit_id = state.unit_id
        self.last_refusal = ""  # why the last decision said no (for tests and displays)
        # (scenario, acquisition time, its block): every request heard between two
        # acquisitions is decided on the same data
        self._block: tuple[Scenario, datetime, ScenarioBlock | None] | None = None

    async def subscribe(self) -> list[Any]:
        return [await self.bus.subscribe(subjects.user_error_test(self.unit_id), self._on_test)]

    async def _on_test(self, msg: Message) -> Any:
        return self.has_local_errors()

    def has_local_errors(self) -> bool:
        if self.state.local_errors:
            return True
        last = self.state.last_error_handling
        if last is None:
            return False
        sustain = self.policy.user.error_sustaining_msec / 1000
        return asyncio.get_running_loop().time() - last < sustain

    async def grid_master_reports_errors(self) -> bool | None:
        """True/False from the Grid Master; None when there is no Grid Master."""
        try:
            return bool(await self.bus.request(subjects.GRID_MASTER_ERROR_TEST, timeout=5.0))
        except BusError:
            return None

    async def grid_master_error_flag(self) -> bool | None:
        """The Grid Master's global-error state as its lease says (at most one renewal old);
        None when no Grid Master holds the lease or the store cannot be read.

        For the preconditions of a request or an accept, which every unit checks on every
        request it hears: one read of the lease instead of a request to the Grid Master per
        unit. Creating a deal still asks the Grid Master itself.
        """
        try:
            lock = await self.registry.grid_master()
        except BusError:
            return None
        return None if lock is None else lock.global_errors

    async def may_trade(self) -> bool:
        """The preconditions shared by request, accept and selection (sections 2.2, 3.2)."""
        if not self.state.in_operation:
            return self._refuse("not in operation")
        if self.has_local_errors():
            return self._refuse("local errors")
        global_errors = await self.grid_master_error_flag()
        if global_errors is None:
            return self._refuse("no Grid Master")
        if global_errors:
            return self._refuse("global errors")
        if self.state.effective_mode != "autonomous":
            return self._refuse(f"effective mode {self.state.effective_mode}")
        if self.state.busy:
            return self._refuse("busy")
        return True

    def battery_capacity_test(self, direction: str) -> bool:
        """Section 12.6: may this process use the shared battery in `direction` now?"""
        if self.capacity is None or self.capacity.test(direction):
            return True
        return self._refuse(f"battery capacity locked for {direction}")

    def _refuse(self, why: str) -> bool:
        self.last_refusal = why
        return False

    def block_for(self, data: UnitData) -> ScenarioBlock | None:
        block = self._block_at(data.time)
        if block is None:
            log.warning(
                "(USER:LOCAL:WARN:%s) no scenario entry matched %s", self.unit_id, data.apis_time
            )
            self.last_refusal = "no scenario entry matched"
        return block

    def _block_at(self, time: datetime) -> ScenarioBlock | None:
        scenario = self.scenario
        cached = self._block
        # equal with the same tzinfo: the same wall-clock time, so the same time of day
        if (
            cached is not None
            and cached[0] is scenario
            and cached[1] == time
            and cached[1].tzinfo is time.tzinfo
        ):
            return cached[2]
        block = scenario.block_at(time.strftime("%H:%M:%S"))
        self._block = (scenario, time, block)
        return block

    def remaining_wh(self, data: UnitData) -> int:
        return remaining_capacity_wh(self.hw.battery_nominal_capacity_wh, data.battery.rsoc)

    def efficient_grid_voltage_v(self, data: UnitData) -> float | None:
        ratio = self.hw.efficient_battery_grid_voltage_ratio
        if ratio is None or data.dcdc.meter.vb <= 0:
            return None
        return ratio * data.dcdc.meter.vb

    def _complete(self, offer: Offer, data: UnitData) -> Offer:
        voltage = self.efficient_grid_voltage_v(data)
        if voltage is not None:
            offer["efficientGridVoltageV"] = voltage
        offer["dateTime"] = data.apis_time
        return offer

    async def _trading_context(self) -> tuple[UnitData, ScenarioBlock] | None:
        """The unit data and scenario block to decide on, or None when this unit may not
        trade now (the common preconditions of a request and an accept)."""
        if not await self.may_trade():
            return None
        data = self.controller.data
        if data is None:
            return None
        block = self.block_for(data)
        if block is None:
            return None
        return data, block

    async def request_now(self) -> Offer | None:
        """House keeping (section 2.2): the request to make now, or None."""
        context = await self._trading_context()
        if context is None:
            return None
        data, block = context
        try:
            offer = evaluate_request(block, self.remaining_wh(data))
        except ScenarioEvaluationError as e:
            log.warning("(USER:LOCAL:WARN:%s) %s", self.unit_id, e)
            return None
        if offer is None or not self.battery_capacity_test(str(offer["type"])):
            return None
        return self._complete(offer, data)

    async def accept_for(self, request: Offer) -> Offer | None:
        """The accept for a foreign request, or None (section 3.2)."""
        context = await self._trading_context()
        if context is None:
            return None
        data, block = context
        try:
            offer = evaluate_accept(block, self.remaining_wh(data), request, self.unit_id)
        except ScenarioEvaluationError as e:
            log.warning("(USER:LOCAL:WARN:%s) %s", self.unit_id, e)
            return None
        if offer is None or not self.battery_capacity_test(str(offer["type"])):
            return None
        return self._complete(offer, data)

    async def choose(self, request: Offer, accepts: list[Offer]) -> Offer | None:
        """The accept to take for this unit's own request (section 3.3)."""
        if not accepts or not await self.may_trade():
            return None
        if not self.battery_capacity_test(str(request.get("type", ""))):
            return None
        data = self.controller.data
        at = data.time.strftime("%H:%M:%S") if data is not None else "00:00:00"
        strategy = self.scenario.selection_at(at).strategy
        return select_accept(strategy, request, accepts)
