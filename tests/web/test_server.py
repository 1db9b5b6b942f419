"""The app served by uvicorn on 127.0.0.1: server-sent events, start and stop with a stream
open, a taken port, and the history store."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from apis.bus.memory import MemoryHub
from apis.store.history import HistoryStore, ModeChange
from apis.web.server import WebServer
from tests.web.fakes import FakeCluster, deal


async def read_events(lines: AsyncIterator[str], count: int) -> list[dict[str, object]]:
    views: list[dict[str, object]] = []
    event = None
    async for line in lines:
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event == "cluster":
            views.append(json.loads(line[6:]))
            if len(views) >= count:
                return views
    return views


async def test_events_stream_and_clean_stop() -> None:
    hub = MemoryHub()
    fake = await FakeCluster(hub).start()
    web = WebServer(hub.connect("web"), port=0, refresh_real_s=0.1)
    assert web.host == "127.0.0.1"
    async with web.running():
        assert web.port > 0 and web.url == f"http://127.0.0.1:{web.port}/"
        assert web.url_with_token.endswith(f"#token={web.token}") and len(web.token) >= 16
        async with httpx.AsyncClient(base_url=web.url, timeout=30) as client:
            r = await client.get("/api/cluster")
            assert r.status_code == 200
            async with client.stream("GET", "/api/events") as stream:
                assert stream.headers["content-type"].startswith("text/event-stream")
                lines = stream.aiter_lines()
                first = (await asyncio.wait_for(read_events(lines, 1), 30))[0]
                fake.deals = [deal("live")]
                for _ in range(100):  # a later view shows the deal
                    (view,) = await asyncio.wait_for(read_events(lines, 1), 30)
                    deals = view["deals"]
                    assert isinstance(deals, list)
                    if deals:
                        break
                assert isinstance(view["seq"], int) and isinstance(first["seq"], int)
                assert view["seq"] > first["seq"]
                assert deals[0]["dealId"] == "live"
                # Stop while the stream is open: the stream ends, the stop does not hang.
                loop = asyncio.get_running_loop()
                started = loop.time()
                await asyncio.wait_for(web.stop(), 30)
                assert loop.time() - started < 30
    await fake.close()


async def test_taken_port_is_an_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        web = WebServer(MemoryHub().connect("web"), port=port)
        with pytest.raises(OSError, match=f"127.0.0.1:{port}"):
            await web.start()


def test_history_store_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    store = HistoryStore(path)
    assert not store.add_deal(deal("live"), 1.0)  # not finished: not stored
    assert not store.add_deal({"deactivateDateTime": "x"}, 1.0)  # no dealId
    assert store.add_deal(deal("a", deactivateDateTime="t", cumulateAmountWh=10.0), 2.0)
    assert store.add_deal(deal("a", deactivateDateTime="t", cumulateAmountWh=12.0), 3.0)
    assert store.add_deal(deal("b", scramDateTime="t", deactivateDateTime="t"), 4.0)
    store.add_error({"unitId": "E001", "category": "USER", "extent": "LOCAL",
                     "level": "WARN", "message": "m"}, 5.0)
    store.add_mode_change(ModeChange(6.0, "global", "autonomous", "stop", "alice"))
    store.close()
    again = HistoryStore(path)
    assert again.deal_count() == 2 and again.energy_wh() == 12.0
    assert [(d["dealId"], d["ended"]) for d in again.deals()] == [("b", "scrammed"),
                                                                  ("a", "completed")]
    assert again.errors()[0]["message"] == "m"
    last = again.last_mode_change("global")
    assert last is not None and last.changed_by == "alice" and last.new_mode == "stop"
    assert again.last_mode_change("E001") is None
    again.close()
