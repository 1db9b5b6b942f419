"""The distributed system for real: `apis unit` processes, three nats-servers with JetStream,
the emulator server, all on 127.0.0.1; kill -9, SIGSTOP and TLS."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import pytest

from apis.bus.base import RemoteFailure
from apis.bus.nats import NatsBus
from apis.process.cluster import LocalCluster
from apis.records.store import open_store
from apis.unit import lifecycle, subjects
from tests.cluster.conftest import (
    ClusterFactory,
    Observer,
    completed,
    deal_files,
    finished,
    no_conflicts,
    wait_for,
)

pytestmark = pytest.mark.timeout(240)

GM_FAILOVER_LIMIT_S = 10.0


async def running_deal(observer: Observer) -> dict[str, Any] | None:
    """A deal whose energy is being counted (started, not stopped)."""
    for deal in await observer.deals():
        if deal.get("startDateTime") and not deal.get("stopDateTime"):
            return deal
    return None


async def wait_running_deal(observer: Observer, timeout: float) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    async def started() -> bool:
        deal = await running_deal(observer)
        if deal is not None:
            found.append(deal)
        return deal is not None

    try:
        await wait_for(started, timeout, "a deal started", step=0.3)
    except AssertionError:
        raise AssertionError(f"no deal started within {timeout} s\n{observer.logs()}") from None
    return found[-1]


async def wait_recorded_on_both(
    observer: Observer, deal_id: str, timeout: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    cluster = observer.cluster

    async def recorded() -> bool:
        a = deal_files(cluster, "E001").get(deal_id)
        b = deal_files(cluster, "E002").get(deal_id)
        return a is not None and b is not None and finished(a) and finished(b)

    try:
        await wait_for(recorded, timeout, f"deal {deal_id} recorded as finished on both sides")
    except AssertionError:
        raise AssertionError(
            f"deal {deal_id} not finished on both sides within {timeout} s\n{observer.logs()}"
        ) from None
    return deal_files(cluster, "E001")[deal_id], deal_files(cluster, "E002")[deal_id]


async def assert_quiet_grid(observer: Observer) -> None:
    conflicts = await no_conflicts(observer.cluster)
    assert conflicts["voltageConflicts"] == [], conflicts
    assert observer.cluster.exited() == [], observer.logs()


async def start_with_grid_master_on_e003(make_cluster: ClusterFactory) -> Observer:
    """E003 (which never deals) starts alone and takes the lease; then the others start."""
    cluster = await make_cluster(start_units=False)
    observer = await Observer.connect(cluster)
    cluster.start_unit("E003")
    await observer.wait_lock(lambda lock: lock is not None and lock.unit_id == "E003", 60)
    for unit_id in ("E001", "E002", "E004"):
        cluster.start_unit(unit_id)
    return observer


async def wait_recorded_in_store(cluster: LocalCluster, deal_ids: list[str],
                                 timeout: float) -> dict[str, list[tuple[str, str]]]:
    """The records receiver's store: every deal's versions to its end and its lifecycle lines
    up to `disposed` (unit id, event), and unit data of every unit."""
    found: dict[str, list[tuple[str, str]]] = {}

    async def stored() -> bool:
        store = open_store(str(cluster.records_store))
        try:
            lines = store.query("SELECT unit_id, message FROM log_lines WHERE logger = ? "
                                "ORDER BY at, seq", (lifecycle.LOGGER_NAME,))
            ended = {d for (d,) in store.query(
                "SELECT deal_id FROM deal_versions WHERE state = 'deactivated'")}
            sampled = {u for (u,) in store.query("SELECT DISTINCT unit_id FROM unit_data")}
        finally:
            store.close()
        found.clear()
        for unit, message in lines:
            for name, pattern in lifecycle.PATTERNS.items():
                match = pattern.fullmatch(message)
                if match is not None and match.groupdict().get("dealId") in deal_ids:
                    found.setdefault(match["dealId"], []).append((unit, name))
        return (set(deal_ids) <= ended and sampled == set(cluster.unit_ids)
                and all(events and events[-1][1] == "deal disposed"
                        for events in (found.get(d) for d in deal_ids)))

    try:
        await wait_for(stored, timeout, "deals, lines and unit data in the records store")
    except AssertionError:
        log = cluster.records.log_text()[-3000:] if cluster.records else ""
        raise AssertionError(f"{found}\n{log}") from None
    return found


async def test_unit_processes_make_deals_and_carry_on_when_a_nats_server_dies(
    make_cluster: ClusterFactory,
) -> None:
    # with the records receiver, as `apis cluster up` runs it
    cluster = await make_cluster(records=True, records_unit_data_period_s=2.0)
    observer = await Observer.connect(cluster)
    try:
        await observer.wait_lock(lambda lock: lock is not None, 60)
        first = await wait_running_deal(observer, 90)
        a, b = await wait_recorded_on_both(observer, first["dealId"], 90)
        assert completed(a) and completed(b), (a, b)
        assert a["cumulateAmountWh"] >= a["dealAmountWh"]

        second = await wait_running_deal(observer, 60)
        cluster.nats.kill(0)  # kill -9 one of the three servers mid-deal
        a, b = await wait_recorded_on_both(observer, second["dealId"], 90)
        assert completed(a) and completed(b), (a, b)
        await assert_quiet_grid(observer)
        # the receiver kept both deals, their lifecycle lines and the units' data
        found = await wait_recorded_in_store(cluster, [first["dealId"], second["dealId"]], 60)
        for events in found.values():
            names = [name for _, name in events]
            assert names[0] == "deal created" and "deal started" in names, events
        assert cluster.exited() == [], observer.logs()
    finally:
        await observer.close()


async def test_kill_9_of_the_grid_master_mid_deal(make_cluster: ClusterFactory) -> None:
    observer = await start_with_grid_master_on_e003(make_cluster)
    cluster = observer.cluster
    try:
        old = await observer.lock()
        assert old is not None
        deal = await wait_running_deal(observer, 90)
        loop = asyncio.get_running_loop()
        cluster.signal_unit("E003", signal.SIGKILL)
        killed = loop.time()
        new = await observer.wait_lock(
            lambda lock: lock is not None and lock.unit_id != "E003", 2 * GM_FAILOVER_LIMIT_S
        )
        took = loop.time() - killed
        assert new is not None and new.epoch > old.epoch
        print(f"new Grid Master {new.unit_id} (epoch {new.epoch}) {took:.1f} s after kill -9")
        assert took < GM_FAILOVER_LIMIT_S
        a, b = await wait_recorded_on_both(observer, deal["dealId"], 90)
        # carried on to its amount (or aborted safely): the same record on both sides
        assert completed(a) or a.get("abortDateTime"), a
        assert a["cumulateAmountWh"] == b["cumulateAmountWh"]
        await cluster.stop_unit("E003")  # killed: only reaped here
        cluster.units.pop("E003")
        await assert_quiet_grid(observer)
    finally:
        await observer.close()


async def test_a_paused_grid_master_cannot_move_a_converter(make_cluster: ClusterFactory) -> None:
    observer = await start_with_grid_master_on_e003(make_cluster)
    cluster = observer.cluster
    try:
        stale = await observer.lock()
        assert stale is not None
        deal = await wait_running_deal(observer, 90)
        cluster.signal_unit("E003", signal.SIGSTOP)  # past its lease...
        new = await observer.wait_lock(
            lambda lock: lock is not None and lock.unit_id != "E003", 2 * GM_FAILOVER_LIMIT_S
        )
        assert new is not None and new.epoch > stale.epoch
        await asyncio.sleep(3)  # the new Grid Master commands the units at its epoch
        cluster.signal_unit("E003", signal.SIGCONT)  # ... then resumed
        e003 = cluster.units["E003"]
        await wait_for(
            lambda: _contains(e003.log_text(), "lease", "lost"), 15, "E003 saw its lease lost"
        )
        await asyncio.sleep(2)  # had it sent anything after resuming, it would show now
        for unit_id in ("E001", "E002", "E004"):
            assert _refusals(cluster.units[unit_id].log_text()) == 0, unit_id
        # What a stale Grid Master's command looks like to a Controller: refused by epoch.
        stale_gm = await NatsBus.connect(
            cluster.nats.urls, name="stale-E003", tls=cluster.tls_context("E003")
        )
        try:
            with pytest.raises(RemoteFailure) as refused:
                await stale_gm.request(
                    subjects.controller_control("E001", "E003"),
                    {"command": "WAIT", "params": {}},
                    {subjects.GRID_MASTER_UNIT_ID: "E003",
                     subjects.GRID_MASTER_EPOCH: str(stale.epoch)},
                    timeout=10,
                )
        finally:
            await stale_gm.close()
        assert "epoch" in str(refused.value)
        assert _refusals(cluster.units["E001"].log_text()) == 1
        a, b = await wait_recorded_on_both(observer, deal["dealId"], 90)
        assert a["cumulateAmountWh"] == b["cumulateAmountWh"]
        lock = await observer.lock()
        assert lock is not None and lock.unit_id != "E003", lock
        await assert_quiet_grid(observer)
    finally:
        await observer.close()


def _refusals(log_text: str) -> int:
    """Converter commands of E003 a unit refused (the Controller's fencing error)."""
    return sum(
        "converter command refused" in line and "E003" in line
        for line in log_text.splitlines()
    )


async def _contains(text: str, *words: str) -> bool:
    return any(all(word in line for word in words) for line in text.splitlines())
