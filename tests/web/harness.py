"""A demo-like cluster (emulated units, in-memory bus, scaled time) with the web app, run on
its own loop in a background thread, for the browser tests."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from apis import clock
from apis.bus.memory import MemoryHub
from apis.config import load_cluster
from apis.config.generate import default_cluster_dir, write_cluster
from apis.demo import emulated_cluster
from apis.emulator import World
from apis.unit.cluster import InProcessCluster
from apis.web.records import RecordsReader
from apis.web.server import WebServer
from tests.web.fakes import FakeCluster, deal

T = TypeVar("T")


class ClusterThread:
    """Start with `start()`; `url`, `token`, `world`, `cluster` are then set (`login_url()`
    gives a one-time login link for a page); `stop()`."""

    def __init__(self, tmp: Path, *, units: int | None = None, speed: float = 30.0,
                 refresh_real_s: float = 0.5) -> None:
        self.tmp = tmp
        self.units = units
        self.speed = speed
        self.refresh_real_s = refresh_real_s
        self.url = ""
        self.token = ""
        self.world: World | None = None
        self.cluster: InProcessCluster | None = None
        self.web: WebServer | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="apis-cluster", daemon=True)

    def start(self, timeout: float = 120.0) -> ClusterThread:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("cluster thread did not start")
        if self._error is not None:
            raise RuntimeError("cluster thread failed") from self._error
        return self

    def _main(self) -> None:
        try:
            clock.run(self._run(), "scaled", self.speed)
        except BaseException as e:  # reported to the test thread
            self._error = e
        finally:
            self._ready.set()

    async def _run(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self.units is not None:
            write_cluster(self.tmp / "cluster", self.units)
            config = load_cluster(self.tmp / "cluster")
        else:
            config = load_cluster(default_cluster_dir())
        world, cluster = emulated_cluster(config, deal_log_tmpdir=str(self.tmp / "logs"))
        self.world, self.cluster = world, cluster
        async with cluster.running():
            web = WebServer(cluster.hub.connect("web"), world=world, port=0,
                            refresh_real_s=self.refresh_real_s)
            self.web = web
            async with web.running():
                self.url, self.token = web.url, web.token
                self._ready.set()
                await self._stop.wait()

    def login_url(self) -> str:
        """A one-time login link for one page (the page trades its code for the token)."""
        assert self.web is not None
        return self.web.login_url()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        """Run a coroutine on the cluster's loop and wait for its result."""
        assert self.loop is not None
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def sim_time(self) -> float:
        assert self.loop is not None
        return self.loop.time()

    def stop(self, timeout: float = 180.0) -> None:
        if self.loop is not None and self._stop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError("cluster thread did not stop")


class FakeClusterThread:
    """The web app over a fake cluster of `units` units with moving values and `deals` live
    deals, on a real-time loop in a background thread: the browser's side alone. `records`:
    a records store the app reads (`apis web --records`)."""

    def __init__(self, units: int = 50, deals: int = 10, refresh_real_s: float = 0.5,
                 records: str | None = None) -> None:
        self.ids = tuple(f"E{i:03d}" for i in range(1, units + 1))
        self.deals = deals
        self.refresh_real_s = refresh_real_s
        self.records = records
        self.url = ""
        self.token = ""
        self.web: WebServer | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="apis-fake", daemon=True)

    def start(self, timeout: float = 60.0) -> FakeClusterThread:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("fake cluster thread did not start")
        if self._error is not None:
            raise RuntimeError("fake cluster thread failed") from self._error
        return self

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as e:
            self._error = e
        finally:
            self._ready.set()

    async def _run(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        hub = MemoryHub()
        fake = await FakeCluster(hub, self.ids).start()
        fake.moving = True
        n = len(self.ids)
        fake.deals = [
            deal(f"deal-{k}", discharge=self.ids[(2 * k) % n], charge=self.ids[(2 * k + 7) % n],
                 cumulateAmountWh=10.0 * k, startDateTime="2026/01/01-10:00:00",
                 isMaster=(k == 0))
            for k in range(self.deals)
        ]
        reader = RecordsReader(self.records) if self.records is not None else None
        web = WebServer(hub.connect("web"), port=0, refresh_real_s=self.refresh_real_s,
                        records=reader)
        self.web = web
        try:
            async with web.running():
                self.url, self.token = web.url, web.token
                self._ready.set()
                await self._stop.wait()
        finally:
            await fake.close()
            if reader is not None:
                reader.close()

    def login_url(self) -> str:
        """A one-time login link for one page (the page trades its code for the token)."""
        assert self.web is not None
        return self.web.login_url()

    def stop(self, timeout: float = 60.0) -> None:
        if self.loop is not None and self._stop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError("fake cluster thread did not stop")
