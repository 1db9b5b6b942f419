"""Grid Master placement (spec 4.1-4.4): watching for absence, *ensure*, activation.

Every unit watches at a random interval whether a Grid Master answers; when none does it
waits a random time (so competing units spread apart) and runs *ensure*, which puts the
Grid Master where the selection strategy wants it (or here). Activation takes the Grid
Master lock with create-if-absent, so two units can never both hold it; deactivation stops
the service before releasing the lock.

The lock is a lease (`apis.unit.registry`, `apis.unit.lease`): every unit also watches the
lock's key, and when it is released or expires (its Grid Master died or stopped renewing)
runs *ensure* after a random wait of up to `ensureWaitMsec`. A lock whose Grid Master does
not answer (crashed, paused, cut off) is left to expire: nobody clears a lease by force.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from apis.bus.base import Bus, BusError, Message, NoHandlers, RequestTimeout
from apis.config.policy import Policy
from apis.unit import subjects
from apis.unit.registry import Registry
from apis.unit.state import UnitState

log = logging.getLogger(__name__)

HELO_TIMEOUT_S = 5.0
LEASE_WATCH_RETRY_S = 1.0
ACTIVATION_TIMEOUT_S = 30.0


class ActivationFailed(Exception):
    pass


class Election:
    def __init__(
        self,
        *,
        state: UnitState,
        policy: Policy,
        bus: Bus,
        registry: Registry,
        rng: random.Random,
        start_local: Callable[[], Awaitable[None]],
        stop_local: Callable[[], Awaitable[None]],
        voltage_reference_unit: Callable[[], str | None],
    ) -> None:
        self.state = state
        self.policy = policy
        self.bus = bus
        self.registry = registry
        self.rng = rng
        self._start_local = start_local
        self._stop_local = stop_local
        self._voltage_reference_unit = voltage_reference_unit
        self.unit_id = state.unit_id
        self._ensure_requested = asyncio.Event()
        self._lease_gone = asyncio.Event()
        self._stale_count = 0
        self._last_activation_failure: str | None = None
        self.errors: list[str] = []  # LOGIC errors seen (for tests and displays)

    def request_ensure(self) -> None:
        self._ensure_requested.set()

    async def subscribe(self) -> list[Any]:
        return [
            await self.bus.subscribe(
                subjects.grid_master_activate(self.unit_id), self._on_activate
            ),
            await self.bus.subscribe(
                subjects.grid_master_deactivate(self.unit_id), self._on_deactivate
            ),
        ]

    # ---- watching ------------------------------------------------------------------------

    def watch_interval(self) -> float:
        gm = self.policy.grid_master
        base = gm.main_loop_period_msec / 1000
        interval = base * len(self.policy.member_unit_ids) * 2 * self.rng.random()
        return interval if interval > 0 else base

    async def watch_loop(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._lease_watch())
            tg.create_task(self._watch_loop())

    async def _watch_loop(self) -> None:
        while True:
            requested = lease_gone = False
            waits = [
                asyncio.ensure_future(self._ensure_requested.wait()),
                asyncio.ensure_future(self._lease_gone.wait()),
            ]
            try:
                await asyncio.wait(waits, timeout=self.watch_interval(),
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiting in waits:
                    waiting.cancel()
            requested = self._ensure_requested.is_set()
            lease_gone = self._lease_gone.is_set()
            self._ensure_requested.clear()
            self._lease_gone.clear()
            if not self.state.in_operation:
                continue
            try:
                if lease_gone and not self.state.is_grid_master:
                    await self._after_lease_gone()
                elif requested:
                    await self.ensure()
                else:
                    await self.watch()
            except BusError as e:
                log.warning("%s: Grid Master watch failed: %s", self.unit_id, e)

    async def _lease_watch(self) -> None:
        """Flag every release or expiry of the Grid Master lease."""
        while True:
            try:
                if await self.registry.grid_master() is None:  # none yet (or none left)
                    self._lease_gone.set()
                async for _ in self.registry.grid_master_gone():
                    self._lease_gone.set()
            except BusError as e:
                log.warning("%s: watching the Grid Master lease: %s", self.unit_id, e)
            await asyncio.sleep(LEASE_WATCH_RETRY_S)  # the bus closed or failed: again

    async def _after_lease_gone(self) -> None:
        """The lease was released or expired: spread apart, then elect unless somebody did."""
        wait = self.policy.grid_master.grid_master_watching.absence.ensure_wait_msec / 1000
        await asyncio.sleep(wait * self.rng.random())
        if await self.registry.grid_master() is None:
            await self.ensure()

    async def current_grid_master(self) -> str | None:
        """The unit whose Grid Master answers Helo; None if none answers (a paused one times
        out: it does not answer either)."""
        try:
            reply = await self.bus.request(subjects.GRID_MASTER_HELO, timeout=HELO_TIMEOUT_S)
        except (NoHandlers, RequestTimeout):
            return None
        return str(reply)

    async def watch(self) -> None:
        if await self.current_grid_master() is not None:
            return
        wait = self.policy.grid_master.grid_master_watching.absence.ensure_wait_msec / 1000
        await asyncio.sleep(wait * (1 + self.rng.random()))
        await self.ensure()

    # ---- ensure --------------------------------------------------------------------------

    def proper_location(self) -> str | None:
        """Where the Grid Master belongs (None: anywhere)."""
        selection = self.policy.grid_master.grid_master_selection
        if selection.strategy == "anywhere":
            return None
        if selection.strategy == "fixed" and selection.fixed_unit_id:
            return selection.fixed_unit_id
        return self._voltage_reference_unit()

    async def ensure(self, retry: bool = True) -> str | None:
        """Put the Grid Master in its proper place; return where it is."""
        proper = self.proper_location()
        current = await self.current_grid_master()
        if current is not None:
            if proper is None or proper == current:
                lock = await self.registry.grid_master()
                if lock is None or lock.unit_id != current:
                    self._logic_error(f"gridMaster interlock inconsistency: {lock} vs {current}")
                else:
                    self._stale_count = 0
                return current
            await self.bus.request(
                subjects.grid_master_deactivate(current), timeout=ACTIVATION_TIMEOUT_S
            )
            return await self._activate(proper)
        lock = await self.registry.grid_master()
        if lock is None:
            self._stale_count = 0
            return await self._activate(proper or self.unit_id)
        # A lock without a Grid Master: a crash, a pause, or a hand-over in progress. It is a
        # lease: it expires unless its holder renews it, and then `_lease_watch` acts.
        self._stale_count += 1
        if self._stale_count == 1 and retry:
            await asyncio.sleep(
                self.policy.grid_master.grid_master_ensuring.interlock_inconsistency.retry_wait_msec
                / 1000
            )
            return await self.ensure(retry=False)
        log.warning(
            "(LOGIC:LOCAL:WARN:%s) stale Grid Master lock held by %s at epoch %d: waiting for "
            "its lease to expire", self.unit_id, lock.unit_id, lock.epoch,
        )
        self.errors.append(f"stale Grid Master lock held by {lock.unit_id}")
        self._stale_count = 0
        return None

    def _logic_error(self, message: str) -> None:
        log.error("(LOGIC:LOCAL:ERROR:%s) %s", self.unit_id, message)
        self.errors.append(message)

    async def _activate(self, unit_id: str) -> str | None:
        try:
            reply = await self.bus.request(
                subjects.grid_master_activate(unit_id), timeout=ACTIVATION_TIMEOUT_S
            )
        except BusError as e:
            self._activation_failed(f"Grid Master activation on {unit_id} failed: {e}")
            return None
        if reply != unit_id:
            self._activation_failed(f"Grid Master activation on {unit_id} answered {reply!r}")
            return None
        self._last_activation_failure = None
        return unit_id

    def _activation_failed(self, message: str) -> None:
        """A LOGIC error, logged once while the same failure repeats (no lease service, say:
        every election fails alike until one answers)."""
        if message == self._last_activation_failure:
            log.debug("(LOGIC:LOCAL:ERROR:%s) %s (again)", self.unit_id, message)
            self.errors.append(message)
            return
        self._last_activation_failure = message
        self._logic_error(message)

    # ---- activation handlers -------------------------------------------------------------

    async def _on_activate(self, msg: Message) -> Any:
        if self.state.stopping:
            raise ActivationFailed(f"{self.unit_id} is stopping")
        await self._start_local()
        return self.unit_id

    async def _on_deactivate(self, msg: Message) -> Any:
        await self._stop_local()
        return self.unit_id
