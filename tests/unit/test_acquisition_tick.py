"""The acquisition loop's tick after an urgent read (a float remainder must not spin)."""

from __future__ import annotations

import asyncio
import math

from apis import clock
from apis.unit.controller import TICK_TOLERANCE_S, acquisition_wait


def test_never_read_reads_now() -> None:
    assert acquisition_wait(0.0, -math.inf, 5.0) == 0.0


def test_urgent_read_postpones_the_tick_to_a_period_after_it() -> None:
    assert acquisition_wait(102.0, 100.0, 5.0) == 3.0
    assert acquisition_wait(105.0, 100.0, 5.0) == 0.0


def test_remainder_below_the_clock_resolution_is_due_now() -> None:
    # At a loop time of hours, period - since can be a few 1e-13 s: sleeping that long
    # does not move a float clock, so the loop would ask again with the same remainder.
    now = 39600.3
    acquired_at = now - 5.0 + 2e-13
    assert now + (5.0 - (now - acquired_at)) == now  # the sleep would take no time
    assert acquisition_wait(now, acquired_at, 5.0) == 0.0
    assert acquisition_wait(now, now - 5.0 + 2 * TICK_TOLERANCE_S, 5.0) > 0


def test_a_virtual_loop_reaches_the_tick_at_a_large_loop_time() -> None:
    async def main() -> int:
        loop = asyncio.get_running_loop()
        reads = 0
        acquired_at = loop.time() - 5.0 + 2e-13
        deadline = loop.time() + 20.0
        while loop.time() < deadline:
            wait = acquisition_wait(loop.time(), acquired_at, 5.0)
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            reads += 1
            acquired_at = loop.time()
            await asyncio.sleep(5.0)
        return reads

    loop = clock.VirtualTimeLoop(start=39600.3)
    try:
        assert loop.run_until_complete(asyncio.wait_for(main(), timeout=60.0)) == 4
    finally:
        loop.close()
