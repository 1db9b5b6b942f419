"""`apis records` against a 4-unit cluster on three real nats-servers: kill -9 mid-deal.

The receiver runs as its own process; an independent observer (a plain bus client of the
test) hears every log line and unit-data sample on the bus and watches every write of the
deal registry. The receiver is killed (SIGKILL) while a deal runs and started again
`GAP_S` seconds later (the issue says 30 s; 10 s here by default to keep the run short,
APIS_TEST_RECORDS_GAP_S sets it). Then every log line, every deal version and every
unit-data sample the observer saw is in the store exactly once: as a multiset, the store
holds what the bus carried, nothing missing and nothing twice. The same with SQLite and
with a real PostgreSQL server started by the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats.js.errors
import pytest

from apis.bus.base import Message
from apis.bus.security import RECORDS, WEB
from apis.process.cluster import ChildProcess, LocalCluster
from apis.records.buslog import LEVEL_SUBJECT
from apis.records.store import RecordStore, open_store
from apis.records.streams import LOG_STREAM, UNIT_DATA_STREAM
from tests.cluster.conftest import ClusterFactory, Observer, wait_for
from tests.pgserver import postgres_server, unavailable

GAP_S = float(os.environ.get("APIS_TEST_RECORDS_GAP_S", "10"))
UNIT_DATA_PERIOD_S = 2.0


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "records.sqlite")
        return
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    async with postgres_server() as server:
        yield server.url


def receiver_process(cluster: LocalCluster, store: str) -> ChildProcess:
    """`apis records` with the records identity's certificate (the bus is secured)."""
    bus_config = cluster.directory / "records-bus.json"
    bus_config.write_text(json.dumps(cluster.bus_json(RECORDS)))
    return ChildProcess(
        "records",
        [sys.executable, "-m", "apis", "records", "--bus-config", str(bus_config),
         "--store", store, "--unit-data-period", str(UNIT_DATA_PERIOD_S)],
        cluster.log_dir / "records.log",
    )


class Heard:
    """What the observer heard on the bus."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, float]] = []  # unit id, line, when heard
        self.samples: list[tuple[str, float]] = []
        self.versions: list[tuple[str, int]] = []

    async def on_line(self, message: Message) -> None:
        payload: Any = message.payload
        self.lines.append((message.subject.split(".")[1], payload["line"], time.time()))

    async def on_sample(self, message: Message) -> None:
        payload: Any = message.payload
        self.samples.append((payload["unitId"], payload["sampledAt"]))


async def watch_deals(observer: Observer, heard: Heard) -> None:
    async for change in observer.registry.deals.watch():
        if change.entry is not None:
            heard.versions.append((change.key, change.entry.revision))


async def stream_exists(observer: Observer, name: str) -> bool:
    try:
        await observer.bus.client.jetstream().stream_info(name)
    except nats.js.errors.NotFoundError:
        return False
    return True


def stored(store: RecordStore) -> tuple[Counter[tuple[Any, ...]], ...]:
    lines = Counter(store.query("SELECT unit_id, line FROM log_lines"))
    samples = Counter(store.query("SELECT unit_id, sampled_at FROM unit_data"))
    versions = Counter(store.query(
        "SELECT deal_id, revision FROM deal_versions WHERE operation = 'PUT'"))
    return lines, samples, versions


@pytest.mark.timeout(420)
async def test_receiver_killed_mid_deal_keeps_every_record_once(
    make_cluster: ClusterFactory, store_url: str
) -> None:
    cluster = await make_cluster(start_units=False)
    for unit_id in cluster.unit_ids:
        path = cluster.config_path(unit_id)
        config = json.loads(path.read_text())
        config["actionLog"] = {"publishLevel": "FINE"}
        path.write_text(json.dumps(config))
    observer = await Observer.connect(cluster)
    heard = Heard()
    receiver = receiver_process(cluster, store_url)
    watcher = asyncio.create_task(watch_deals(observer, heard))
    store: RecordStore | None = None
    try:
        await observer.bus.subscribe("apis.*.log", heard.on_line)
        await observer.bus.subscribe("apis.records.unitData.*", heard.on_sample)
        receiver.start()

        async def streams_ready() -> bool:
            return all([await stream_exists(observer, s) for s in (LOG_STREAM, UNIT_DATA_STREAM)])

        await wait_for(streams_ready, 60, f"the records streams\n{receiver.log_text()}")
        await asyncio.sleep(1.0)  # the deal watch is subscribed by now
        for unit_id in cluster.unit_ids:
            cluster.start_unit(unit_id)
        store = open_store(store_url)

        async def deal_running_and_recorded() -> bool:
            live = [d for d in await observer.deals()
                    if d.get("startDateTime") and not d.get("stopDateTime")]
            assert store is not None
            lines, samples, versions = stored(store)
            return bool(live) and bool(versions) and bool(lines) and bool(samples)

        await wait_for(deal_running_and_recorded, 180,
                       f"a running deal, recorded\n{observer.logs()}\n{receiver.log_text()}")
        live_ids = {d["dealId"] for d in await observer.deals()}
        receiver.signal(signal.SIGKILL)
        assert await receiver.stop() == -signal.SIGKILL
        killed_at = time.time()
        # an operator changes the published level meanwhile: each unit logs that it did
        await asyncio.sleep(GAP_S / 2)
        operator = await Observer.connect(cluster, WEB)  # the level is the operators' to set
        try:
            await operator.bus.publish(LEVEL_SUBJECT, "FINE")
        finally:
            await operator.close()
        await asyncio.sleep(GAP_S / 2)
        restarted_at = time.time()
        receiver.start()

        async def deals_ended() -> bool:
            return not live_ids & {d["dealId"] for d in await observer.deals()}

        await wait_for(deals_ended, 120, f"the deals {live_ids} ended\n{observer.logs()}")
        for unit_id in cluster.unit_ids:  # no more lines: what was heard is all there is
            cluster.signal_unit(unit_id, signal.SIGTERM)
        for unit_id in cluster.unit_ids:
            await cluster.stop_unit(unit_id, grace=30)
        await asyncio.sleep(2 * UNIT_DATA_PERIOD_S)  # the last samples are published

        async def all_stored() -> bool:
            assert store is not None
            lines, samples, versions = stored(store)
            return (
                set(lines) >= {(u, line) for u, line, _ in heard.lines}
                and set(samples) >= set(heard.samples)
                and set(versions) >= set(heard.versions)
            )

        await wait_for(all_stored, 60, f"everything heard is stored\n{receiver.log_text()}")
        receiver.signal(signal.SIGTERM)
        assert await receiver.stop(grace=20) == 0, receiver.log_text()
        lines, samples, versions = stored(store)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await receiver.stop()
        await observer.close()
        if store is not None:
            store.close()
    # exactly once: the same multisets as on the bus
    assert lines == Counter((u, line) for u, line, _ in heard.lines)
    assert samples == Counter(heard.samples)
    assert versions == Counter(heard.versions)
    # the test did what it says: lines and deal versions were published while it was down
    during_gap = [x for x in heard.lines if killed_at < x[2] < restarted_at]
    assert {u for u, _, _ in during_gap} == set(cluster.unit_ids), during_gap
    versions_of_live = [v for v in heard.versions if v[0] in live_ids]
    store = open_store(store_url)
    try:
        gap_versions = store.query(
            "SELECT COUNT(*) FROM deal_versions WHERE reported_at > ? AND reported_at < ?",
            [killed_at, restarted_at],
        )
        homes = store.query(
            "SELECT DISTINCT community_id, cluster_id FROM deal_versions WHERE operation = 'PUT'")
    finally:
        store.close()
    assert gap_versions[0][0] > 0, "no deal version was written while the receiver was down"
    assert len(versions_of_live) > 1
    assert homes == [("apis_community", "apis_cluster")], homes
    assert "Traceback" not in receiver.log_text()
