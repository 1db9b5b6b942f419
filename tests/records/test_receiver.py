"""The records receiver on a real nats-server with real stores: bad input, a store that
refuses writes (its disk full), a PostgreSQL server that goes away, retention, and the
streams made once however often it starts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import pytest

from apis.bus.natsserver import NatsCluster
from apis.records.receiver import Settings, run_receiver
from apis.records.store import TABLES, LogRow, RecordStore, UnitDataRow, open_store
from apis.records.streams import CONSUMER, DEALS_STREAM, LOG_STREAM, UNIT_DATA_STREAM
from tests.bus.conftest import run_apart
from tests.pgserver import PostgresServer, postgres_server, unavailable

pytestmark = pytest.mark.timeout(180)
DAY_S = 86_400.0


@pytest.fixture(scope="module")
def nats_server() -> Iterator[NatsCluster]:
    server = NatsCluster(1)
    run_apart(server.start)
    try:
        yield server
    finally:
        run_apart(server.stop)


@pytest.fixture
async def nc(nats_server: NatsCluster) -> AsyncIterator[nats.NATS]:
    client = await nats.connect(nats_server.urls)
    js = client.jetstream()
    for stream in (LOG_STREAM, DEALS_STREAM, UNIT_DATA_STREAM, "KV_apis_deals"):  # empty
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_stream(stream)
    try:
        yield client
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def receiving(settings: Settings, nc: nats.NATS) -> AsyncIterator[asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(run_receiver(settings, stop))
    js = nc.jetstream()
    try:
        while True:
            assert not task.done(), task.exception()
            try:
                info = await js.consumer_info(UNIT_DATA_STREAM, CONSUMER)
                if info is not None:
                    break
            except nats.js.errors.NotFoundError:
                pass
            await asyncio.sleep(0.1)
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def publish_lines(nc: nats.NATS, unit_id: str, texts: list[str]) -> None:
    for text in texts:
        line = (f"[[[apis-main:{unit_id}]]] [MainThread] 2026-12-02T16:10:00.123+00:00 INFO "
                f"[apis.test]  {text}")
        await nc.publish(f"apis.{unit_id}.log", json.dumps({"unitId": unit_id,
                                                             "line": line}).encode())
    await nc.flush()


async def wait_rows(store: RecordStore, sql: str, count: int, timeout: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (found := store.query(sql)[0][0]) < count:
        assert loop.time() < deadline, f"{sql}: {found} rows, not {count}"
        await asyncio.sleep(0.2)


def messages(store: RecordStore) -> list[str]:
    return [r[0] for r in store.query("SELECT message FROM log_lines ORDER BY seq")]


async def test_bad_messages_are_kept_as_rejected_and_the_receiver_goes_on(
    nats_server: NatsCluster, nc: nats.NATS, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, "apis.records")
    path = str(tmp_path / "r.sqlite")
    settings = Settings(nats_server.urls, path, unit_data_period_s=3600)
    async with receiving(settings, nc) as task:
        await nc.publish("apis.E001.log", b"{not json")
        await nc.publish("apis.E001.log", json.dumps({"unitId": "E002", "line": "x"}).encode())
        await nc.publish("apis.E001.log", json.dumps({"unitId": "E001", "line": 7}).encode())
        js = nc.jetstream()
        bad_data = {"unitId": "E001", "sampledAt": 1.0,
                    "data": {"battery": {"rsoc": "full"}}}
        await js.publish("apis.records.unitData.E001", json.dumps(bad_data).encode())
        wrong_unit = {"unitId": "E001", "sampledAt": 2.0, "data": {"oesunit": {"id": "E009"}}}
        await js.publish("apis.records.unitData.E001", json.dumps(wrong_unit).encode())
        kv = await js.key_value("apis_deals")
        await kv.put("d1", json.dumps({"dealId": "d1", "cumulateAmountWh": "lots"}).encode())
        await kv.put("d2", json.dumps({"dealId": "d1"}).encode())
        await publish_lines(nc, "E001", ["after the bad ones"])
        await js.publish("apis.records.unitData.E001", json.dumps(
            {"unitId": "E001", "sampledAt": 3.0, "data": {"battery": {"rsoc": 40.5}}}).encode())
        store = open_store(path)
        try:
            await wait_rows(store, "SELECT COUNT(*) FROM rejected", 7)
            await wait_rows(store, "SELECT COUNT(*) FROM log_lines", 1)
            await wait_rows(store, "SELECT COUNT(*) FROM unit_data", 1)
            reasons = sorted(r[0] for r in store.query("SELECT reason FROM rejected"))
            assert messages(store) == ["after the bad ones"]
            assert store.query("SELECT unit_id, rsoc FROM unit_data") == [("E001", 40.5)]
        finally:
            store.close()
        assert not task.done()
    assert reasons == sorted([
        "payload is not JSON (Expecting property name enclosed in double quotes: "
        "line 1 column 2 (char 1))",
        "unitId = 'E002' (the subject is E001's)",
        "line = 7 (must be a string)",
        "unit data of E001: battery.rsoc = 'full' (must be a number)",
        "unit data of E001: oesunit.id = 'E009' (the unit is E001)",
        "deal d1: cumulateAmountWh = 'lots' (must be a number)",
        "deal d2: dealId = 'd1' (the key is d2)",
    ]), reasons
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("battery.rsoc = 'full'" in m for m in logged), logged


async def test_lines_of_a_unit_never_sampled_are_kept_and_said_to_be_unknown(
    nats_server: NatsCluster, nc: nats.NATS, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "apis.records")

    async def data_all(msg: Any) -> None:  # a Grid Master that knows E001 only
        answer = {"E001": {"oesunit": {"id": "E001", "communityId": "c", "clusterId": "k"},
                           "battery": {"rsoc": 50.0}}}
        await nc.publish(msg.reply, json.dumps(answer).encode())

    sub = await nc.subscribe("apis.GridMaster.data.all", cb=data_all)
    path = str(tmp_path / "r.sqlite")
    try:
        async with receiving(Settings(nats_server.urls, path, unit_data_period_s=0.5), nc):
            store = open_store(path)
            try:
                await wait_rows(store, "SELECT COUNT(*) FROM unit_data", 1)
                await publish_lines(nc, "E777", ["who am I", "still me"])
                await publish_lines(nc, "E001", ["known"])
                await wait_rows(store, "SELECT COUNT(*) FROM log_lines", 3)
                units = store.query("SELECT unit_id FROM log_lines ORDER BY seq")
            finally:
                store.close()
    finally:
        await sub.unsubscribe()
    assert units == [("E777",), ("E777",), ("E001",)]
    said = [r.getMessage() for r in caplog.records if "never sampled" in r.getMessage()]
    assert said == ["records: lines from E777, a unit whose data was never sampled "
                    "(not among E001): kept"], said


@contextlib.contextmanager
def small_tmpfs(directory: Path, size: str) -> Iterator[Path]:
    """A file system of its own for the store, whose size the test can cut to what is used
    (root bypasses file permissions, so a full disk is how a store refuses writes here)."""
    directory.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
                       check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a small tmpfs for a full store here: {exc}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


def remount(directory: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(directory)], check=True,
                   capture_output=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
async def test_a_full_store_loses_nothing_and_doubles_nothing(
    nats_server: NatsCluster, nc: nats.NATS, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, "apis.records")
    with small_tmpfs(tmp_path / "disk", "64m") as disk:
        path = str(disk / "r.sqlite")
        settings = Settings(nats_server.urls, path, unit_data_period_s=3600)
        store = open_store(path)
        try:
            async with receiving(settings, nc) as task:
                await publish_lines(nc, "E001", [f"before {i}" for i in range(10)])
                await wait_rows(store, "SELECT COUNT(*) FROM log_lines", 10)
                # full: the file system has no room left for what comes
                fs = os.statvfs(disk)
                used = (fs.f_blocks - fs.f_bfree) * fs.f_frsize
                remount(disk, f"size={used + 8192}")
                big = "x" * 20_000
                await publish_lines(nc, "E001", [f"full {i} {big}" for i in range(20)])
                await asyncio.sleep(3)
                assert any("full" in r.getMessage() for r in caplog.records), [
                    r.getMessage() for r in caplog.records]
                remount(disk, "size=64m")
                await wait_rows(store, "SELECT COUNT(*) FROM log_lines", 30)
                assert not task.done()
            got = messages(store)
        finally:
            store.close()
    assert [m.split(" x")[0] for m in got] == (
        [f"before {i}" for i in range(10)] + [f"full {i}" for i in range(20)]
    )


@pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))
async def test_postgresql_going_away_loses_nothing_and_doubles_nothing(
    nats_server: NatsCluster, nc: nats.NATS, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, "apis.records")
    async with postgres_server() as server:
        settings = Settings(nats_server.urls, server.url, unit_data_period_s=3600)
        async with receiving(settings, nc) as task:
            store = open_store(server.url)
            await publish_lines(nc, "E001", [f"first {i}" for i in range(50)])
            await wait_rows(store, "SELECT COUNT(*) FROM log_lines", 50)
            store.close()
            server.kill()
            await publish_lines(nc, "E001", [f"while gone {i}" for i in range(50)])
            await asyncio.sleep(3)
            assert any("not committed" in r.getMessage() for r in caplog.records)
            await server.restart()
            store = open_store(server.url)
            try:
                await wait_rows(store, "SELECT COUNT(*) FROM log_lines", 100)
                await publish_lines(nc, "E001", ["after"])
                await wait_rows(store, "SELECT COUNT(*) FROM log_lines", 101)
                got = messages(store)
            finally:
                store.close()
            assert not task.done()
    assert got == ([f"first {i}" for i in range(50)] + [f"while gone {i}" for i in range(50)]
                   + ["after"])


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "r.sqlite")
        return
    if unavailable() is not None:
        pytest.skip(str(unavailable()))
    server = PostgresServer()
    try:
        await server.start()
        yield server.url
    finally:
        await server.stop()


async def test_store_takes_each_record_once_and_keeps_rows_for_their_retention(
    store_url: str,
) -> None:
    now = time.time()
    rows = [LogRow("s@1", seq, "E001", now - age * DAY_S, "INFO", None, None, "m", "l")
            for seq, age in enumerate((400, 100, 0))]
    samples = [UnitDataRow("E001", now - age * DAY_S, None, None, 50.0, 3, 350.0, 0.0, 0.0,
                           52.0, 0.0, 0.0, "0x0000", "autonomous", None, None, None, "{}")
               for age in (40, 0)]
    store = open_store(store_url)
    try:
        assert store.write([*rows, *samples], now) == 5
        assert store.write([*rows, *samples], now) == 0  # delivered again: nothing added
        deleted = store.purge({"log_lines": now - 365 * DAY_S, "unit_data": now - 30 * DAY_S})
        assert deleted == {"log_lines": 1, "unit_data": 1}
        assert store.query("SELECT seq FROM log_lines ORDER BY seq") == [(1,), (2,)]
        assert store.query("SELECT COUNT(*) FROM unit_data") == [(1,)]
    finally:
        store.close()


async def test_streams_are_made_once_bounded_by_retention_and_retention_is_enforced(
    nats_server: NatsCluster, nc: nats.NATS, tmp_path: Path
) -> None:
    path = str(tmp_path / "r.sqlite")
    store = open_store(path)
    now = time.time()
    old = LogRow("s@1", 1, "E001", now - 40 * DAY_S, "INFO", None, None, "old", "l")
    store.write([old, LogRow("s@1", 2, "E001", now, "INFO", None, None, "new", "l")], now)
    retention = dict.fromkeys(TABLES, 365.0) | {"log_lines": 30.0}
    settings = Settings(nats_server.urls, path, unit_data_period_s=3600,
                        retention_days=retention)
    for _ in range(2):  # a second start finds the streams and its consumers
        async with receiving(settings, nc):
            await wait_rows(store, "SELECT 2 - COUNT(*) FROM log_lines", 1)
    js = nc.jetstream()
    for name in (LOG_STREAM, DEALS_STREAM, UNIT_DATA_STREAM):
        info = await js.stream_info(name)
        assert info.config.max_age == pytest.approx(365 * DAY_S)
        assert info.config.max_bytes == 256 * 1024 * 1024
        assert [c.name for c in await js.consumers_info(name)] == [CONSUMER]
    assert messages(store) == ["new"]
    store.close()


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cases = [
        (["--bus", "nats://127.0.0.1:9", "--store", str(tmp_path / "r.sqlite")], "bus:"),
        (["--bus", "nats://127.0.0.1:9", "--store", str(tmp_path / "no" / "r.sqlite")],
         "does not exist"),
        (["--bus", "127.0.0.1:4222"], "a NATS URL"),
        (["--bus", "nats://127.0.0.1:9", "--unit-data-period", "0"], "must be > 0"),
        (["--bus", "nats://127.0.0.1:9", "--table-retention", "deals=3"], "TABLE=DAYS"),
    ]
    for args, expected in cases:
        done = subprocess.run([sys.executable, "-m", "apis", "records", *args], env=env,
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert done.returncode != 0, (args, done.stderr)
        assert expected in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr, (args, done.stderr)


async def test_bus_and_multicast_lines_go_into_one_table(
    nats_server: NatsCluster, nc: nats.NATS, store_url: str
) -> None:
    import socket

    from apis.records.datagrams import MulticastSource

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    group = "239.255.77.6"
    settings = Settings(nats_server.urls, store_url, unit_data_period_s=3600,
                        multicast=MulticastSource(group, port, "127.0.0.1"))
    datagram = (b"[[[apis-main:E009]]] [vert.x-eventloop-thread-1] 2026-03-14T09:26:53.589+09:00 "
                b"INFO [jp.co.sony.csl.dcoes.apis.main.app.mediator.Mediator]  from multicast")
    async with receiving(settings, nc) as task:
        await publish_lines(nc, "E001", ["from the bus"])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
            out.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                           socket.inet_aton("127.0.0.1"))
            out.sendto(datagram, (group, port))
        # a NUL in a line (text PostgreSQL cannot hold) is refused, not a batch stuck for ever
        await nc.publish("apis.E001.log", json.dumps(
            {"unitId": "E001", "line": "a\u0000b"}).encode())
        await publish_lines(nc, "E001", ["after the NUL"])
        store = open_store(store_url)
        try:
            await wait_rows(store, "SELECT COUNT(*) FROM log_lines", 3)
            await wait_rows(store, "SELECT COUNT(*) FROM rejected", 1)
            rows = store.query("SELECT unit_id, level, logger, message, origin FROM log_lines "
                               "ORDER BY message")
            reasons = store.query("SELECT reason, data FROM rejected")
        finally:
            store.close()
        assert not task.done()
    assert [r[:4] for r in rows] == [
        ("E001", "INFO", "apis.test", "after the NUL"),
        ("E009", "INFO", "jp.co.sony.csl.dcoes.apis.main.app.mediator.Mediator",
         "from multicast"),
        ("E001", "INFO", "apis.test", "from the bus"),
    ]
    assert rows[0][4] == rows[2][4] and rows[0][4].startswith(LOG_STREAM)
    assert rows[1][4].startswith(f"multicast:{group}:{port}@")
    assert reasons == [("line holds a NUL character at 1 (text may not)",
                        '{"unitId": "E001", "line": "a\\u0000b"}')]


async def test_a_batch_committed_but_not_acknowledged_is_not_stored_twice(
    nats_server: NatsCluster, nc: nats.NATS, tmp_path: Path
) -> None:
    """As after a kill -9 between commit and acknowledgement: the stream delivers records
    the store has already; their keys (stream origin and sequence) keep them out."""
    path = str(tmp_path / "r.sqlite")
    settings = Settings(nats_server.urls, path, unit_data_period_s=3600)
    async with receiving(settings, nc):
        pass  # the streams and consumers exist now; lines published next wait there
    await publish_lines(nc, "E001", [f"line {i}" for i in range(1, 11)])
    info = await nc.jetstream().stream_info(LOG_STREAM)
    assert info.state.messages == 10 and info.created is not None
    origin = f"{LOG_STREAM}@{info.created.isoformat()}"
    store = open_store(path)
    try:  # the first five were committed by a receiver that died before acknowledging
        store.write([LogRow(origin, seq, "E001", time.time(), "INFO", None, None,
                            f"committed {seq}", "l") for seq in range(1, 6)], time.time())
        async with receiving(settings, nc):
            await wait_rows(store, "SELECT COUNT(*) FROM log_lines", 10)
            js = nc.jetstream()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while (await js.stream_info(LOG_STREAM)).state.messages:  # all acknowledged
                assert loop.time() < deadline
                await asyncio.sleep(0.2)
        assert messages(store) == [f"committed {i}" for i in range(1, 6)] + [
            f"line {i}" for i in range(6, 11)]
    finally:
        store.close()
