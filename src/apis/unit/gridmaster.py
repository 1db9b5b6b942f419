"""The Grid Master service (spec 2.3, 4.5, 11.3): runs on one unit at a time.

While active it answers `apis.GridMaster.helo` (and publishes its instance ID there, so a
second Grid Master is detected), collects every unit's data, and runs the main loop: global
error handling, one deal-execution pass, then a request to re-check its own placement.

It holds the Grid Master lock's revision as its *epoch*; every converter command carries it.

Global errors (every non-LOCAL error of a member, from `apis.error` or raised here) are
handled at the start and the end of every pass by the table of section 11.3: Scram, then
BudoStop (global mode `stop`) for HARDWARE, ResetAll for LOGIC/FRAMEWORK, ShutdownAll for
FATAL. "Has global errors" stays true for `gridMaster.errorSustainingMsec` after handling.

Each pass also runs the global safety checks (`apis.unit.safety.global_checks`) on the data
collected at its start, and, while the global mode is `stop` (Force Stop), scrams any
converter that is not in Waiting. The main loop is woken early (instead of waiting out
`mainLoopPeriodMsec`) when a need-to-stop request arrives, the global mode changes or an
ERROR/FATAL global error is reported, so a stop takes effect in seconds.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

from apis.bus.base import Bus, BusError, Message, Subscription
from apis.config.policy import Policy
from apis.unit import errors as actions
from apis.unit import lifecycle, subjects
from apis.unit.commands import UnitLink
from apis.unit.data import UnitSnapshot
from apis.unit.deal import NOT_APPLICABLE, Deal
from apis.unit.errors import ErrorRecord, GlobalError, global_actions
from apis.unit.execution import DealExecution
from apis.unit.lease import FencedLink, GridMasterLease, LeaseLost
from apis.unit.mediator import Mediator
from apis.unit.registry import Registry
from apis.unit.safety import Consecutive, global_checks

log = logging.getLogger(__name__)


class GridMaster:
    def __init__(
        self,
        *,
        unit_id: str,
        epoch: int,
        instance_id: str,
        bus: Bus,
        registry: Registry,
        policy: Policy,
        mediator: Mediator,
        request_ensure: Callable[[], None],
        global_mode: Callable[[], str] | None = None,
        budo_stop: Callable[[str], Awaitable[None]] | None = None,
        report_unit_error: Callable[[str, str], Awaitable[None]] | None = None,
        stopping: Callable[[], bool] | None = None,
    ) -> None:
        self.unit_id = unit_id
        self.epoch = epoch
        self.instance_id = instance_id
        self.bus = bus
        self.registry = registry
        self.policy = policy
        self.mediator = mediator
        self.request_ensure = request_ensure
        # acts only while it holds the lease; the lease tells the units its error state
        self.lease = GridMasterLease(
            registry, unit_id, epoch, global_errors=lambda: self.has_global_errors()
        )
        self.link: UnitLink = FencedLink(bus, self.lease)
        self.main_loop_lock = asyncio.Lock()
        self.collected: dict[str, UnitSnapshot] = {}
        self.collected_at = -math.inf
        self.global_errors: list[ErrorRecord] = []
        self.handled_errors: list[ErrorRecord] = []  # every global error handled (history)
        self.last_global_handling: float | None = None
        self.passes = 0
        self.global_mode = global_mode or (lambda: "autonomous")
        self._budo_stop = budo_stop
        self._stopping = stopping or (lambda: False)
        self.wake = asyncio.Event()
        self._outbox: asyncio.Queue[ErrorRecord] = asyncio.Queue()
        self._safety = Consecutive()
        self.actions_run: list[tuple[float, str]] = []  # (loop time, action)
        self.force_stop_scrams = 0
        self.execution = DealExecution(
            policy=policy,
            registry=registry,
            link=self.link,
            dispose=mediator.dispose,
            publish_log=self._publish_log,
            raise_global=self.raise_global,
            global_mode=self.global_mode,
            report_unit_error=report_unit_error,
        )

    # ---- life ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until cancelled."""
        subs: list[Subscription] = []
        await self.lease.start()
        try:
            bus = self.bus
            subs.append(await bus.subscribe(subjects.GRID_MASTER_HELO, self._on_helo))
            subs.append(await bus.subscribe(subjects.GRID_MASTER_ERROR_TEST, self._on_error_test))
            subs.append(await bus.subscribe(subjects.GRID_MASTER_DATA_ALL, self._on_data_all))
            subs.append(await bus.subscribe(subjects.GRID_MASTER_UNIT_ID_ALL, self._on_unit_ids))
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.lease.keep())  # raises LeaseLost: everything stops
                tg.create_task(self._helo_loop())
                tg.create_task(self._main_loop())
                tg.create_task(self._error_publisher())
                tg.create_task(self._need_to_stop_watch())
        finally:
            for sub in subs:
                try:
                    await sub.unsubscribe()
                except BusError:
                    pass

    async def _helo_loop(self) -> None:
        period = self.policy.grid_master.helo_period_msec / 1000
        while True:
            self.lease.check()  # a resumed stale one must not make the new one scram
            try:
                await self.bus.publish(subjects.GRID_MASTER_HELO, self.instance_id)
            except BusError:
                pass
            await asyncio.sleep(period)

    async def _on_helo(self, msg: Message) -> Any:
        if not self.lease.valid:  # it is no Grid Master any more: neither answers nor judges
            if msg.reply is not None:
                raise LeaseLost(f"{self.unit_id}: Grid Master lease lapsed")
            return None
        if msg.reply is not None:
            return self.unit_id
        if msg.payload != self.instance_id:
            self.raise_global(GlobalError("LOGIC", "ERROR", "another GridMaster exists"))
        return None

    async def _on_error_test(self, msg: Message) -> Any:
        return self.has_global_errors()

    async def _on_data_all(self, msg: Message) -> Any:
        return {u: s.raw for u, s in self.collected.items()}

    async def _on_unit_ids(self, msg: Message) -> Any:
        return list(self.policy.member_unit_ids)

    def has_global_errors(self) -> bool:
        if any(e.level != "WARN" for e in self.global_errors):
            return True
        if self.last_global_handling is None:
            return False
        sustain = self.policy.grid_master.error_sustaining_msec / 1000
        return asyncio.get_running_loop().time() - self.last_global_handling < sustain

    def raise_global(self, error: GlobalError) -> None:
        record = ErrorRecord(
            self.unit_id,
            error.category,
            "GLOBAL",
            error.level,
            str(error),
            asyncio.get_running_loop().time(),
        )
        lifecycle.error_raised(record)
        self.take_error(record)
        self._outbox.put_nowait(record)

    def take_error(self, record: ErrorRecord) -> None:
        """Cache a global error (WARN is not cached). The caller logged it (raised or
        received: apis.unit.lifecycle)."""
        if record.level == "WARN":
            return
        self.global_errors.append(record)
        self.wake.set()

    async def _error_publisher(self) -> None:
        """Errors raised here go on `apis.error` too (tools and logs see them); this
        unit's error collector skips them by the origin header."""
        while True:
            record = await self._outbox.get()
            try:
                await self.bus.publish(
                    subjects.ERROR, record.to_json(), {subjects.ORIGIN: self.instance_id}
                )
            except BusError:
                pass

    async def _need_to_stop_watch(self) -> None:
        while True:
            try:
                async for change in self.registry.need_to_stop.watch():
                    if change.entry is not None:
                        self.wake.set()
            except BusError as e:
                log.warning("GM %s: need-to-stop watch failed: %s", self.unit_id, e)
            await asyncio.sleep(1.0)

    def mode_changed(self, mode: str) -> None:
        self.wake.set()

    # ---- main loop -----------------------------------------------------------------------

    async def _main_loop(self) -> None:
        period = self.policy.grid_master.main_loop_period_msec / 1000
        while True:
            async with self.main_loop_lock:
                try:
                    await self.one_pass()
                except BusError as e:
                    log.warning("GM %s: main loop pass failed: %s", self.unit_id, e)
            self.request_ensure()
            wake = self.execution.wake_in
            delay = period if wake is None else max(0.0, min(period, wake))
            self.wake.clear()
            try:
                async with asyncio.timeout(delay):
                    await self.wake.wait()
                await asyncio.sleep(0.1)  # let a burst of wake-ups settle
            except TimeoutError:
                pass

    async def one_pass(self) -> None:
        self.passes += 1
        await self.handle_global_errors()
        await self.collect()
        deals = [s.deal for s in await self.registry.all_deals()]
        self.check_safety(deals)
        if self.global_mode() == "stop" and not deals:
            await self.force_stop()
        if not self.has_unhandled_errors():
            await self.execution.run_pass(self.collected)
            self.collected.update(self.execution.data)
        await self.handle_global_errors()

    def has_unhandled_errors(self) -> bool:
        return any(e.level != "WARN" for e in self.global_errors)

    def check_safety(self, deals: list[Deal]) -> None:
        """Section 12.2 on the data collected at the start of this pass."""
        if not self.collected:
            return
        for finding, level in self._safety.levels(
            global_checks(self.policy, self.collected, deals)
        ):
            self.raise_global(GlobalError(finding.category, level, finding.message))

    async def force_stop(self) -> None:
        """Force Stop without deals: any converter not in Waiting is scrammed."""
        running = [u for u, s in self.collected.items() if not s.is_waiting]
        if not running:
            return
        log.warning("GM %s: global mode stop: scram %s", self.unit_id, running)
        self.force_stop_scrams += 1
        await self.scram(["operationMode is stop"])

    async def collect(self) -> dict[str, UnitSnapshot]:
        """Collect every member's unit data (section 2.3): publish, gather until all or
        `dataCollectionTimeoutMsec`."""
        members = self.policy.member_unit_ids
        reply = f"apis.GridMaster.collection.{self.epoch}.{self.passes}"
        gathered: dict[str, UnitSnapshot] = {}
        complete = asyncio.Event()

        async def receive(msg: Message) -> None:
            unit_id = msg.headers.get(subjects.UNIT_ID)
            if unit_id in members and isinstance(msg.payload, dict):
                gathered[unit_id] = UnitSnapshot.from_json(unit_id, msg.payload)
                if len(gathered) == len(members):
                    complete.set()

        sub = await self.bus.subscribe(reply, receive)
        try:
            await self.bus.publish(
                subjects.CONTROLLER_DATA_ALL,
                None,
                {
                    subjects.GRID_MASTER_UNIT_ID: self.unit_id,
                    subjects.REPLY_ADDRESS: reply,
                    subjects.URGENT: "true",
                },
            )
            try:
                async with asyncio.timeout(self.policy.grid_master.data_collection_timeout_msec
                                           / 1000):
                    await complete.wait()
            except TimeoutError:
                pass
        finally:
            await sub.unsubscribe()
        if not gathered:
            level = "WARN" if self._stopping() else "ERROR"
            self.raise_global(GlobalError("LOGIC", level, "no unit data collected"))
        self.collected = gathered
        self.collected_at = asyncio.get_running_loop().time()
        return gathered

    def voltage_reference_unit(self) -> str | None:
        for unit_id, snap in self.collected.items():
            if snap.is_voltage_reference:
                return unit_id
        return None

    async def _publish_log(self, deal_json: dict[str, Any]) -> None:
        await self.bus.publish(subjects.deal_log(self.unit_id), deal_json)

    # ---- global error handling (section 11.3) --------------------------------------------

    async def handle_global_errors(self) -> list[str]:
        self.lease.check()
        errors = [e for e in self.global_errors if e.level != "WARN"]
        self.global_errors = []
        if not errors:
            return []
        self.handled_errors.extend(errors)
        loop = asyncio.get_running_loop()
        self.last_global_handling = loop.time()
        todo = global_actions(errors)
        reasons = [str(e) for e in errors]
        for action in todo:
            self.actions_run.append((loop.time(), action))
            try:
                if action == actions.SCRAM:
                    await self.scram(reasons)
                elif action == actions.BUDO_STOP:
                    # an operator must set the mode back to resume
                    if self._budo_stop is not None:
                        await self._budo_stop(f"gridMaster {self.unit_id}")
                    else:
                        await self.registry.set_global_mode("stop")
                elif action == actions.RESET_ALL:
                    await self.bus.publish(subjects.RESET_ALL)
                elif action == actions.SHUTDOWN_ALL:
                    await self.bus.publish(subjects.SHUTDOWN_ALL)
            except BusError as e:
                log.error("GM %s: global action %s failed: %s", self.unit_id, action, e)
        self.last_global_handling = loop.time()
        lifecycle.errors_handled(errors, todo)
        return todo

    async def scram(self, reasons: list[str]) -> None:
        """CC units to WAIT, then (after the delay) the VR; every deal ends (section 11.4)."""
        self.lease.check()
        await self.bus.publish(
            subjects.CONTROLLER_SCRAM, None, {subjects.EXCLUDE_VOLTAGE_REFERENCE: "true"}
        )
        await asyncio.sleep(self.policy.controller.scram_voltage_reference_delay_msec / 1000)
        self.lease.check()
        await self.bus.publish(
            subjects.CONTROLLER_SCRAM, None, {subjects.EXCLUDE_VOLTAGE_REFERENCE: "false"}
        )
        for stored in await self.registry.all_deals():
            deal = stored.deal
            now = next((s.time for s in self.collected.values() if s.time), NOT_APPLICABLE)
            deal.scram_date_time = now
            deal.scram_reason = str(reasons)
            activated = deal.activate_date_time not in (None, NOT_APPLICABLE)
            started = deal.start_date_time not in (None, NOT_APPLICABLE)
            if deal.activate_date_time is None:
                deal.activate_date_time = NOT_APPLICABLE
            if deal.start_date_time is None:
                deal.start_date_time = NOT_APPLICABLE
            if deal.stop_date_time is None:
                deal.stop_date_time = now if started else NOT_APPLICABLE
            if deal.deactivate_date_time is None:
                deal.deactivate_date_time = now if activated else NOT_APPLICABLE
            deal.is_master = None
            try:
                await self.registry.update_deal(deal, stored.revision)
            except BusError:
                pass
            lifecycle.deal_scrammed(deal, "; ".join(reasons))
            await self.mediator.dispose(deal.deal_id)
