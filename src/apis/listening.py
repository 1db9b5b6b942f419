"""HTTP servers that the commands run on their own loop: the socket bound first, signals left
to the command.

Binding the socket before uvicorn starts means a taken port fails at once with an error naming
it, and port 0 (any free port) is known before the address is printed or handed to the app.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import uvicorn


class ListenError(OSError):
    """The address cannot be listened on; `strerror` names it and says why."""


LISTEN_BACKLOG = 2048  # uvicorn's default


def bind_listener(host: str, port: int) -> socket.socket:
    """A socket listening on `host`:`port` (0: any free port; read it with `getsockname`).

    It listens at once, so a client that connects after the command printed the address is
    queued, not refused, while the server is still starting (uvicorn listens again with its
    own backlog)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError as e:
        sock.close()
        raise ListenError(e.errno, f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.set_inheritable(True)
    return sock


class CommandServer(uvicorn.Server):
    """uvicorn without its own signal capture: the command that runs it stops it (and what
    runs beside it on the loop) by setting `should_exit`."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
