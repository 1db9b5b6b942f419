"""Action log lines as UDP multicast datagrams, as the original apis-log received them, into
the records store.

Each datagram from the group becomes one row of ``log_lines`` (records.inbound
`datagram_row`: the four patterns of records.actionlog; a line that fits none kept whole as
SEVERE), or, when it cannot be a line (not UTF-8 text, a NUL, empty, a name that is no unit
id), a row of ``rejected`` with the reason, logged as an error. The key of both is this
receiver's origin (``multicast:<group>:<port>@<start time>``) and the datagram's number since
it started, so a restarted receiver never collides with an earlier one.

UDP has no acknowledgement: what is sent while no receiver listens is gone, and so is what
the socket's buffer cannot hold. Once received, a line is kept: rows wait in memory
(records.pending: up to `capacity`) until committed, a commit that fails is retried with
backoff while datagrams keep arriving; beyond `capacity` new datagrams are counted as
dropped and said so. At the end, what waits is committed once more.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from apis.records.inbound import Refused, datagram_row, kept_data
from apis.records.multicast import check_interface, listen_datagrams, multicast_group
from apis.records.pending import PendingRows, Write
from apis.records.store import RejectRow, Row

log = logging.getLogger(__name__)

class MulticastUnavailable(Exception):
    """The group cannot be joined (no such interface, no route for it, port in use ...)."""


@dataclass(frozen=True, slots=True)
class MulticastSource:
    """The group and port to receive on, and the interface to join on (None: the system's
    choice; give 127.0.0.1 for senders on this host's loopback)."""

    group: str
    port: int
    interface: str | None = None

    def __post_init__(self) -> None:
        multicast_group(self.group, self.port)  # ValueError naming the value
        check_interface(self.interface)

    @classmethod
    def parse(cls, text: str, interface: str | None = None) -> MulticastSource:
        """``GROUP:PORT``, e.g. ``239.255.42.1:8888``; ValueError naming what is wrong."""
        group, sep, port = text.strip().rpartition(":")
        if not sep or not group:
            raise ValueError(f"multicast = {text!r} (must be GROUP:PORT, e.g. 239.255.42.1:8888)")
        try:
            number = int(port)
        except ValueError:
            raise ValueError(f"multicast = {text!r} (the port must be a number)") from None
        return cls(group, number, interface)

    def __str__(self) -> str:
        on = f" on {self.interface}" if self.interface else ""
        return f"{self.group}:{self.port}{on}"


class DatagramReceiver:
    def __init__(self, source: MulticastSource, write: Write, *, batch: int = 500,
                 capacity: int = 100_000) -> None:
        self.source = source
        started = datetime.now(UTC).isoformat(timespec="microseconds")
        self.origin = f"multicast:{source.group}:{source.port}@{started}#{os.getpid()}"
        self.seq = 0  # datagrams received
        self.refused = 0
        self.pending = PendingRows(write, "action log datagrams", batch=batch,
                                   capacity=capacity)
        self.listening = asyncio.Event()

    def on_datagram(self, data: bytes, sender: tuple[str, int]) -> None:
        self.seq += 1
        if self.pending.full:
            self.pending.dropped += 1
            return
        try:
            row: Row = datagram_row(data, sender, self.origin, self.seq, time.time())
        except Refused as exc:
            self.refused += 1
            log.error("records: multicast datagram #%d refused: %s", self.seq, exc)
            row = RejectRow(self.origin, self.seq, f"udp {sender[0]}:{sender[1]}", str(exc),
                            kept_data(data))
        self.pending.add(row)

    async def run(self) -> None:
        """Receive and commit until cancelled (then call `flush`)."""
        source = self.source
        try:
            transport = await listen_datagrams(source.group, source.port, self.on_datagram,
                                               interface=source.interface)
        except OSError as exc:
            hint = "" if source.interface else " (name the interface to join on)"
            raise MulticastUnavailable(f"multicast {source}: cannot join: {exc}{hint}") from None
        log.info("records: receiving action log datagrams from %s", source)
        self.listening.set()
        try:
            await self.pending.run()
        finally:
            transport.close()

    async def flush(self) -> None:
        """Commit what still waits, once (at the end)."""
        await self.pending.flush()
