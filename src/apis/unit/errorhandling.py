"""Error collection and local error handling (spec 11.1, 11.2, 11.4).

Every error is published on `apis.error`. The unit an error names caches its LOCAL errors;
the Grid Master caches every other error of a member (see `GridMaster`). WARN is only
logged. The publisher caches its own errors at once (header `apisOrigin` = its instance ID
tells it to skip the copy the bus brings back), so a unit whose bus is gone still stops.

At the next tick of `user.errorHandlingPeriodMsec` after one is cached (the loop sleeps
while none is), the cached LOCAL errors are taken and the merged actions
of section 11.2 run in order: AskAndWaitForStopDeals, StopLocal, (mark stopping),
DeactivateGridMaster, ResetLocal, ShutdownLocal. "Has local errors" stays true while errors
are cached or handled and for `user.errorSustainingMsec` after each handling round.

Ours, where the original is unsafe: AskAndWaitForStopDeals gives up at once when no Grid
Master answers (nobody could stop the deals; the original waited `stopMeTimeoutMsec`, 60 s,
with the converter still running), after sending the need-to-stop requests so that the next
Grid Master aborts the deals first thing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from apis.bus.base import Bus, BusError, Message, NoHandlers, Subscription
from apis.config.policy import Policy
from apis.unit import errors as actions
from apis.unit import lifecycle, subjects
from apis.unit.errors import ErrorRecord, local_actions
from apis.unit.registry import Registry
from apis.unit.state import UnitState

log = logging.getLogger(__name__)

GM_TIMEOUT_S = 5.0
HISTORY = 1000


class ErrorHandling:
    def __init__(
        self,
        *,
        state: UnitState,
        policy: Policy,
        bus: Bus,
        registry: Registry,
        instance_id: str,
        stop_local: Callable[[], Awaitable[Any]],
        deactivate_grid_master: Callable[[], Awaitable[None]],
        reset_local: Callable[[], Awaitable[None]],
        shutdown_local: Callable[[], None],
        global_sink: Callable[[ErrorRecord], bool],
    ) -> None:
        self.state = state
        self.policy = policy
        self.bus = bus
        self.registry = registry
        self.instance_id = instance_id
        self.unit_id = state.unit_id
        self._stop_local = stop_local
        self._deactivate_grid_master = deactivate_grid_master
        self._reset_local = reset_local
        self._shutdown_local = shutdown_local
        # the local Grid Master's cache, if any: True if it took the error
        self._global_sink = global_sink
        # the latest local errors handled, and actions run (loop time, action)
        self.handled: deque[ErrorRecord] = deque(maxlen=HISTORY)
        self.actions_run: deque[tuple[float, str]] = deque(maxlen=HISTORY)
        self._handling = False
        self._pending = asyncio.Event()  # set when a LOCAL error is cached

    # ---- reporting -----------------------------------------------------------------------

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def report(
        self, category: str, extent: str, level: str, message: str, unit_id: str | None = None
    ) -> ErrorRecord:
        """Log, cache where it belongs on this unit, publish on `apis.error`."""
        record = ErrorRecord(unit_id or self.unit_id, category, extent, level, message,
                             self.now())
        self._take(record)
        with contextlib.suppress(BusError):
            await self.bus.publish(
                subjects.ERROR, record.to_json(), {subjects.ORIGIN: self.instance_id}
            )
        return record

    def _take(self, record: ErrorRecord) -> None:
        lifecycle.error_raised(record)
        if record.extent == "LOCAL":
            if record.unit_id == self.unit_id and record.level != "WARN":
                self._cache_local(record)
        else:
            self._global_sink(record)

    def _cache_local(self, record: ErrorRecord) -> None:
        self.state.local_errors.append(record)
        self._pending.set()

    async def subscribe(self) -> list[Subscription]:
        return [await self.bus.subscribe(subjects.ERROR, self._on_error)]

    async def _on_error(self, msg: Message) -> Any:
        if msg.headers.get(subjects.ORIGIN) == self.instance_id:
            return None  # cached when it was raised here
        if not isinstance(msg.payload, dict):
            return None
        record = ErrorRecord.from_json(msg.payload, self.now())
        if record.extent == "LOCAL":
            if record.unit_id == self.unit_id and record.level != "WARN":
                lifecycle.error_received(record)
                self._cache_local(record)
        elif record.unit_id in self.policy.member_unit_ids and self._global_sink(record):
            lifecycle.error_received(record)
        return None

    # ---- "has errors" --------------------------------------------------------------------

    def has_local_errors(self) -> bool:
        if self.state.local_errors or self._handling:
            return True
        last = self.state.last_error_handling
        if last is None:
            return False
        return self.now() - last < self.policy.user.error_sustaining_msec / 1000

    # ---- handling ------------------------------------------------------------------------

    async def handling_loop(self) -> None:
        """Handle the cached LOCAL errors at the period's ticks, counted from the start.

        The loop sleeps while nothing is cached (no wake-up every period for nothing): a
        cached error wakes it, and it handles at the next tick, as a loop that looked every
        period would have; errors cached until then are handled together.
        """
        period = self.policy.user.error_handling_period_msec / 1000
        loop = asyncio.get_running_loop()
        origin = loop.time()
        while True:
            await self._pending.wait()
            elapsed = loop.time() - origin
            next_tick = origin + (math.floor(elapsed / period + 1e-9) + 1) * period
            await asyncio.sleep(next_tick - loop.time())
            self._pending.clear()
            await self.handle_once()

    async def handle_once(self) -> list[str]:
        errors = self.state.local_errors
        if not errors:
            return []
        self.state.local_errors = []
        self._handling = True
        self.state.last_error_handling = self.now()
        todo = local_actions(errors)
        try:
            reasons = [str(e) for e in errors]
            for action in todo:
                self.actions_run.append((self.now(), action))
                await self._run(action, reasons)
            lifecycle.errors_handled(errors, todo)
        finally:
            self.handled.extend(errors)
            self.state.last_error_handling = self.now()
            self._handling = False
        return todo

    async def _run(self, action: str, reasons: list[str]) -> None:
        try:
            if action == actions.ASK_AND_WAIT_FOR_STOP_DEALS:
                await self.ask_and_wait_for_stop_deals(reasons)
            elif action == actions.STOP_LOCAL:
                await self._stop_local()
            elif action == actions.MARK_STOPPING:
                self.state.stopping = True
            elif action == actions.DEACTIVATE_GRID_MASTER:
                await self._deactivate_grid_master()
            elif action == actions.RESET_LOCAL:
                await self._reset_local()
            elif action == actions.SHUTDOWN_LOCAL:
                self._shutdown_local()
        except Exception as e:  # one failed action must not keep the next from running
            log.error("%s: error action %s failed: %s", self.unit_id, action, e)

    async def grid_master_present(self) -> bool:
        try:
            await self.bus.request(subjects.GRID_MASTER_HELO, timeout=GM_TIMEOUT_S)
        except NoHandlers:
            return False
        except BusError:
            return True  # somebody is there but slow: keep asking
        return True

    async def ask_and_wait_for_stop_deals(self, reasons: list[str]) -> bool:
        """Ask the Grid Master to stop this unit's deals and wait until they are gone (True),
        or give up after `stopMeTimeoutMsec` or when no Grid Master exists (False)."""
        c = self.policy.controller
        deadline = self.now() + c.stop_me_timeout_msec / 1000
        while True:
            try:
                mine = [s.deal for s in await self.registry.all_deals()
                        if s.deal.involves(self.unit_id)]
            except BusError as e:
                log.warning("%s: stop-me: deals unreadable: %s", self.unit_id, e)
                return False
            if not mine:
                return True
            for deal in mine:
                if deal.deactivated:
                    continue
                with contextlib.suppress(BusError):
                    await self.bus.request(
                        subjects.MEDIATOR_DEAL_NEED_TO_STOP,
                        {"dealId": deal.deal_id, "reasons": reasons},
                        timeout=GM_TIMEOUT_S,
                    )
            if not await self.grid_master_present():
                log.warning("%s: stop-me: no Grid Master; stopping locally now", self.unit_id)
                return False
            if self.now() >= deadline:
                log.warning("%s: stop-me: deals still there after %d ms", self.unit_id,
                            c.stop_me_timeout_msec)
                return False
            await asyncio.sleep(c.stop_me_check_period_msec / 1000)
