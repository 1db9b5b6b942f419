"""The secured bus of `apis cluster up` (LocalCluster's default) against a rogue client.

Issue 21 item 1: a client with no credentials put a second converter in CV by copying the
lease's holder and epoch into a command's headers, stole the lease and set Force Stop. Here
the rogue first has no certificate, then a unit's own certificate: the server refuses it or
the receiving Controller does, and no converter leaves its mode.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
from typing import Any

import pytest

from apis.bus.base import BusError, NoHandlers, PermissionDenied, RemoteFailure
from apis.bus.nats import NatsBus
from apis.bus.security import RECORDS, WEB
from apis.process.cluster import LocalCluster
from apis.unit import subjects
from apis.unit.registry import (
    GRID_MASTER_BUCKET,
    GRID_MASTER_KEY,
    GRID_MASTER_LEASE_TTL_S,
    OPERATION_MODE_KEY,
    STATE_BUCKET,
)
from tests.cluster.conftest import ClusterFactory, Observer, wait_for

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI"),
]

CV = "0x0014"


async def connect_as(cluster: LocalCluster, identity: str) -> NatsBus:
    # short key-value bounds: a write the server refuses is never acknowledged
    return await NatsBus.connect(
        cluster.nats.urls, name=f"rogue-{identity}", tls=cluster.tls_context(identity),
        kv_timeout=1.0, kv_attempts=2,
    )


async def converter_mode(cluster: LocalCluster, unit_id: str) -> str:
    status: dict[str, Any] = await cluster.emulator_get(f"/get/dcdc/status/{unit_id}")
    return str(status["status"]["status"])


async def test_a_rogue_can_neither_connect_nor_command_nor_steal_nor_stop(
    make_cluster: ClusterFactory,
) -> None:
    cluster = await make_cluster(servers=1)
    observer = await Observer.connect(cluster)
    rogues: list[NatsBus] = []
    try:
        lock = await observer.wait_lock(lambda lock: lock is not None, 60)
        assert lock is not None
        holder = lock.unit_id
        others = [u for u in ("E003", "E004", "E001", "E002") if u != holder]
        rogue_id, target = others[0], others[1]
        urls = cluster.nats.urls
        assert all(url.startswith("tls://") for url in urls)

        # No certificate, or no TLS at all: no connection.
        no_cert = ssl.create_default_context(cafile=str(cluster.pki.ca_file))  # type: ignore[union-attr]
        with pytest.raises(BusError, match="cannot connect"):
            await NatsBus.connect(urls, name="anonymous", tls=no_cert, connect_attempts=1)
        with pytest.raises(BusError, match="cannot connect"):
            await NatsBus.connect([u.replace("tls://", "nats://") for u in urls],
                                  name="plain", connect_attempts=1)

        # A unit's own certificate.
        rogue = await connect_as(cluster, rogue_id)
        rogues.append(rogue)
        copied = {subjects.GRID_MASTER_UNIT_ID: holder,
                  subjects.GRID_MASTER_EPOCH: str(lock.epoch)}  # readable by anyone
        body = {"command": "VOLTAGE_REFERENCE", "params": {}}
        # signed as the holder: the server drops it (not the rogue's to sign)
        with pytest.raises(PermissionDenied):
            await rogue.request(subjects.controller_control(target, holder), body, copied,
                                timeout=3)
        # signed as itself: the Controller refuses (the sender is not the lease holder)
        with pytest.raises(RemoteFailure, match="must be the sender"):
            await rogue.request(subjects.controller_control(target, rogue_id), body, copied,
                                timeout=10)
        with pytest.raises(RemoteFailure, match=f"held by {holder}"):
            await rogue.request(
                subjects.controller_control(target, rogue_id), body,
                {subjects.GRID_MASTER_UNIT_ID: rogue_id,
                 subjects.GRID_MASTER_EPOCH: str(lock.epoch)},
                timeout=10,
            )
        # the unsigned subject of before is no unit's to publish on
        with pytest.raises(PermissionDenied):
            await rogue.request(f"apis.{target}.Controller.control.device", body, copied,
                                timeout=3)

        # The operation mode: neither the request nor the key is a unit's to set.
        with pytest.raises(PermissionDenied):
            await rogue.request(subjects.OPERATION_MODE, "stop", {subjects.COMMAND: "set"},
                                timeout=3)
        rogue_state = await rogue.kv(STATE_BUCKET)
        with pytest.raises(PermissionDenied):
            await rogue_state.put(OPERATION_MODE_KEY, "stop")
        assert await observer.registry.state.get(OPERATION_MODE_KEY) is None

        # The lease: not writable by the web or records identities; a unit cannot sign
        # commands as the holder it might name there (above).
        for identity in (WEB, RECORDS):
            other = await connect_as(cluster, identity)
            rogues.append(other)
            lease = await other.kv(GRID_MASTER_BUCKET, ttl=GRID_MASTER_LEASE_TTL_S)
            with pytest.raises(PermissionDenied):
                await lease.put(GRID_MASTER_KEY, {"unitId": identity, "epoch": 1})
        now = await observer.lock()
        assert now is not None and (now.unit_id, now.epoch) == (holder, lock.epoch)

        # Nothing moved: the target is not in CV and the grid saw no fight.
        await asyncio.sleep(2)
        assert await converter_mode(cluster, target) != CV
        conflicts = await cluster.emulator_get("/get/conflicts")
        assert conflicts["voltageConflicts"] == [], conflicts
        refused = [line for line in cluster.units[target].log_text().splitlines()
                   if "converter command refused" in line]
        assert len(refused) == 2, refused

        # The web identity sets the mode by writing the key the units watch.
        web = await connect_as(cluster, WEB)
        rogues.append(web)
        with pytest.raises(NoHandlers):  # the units do not take the request
            await web.request(subjects.OPERATION_MODE, "autonomous", {subjects.COMMAND: "set"},
                              timeout=3)
        web_state = await web.kv(STATE_BUCKET)
        await web_state.put(OPERATION_MODE_KEY, "heteronomous")

        async def units_heard() -> bool:
            return all("heteronomous" in (child.log_text()) for child in cluster.units.values())

        await wait_for(units_heard, 30, "every unit applied the global mode")
        assert cluster.exited() == [], observer.logs()
    finally:
        for bus in rogues:
            await bus.close()
        await observer.close()
