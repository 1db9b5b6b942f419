"""The lease service on the `apis cluster up` bus (real nats-servers, real TLS): the only
writer of the Grid Master lease and the voltage reference claim.

Issue 21: a unit with valid credentials could overwrite the live lease in its own name
(JetStream cannot tell a create from a put) and delete or overwrite the voltage reference
claim. Here a rogue client with a unit's certificate can do neither, directly or through
the service; two copies of the service decide concurrent acquisitions exactly once and
stand in for each other; without one no unit becomes Grid Master, and it says so once.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
from typing import Any

import pytest

from apis.bus.base import KeyExists, PermissionDenied, RemoteFailure, RevisionMismatch
from apis.bus.nats import NatsBus
from apis.process.cluster import LocalCluster
from apis.unit import subjects
from apis.unit.leaseclient import LeaseServiceClient
from apis.unit.registry import (
    GRID_MASTER_BUCKET,
    GRID_MASTER_KEY,
    GRID_MASTER_LEASE_TTL_S,
    VOLTAGE_REFERENCE_BUCKET,
    VOLTAGE_REFERENCE_CLAIM_TTL_S,
    VOLTAGE_REFERENCE_KEY,
    GridMasterLock,
    Registry,
)
from apis.unit.vrclaim import Claim
from tests.cluster.conftest import ClusterFactory, Observer, completed, deal_files, wait_for

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI"),
]

UNAVAILABLE = "no lease service answers"


async def connect_as(cluster: LocalCluster, identity: str, server: int | None = None
                     ) -> NatsBus:
    urls = cluster.nats.urls if server is None else [cluster.nats.urls[server]]
    return await NatsBus.connect(
        urls, name=f"test-{identity}", tls=cluster.tls_context(identity),
        kv_timeout=1.0, kv_attempts=2,
    )


async def ask(bus: NatsBus, op: str, signer: str, body: Any) -> Any:
    return await bus.request(subjects.lease_request(op, signer), body, timeout=5)


async def stored_claim(observer: Observer) -> Claim | None:
    entry = await observer.registry.voltage_reference_kv.get(VOLTAGE_REFERENCE_KEY)
    return Claim.from_entry(entry) if entry is not None else None


async def test_a_rogue_with_a_unit_certificate_cannot_take_renew_release_or_clear(
    make_cluster: ClusterFactory,
) -> None:
    cluster = await make_cluster(servers=1)
    assert len(cluster.lease_services) == 1
    observer = await Observer.connect(cluster)
    buses: list[NatsBus] = []
    try:
        lock = await observer.wait_lock(lambda lock: lock is not None, 60)
        assert lock is not None
        holder, epoch = lock.unit_id, lock.epoch
        rogue_id = next(u for u in ("E003", "E004", "E001", "E002") if u != holder)
        rogue = await connect_as(cluster, rogue_id)
        buses.append(rogue)

        # (a) the buckets: not a unit's to write, whatever the headers
        lease_kv = await rogue.kv(GRID_MASTER_BUCKET, ttl=GRID_MASTER_LEASE_TTL_S)
        claim_kv = await rogue.kv(VOLTAGE_REFERENCE_BUCKET, ttl=VOLTAGE_REFERENCE_CLAIM_TTL_S)
        with pytest.raises(PermissionDenied):
            await lease_kv.put(GRID_MASTER_KEY, {"unitId": rogue_id, "epoch": epoch})
        with pytest.raises(PermissionDenied):
            await lease_kv.delete(GRID_MASTER_KEY)
        with pytest.raises(PermissionDenied):
            await claim_kv.put(VOLTAGE_REFERENCE_KEY, {"unitId": rogue_id, "claimId": "x"})
        with pytest.raises(PermissionDenied):
            await claim_kv.delete(VOLTAGE_REFERENCE_KEY)
        assert (await lease_kv.get(GRID_MASTER_KEY)) is not None  # reading is fine

        # (b) through the service, in its own name: refused while another holds it
        client = LeaseServiceClient(rogue, rogue_id, timeout=5)
        registry = await Registry.open(rogue, client)
        with pytest.raises(KeyExists):
            await registry.acquire_grid_master(rogue_id)
        # ... and asking in the holder's name is no unit's to sign but the holder's
        for op in ("acquire", "renew", "release"):
            with pytest.raises(PermissionDenied):
                await ask(rogue, op, holder, {})

        # (c) renew or release the holder's lease: the requester is the subject's identity
        now = await observer.lock()
        assert now is not None and now.unit_id == holder
        with pytest.raises(RevisionMismatch, match=f"not {rogue_id}'s"):
            await registry.renew_grid_master(GridMasterLock(rogue_id, epoch, now.revision))
        reply = await ask(rogue, "renew", rogue_id,
                          {"epoch": epoch, "revision": now.revision, "globalErrors": True})
        assert reply["ok"] is False and reply["refused"] == "RevisionMismatch", reply
        reply = await ask(rogue, "release", rogue_id, {})
        assert reply == {"ok": True, "released": False}
        await registry.clear_grid_master()  # a reset: only one's own lease
        with pytest.raises(RemoteFailure, match=r"revision = '7' \(must be an integer"):
            await ask(rogue, "renew", rogue_id,
                      {"epoch": epoch, "revision": "7", "globalErrors": False})
        with pytest.raises(RemoteFailure, match=r"'unitId' \(unknown key"):
            await ask(rogue, "acquire", rogue_id, {"unitId": rogue_id})

        # (d) the voltage reference claim, once a deal holds one
        async def claimed() -> bool:
            return await stored_claim(observer) is not None

        await wait_for(claimed, 120, "a voltage reference claim (a deal)")
        claim = await stored_claim(observer)
        assert claim is not None and claim.unit_id is not None
        owner = claim.unit_id
        thief = rogue_id if rogue_id != owner else next(
            u for u in ("E003", "E004", "E001", "E002") if u not in (owner, holder))
        if thief != rogue_id:
            rogue = await connect_as(cluster, thief)
            buses.append(rogue)
        held = {"claimId": claim.claim_id, "revision": claim.revision, "handOver": False}
        for body in (
            {"held": None, "from": None, "newClaimId": "rogue.1"},
            {"held": None, "from": owner, "newClaimId": "rogue.2"},  # an unmarked hand-over
            {"held": held, "from": owner, "newClaimId": "rogue.3"},
        ):
            reply = await ask(rogue, "claimTake", thief, body)
            assert reply["ok"] is False and reply["refused"] == "ClaimRefused", reply
            assert owner in reply["message"]
        assert await ask(rogue, "claimRelease", thief, held) == {"ok": True, "released": False}
        assert await ask(rogue, "claimRenew", thief, held) == {"ok": True, "claim": None}
        reply = await ask(rogue, "claimHandOver", thief, held)
        assert reply["ok"] is False and reply["refused"] == "ClaimRefused", reply
        for op in ("claimTake", "claimRelease"):
            with pytest.raises(PermissionDenied):
                await ask(rogue, op, owner, held)
        after = await stored_claim(observer)
        assert after is None or after.unit_id == owner, after  # its own release at most

        # The Grid Master kept its lease throughout, and the cluster makes deals.
        async def a_deal_completed() -> bool:
            return any(completed(d) for d in deal_files(cluster, "E001").values())

        await wait_for(a_deal_completed, 120, "a completed deal")
        now = await observer.lock()
        assert now is not None and (now.unit_id, now.epoch) == (holder, epoch)
        conflicts = await cluster.emulator_get("/get/conflicts")
        assert conflicts["voltageConflicts"] == [], conflicts
        assert cluster.exited() == [], observer.logs()
    finally:
        for bus in buses:
            await bus.close()
        await observer.close()


async def test_two_copies_decide_once_and_stand_in_for_each_other(
    make_cluster: ClusterFactory,
) -> None:
    cluster = await make_cluster(servers=2, start_units=False)
    assert len(cluster.lease_services) == 2
    observer = await Observer.connect(cluster)
    buses: list[NatsBus] = []
    try:
        # E001 on server 1, E002 on server 2: each asks the copy beside it first
        registries = {}
        for index, unit_id in enumerate(("E001", "E002")):
            bus = await connect_as(cluster, unit_id, server=index)
            buses.append(bus)
            registries[unit_id] = await Registry.open(bus, LeaseServiceClient(bus, unit_id))
        epochs = []
        for _ in range(10):
            results = await asyncio.gather(
                *(registry.acquire_grid_master(unit_id)
                  for unit_id, registry in registries.items()),
                return_exceptions=True,
            )
            won = [r for r in results if isinstance(r, GridMasterLock)]
            lost = [r for r in results if isinstance(r, KeyExists)]
            assert (len(won), len(lost)) == (1, 1), results
            stored = await observer.lock()
            assert stored is not None and (stored.unit_id, stored.epoch) == (
                won[0].unit_id, won[0].epoch)
            epochs.append(stored.epoch)
            assert await registries[won[0].unit_id].release_grid_master(won[0].unit_id)
        assert epochs == sorted(set(epochs))  # a new, higher epoch each time
        for bus in buses:
            await bus.close()
        buses.clear()

        # The units: one becomes Grid Master; each copy killed in turn, it keeps its lease.
        for unit_id in cluster.unit_ids:
            cluster.start_unit(unit_id)
        lock = await observer.wait_lock(lambda lock: lock is not None, 90)
        assert lock is not None
        for index in (0, 1):
            service = cluster.lease_service(index)
            service.signal(signal.SIGKILL)
            await service.stop()
            await asyncio.sleep(2 * GRID_MASTER_LEASE_TTL_S)  # renewals by the other copy
            now = await observer.lock()
            assert now is not None and (now.unit_id, now.epoch) == (lock.unit_id, lock.epoch), (
                now, observer.logs())
            assert now.revision > lock.revision
            lock = now
            service.start()  # back, before the other goes

            async def serving(service: Any = service) -> bool:
                return service.log_text().count("lease service: serving") == 2

            await wait_for(serving, 60, f"{service.name} serving again", step=0.2)
        assert [name for name in cluster.exited() if not name.startswith("lease-")] == []
    finally:
        for bus in buses:
            await bus.close()
        await observer.close()


async def test_without_a_lease_service_no_unit_is_grid_master_and_says_so_once(
    make_cluster: ClusterFactory,
) -> None:
    cluster = await make_cluster(servers=1, lease_services=0)
    observer = await Observer.connect(cluster)
    try:
        async def every_unit_tried() -> bool:
            return all(UNAVAILABLE in child.log_text() for child in cluster.units.values())

        await wait_for(every_unit_tried, 90, "every unit found no lease service")
        loop = asyncio.get_running_loop()
        until = loop.time() + 15  # several elections more, a renewal period many times over
        while loop.time() < until:
            assert await observer.lock() is None
            await asyncio.sleep(0.5)
        for unit_id, child in cluster.units.items():
            lines = child.log_text().splitlines()
            assert sum(UNAVAILABLE in line for line in lines) == 1, (unit_id, lines[-30:])
            activations = [line for line in lines if "Grid Master activation" in line
                           and "ERROR" in line.split(":")[2]]
            assert len(activations) <= 1, activations
        # A service started: a Grid Master at last, and the units say it answers again.
        cluster.n_lease_services = 1
        await cluster.start_lease_services()
        lock = await observer.wait_lock(lambda lock: lock is not None, 90)
        assert lock is not None
        grid_master = cluster.units[lock.unit_id].log_text()
        assert "the lease service answers again" in grid_master
        assert cluster.exited() == [], observer.logs()
    finally:
        await observer.close()
