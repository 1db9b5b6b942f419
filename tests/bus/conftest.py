from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from apis.bus.base import Bus
from apis.bus.memory import MemoryHub
from apis.bus.natsserver import NatsCluster

_names = itertools.count(1)


@pytest.fixture(scope="module")
def nats_single() -> Iterator[NatsCluster]:
    """One nats-server with JetStream for the module; stopped at its end, pass or fail.

    The processes belong to no event loop, so a module-scoped fixture can serve tests that
    each run on their own loop.
    """
    server = NatsCluster(1)
    run_apart(server.start)
    try:
        yield server
    finally:
        run_apart(server.stop)


def run_apart(main: Callable[[], Awaitable[None]]) -> None:
    """Run a coroutine on a fresh loop in another thread (a test's loop may be running)."""

    async def wrapped() -> None:
        await main()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, wrapped()).result()


def unique(prefix: str) -> str:
    """A bucket or subject token not used before in this test session."""
    return f"{prefix}{next(_names)}"


class Network:
    """Connects bus endpoints to one network (memory hub or NATS server) and closes them."""

    def __init__(self, kind: str, connect: Callable[[str], Awaitable[Bus]]) -> None:
        self.kind = kind
        self._connect = connect
        self.buses: list[Bus] = []

    async def connect(self, name: str) -> Bus:
        bus = await self._connect(name)
        self.buses.append(bus)
        return bus

    async def close(self) -> None:
        for bus in self.buses:
            await bus.close()


@pytest.fixture(params=["memory", "nats"])
async def network(request: pytest.FixtureRequest) -> AsyncIterator[Network]:
    if request.param == "memory":
        hub = MemoryHub()

        async def connect_memory(name: str) -> Bus:
            return hub.connect(name)

        net = Network("memory", connect_memory)
    else:
        server: NatsCluster = request.getfixturevalue("nats_single")
        from apis.bus.nats import NatsBus

        async def connect_nats(name: str) -> Bus:
            return await NatsBus.connect(server.urls, name=name, replicas=1)

        net = Network("nats", connect_nats)
    try:
        yield net
    finally:
        await net.close()
