"""The action log line: our format, the four original patterns, UDP multicast on loopback."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from apis.loglevels import jul_level, python_level
from apis.records.actionlog import ActionLogFormatter, LogLine, parse_line
from apis.records.logfiles import log_file_handlers
from apis.records.multicast import MAX_DATAGRAM, MulticastLogHandler, datagram, listen

# Byte-exact datagrams of our own in each of the four patterns the original receivers know.
PATTERN_1 = (
    b"[[[apis-main:E017]]] [vert.x-eventloop-thread-2] 2026-03-14T09:26:53.589 INFO "
    b"[jp.co.sony.csl.dcoes.apis.main.app.gridmaster.DealExecution]  deal started: id=d-42"
)
PATTERN_2 = (
    b"[[[apis-ccc]]] [vert.x-worker-thread-0] 2026-03-14T09:26:54.000+09:00 WARNING "
    b"[jp.co.sony.csl.dcoes.apis.tools.ccc.UnitDataReporting]  post failed: 503"
)
PATTERN_3 = (
    b"[[E003]] [main] 2026-03-14T09:27:00.5 SEVERE [apis.Controller]  "
    b"converter timeout\nsecond line of the message"
)
PATTERN_4 = (
    b"Mar 14 09:27:01 board-7 java[311]: [vert.x-eventloop-thread-0] 2026-03-14T09:27:01 "
    b"FINE [io.vertx.core.impl.launcher]  Succeeded in deploying verticle"
)


def test_pattern_1_apis_main_v3() -> None:
    line = parse_line(PATTERN_1.decode())
    assert line == LogLine(
        pattern=1,
        level="INFO",
        message="deal started: id=d-42",
        program_id="apis-main",
        unit_id="E017",
        thread="vert.x-eventloop-thread-2",
        at=datetime(2026, 3, 14, 9, 26, 53, 589000),
        logger="jp.co.sony.csl.dcoes.apis.main.app.gridmaster.DealExecution",
    )
    assert line.unit_name == "E017"


def test_pattern_2_other_tools_v3() -> None:
    line = parse_line(PATTERN_2.decode())
    assert (line.pattern, line.program_id, line.unit_id, line.unit_name) == (
        2, "apis-ccc", None, "apis-ccc"
    )
    assert line.at == datetime(2026, 3, 14, 9, 26, 54, tzinfo=timezone(timedelta(hours=9)))
    assert (line.level, line.thread, line.message) == (
        "WARNING", "vert.x-worker-thread-0", "post failed: 503"
    )


def test_pattern_3_legacy_v2_with_a_message_on_two_lines() -> None:
    line = parse_line(PATTERN_3.decode())
    assert (line.pattern, line.program_id, line.unit_name, line.level, line.logger) == (
        3, "E003", "E003", "SEVERE", "apis.Controller"
    )
    assert line.message == "converter timeout\nsecond line of the message"
    assert line.at == datetime(2026, 3, 14, 9, 27, 0, 500000)


def test_pattern_4_plain_formatter_after_any_prefix() -> None:
    line = parse_line(PATTERN_4.decode())
    assert (line.pattern, line.program_id, line.unit_id) == (4, None, None)
    assert (line.thread, line.level, line.logger, line.message) == (
        "vert.x-eventloop-thread-0", "FINE", "io.vertx.core.impl.launcher",
        "Succeeded in deploying verticle",
    )


def test_unit_ids_with_colons_and_brackets_and_the_first_colon_rule() -> None:
    line = parse_line(
        "[[[apis-main:site:B[2]]]] [t] 2026-03-14T09:00:00 INFO [x]  hello  there"
    )
    assert (line.pattern, line.program_id, line.unit_id, line.message) == (
        1, "apis-main", "site:B[2]", "hello  there"
    )


@pytest.mark.parametrize(
    "text",
    [
        "just some text",
        "[[[apis-main:E001]]] [t] yesterday INFO [x]  not a date-time",
        "[[[apis-main:E001]]] [t] 2026-03-14T09:00:00 LOUD [x]  unknown level",
        "[[[apis-main:E001]]] [t] 2026-03-14T09:00:00 INFO [x] one space only",
    ],
)
def test_a_line_that_fits_no_pattern_is_kept_whole_as_severe(text: str) -> None:
    assert parse_line(text) == LogLine(pattern=0, level="SEVERE", message=text)


def test_levels_both_ways() -> None:
    assert [jul_level(n) for n in (50, 40, 30, 20, 15, 10, 5, 1)] == [
        "SEVERE", "SEVERE", "WARNING", "INFO", "CONFIG", "FINE", "FINER", "FINEST"
    ]
    assert python_level("fine") == logging.DEBUG and python_level("WARNING") == logging.WARNING
    assert python_level("error") == logging.ERROR
    with pytest.raises(ValueError, match="log level = 'LOUD'"):
        python_level("LOUD")


def _record(
    message: str, level: int = logging.INFO, name: str = "apis.unit.x"
) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


def test_our_lines_read_back_as_pattern_1() -> None:
    formatter = ActionLogFormatter("E001")
    record = _record("deal 5f3c started\nwith a second line", logging.ERROR, "apis.unit[gm]")
    line = parse_line(formatter.format(record))
    assert (line.pattern, line.program_id, line.unit_id, line.level) == (
        1, "apis-main", "E001", "SEVERE"
    )
    assert line.logger == "apis.unit(gm)"  # brackets kept out of the bracketed names
    assert line.message == "deal 5f3c started\nwith a second line"
    assert line.at is not None
    assert abs(line.at.timestamp() - record.created) < 0.001


async def test_our_lines_name_the_task_that_logged() -> None:
    formatter = ActionLogFormatter("E001")

    async def acquisition() -> str:
        return formatter.format(_record("tick"))

    text = await asyncio.create_task(acquisition(), name="acquisition")
    assert parse_line(text).thread == "MainThread/acquisition"


def test_files_take_everything_and_errors(tmp_path: Path) -> None:
    logger = logging.getLogger("tests.records.files")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    handlers = log_file_handlers(tmp_path, "E001", max_bytes=400, backup_count=2)
    for handler in handlers:
        logger.addHandler(handler)
    try:
        logger.info("first")
        logger.warning("second")
        logger.debug("third")
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()
    everything = (tmp_path / "E001.log").read_text().splitlines()
    errors = (tmp_path / "E001.err").read_text().splitlines()
    assert [parse_line(x).message for x in everything] == ["first", "second", "third"]
    assert [parse_line(x).level for x in errors] == ["WARNING"]


def test_files_rotate_at_the_size_and_keep_the_count(tmp_path: Path) -> None:
    logger = logging.getLogger("tests.records.rotate")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handlers = log_file_handlers(tmp_path, "E002", max_bytes=300, backup_count=2)
    logger.addHandler(handlers[0])
    try:
        for n in range(40):
            logger.info("line %d", n)
    finally:
        logger.removeHandler(handlers[0])
        for handler in handlers:
            handler.close()
    names = sorted(p.name for p in tmp_path.glob("E002.log*"))
    assert names == ["E002.log", "E002.log.1", "E002.log.2"]
    assert all(p.stat().st_size <= 300 for p in tmp_path.glob("E002.log*"))
    assert parse_line((tmp_path / "E002.log").read_text().splitlines()[-1]).message == "line 39"


@pytest.mark.parametrize(
    ("unit_id", "problem"),
    [("../E001", "unitId = '../E001'"), ("", "unitId = ''"), (".hidden", "unitId = '.hidden'")],
)
def test_a_unit_id_that_is_no_file_name_is_refused(
    tmp_path: Path, unit_id: str, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem.replace(".", r"\.")):
        log_file_handlers(tmp_path / "logs", unit_id, max_bytes=1000, backup_count=1)
    assert not (tmp_path / "logs").exists()


def test_a_too_long_line_is_cut_to_one_datagram() -> None:
    data = datagram("x" * 70_000)
    assert len(data) == MAX_DATAGRAM and data.endswith(b" [...]")


GROUP = "239.255.77.7"


async def _received(port: int, count: int, send: object) -> list[tuple[LogLine, tuple[str, int]]]:
    got: list[tuple[LogLine, tuple[str, int]]] = []
    arrived = asyncio.Event()

    def on_line(line: LogLine, sender: tuple[str, int]) -> None:
        got.append((line, sender))
        if len(got) >= count:
            arrived.set()

    transport = await listen(GROUP, port, on_line, interface="127.0.0.1")
    try:
        assert callable(send)
        send()
        await asyncio.wait_for(arrived.wait(), 5)
    finally:
        transport.close()
    return got


def _free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_the_four_patterns_over_multicast_on_loopback() -> None:
    import socket

    port = _free_udp_port()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))

    def send() -> None:
        for data in (PATTERN_1, PATTERN_2, PATTERN_3, PATTERN_4, b"\xff\xfe broken"):
            sender.sendto(data, (GROUP, port))

    try:
        got = await _received(port, 5, send)
    finally:
        sender.close()
    assert [line.pattern for line, _ in got] == [1, 2, 3, 4, 0]
    assert got[0][0] == parse_line(PATTERN_1.decode())
    assert got[4][0].level == "SEVERE" and "broken" in got[4][0].message
    assert all(address[0] == "127.0.0.1" for _, address in got)


async def test_our_handler_sends_lines_the_receiver_parses() -> None:
    port = _free_udp_port()
    handler = MulticastLogHandler("E004", GROUP, port, interface="127.0.0.1")
    logger = logging.getLogger("tests.records.multicast")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        got = await _received(port, 2, lambda: (logger.info("one"), logger.error("two")))
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert [(x.unit_id, x.level, x.message) for x, _ in got] == [
        ("E004", "INFO", "one"), ("E004", "SEVERE", "two")
    ]
    assert handler.dropped == 0


@pytest.mark.parametrize(
    ("group", "port", "problem"),
    [
        ("10.0.0.1", 8888, "must be IPv4 224.0.0.0..239.255.255.255"),
        ("ff02::1", 8888, "must be IPv4"),
        ("nowhere", 8888, "not an IP address"),
        (GROUP, 0, "multicast port = 0"),
    ],
)
def test_a_bad_group_or_port_is_named(group: str, port: int, problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace(".", r"\.")):
        MulticastLogHandler("E001", group, port)
