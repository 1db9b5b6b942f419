"""A whole cluster in one process: N units on one in-memory bus hub.

Used by the demo, the tests and the simulation. The drivers come from outside (the unit
layer never builds hardware): pass any `DeviceDriver` per unit, e.g. the emulator's.

    cluster = InProcessCluster(config, drivers)
    async with cluster.running():
        await cluster.wait_for(lambda: cluster.grid_master_unit() is not None, 120)
        deals = await cluster.deals()

Which unit a piece of code runs for: `CURRENT_UNIT` holds the unit id in each unit's tasks
(and the tasks they start); with `label_handlers` also in the tasks that run its message
handlers (the in-memory bus runs a handler in a task started from the publisher's, so without
it a handler would carry the sender's label), and None in the handlers of the other
endpoints made with `cluster.connect` (the observer, the demo's web UI and recorder). A log
handler of the whole process, such as the demo's recorder, reads it to know whose line it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from apis.bus.base import JSON, Handler, Message
from apis.bus.memory import MemoryBus, MemoryHub
from apis.config.loader import Cluster
from apis.hardware.driver import DeviceDriver
from apis.unit import subjects
from apis.unit.deal import Deal
from apis.unit.ids import IdSource, os_ids
from apis.unit.node import Unit
from apis.unit.registry import Registry

CURRENT_UNIT: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "apis_current_unit", default=None
)


class _LabelledBus(MemoryBus):
    """An endpoint whose message handlers run with `CURRENT_UNIT` set to `label` (a unit's
    id, or None: no unit's)."""

    def __init__(self, hub: MemoryHub, name: str, label: str | None) -> None:
        super().__init__(hub, name)
        self.label = label

    async def subscribe(self, subject: str, handler: Handler, queue: str | None = None) -> Any:
        label = self.label

        async def labelled(message: Message) -> JSON:
            CURRENT_UNIT.set(label)  # this handler's own task only
            return await handler(message)

        return await super().subscribe(subject, labelled, queue)


@dataclass
class FinishedDeal:
    deal: Deal
    at: float  # loop time it was disposed of


class InProcessCluster:
    def __init__(
        self,
        config: Cluster,
        drivers: Mapping[str, DeviceDriver],
        *,
        hub: MemoryHub | None = None,
        seed: int = 0,
        ids: IdSource = os_ids,
        deal_log_tmpdir: str | None = None,
        deal_logging: bool = True,
        unit_ids: list[str] | None = None,
        label_handlers: bool = False,
    ) -> None:
        self.config = config
        self.drivers = dict(drivers)
        self.hub = hub if hub is not None else MemoryHub()
        self.seed = seed
        self.ids = ids  # seeded_ids only where a run must repeat (simulation, tests)
        self.deal_log_tmpdir = deal_log_tmpdir
        self.deal_logging = deal_logging
        self.unit_ids = unit_ids if unit_ids is not None else config.unit_ids
        self.label_handlers = label_handlers  # CURRENT_UNIT in handlers too (one more call)
        self.units: dict[str, Unit] = {}
        self.buses: dict[str, MemoryBus] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._tg: asyncio.TaskGroup | None = None
        self.finished: list[FinishedDeal] = []
        self._observer: MemoryBus | None = None
        self._registry: Registry | None = None

    def connect(self, name: str) -> MemoryBus:
        """An endpoint on the cluster's hub for something that is no unit (its handlers run
        as no unit's with `label_handlers`)."""
        return _LabelledBus(self.hub, name, None) if self.label_handlers else self.hub.connect(name)

    def new_unit(self, unit_id: str) -> Unit:
        files = self.config.unit(unit_id)
        bus = (_LabelledBus(self.hub, unit_id, unit_id) if self.label_handlers
               else self.hub.connect(unit_id))
        self.buses[unit_id] = bus
        return Unit(
            files,
            driver=self.drivers[unit_id],
            bus=bus,
            policy=self.config.policy,
            seed=self.seed,
            ids=self.ids,
            deal_log_tmpdir=self.deal_log_tmpdir,
            deal_logging=self.deal_logging,
        )

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[InProcessCluster]:
        """Start every unit; on exit stop them all and wait for them."""
        self._observer = self.connect("observer")
        self._registry = await Registry.open(self._observer)
        await self._observer.subscribe(subjects.deal_log("*"), self._on_deal_log)
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            for unit_id in self.unit_ids:
                self.start_unit(unit_id)
            await asyncio.gather(*(u.ready.wait() for u in self.units.values()))
            try:
                yield self
            finally:
                for task in self._tasks.values():
                    task.cancel()
        await self._observer.close()

    async def _on_deal_log(self, msg: object) -> None:
        payload = getattr(msg, "payload", None)
        if not isinstance(payload, dict):
            return
        deal = Deal.from_json(payload)
        if deal.deactivate_date_time is not None or deal.scram_date_time is not None:
            if not any(f.deal.deal_id == deal.deal_id for f in self.finished):
                at = asyncio.get_running_loop().time()
                self.finished.append(FinishedDeal(deal, at))

    def start_unit(self, unit_id: str) -> Unit:
        assert self._tg is not None
        unit = self.new_unit(unit_id)
        self.units[unit_id] = unit
        self._tasks[unit_id] = self._tg.create_task(self._run_unit(unit))
        return unit

    async def _run_unit(self, unit: Unit) -> None:
        CURRENT_UNIT.set(unit.unit_id)  # this task's context, and its tasks' copies
        try:
            await unit.run()
        finally:
            unit.ready.set()  # a unit that failed to start must not block `running`

    async def kill_unit(self, unit_id: str) -> None:
        """Like killing the process: its bus connection goes, its tasks are cancelled."""
        task = self._tasks.pop(unit_id)
        await self.buses[unit_id].close()
        task.cancel()
        await asyncio.wait([task])

    # ---- observation ---------------------------------------------------------------------

    def grid_master_units(self) -> list[str]:
        return [u for u, unit in self.units.items() if unit.grid_master is not None]

    def grid_master_unit(self) -> str | None:
        gms = self.grid_master_units()
        return gms[0] if len(gms) == 1 else None

    async def deals(self) -> list[Deal]:
        assert self._registry is not None
        return [s.deal for s in await self._registry.all_deals()]

    async def inject_deal(self, fields: dict[str, Any]) -> Deal:
        """Create a deal from outside (`apis.Mediator.deal.create`), as a management tool."""
        assert self._observer is not None
        reply = await self._observer.request(subjects.MEDIATOR_DEAL_CREATE, fields, timeout=30.0)
        return Deal.from_json(reply)

    @property
    def registry(self) -> Registry:
        assert self._registry is not None
        return self._registry

    async def wait_for(
        self, condition: Callable[[], bool], timeout: float, step: float = 1.0
    ) -> bool:
        """Poll `condition` every `step` loop seconds; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not condition():
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(step)
        return True
