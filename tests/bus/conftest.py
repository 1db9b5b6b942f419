from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from apis.bus.base import Bus
from apis.bus.memory import MemoryHub

_names = itertools.count(1)


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


@pytest.fixture(params=["memory"])
async def network(request: pytest.FixtureRequest) -> AsyncIterator[Network]:
    if request.param == "memory":
        hub = MemoryHub()

        async def connect_memory(name: str) -> Bus:
            return hub.connect(name)

        net = Network("memory", connect_memory)
    else:
        server: Any = request.getfixturevalue("nats_single")
        from apis.bus.nats import NatsBus

        async def connect_nats(name: str) -> Bus:
            return await NatsBus.connect(server.urls, name=name, replicas=1)

        net = Network("nats", connect_nats)
    try:
        yield net
    finally:
        await net.close()
