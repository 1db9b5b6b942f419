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
from apis.httpguard import HostNames
from apis.store.history import HistoryStore, ModeChange
from apis.web.app import MAX_BODY_BYTES
from apis.web.server import WebServer
from apis.web.token import LoginCodes
from tests.rawhttp import SIXTY_MB, announce_body, endless_chunks
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
        assert len(web.token) >= 16
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
    # the same dealId for another deal (other units, another creation time) is refused
    assert not store.add_deal(deal("a", charge="E003", deactivateDateTime="t"), 4.5)
    assert not store.add_deal(deal("a", createDateTime="2026/01/02-10:00:00",
                                   deactivateDateTime="t"), 4.5)
    # so is a record published by a unit that is neither of the deal nor the Grid Master
    assert not store.add_deal(deal("b", scramDateTime="t", deactivateDateTime="t"), 4.5,
                              sender="E003", grid_master="E004")
    assert not store.add_deal(deal("c", deactivateDateTime="t"), 4.5, sender="")
    assert store.add_deal(deal("c", deactivateDateTime="t"), 4.5, sender="E004",
                          grid_master="E004")
    store.add_error({"unitId": "E001", "category": "USER", "extent": "LOCAL",
                     "level": "WARN", "message": "m"}, 5.0)
    store.add_mode_change(ModeChange(6.0, "global", "autonomous", "stop", "alice"))
    store.close()
    again = HistoryStore(path)
    assert again.deal_count() == 3 and again.energy_wh() == 12.0
    assert [(d["dealId"], d["ended"]) for d in again.deals()] == [
        ("c", "completed"), ("b", "scrammed"), ("a", "completed")]
    assert again.errors()[0]["message"] == "m"
    last = again.last_mode_change("global")
    assert last is not None and last.changed_by == "alice" and last.new_mode == "stop"
    assert again.last_mode_change("E001") is None
    again.close()


async def test_a_login_link_works_once_and_never_carries_the_token() -> None:
    hub = MemoryHub()
    fake = await FakeCluster(hub).start()
    web = WebServer(hub.connect("web"), port=0, refresh_real_s=0.1)
    async with web.running(), httpx.AsyncClient(base_url=web.url, timeout=30) as client:
        link = web.login_url()
        assert link.startswith(f"{web.url}#login=") and web.token not in link
        code = link.split("#login=", 1)[1]
        r = await client.post("/api/login", json={"code": code})
        assert r.status_code == 200 and r.json() == {"token": web.token}
        r = await client.post("/api/login", json={"code": code})  # spent
        assert r.status_code == 403 and "works once" in r.json()["detail"]
        r = await client.post("/api/login", json={"code": "guessed"})
        assert r.status_code == 403
        assert web.login_url() != link  # every link its own code
    await fake.close()


def test_login_codes_expire() -> None:
    codes = LoginCodes(ttl_s=0.0)
    assert not codes.redeem(codes.issue())
    codes = LoginCodes()
    first, second = codes.issue(), codes.issue()
    assert codes.redeem(second) and codes.redeem(first)
    assert not codes.redeem(first)


async def test_a_foreign_host_or_origin_is_refused_before_the_token() -> None:
    """DNS rebinding (a page's name resolving to 127.0.0.1) and pages of other sites: 403
    even with the right token; the page's own origin and --allow-host names pass."""
    hub = MemoryHub()
    fake = await FakeCluster(hub).start()
    web = WebServer(hub.connect("web"), port=0, refresh_real_s=0.1,
                    allowed_hosts=HostNames.parse(["ops.example"]))
    auth = {"Authorization": f"Bearer {web.token}"}
    async with web.running(), httpx.AsyncClient(base_url=web.url, timeout=30) as client:
        own = f"http://127.0.0.1:{web.port}"
        for headers in ({"Host": f"rebound.example:{web.port}"},
                        {"Origin": "http://evil.example"},
                        {"Origin": f"http://127.0.0.1:{web.port + 1}"}):
            r = await client.put("/api/operation-mode", json={"mode": "stop"},
                                 headers={**auth, **headers})
            assert r.status_code == 403, r.text
            assert repr(next(iter(headers.values()))) in r.json()["detail"]
            assert "--allow-host" in r.json()["detail"]
            assert (await client.get("/api/cluster", headers=headers)).status_code == 403
        r = await client.post("/api/login", json={"code": web.logins.issue()},
                              headers={"Origin": "http://evil.example"})
        assert r.status_code == 403 and web.token not in r.text
        assert fake.global_mode == "autonomous"
        r = await client.put("/api/operation-mode", json={"mode": "heteronomous"},
                             headers={**auth, "Origin": own})
        assert r.status_code == 200, r.text
        r = await client.get("/api/cluster", headers={"Host": "ops.example"})
        assert r.status_code == 200
    await fake.close()


async def test_a_60_mb_body_is_refused_before_the_token_is_checked() -> None:
    hub = MemoryHub()
    fake = await FakeCluster(hub).start()
    web = WebServer(hub.connect("web"), port=0, refresh_real_s=0.1)
    auth = {"Authorization": f"Bearer {web.token}"}
    async with web.running():
        # Announced and never sent: the answer cannot have waited for it.
        for headers in ({}, auth):
            answer = await announce_body(web.port, "PUT", "/api/operation-mode",
                                         headers=headers)
            assert answer.status == 413
            assert answer.json() == {"detail": f"request body of {SIXTY_MB} bytes (the limit "
                                               f"is {MAX_BODY_BYTES} bytes)"}
        # Chunked, with no end: cut off at the limit.
        answer = await endless_chunks(web.port, "PUT", "/api/operation-mode",
                                      MAX_BODY_BYTES + 16 * 1024, headers=auth)
        assert answer.status == 413
        assert str(MAX_BODY_BYTES) in answer.json()["detail"]
        assert fake.global_mode == "autonomous"  # no handler ran
        assert web.ops.store.mode_changes() == []
        async with httpx.AsyncClient(base_url=web.url, timeout=30) as client:
            r = await client.put("/api/operation-mode", json={"mode": "heteronomous"},
                                 headers=auth)
            assert r.status_code == 200  # still serving
    await fake.close()
