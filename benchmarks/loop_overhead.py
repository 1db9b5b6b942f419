"""Per-event cost of the event loops: µs per asyncio.sleep wake-up, call_soon callback,
create_task + completion and Future set_result + await.

Run: .venv/bin/python benchmarks/loop_overhead.py [--n 20000] [--repeat 5]

Loops compared:

- ``asyncio``: the stock loop on real time (no figure for sleeps: they would wait for real);
- ``asyncio+virtual``: the stock loop with a selector that advances a virtual clock instead of
  waiting (how `VirtualTimeLoop` worked before it had its own `_run_once`);
- ``VirtualTimeLoop``: `apis.clock.VirtualTimeLoop`.

Each figure is the best of `--repeat` runs of `--n` events, wall time (use an idle machine).
"""

from __future__ import annotations

import argparse
import asyncio
import selectors
import time
from collections.abc import Callable, Coroutine
from typing import Any

from apis.clock import VirtualTimeLoop


class _AdvancingSelector(selectors.DefaultSelector):
    """Polls; when nothing is ready and a timer is pending, advances the loop's clock."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: _StockVirtualLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or self.loop is None:
            return ready
        if timeout is None:
            return super().select(None)
        if timeout > 0:
            self.loop.now += timeout
        return ready


class _StockVirtualLoop(asyncio.SelectorEventLoop):
    """asyncio's own `_run_once`, timer heap and handles, on a virtual clock."""

    def __init__(self) -> None:
        selector = _AdvancingSelector()
        super().__init__(selector)
        selector.loop = self
        self.now = 0.0

    def time(self) -> float:
        return self.now


async def _sleeps(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0.001)


async def _sleeps_100_tasks(n: int) -> None:
    async def sleeper(i: int, count: int) -> None:
        for _ in range(count):
            await asyncio.sleep((i % 7 + 1) * 0.001)

    await asyncio.gather(*(sleeper(i, n // 100) for i in range(100)))


async def _call_soon_chain(n: int) -> None:
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    left = n

    def step() -> None:
        nonlocal left
        left -= 1
        if left:
            loop.call_soon(step)
        else:
            done.set_result(None)

    loop.call_soon(step)
    await done


async def _call_soon_batch(n: int) -> None:
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    calls = 0

    def step() -> None:
        nonlocal calls
        calls += 1
        if calls == n:
            done.set_result(None)

    for _ in range(n):
        loop.call_soon(step)
    await done


async def _tasks(n: int) -> None:
    async def noop() -> None:
        pass

    for _ in range(n):
        await asyncio.create_task(noop())


async def _futures(n: int) -> None:
    loop = asyncio.get_running_loop()
    for _ in range(n):
        fut = loop.create_future()
        loop.call_soon(fut.set_result, None)
        await fut


async def _timeouts(n: int) -> None:
    for _ in range(n):
        async with asyncio.timeout(10):
            await asyncio.sleep(0)


CASES: list[tuple[str, Callable[[int], Coroutine[Any, Any, None]], bool]] = [
    # name, coroutine, needs virtual time
    ("asyncio.sleep wake-up (1 task)", _sleeps, True),
    ("asyncio.sleep wake-up (100 tasks)", _sleeps_100_tasks, True),
    ("call_soon (chain, 1 per iteration)", _call_soon_chain, False),
    ("call_soon (batch)", _call_soon_batch, False),
    ("create_task + complete + await", _tasks, False),
    ("Future: call_soon(set_result), await", _futures, False),
    ("asyncio.timeout scope around sleep(0)", _timeouts, False),
]

LOOPS: list[tuple[str, Callable[[], asyncio.AbstractEventLoop], bool]] = [
    ("asyncio", asyncio.new_event_loop, False),
    ("asyncio+virtual", _StockVirtualLoop, True),
    ("VirtualTimeLoop", VirtualTimeLoop, True),
]


def measure(make_loop: Callable[[], asyncio.AbstractEventLoop],
            case: Callable[[int], Coroutine[Any, Any, None]], n: int, repeat: int) -> float:
    """Best µs per event over `repeat` runs."""
    best = float("inf")
    for _ in range(repeat):
        loop = make_loop()
        try:
            started = time.perf_counter()
            loop.run_until_complete(case(n))
            best = min(best, time.perf_counter() - started)
        finally:
            loop.close()
    return best / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    width = max(len(name) for name, _, _ in CASES)
    print(f"{'µs per event':<{width}} " + " ".join(f"{name:>16}" for name, _, _ in LOOPS)
          + f" {'speed-up':>9}")
    for name, case, virtual_only in CASES:
        figures = [
            None if virtual_only and not virtual else measure(make, case, args.n, args.repeat)
            for _, make, virtual in LOOPS
        ]
        cells = " ".join(f"{'-' if f is None else f'{f:.2f}':>16}" for f in figures)
        before, after = figures[1], figures[2]
        assert before is not None and after is not None
        print(f"{name:<{width}} {cells} {before / after:8.2f}x", flush=True)


if __name__ == "__main__":
    main()
