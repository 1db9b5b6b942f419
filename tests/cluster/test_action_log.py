"""`apis unit` processes keep their action log: files, the bus and UDP multicast (real NATS)."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
from typing import Any

import pytest

from apis.bus.base import Message
from apis.bus.security import WEB
from apis.records.actionlog import LogLine, parse_line
from apis.records.buslog import LEVEL_SUBJECT, log_subject
from apis.records.multicast import listen
from tests.cluster.conftest import ClusterFactory, Observer, wait_for

GROUP = "239.255.77.8"


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(240)
async def test_unit_processes_log_to_files_bus_and_multicast(
    make_cluster: ClusterFactory,
) -> None:
    cluster = await make_cluster(
        units=2, servers=1, start_units=False, idle_units=(), rsoc=(95.0, 20.0)
    )
    port = _free_udp_port()
    for unit_id in cluster.unit_ids:
        path = cluster.config_path(unit_id)
        config = json.loads(path.read_text())
        config["actionLog"] = {
            "directory": "actionlog", "maxBytes": 1_000_000, "backupCount": 2,
            "publishLevel": "INFO",
            "multicast": {"group": GROUP, "port": port, "interface": "127.0.0.1"},
        }
        path.write_text(json.dumps(config))
    observer = await Observer.connect(cluster, WEB)  # hears the logs, may set their level
    on_bus: list[tuple[str, str]] = []
    datagrams: list[LogLine] = []

    async def on_line(message: Message) -> None:
        payload: Any = message.payload
        on_bus.append((payload["unitId"], payload["line"]))

    transport = await listen(GROUP, port, lambda line, _: datagrams.append(line),
                             interface="127.0.0.1")
    try:
        for unit_id in cluster.unit_ids:
            await observer.bus.subscribe(log_subject(unit_id), on_line)
        for unit_id in cluster.unit_ids:
            cluster.start_unit(unit_id)

        async def both_spoke() -> bool:
            return {unit for unit, _ in on_bus} == {"E001", "E002"}

        await wait_for(both_spoke, 60, f"lines from both units\n{observer.logs()}")
        await observer.bus.publish(LEVEL_SUBJECT, "FINE")  # the whole cluster, at run time

        async def fine_lines() -> bool:
            return any(parse_line(line).level == "FINE" for _, line in on_bus)

        await wait_for(fine_lines, 30, "FINE lines after the level change")
        cluster.signal_unit("E001", signal.SIGTERM)
        assert await cluster.stop_unit("E001", grace=30) == 0
    finally:
        transport.close()
        await observer.close()
    parsed = [(unit, parse_line(line)) for unit, line in on_bus]
    assert all(line.pattern == 1 and line.unit_id == unit for unit, line in parsed)
    assert any(line.pattern == 1 and line.unit_id == "E001" for line in datagrams)
    files = cluster.config_path("E001").parent / "actionlog"
    written = [parse_line(x) for x in (files / "E001.log").read_text().splitlines()
               if x.startswith("[[[")]
    assert written and all(line.unit_id == "E001" for line in written)
    # the unit's last lines (its orderly shutdown) were published before it ended
    published = {line.message for unit, line in parsed if unit == "E001"}
    assert any("orderly shutdown" in m for m in published), sorted(published)[-10:]
    assert (files / "E001.err").exists()
    await asyncio.sleep(0)
