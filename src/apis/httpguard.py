"""What every HTTP server of APIS refuses before a route, or authentication, sees a request.

* A `Host` that is not this server's, and a present `Origin` that is not: a web page open in a
  browser on the same machine could otherwise reach a server on 127.0.0.1, through a name of
  its own rebound to 127.0.0.1 (DNS rebinding) or by sending a form (cross-site request).
  Allowed are the address the connection arrived at (ASGI `server`) and 127.0.0.1, localhost
  and [::1], each with that port, plus the names an operator configures (`HostNames`). A
  request without `Origin` comes from a program, not a page, and passes.
* Optionally (the Device Driver and the emulator: APIs for programs, never for other sites'
  pages) a request the browser marks as made from another site (`Sec-Fetch-Site`), which
  also covers the GET forms that carry no `Origin`.
* A body over a size limit: 413 at once when `Content-Length` says so, without reading it;
  a body without a length is counted as it arrives and cut off at the limit.

Refusals are JSON `{key: message}` (`err` for the driver and the emulator, `detail` for the
operations API), with the value and the limit in the message.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _name(host: str) -> str:
    """A host name as compared: lower case, no brackets, IPv4-mapped IPv6 as IPv4."""
    name = host.strip().lower().strip("[]")
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return name.rstrip(".")
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _split(authority: str, scheme: str = "http") -> tuple[str, int]:
    """`name[:port]` (IPv6 in brackets) -> (name, port); ValueError if it is not one."""
    if not authority or any(c in authority for c in "/?#@ \t"):
        raise ValueError(authority)
    parts = urlsplit(f"//{authority}")
    if not parts.hostname:
        raise ValueError(authority)
    port = parts.port  # ValueError for a bad port
    return _name(parts.hostname), port if port is not None else DEFAULT_PORTS.get(scheme, 80)


@dataclass(frozen=True)
class HostNames:
    """Names an operator allows besides the server's own addresses: `NAME` (any port, e.g.
    behind a reverse proxy) or `NAME:PORT`."""

    any_port: frozenset[str] = frozenset()
    with_port: frozenset[tuple[str, int]] = frozenset()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> HostNames:
        any_port: set[str] = set()
        with_port: set[tuple[str, int]] = set()
        for entry in entries:
            text = entry.strip()
            try:
                name, port = _split(text)
            except ValueError:
                raise ValueError(
                    f"allowed host = {entry!r} (must be NAME or NAME:PORT, IPv6 in brackets)"
                ) from None
            has_port = text.rsplit("]", 1)[-1].count(":") == 1
            if has_port:
                with_port.add((name, port))
            else:
                any_port.add(name)
        return cls(frozenset(any_port), frozenset(with_port))

    def describe(self) -> list[str]:
        names = [_show(n, None) for n in sorted(self.any_port)]
        return names + [_show(n, p) for n, p in sorted(self.with_port)]


def _show(name: str, port: int | None) -> str:
    host = f"[{name}]" if ":" in name else name
    return host if port is None else f"{host}:{port}"


@dataclass(frozen=True)
class GuardPolicy:
    names: HostNames = field(default_factory=HostNames)
    max_body_bytes: int = 1 << 20
    refuse_cross_site: bool = False
    error_key: str = "detail"
    option_hint: str = "--allow-host"

    def own(self, scope: Scope) -> tuple[set[str], int | None]:
        """This server's own names and its port (None: unknown, any port of them)."""
        server = scope.get("server")
        names = set(LOOPBACK_NAMES)
        port: int | None = None
        if server:
            host, server_port = server[0], server[1]
            if host:
                names.add(_name(str(host)))
            port = server_port if server_port is not None else DEFAULT_PORTS.get(
                str(scope.get("scheme", "http")), 80)
        return names, port

    def allows(self, name: str, port: int, scope: Scope) -> bool:
        if name in self.names.any_port or (name, port) in self.names.with_port:
            return True
        own, own_port = self.own(scope)
        return name in own and (own_port is None or port == own_port)

    def allowed_text(self, scope: Scope) -> str:
        own, port = self.own(scope)
        listed = [_show(n, port) for n in sorted(own)] + self.names.describe()
        return ", ".join(listed)


class RequestTooLarge(Exception):
    pass


def _header(scope: Scope, key: bytes) -> str | None:
    for k, v in scope.get("headers", ()):
        if k == key:
            return str(v.decode("latin-1"))
    return None


class RequestGuard:
    """ASGI middleware applying a `GuardPolicy` to every HTTP request."""

    def __init__(self, app: ASGIApp, policy: GuardPolicy) -> None:
        self.app = app
        self.policy = policy

    async def _refuse(self, send: Send, status: int, message: str) -> None:
        body = json.dumps({self.policy.error_key: message}).encode()
        await send({
            "type": "http.response.start", "status": status,
            "headers": [(b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close")],
        })
        await send({"type": "http.response.body", "body": body})

    def _host_problem(self, scope: Scope) -> str | None:
        policy = self.policy
        hint = f"; name others with {policy.option_hint}" if policy.option_hint else ""
        host = _header(scope, b"host")
        if host is not None:
            try:
                name, port = _split(host, str(scope.get("scheme", "http")))
            except ValueError:
                name, port = "", 0
            if not name or not policy.allows(name, port, scope):
                return (f"Host = {host!r} (not an address of this server; allowed: "
                        f"{policy.allowed_text(scope)}{hint})")
        origin = _header(scope, b"origin")
        if origin is not None:
            parts = urlsplit(origin)
            try:
                if parts.scheme not in ("http", "https") or parts.path or parts.query:
                    raise ValueError(origin)
                name, port = _split(parts.netloc, parts.scheme)
            except ValueError:
                name, port = "", 0
            if not name or not policy.allows(name, port, scope):
                return (f"Origin = {origin!r} (a page of another site; allowed: pages from "
                        f"{policy.allowed_text(scope)}{hint})")
        if policy.refuse_cross_site:
            site = _header(scope, b"sec-fetch-site")
            if site in ("cross-site", "same-site"):
                return (f"Sec-Fetch-Site = {site!r} (a browser request from another site's "
                        "page; this API serves programs and its own pages only)")
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and self._host_problem(scope) is not None:
            await send({"type": "websocket.close", "code": 1008})  # policy violation
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem = self._host_problem(scope)
        if problem is not None:
            await self._refuse(send, 403, problem)
            return
        limit = self.policy.max_body_bytes
        length = _header(scope, b"content-length")
        if length is not None:
            try:
                size = int(length)
                if size < 0:
                    raise ValueError(length)
            except ValueError:
                await self._refuse(send, 400, f"Content-Length = {length!r} (must be a "
                                   "whole number of bytes)")
                return
            if size > limit:
                await self._refuse(send, 413, f"request body of {size} bytes (the limit is "
                                   f"{limit} bytes)")
                return
        await self._counted(scope, receive, send, limit)

    async def _counted(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        """Run the app, cutting the body off at `limit` bytes as it arrives (no length given,
        or more bytes than it said)."""
        received = 0
        over = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    over = True
                    raise RequestTooLarge
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if over:  # the app's answer to a body it never got whole: ours goes instead
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except RequestTooLarge:
            pass
        except Exception:
            if not over:
                raise
        if over and not started:
            await self._refuse(send, 413, f"request body over {limit} bytes (the limit)")


def guard(app: Starlette, policy: GuardPolicy) -> None:
    """Add `RequestGuard` with `policy` to a Starlette/FastAPI `app`, outermost of its
    middleware (add it after any other)."""
    app.add_middleware(RequestGuard, policy=policy)
