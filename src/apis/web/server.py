"""Serve the operations app with uvicorn inside an already running event loop.

The demo runs its cluster and the web app on one loop (a scaled-time loop):

    web = WebServer(hub.connect("web"), world=world, port=8080)
    async with web.running():
        print(f"operations UI: {web.login_url()}")   # a one-time login link, not the token
        ...                                   # the cluster runs meanwhile

uvicorn's keep-alive and shutdown timeouts are loop seconds; they are given here in real
seconds and scaled by the loop's `speed`. uvicorn's signal handlers are not installed: the
owner of the loop (the demo, `apis web`) handles Ctrl-C and stops the server.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import uvicorn

from apis.bus.base import Bus
from apis.httpguard import HostNames
from apis.listening import CommandServer, bind_listener
from apis.store.history import HistoryStore
from apis.web.app import create_app
from apis.web.records import RecordsReader
from apis.web.service import Operations, loop_seconds
from apis.web.token import LoginCodes, new_token

if TYPE_CHECKING:
    from apis.emulator.world import World

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


class WebServer:
    """The app for `bus`, served on `host`:`port` (port 0: any free port)."""

    def __init__(
        self,
        bus: Bus,
        *,
        world: World | None = None,
        store: HistoryStore | None = None,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        token: str | None = None,
        refresh_real_s: float = 1.0,
        log_level: str = "warning",
        allowed_hosts: HostNames | None = None,
        records: RecordsReader | None = None,
    ) -> None:
        self.token = token or new_token()
        self.host = host
        self.port = port
        self.log_level = log_level
        self.logins = LoginCodes()
        self.app = create_app(bus, token=self.token, world=world, store=store,
                              refresh_real_s=refresh_real_s, allowed_hosts=allowed_hosts,
                              logins=self.logins, records=records)
        self.server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def ops(self) -> Operations:
        ops: Operations = self.app.state.ops
        return ops

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}/"

    def login_url(self) -> str:
        """The page's address with a new one-time login code in the fragment: the page
        trades it for the token once (`apis.web.token`). Printing it does not print the
        token, and a used or expired link is worth nothing."""
        return f"{self.url}#login={self.logins.issue()}"

    async def start(self) -> None:
        config = uvicorn.Config(
            self.app,
            host=self.host,
            port=self.port,
            lifespan="on",
            log_level=self.log_level,
            access_log=False,
            timeout_keep_alive=max(1, int(loop_seconds(5.0))),
            timeout_graceful_shutdown=max(1, int(loop_seconds(3.0))),
        )
        sock = bind_listener(self.host, self.port)
        self.port = sock.getsockname()[1]
        self.server = CommandServer(config)
        self._task = asyncio.create_task(self.server.serve(sockets=[sock]), name="apis-web")
        while not self.server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise RuntimeError("web server stopped during start-up")
            await asyncio.sleep(loop_seconds(0.02))

    async def stop(self) -> None:
        if self.server is None or self._task is None:
            return
        self.ops.close_listeners()  # let event streams end, so shutdown need not wait
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.server = None
        self._task = None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[WebServer]:
        await self.start()
        try:
            yield self
        finally:
            await self.stop()
