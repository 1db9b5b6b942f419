"""The multicast receiver mode: UDP datagrams in the original apis-main's four line patterns
into the records store, with real multicast on the loopback interface (127.0.0.1).

Both sides name 127.0.0.1: with the system's choice a socket joins or sends on the default
route's interface (and a host without one refuses to join), see apis.records.multicast.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from apis.records.datagrams import DatagramReceiver, MulticastSource
from apis.records.inbound import Refused, datagram_row, kept_data
from apis.records.receiver import Receiver, Settings
from apis.records.store import RecordStore, open_store
from tests.pgserver import postgres_server, unavailable

pytestmark = pytest.mark.timeout(120)

GROUP = "239.255.77.8"
LOOPBACK = "127.0.0.1"
COLUMNS = "unit_id, level, at, thread, logger, message, line"

# Byte-exact datagrams of our own, one per pattern, and what each must be stored as:
# (unit_id, level, at, thread, logger, message).
PATTERN_1 = (
    b"[[[apis-main:E017]]] [vert.x-eventloop-thread-2] 2026-03-14T09:26:53.589+09:00 INFO "
    b"[jp.co.sony.csl.dcoes.apis.main.app.gridmaster.DealExecution]  deal started: id=d-42"
)
PATTERN_2 = (
    b"[[[apis-ccc]]] [vert.x-worker-thread-0] 2026-03-14T09:26:54.250+09:00 WARNING "
    b"[jp.co.sony.csl.dcoes.apis.tools.ccc.UnitDataReporting]  post failed: 503"
)
PATTERN_3 = (
    b"[[E003]] [main] 2026-03-14T00:27:00.500Z SEVERE [apis.Controller]  "
    b"converter timeout\nsecond line of the message"
)
PATTERN_4 = (
    b"Mar 14 09:27:01 board-7 java[311]: [vert.x-eventloop-thread-0] 2026-03-14T09:27:01 "
    b"FINE [io.vertx.core.impl.launcher]  Succeeded in deploying verticle \xe2\x9c\x93"
)
UNPARSEABLE = b"apis-main E001 said this in no known pattern"


def _utc(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


EXPECTED = [
    ("E017", "INFO", _utc(2026, 3, 14, 0, 26, 53, 589_000), "vert.x-eventloop-thread-2",
     "jp.co.sony.csl.dcoes.apis.main.app.gridmaster.DealExecution", "deal started: id=d-42"),
    ("apis-ccc", "WARNING", _utc(2026, 3, 14, 0, 26, 54, 250_000), "vert.x-worker-thread-0",
     "jp.co.sony.csl.dcoes.apis.tools.ccc.UnitDataReporting", "post failed: 503"),
    ("E003", "SEVERE", _utc(2026, 3, 14, 0, 27, 0, 500_000), "main", "apis.Controller",
     "converter timeout\nsecond line of the message"),
    # no offset: the receiver's local time, as the original apis-log read it
    ("", "FINE", datetime(2026, 3, 14, 9, 27, 1).timestamp(), "vert.x-eventloop-thread-0",
     "io.vertx.core.impl.launcher", "Succeeded in deploying verticle \u2713"),
]
# Datagrams that cannot be lines: (bytes, what the reason says)
MALFORMED = [
    (b"\xff\xfe not text", "not UTF-8 text"),
    (b"", "is empty"),
    (b"[[[apis-main:E 01]]] [t] 2026-03-14T09:26:53+00:00 INFO [x]  a unit id with a space",
     "unit id = 'E 01'"),
    (b"[[[apis-main:E001]]] [t] 2026-03-14T09:26:53+00:00 INFO [x]  a\x00b", "NUL"),
]
SENDER = (LOOPBACK, 40_000)


def test_each_pattern_becomes_its_row_and_malformed_ones_are_refused() -> None:
    for data, expected in zip((PATTERN_1, PATTERN_2, PATTERN_3, PATTERN_4), EXPECTED,
                              strict=True):
        row = datagram_row(data, SENDER, "o", 1, 5.0)
        assert (row.unit_id, row.level, row.at, row.thread, row.logger, row.message) == expected
        assert row.line == data.decode()
    kept = datagram_row(UNPARSEABLE, SENDER, "o", 2, 5.0)
    assert (kept.unit_id, kept.level, kept.at, kept.thread, kept.logger) == (
        "", "SEVERE", 5.0, None, None)
    assert kept.message == kept.line == UNPARSEABLE.decode()
    for data, reason in MALFORMED:
        with pytest.raises(Refused, match=reason):
            datagram_row(data, SENDER, "o", 3, 5.0)


def test_a_bad_group_port_or_interface_is_named() -> None:
    for text, problem in [("239.255.1.1", "GROUP:PORT"), ("239.255.1.1:x", "port must be"),
                          ("10.0.0.1:8888", "must be IPv4 224"), ("239.255.1.1:0", "port = 0")]:
        with pytest.raises(ValueError, match=problem):
            MulticastSource.parse(text)
    with pytest.raises(ValueError, match="interface = 'lo'"):
        MulticastSource.parse("239.255.1.1:8888", "lo")


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def sender() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(LOOPBACK))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
    try:
        yield sock
    finally:
        sock.close()


@contextlib.asynccontextmanager
async def multicast_only(store_url: str, port: int) -> AsyncIterator[Receiver]:
    """The receiver with no bus (the apis-log replacement), listening on 127.0.0.1."""
    settings = Settings(servers=[], store=store_url,
                        multicast=MulticastSource(GROUP, port, LOOPBACK))
    receiver = Receiver(None, None, open_store(store_url), settings)
    stop = asyncio.Event()
    task = asyncio.create_task(receiver.run(stop))
    try:
        assert receiver.datagrams is not None
        await asyncio.wait_for(receiver.datagrams.listening.wait(), 10)
        yield receiver
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await receiver.close()


async def wait_count(store: RecordStore, sql: str, count: int, timeout: float = 20) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (found := store.query(sql)[0][0]) < count:
        assert loop.time() < deadline, f"{sql}: {found} rows, not {count}"
        await asyncio.sleep(0.1)


def _rows(store: RecordStore) -> list[tuple[Any, ...]]:
    return store.query(f"SELECT {COLUMNS} FROM log_lines ORDER BY seq")


async def _send_all_and_check(store_url: str) -> None:
    port = _free_udp_port()
    async with multicast_only(store_url, port) as receiver:
        before = time.time()
        with sender() as out:
            for data in (PATTERN_1, PATTERN_2, PATTERN_3, PATTERN_4, UNPARSEABLE):
                out.sendto(data, (GROUP, port))
            for data, _ in MALFORMED:
                out.sendto(data, (GROUP, port))
            await wait_count(receiver.store, "SELECT COUNT(*) FROM rejected", len(MALFORMED))
            out.sendto(PATTERN_1.replace(b"id=d-42", b"id=d-43"), (GROUP, port))  # still on
            await wait_count(receiver.store, "SELECT COUNT(*) FROM log_lines", 6)
        store = receiver.store
        rows = _rows(store)
        assert [tuple(r[:6]) for r in rows[:4]] == EXPECTED
        assert [r[6] for r in rows[:4]] == [
            d.decode() for d in (PATTERN_1, PATTERN_2, PATTERN_3, PATTERN_4)]
        unit, level, at, thread, logger, message, line = rows[4]
        assert (unit, level, thread, logger) == ("", "SEVERE", None, None)
        assert message == line == UNPARSEABLE.decode() and before <= at <= time.time()
        assert rows[5][5] == "deal started: id=d-43"
        origins = {r[0] for r in store.query("SELECT origin FROM log_lines")}
        assert origins == {receiver.datagrams.origin if receiver.datagrams else None}
        assert origins.pop().startswith(f"multicast:{GROUP}:{port}@")
        rejected = store.query("SELECT seq, subject, reason, data FROM rejected ORDER BY seq")
        assert [r[0] for r in rejected] == [6, 7, 8, 9]  # numbered as they came
        for (seq, subject, reason, data), (sent, why) in zip(rejected, MALFORMED, strict=True):
            assert subject.startswith(f"udp {LOOPBACK}:") and why in reason, (seq, reason)
            assert data == kept_data(sent) and "\x00" not in data
        assert rejected[0][3] == "\\xff\\xfe not text"
        assert rejected[3][3].endswith("a\\x00b")


async def test_a_running_receiver_stores_the_four_patterns_and_keeps_the_malformed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    caplog.set_level(logging.ERROR, "apis.records")
    await _send_all_and_check(str(tmp_path / "records.sqlite"))
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == len(MALFORMED)
    assert all("multicast datagram #" in m for m in refused)


@pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))
async def test_the_same_into_postgresql() -> None:
    async with postgres_server() as server:
        await _send_all_and_check(server.url)


def test_the_cli_without_a_bus_receives_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = _free_udp_port()
    store_path = tmp_path / "records.sqlite"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen(
        [sys.executable, "-m", "apis", "records", "--store", str(store_path),
         "--multicast", f"{GROUP}:{port}", "--multicast-interface", LOOPBACK],
        env=env, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )
    try:
        assert process.stderr is not None
        seen = []
        for line in process.stderr:  # until it listens
            seen.append(line)
            if "receiving action log datagrams" in line:
                break
        else:
            raise AssertionError("".join(seen))
        with sender() as out:
            for data in (PATTERN_1, PATTERN_2, PATTERN_3, PATTERN_4):
                out.sendto(data, (GROUP, port))
        store = open_store(str(store_path))
        try:
            deadline = time.monotonic() + 20
            while store.query("SELECT COUNT(*) FROM log_lines")[0][0] < 4:
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.1)
            assert [tuple(r[:6]) for r in _rows(store)] == EXPECTED
        finally:
            store.close()
        process.send_signal(signal.SIGTERM)
        rest = process.communicate(timeout=30)[1]
        assert process.returncode == 0, rest
        assert "stopped" in rest
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_cli_multicast_errors_are_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cases = [
        ([], "give --bus, --bus-config or --multicast"),
        (["--multicast", "239.255.1.1"], "GROUP:PORT"),
        (["--multicast", "10.0.0.1:8888"], "must be IPv4 224"),
        (["--multicast-interface", LOOPBACK, "--bus", "nats://127.0.0.1:9"],
         "--multicast-interface needs --multicast"),
        # an address no interface has: the group cannot be joined there
        (["--multicast", f"{GROUP}:8888", "--multicast-interface", "192.0.2.254"],
         "cannot join"),
    ]
    for args, expected in cases:
        done = subprocess.run([sys.executable, "-m", "apis", "records", *args], env=env,
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert done.returncode != 0, (args, done.stderr)
        assert expected in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr, (args, done.stderr)


def test_datagrams_beyond_the_capacity_are_counted_not_kept() -> None:
    async def main() -> DatagramReceiver:
        async def never(rows: object) -> int:
            raise AssertionError("not called")

        receiver = DatagramReceiver(MulticastSource(GROUP, 9, LOOPBACK), never, capacity=2)
        for _ in range(5):
            receiver.on_datagram(PATTERN_1, SENDER)
        return receiver

    receiver = asyncio.run(main())
    assert (receiver.seq, receiver.pending.dropped, len(receiver.pending)) == (5, 3, 2)
