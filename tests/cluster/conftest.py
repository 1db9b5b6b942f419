"""Real processes on 127.0.0.1: nats-servers, the emulator server and `apis unit` processes.

Every process a test starts is stopped (SIGTERM, then SIGKILL) and waited for by
`LocalCluster.stop`, which the `cluster` fixture runs whether the test passed or not.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from apis.bus.nats import NatsBus
from apis.bus.security import RECORDS
from apis.process.cluster import LocalCluster
from apis.unit.registry import GridMasterLock, Registry

# Short periods, so that a deal completes in well under a minute in real time.
FAST_POLICY: dict[str, Any] = {
    "largeCapacityUnitIds": [],
    "heloPeriodMsec": 1000,
    "controller": {
        "dataAcquisitionPeriodMsec": 1000,
        "scramVoltageReferenceDelayMsec": 1000,
        "stopMeTimeoutMsec": 5000,
    },
    "user": {"houseKeepingPeriodMsec": 2000, "errorSustainingMsec": 5000},
    "mediator": {
        "deal": {"gridCurrentA": 2, "amountMinWh": 2, "amountMaxWh": 3, "amountUnitWh": 1},
        "negotiationTimeoutMsec": 1000,
        "dealLoggingPeriodMsec": 1000,
    },
    "gridMaster": {
        "gridMasterSelection": {"strategy": "anywhere"},
        "gridMasterWatching": {"absence": {"ensureWaitMsec": 1000}},
        "gridMasterEnsuring": {"interlockInconsistency": {"retryWaitMsec": 1000}},
        "heloPeriodMsec": 1000,
        "dataCollectionPeriodMsec": 1000,
        "dataCollectionTimeoutMsec": 1000,
        "mainLoopPeriodMsec": 1000,
        "errorSustainingMsec": 5000,
    },
}
# E001 has plenty (discharges), E002 is short (charges); E003 and E004 never deal.
RSOC = (95.0, 20.0, 60.0, 60.0)
IDLE = ("E003", "E004")

ClusterFactory = Callable[..., Awaitable[LocalCluster]]


@pytest.fixture
async def make_cluster(tmp_path: Path) -> AsyncIterator[ClusterFactory]:
    started: list[LocalCluster] = []

    async def make(**options: Any) -> LocalCluster:
        options.setdefault("policy", FAST_POLICY)
        options.setdefault("rsoc", RSOC)
        options.setdefault("houses", False)
        options.setdefault("idle_units", IDLE)
        cluster = LocalCluster(tmp_path / f"cluster{len(started)}", **options)
        started.append(cluster)
        await cluster.start()
        return cluster

    try:
        yield make
    finally:
        for cluster in started:
            await cluster.stop(grace=5.0)


class Observer:
    """A bus client of the test: reads the lease and deals, hears the final deal logs."""

    def __init__(self, cluster: LocalCluster, bus: NatsBus, registry: Registry) -> None:
        self.cluster = cluster
        self.bus = bus
        self.registry = registry

    @classmethod
    async def connect(
        cls, cluster: LocalCluster, identity: str = RECORDS, **options: Any
    ) -> Observer:
        """A client of the cluster's bus; on a secured bus with `identity`'s certificate."""
        if cluster.secure:
            options.setdefault("tls", cluster.tls_context(identity))
        bus = await NatsBus.connect(cluster.nats.urls, name=f"observer-{identity}", **options)
        return cls(cluster, bus, await Registry.open(bus))

    async def close(self) -> None:
        await self.bus.close()

    async def lock(self) -> GridMasterLock | None:
        return await self.registry.grid_master()

    async def wait_lock(
        self, condition: Callable[[GridMasterLock | None], bool], timeout: float
    ) -> GridMasterLock | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            lock = await self.lock()
            if condition(lock):
                return lock
            if loop.time() > deadline:
                raise AssertionError(f"lock still {lock} after {timeout} s\n{self.logs()}")
            await asyncio.sleep(0.2)

    async def deals(self) -> list[dict[str, Any]]:
        return [s.deal.to_json() for s in await self.registry.all_deals()]

    def logs(self, lines: int = 40) -> str:
        out = []
        for name, child in self.cluster.units.items():
            tail = "\n".join(child.log_text().splitlines()[-lines:])
            out.append(f"---- {name} ----\n{tail}")
        return "\n".join(out)


def deal_files(cluster: LocalCluster, unit_id: str) -> dict[str, dict[str, Any]]:
    """The deal log files a unit wrote (spec 10.2), by dealId."""
    out = {}
    for path in cluster.deal_log_dir(unit_id).rglob("*"):
        if path.is_file() and not path.name.startswith("."):
            try:
                deal = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(deal, dict) and "dealId" in deal:
                out[deal["dealId"]] = deal
    return out


def finished(deal: dict[str, Any]) -> bool:
    return deal.get("deactivateDateTime") is not None


def completed(deal: dict[str, Any]) -> bool:
    """Finished by reaching its amount (not aborted, not scrammed)."""
    return finished(deal) and deal.get("abortDateTime") is None and (
        deal.get("scramDateTime") is None
    )


async def wait_for(
    condition: Callable[[], Awaitable[bool]], timeout: float, what: str, step: float = 0.5
) -> float:
    """Poll until `condition`; return the seconds it took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not await condition():
        if loop.time() - start > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(step)
    return loop.time() - start


async def no_conflicts(cluster: LocalCluster) -> dict[str, Any]:
    conflicts: dict[str, Any] = await cluster.emulator_get("/get/conflicts")
    return conflicts
