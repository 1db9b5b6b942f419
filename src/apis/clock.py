"""Clocks: real time, scaled time (demo) and virtual time (simulation).

Unit and emulator code never read the wall clock or sleep on it; they use the running event
loop's `time()` and `asyncio.sleep`. What kind of time passes is chosen by the loop:

- the ordinary asyncio loop: real time (hardware);
- `ScaledTimeLoop`: up to K times faster than real time (the demo);
- `VirtualTimeLoop`: when nothing is ready, time jumps to the next timer (simulation and
  tests), so an hour of a cluster takes as long as its computation.

The calendar date-time of a unit (scenario windows, deal records) comes from `now()`, which
maps loop time onto a start date-time.
"""

from __future__ import annotations

import asyncio
import selectors
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime, timedelta
from typing import Any, TypeVar

T = TypeVar("T")


class _VirtualSelector(selectors.DefaultSelector):
    """Never blocks while a timer is pending: it advances the loop's virtual clock instead."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or self.loop is None:
            return ready
        if timeout is None:
            # No timer at all: only I/O (or another thread) can wake us; wait for it for real.
            return super().select(None)
        if timeout > 0:
            self.loop.advance(timeout)
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock jumps to the next timer when idle."""

    def __init__(self, start: float = 0.0) -> None:
        selector = _VirtualSelector()
        super().__init__(selector)
        selector.loop = self
        self._virtual_now = start

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        self._virtual_now += seconds


class _ScaledSelector(selectors.DefaultSelector):
    """Sleeps `timeout / speed` of real time, then advances the loop's clock by what was
    asked (or, when I/O woke it early, by the real time that passed, scaled)."""

    def __init__(self, speed: float) -> None:
        super().__init__()
        self.speed = speed
        self.loop: ScaledTimeLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or self.loop is None or timeout is None or timeout <= 0:
            if not ready and timeout is None:
                ready = super().select(None)
            return ready
        started = time.monotonic()
        ready = super().select(timeout / self.speed)
        if ready:
            self.loop.advance(min(timeout, (time.monotonic() - started) * self.speed))
        else:
            self.loop.advance(timeout)
        return ready


class ScaledTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock runs at most `speed` times faster than real time.

    Time advances only while the loop is idle (paced to real time); work done by callbacks
    takes no loop time, as on `VirtualTimeLoop`. So when the computation cannot keep up with
    `speed`, the run slows down instead of timers and timeouts firing spuriously.
    """

    def __init__(self, speed: float) -> None:
        if speed <= 0:
            raise ValueError(f"speed = {speed} (must be > 0)")
        selector = _ScaledSelector(speed)
        super().__init__(selector)
        selector.loop = self
        self.speed = speed
        self._now = 0.0

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds


def new_loop(kind: str = "real", speed: float = 1.0) -> asyncio.AbstractEventLoop:
    """A new event loop: ``real``, ``scaled`` (with `speed`) or ``virtual``."""
    if kind == "real":
        return asyncio.new_event_loop()
    if kind == "scaled":
        return ScaledTimeLoop(speed)
    if kind == "virtual":
        return VirtualTimeLoop()
    raise ValueError(f"clock = {kind!r} (must be one of real, scaled, virtual)")


def run(
    main: Callable[[], Coroutine[Any, Any, T]] | Coroutine[Any, Any, T],
    kind: str = "real",
    speed: float = 1.0,
) -> T:
    """Run a coroutine to completion on a new loop of the given kind, then close the loop."""
    loop = new_loop(kind, speed)
    try:
        asyncio.set_event_loop(loop)
        coro = main() if callable(main) else main
        return loop.run_until_complete(coro)
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


class Calendar:
    """Maps the running loop's time onto calendar date-time.

    `start` is the date-time at loop time `origin`; on the real loop use the present moment.
    """

    def __init__(self, start: datetime | None = None, origin: float | None = None) -> None:
        self.start = start if start is not None else datetime.now().replace(microsecond=0)
        self._origin = origin

    def _loop_time(self) -> float:
        return asyncio.get_running_loop().time()

    def now(self) -> datetime:
        t = self._loop_time()
        if self._origin is None:
            self._origin = t
        return self.start + timedelta(seconds=t - self._origin)

    def elapsed(self) -> float:
        """Loop seconds since the calendar's origin."""
        t = self._loop_time()
        if self._origin is None:
            self._origin = t
        return t - self._origin


async def every(period: float, action: Callable[[], Awaitable[object]]) -> None:
    """Run `action` forever with a fixed delay between the end of one run and the next start.

    A slow pass never overlaps itself. Cancel the task to stop it.
    """
    while True:
        await action()
        await asyncio.sleep(period)
