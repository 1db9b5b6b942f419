"""Action log lines as UDP multicast datagrams, as the original apis-main sent them to apis-log.

`MulticastLogHandler` sends one datagram per line (never blocks, never raises into the code
that logged: a line that cannot be sent is counted in `dropped`). `listen` receives datagrams
from our units or from the original apis-main and hands each line, parsed, to a callback;
`listen_datagrams` hands over each datagram's bytes as they came (records.datagrams keeps
them).

On one host, sender and receiver meet on the loopback interface only when both name it
(`interface="127.0.0.1"`): with the system's choice (0.0.0.0) each side takes the interface
of the route to the group (the default route's), and a host without such a route refuses to
join at all (ENODEV). Linux delivers loopback multicast between sockets that name 127.0.0.1
even where `lo` lacks the MULTICAST flag.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Callable

from apis.records.actionlog import ActionLogFormatter, LogLine, parse_line

# The largest UDP payload over IPv4; a longer line is cut (and says so at its end).
MAX_DATAGRAM = 65_507
_CUT_MARK = b" [...]"
RECEIVE_BUFFER = 4 * 1024 * 1024

log = logging.getLogger(__name__)


def multicast_group(group: str, port: int) -> tuple[ipaddress.IPv4Address, int]:
    """The checked (group, port): an IPv4 multicast address and a port in 1..65535."""
    try:
        address = ipaddress.ip_address(group)
    except ValueError:
        raise ValueError(f"multicast group = {group!r} (not an IP address)") from None
    if not isinstance(address, ipaddress.IPv4Address) or not address.is_multicast:
        raise ValueError(f"multicast group = {group!r} (must be IPv4 224.0.0.0..239.255.255.255)")
    if not 1 <= port <= 65535:
        raise ValueError(f"multicast port = {port} (must be within 1..65535)")
    return address, port


def check_interface(interface: str | None) -> str | None:
    """The interface address as given (None: the system's choice); ValueError naming it."""
    if interface is None:
        return None
    try:
        return str(ipaddress.IPv4Address(interface))
    except ValueError:
        raise ValueError(f"multicast interface = {interface!r} (an IPv4 address)") from None


def _interface(interface: str | None) -> bytes:
    return socket.inet_aton(check_interface(interface) or "0.0.0.0")


def datagram(line: str) -> bytes:
    """The line as one datagram's bytes (UTF-8), cut to fit."""
    data = line.encode("utf-8", errors="replace")
    if len(data) > MAX_DATAGRAM:
        data = data[: MAX_DATAGRAM - len(_CUT_MARK)] + _CUT_MARK
    return data


class MulticastLogHandler(logging.Handler):
    """Sends each record as an apis-main line to a multicast group (TTL 1: this LAN only)."""

    def __init__(
        self,
        unit_id: str,
        group: str,
        port: int,
        *,
        interface: str | None = None,
        ttl: int = 1,
    ) -> None:
        super().__init__()
        address, port = multicast_group(group, port)
        if not 1 <= ttl <= 255:
            raise ValueError(f"multicast ttl = {ttl} (must be within 1..255)")
        self.target = (str(address), port)
        self.dropped = 0
        self.setFormatter(ActionLogFormatter(unit_id))
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, _interface(interface))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._socket = sock

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._socket.sendto(datagram(self.format(record)), self.target)
        except OSError:  # buffer full, no route: the files and the bus still have the line
            self.dropped += 1

    def close(self) -> None:
        self._socket.close()
        super().close()


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, tuple[str, int]], None]) -> None:
        self.on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        sender = (str(addr[0]), int(addr[1]))
        try:
            self.on_datagram(data, sender)
        except Exception:  # a receiver that fails on one datagram keeps receiving the next
            log.exception("action log datagram from %s:%d not handled", *sender)

    def error_received(self, exc: Exception) -> None:
        log.warning("action log datagrams: %s", exc)


async def listen(
    group: str,
    port: int,
    on_line: Callable[[LogLine, tuple[str, int]], None],
    *,
    interface: str | None = None,
) -> asyncio.DatagramTransport:
    """Join `group` on `interface` (default: the system's choice) and receive on `port`;
    each datagram's text (UTF-8, undecodable bytes replaced), parsed, goes to `on_line`
    (empty ones are skipped). Close the returned transport to stop."""

    def on_datagram(data: bytes, sender: tuple[str, int]) -> None:
        text = data.decode("utf-8", errors="replace").strip()
        if text:
            on_line(parse_line(text), sender)

    return await listen_datagrams(group, port, on_datagram, interface=interface)


async def listen_datagrams(
    group: str,
    port: int,
    on_datagram: Callable[[bytes, tuple[str, int]], None],
    *,
    interface: str | None = None,
) -> asyncio.DatagramTransport:
    """Join `group` on `interface` (default: the system's choice) and receive on `port`;
    each datagram's bytes and its sender go to `on_datagram`.

    The socket reuses the address, so several receivers on one host can listen together.
    Close the returned transport to stop.
    """
    address, port = multicast_group(group, port)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        # room for a burst while the loop is busy (the kernel caps it at net.core.rmem_max)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.bind((str(address), port))  # only this group's datagrams, not all of the port's
        membership = socket.inet_aton(str(address)) + _interface(interface)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: _Receiver(on_datagram), sock=sock)
    return transport
