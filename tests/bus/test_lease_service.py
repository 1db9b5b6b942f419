"""The lease service on a real nats-server: requests handled concurrently, so crossing
renewals of one holder (a renewal retried after its answer was lost, while the first is
still on its way) really do read the same revision; each must still go through."""

from __future__ import annotations

import asyncio

import pytest

from apis.bus.base import KeyExists
from apis.bus.nats import NatsBus
from apis.bus.natsserver import NatsCluster
from apis.unit.leaseclient import LeaseServiceClient
from apis.unit.leaseservice import LeaseService
from apis.unit.registry import Registry

pytestmark = pytest.mark.timeout(120)


async def test_crossing_renewals_of_the_holder_all_go_through(nats_single: NatsCluster
                                                              ) -> None:
    service_bus = await NatsBus.connect(nats_single.urls, name="apis-lease")
    buses = [service_bus]
    try:
        service = await LeaseService.open(service_bus)
        await service.subscribe()
        registries = {}
        for unit_id in ("E001", "E002"):
            bus = await NatsBus.connect(nats_single.urls, name=unit_id)
            buses.append(bus)
            registries[unit_id] = await Registry.open(bus, LeaseServiceClient(bus, unit_id))
        lock = await registries["E001"].acquire_grid_master("E001")
        with pytest.raises(KeyExists):
            await registries["E002"].acquire_grid_master("E002")
        for _ in range(5):
            crossing = await asyncio.gather(
                *(registries["E001"].renew_grid_master(lock) for _ in range(3)))
            assert len({c.revision for c in crossing}) == 3, crossing
            assert {c.epoch for c in crossing} == {lock.epoch}
            lock = max(crossing, key=lambda c: c.revision)
        stored = await registries["E002"].grid_master()
        assert stored is not None and (stored.unit_id, stored.epoch) == ("E001", lock.epoch)
        assert await registries["E001"].release_grid_master("E001")
    finally:
        for bus in buses:
            await bus.close()
