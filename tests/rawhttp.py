"""HTTP/1.1 by hand over a socket, for what an HTTP client library will not send: a request
that announces a 60 MB body and sends none of it, or a chunked body that never ends. If the
server waits for the body instead of answering, the read times out and the test fails."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import uvicorn

from apis.listening import CommandServer, bind_listener

SIXTY_MB = 60 * 1024 * 1024
ANSWER_TIMEOUT_S = 30.0  # a hang guard on a loaded machine, not a speed limit


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def _read_answer(reader: asyncio.StreamReader) -> Answer:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            key, value = line.split(":", 1)
            headers[key.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    return Answer(status, headers, body)


async def _exchange(port: int, head: str, body_parts: list[bytes]) -> Answer:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode("latin-1"))
        for part in body_parts:
            writer.write(part)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        return await asyncio.wait_for(_read_answer(reader), ANSWER_TIMEOUT_S)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def _head(method: str, path: str, port: int, headers: dict[str, str]) -> str:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}",
             *(f"{k}: {v}" for k, v in headers.items())]
    return "\r\n".join(lines) + "\r\n\r\n"


async def announce_body(port: int, method: str, path: str, size: int = SIXTY_MB,
                        headers: dict[str, str] | None = None) -> Answer:
    """Send the request head with `Content-Length: size` and not one byte of the body."""
    head = _head(method, path, port, {"Content-Length": str(size),
                                      "Content-Type": "application/json", **(headers or {})})
    return await _exchange(port, head, [])


async def endless_chunks(port: int, method: str, path: str, total: int,
                         headers: dict[str, str] | None = None) -> Answer:
    """Send `total` bytes as chunks of a chunked body that is never finished."""
    head = _head(method, path, port, {"Transfer-Encoding": "chunked",
                                      "Content-Type": "application/json", **(headers or {})})
    chunk = b"x" * 8192
    parts = [b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(total // len(chunk))]
    return await _exchange(port, head, parts)


@contextlib.asynccontextmanager
async def serving(app: Any, *, lifespan: str = "off") -> AsyncIterator[int]:
    """`app` served by uvicorn on 127.0.0.1 (a free port, yielded) until the block ends."""
    sock = bind_listener("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = CommandServer(uvicorn.Config(app, host="127.0.0.1", port=port,
                                          log_level="warning", lifespan=lifespan))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
        yield port
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)
        sock.close()
