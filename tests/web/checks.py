"""Waiting on a cluster through the operations API, on its virtual clock."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx


async def until(
    check: Callable[[], Awaitable[bool]], timeout: float, what: str, step: float = 5.0
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, f"{what}: not within {timeout} simulated s"
        await asyncio.sleep(step)


async def manual_and_waiting(client: httpx.AsyncClient) -> bool:
    """No deal, every unit in Manual with its converter waiting (0x0000)."""
    units = (await client.get("/api/units")).json()["units"].values()
    deals = (await client.get("/api/deals")).json()["deals"]
    return not deals and all(
        u["dcdc"]["status"]["status"] == "0x0000"
        and u["apis"]["operation_mode"]["effective"] == "manual" for u in units)
