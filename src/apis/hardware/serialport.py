"""Serial lines: open a port as asyncio streams (8N1), and virtual port pairs made by socat."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
from collections.abc import AsyncIterator

import serial_asyncio_fast

_PTY_LINE = re.compile(rb"PTY is (\S+)")


async def open_serial(
    port: str, baudrate: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open `port` 8N1, no flow control."""
    reader, writer = await serial_asyncio_fast.open_serial_connection(
        url=port, baudrate=baudrate, bytesize=8, parity="N", stopbits=1,
        xonxoff=False, rtscts=False,
    )
    return reader, writer


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, asyncio.CancelledError):
        await asyncio.wait_for(writer.wait_closed(), 5)


class SocatError(RuntimeError):
    """socat is missing or did not announce its two ptys."""


@contextlib.asynccontextmanager
async def pty_pair(socat: str = "socat", timeout_s: float = 15.0) -> AsyncIterator[
    tuple[str, str]
]:
    """Two connected pseudo-terminals (`socat -d -d pty,raw,echo=0 pty,raw,echo=0`).

    Yields their paths; on exit socat is terminated and waited for (killed if it lingers).
    """
    exe = shutil.which(socat)
    if exe is None:
        raise SocatError(f"socat = {socat!r} (not found on PATH; install the socat package)")
    process = await asyncio.create_subprocess_exec(
        exe, "-d", "-d", "pty,raw,echo=0", "pty,raw,echo=0",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    drain: asyncio.Task[None] | None = None
    try:
        assert process.stderr is not None
        stderr = process.stderr
        names: list[str] = []
        async with asyncio.timeout(timeout_s):
            while len(names) < 2:
                line = await stderr.readline()
                if not line:
                    raise SocatError(f"socat exited (code {process.returncode}) before "
                                     f"announcing 2 ptys (got {names})")
                match = _PTY_LINE.search(line)
                if match:
                    names.append(match.group(1).decode())
        # Keep reading socat's chatter so its pipe never fills up and blocks it.
        drain = asyncio.create_task(_discard(stderr))
        yield names[0], names[1]
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                process.kill()
                await process.wait()
        if drain is not None:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain


async def _discard(stream: asyncio.StreamReader) -> None:
    while await stream.read(4096):
        pass
