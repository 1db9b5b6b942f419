"""The RequestGuard's parts that the three servers' tests do not reach: the option's syntax
and WebSocket handshakes (no server of ours has one; a route added later is covered)."""

from __future__ import annotations

import pytest
from fastapi import FastAPI, WebSocket
from starlette.types import Message

from apis.httpguard import GuardPolicy, HostNames, guard


def test_allowed_host_syntax() -> None:
    names = HostNames.parse(["Apis-Box.", "gw.example:8443", "[::1]:80", "10.0.0.7"])
    assert names.any_port == {"apis-box", "10.0.0.7"}
    assert names.with_port == {("gw.example", 8443), ("::1", 80)}
    for bad in ("::1", "a b", "x:99999", "http://x", ""):
        with pytest.raises(ValueError, match=r"allowed host = .* \(must be NAME or NAME:PORT"):
            HostNames.parse([bad])


async def handshake(app: FastAPI, headers: list[tuple[bytes, bytes]]) -> list[Message]:
    """One WebSocket handshake straight into the ASGI app; what the app sent back."""
    sent: list[Message] = []
    incoming = [{"type": "websocket.connect"}, {"type": "websocket.disconnect", "code": 1000}]

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/ws", "raw_path": b"/ws", "query_string": b"",
             "headers": [(b"host", b"127.0.0.1:8080"), *headers], "scheme": "ws",
             "server": ("127.0.0.1", 8080), "client": ("127.0.0.1", 5000), "root_path": "",
             "subprotocols": [], "asgi": {"version": "3.0"}}
    await app(scope, receive, send)
    return sent


async def test_a_websocket_from_another_site_is_closed() -> None:
    app = FastAPI()

    @app.websocket("/ws")
    async def hello(socket: WebSocket) -> None:
        await socket.accept()
        await socket.send_text("hello")
        await socket.close()

    guard(app, GuardPolicy())
    served = await handshake(app, [(b"origin", b"http://127.0.0.1:8080")])
    assert [m["type"] for m in served] == ["websocket.accept", "websocket.send",
                                           "websocket.close"]
    refused = await handshake(app, [(b"origin", b"http://evil.example")])
    assert refused == [{"type": "websocket.close", "code": 1008}]
