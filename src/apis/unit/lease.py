"""The Grid Master's lease: renewed while it acts, and the fence on everything it does.

The Grid Master lock is a key that expires `GRID_MASTER_LEASE_TTL_S` after its last write
(`apis.unit.registry`). The Grid Master rewrites it by compare-and-set every `renew_period`
s, writing into it whether the Grid Master has global errors (units read that before a
request or an accept). It counts its lease from the moment it *sent* its last successful
renewal, on its own loop clock (the server stores the write later, so the server's expiry
comes after ours): `deadline = sent + ttl - margin`. When a renewal fails (the key expired,
was cleared or was taken: `RevisionMismatch`) or the deadline passes without one (a bus that
does not answer, a process that was paused), `keep` raises `LeaseLost` and the Grid Master
stops at once; its unit then deactivates it.

Every converter command and every fresh-data request goes through `FencedLink`, which
checks the deadline first, so a Grid Master that was paused (SIGSTOP) past its lease and
resumed sends nothing, even from a pass that was half-way. Should a command get through all
the same (a lease that was cleared early by a reset), the Controller's epoch check refuses
it: the lock it reads then names another holder or a newer epoch.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import Any, NoReturn

from apis.bus.base import Bus, BusError, RevisionMismatch
from apis.unit.commands import UnitLink
from apis.unit.data import UnitSnapshot
from apis.unit.registry import GRID_MASTER_LEASE_TTL_S, GridMasterLock, Registry

log = logging.getLogger(__name__)

RENEW_PERIOD_S = GRID_MASTER_LEASE_TTL_S / 4
SAFETY_MARGIN_S = GRID_MASTER_LEASE_TTL_S / 10  # for clocks that run at slightly other rates


class LeaseLost(Exception):
    """The Grid Master's lease ended (or may have): it must stop acting at once."""


class GridMasterLease:
    def __init__(
        self,
        registry: Registry,
        unit_id: str,
        epoch: int,
        *,
        ttl: float = GRID_MASTER_LEASE_TTL_S,
        renew_period: float = RENEW_PERIOD_S,
        margin: float = SAFETY_MARGIN_S,
        global_errors: Callable[[], bool] = lambda: False,
    ) -> None:
        self.registry = registry
        self.global_errors = global_errors  # written into the lease at every renewal
        self.unit_id = unit_id
        self.epoch = epoch
        self.ttl = ttl
        self.renew_period = renew_period
        self.margin = margin
        self.lock: GridMasterLock | None = None
        self.deadline = -math.inf  # loop time until which this Grid Master may act
        self.renewals = 0
        self.lost: str | None = None  # why, once lost

    @property
    def valid(self) -> bool:
        return self.lost is None and asyncio.get_running_loop().time() < self.deadline

    def check(self) -> None:
        """Raise LeaseLost unless the lease is certainly still ours."""
        if self.lost is not None:
            raise LeaseLost(self.lost)
        now = asyncio.get_running_loop().time()
        if now >= self.deadline:
            self._lose(f"not renewed for {now - self.deadline + self.ttl - self.margin:.1f} s")

    def _lose(self, why: str) -> NoReturn:
        if self.lost is None:
            self.lost = f"Grid Master lease of {self.unit_id} (epoch {self.epoch}) lost: {why}"
            log.error("(FRAMEWORK:LOCAL:ERROR:%s) %s; it stops acting", self.unit_id, self.lost)
        raise LeaseLost(self.lost)

    async def start(self) -> None:
        """Take up the lease just acquired (the entry must name this unit at this epoch)."""
        sent = asyncio.get_running_loop().time()
        lock = await self.registry.grid_master()
        if lock is None or lock.unit_id != self.unit_id or lock.epoch != self.epoch:
            self._lose(f"the lock is {lock}")
        assert lock is not None
        self.lock = lock
        await self._renew(sent)

    async def _renew(self, sent: float) -> None:
        assert self.lock is not None
        try:
            self.lock = await self.registry.renew_grid_master(self.lock, self.global_errors())
        except RevisionMismatch:
            self._lose("expired, cleared or taken over")
        self.deadline = sent + self.ttl - self.margin
        self.renewals += 1

    async def keep(self) -> None:
        """Renew every `renew_period` until the lease is lost (then raise LeaseLost)."""
        loop = asyncio.get_running_loop()
        while True:
            self.check()
            await asyncio.sleep(max(0.0, min(self.renew_period, self.deadline - loop.time())))
            self.check()
            sent = loop.time()
            try:
                async with asyncio.timeout(self.deadline - sent):
                    await self._renew(sent)
            except TimeoutError:
                self._lose("no renewal confirmed before it would expire")
            except BusError as e:  # tried again next period, while the deadline allows
                log.warning("%s: Grid Master lease renewal failed: %s", self.unit_id, e)


class FencedLink(UnitLink):
    """The Grid Master's `UnitLink`, refusing to send anything once its lease is gone."""

    def __init__(self, bus: Bus, lease: GridMasterLease) -> None:
        super().__init__(bus, lease.unit_id, lease.epoch)
        self.lease = lease

    async def command(self, unit_id: str, command: str, **params: Any) -> dict[str, Any]:
        self.lease.check()
        return await super().command(unit_id, command, **params)

    async def data(self, unit_id: str, urgent: bool = True) -> UnitSnapshot:
        self.lease.check()
        return await super().data(unit_id, urgent)
