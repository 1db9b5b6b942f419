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
import collections
import contextvars
import itertools
import selectors
import time
from asyncio.log import logger
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime, timedelta
from heapq import heapify, heappop, heappush
from typing import Any, TypeVar

T = TypeVar("T")


# VirtualTimeLoop replaces asyncio's scheduling and `_run_once` for speed. It relies on these
# private parts of asyncio (CPython 3.11 to 3.13; check them on a new Python version):
#   BaseEventLoop attributes _ready (deque of Handles), _scheduled (the timer heap: here
#   (when, sequence, TimerHandle) tuples, not TimerHandles), _timer_cancelled_count,
#   _stopping, _closed, _debug, _task_factory, _thread_id (not None while run_forever runs),
#   _current_handle; methods _check_thread, _check_callback, _call_soon (the path of
#   call_soon_threadsafe), _process_events, _add_reader, _add_writer; run_forever calling
#   _run_once until _stopping is set; close() clearing _ready and _scheduled;
#   the selector in _selector; the self-pipe being the only descriptor of a new loop;
#   Handle / TimerHandle slots _callback, _args, _cancelled, _loop, _context, _repr,
#   _source_traceback, _when, _scheduled, and Handle._run (inlined here).
_new = object.__new__
_copy_context = contextvars.copy_context
_Handle = asyncio.Handle
_Task = asyncio.Task
_Future = asyncio.Future

# Polls of the selector skipped in a row while callbacks are ready and no file descriptor but
# the loop's own self-pipe is registered (the self-pipe only wakes a loop blocked in select:
# call_soon_threadsafe puts its callback in the ready queue itself). A poll now and then
# still drains the pipe and delivers signals (add_signal_handler).
_POLL_EVERY = 64
# Cancelled timers left in the heap before it is rebuilt without them (when they are also
# more than half of it); below that they are dropped when they reach its head.
_MIN_CANCELLED_TO_COMPACT = 100
_INFINITY = float("inf")


def _fill(
    handle: Any,
    callback: Callable[..., object],
    args: tuple[Any, ...],
    loop: asyncio.AbstractEventLoop,
    context: contextvars.Context | None,
) -> Any:
    """Set what `Handle.__init__` sets (outside debug mode) on a handle made by `_new`."""
    handle._callback = callback
    handle._args = args
    handle._cancelled = False
    handle._loop = loop
    handle._context = _copy_context() if context is None else context
    handle._repr = None
    handle._source_traceback = None
    return handle


class _VirtualTimer(asyncio.TimerHandle):
    """The loop's timer handle: built without `__init__` and cancelled without the debug
    round trips (in debug mode it is an ordinary TimerHandle)."""

    __slots__ = ()
    _loop: Any
    _scheduled: bool

    def cancel(self) -> None:
        if self._cancelled:
            return
        loop = self._loop
        if loop._debug:
            super().cancel()
            return
        self._cancelled = True
        if self._scheduled:
            loop._timer_cancelled_count += 1
        self._callback = None
        self._args = None  # type: ignore[assignment]


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock jumps to the next timer when nothing is ready.

    Same semantics as asyncio's loop, with these guarantees and differences:

    - callbacks run in FIFO batches as in asyncio: one batch is what was ready when it
      started; timers due at the current time join the end of the ready queue before each
      batch;
    - timers fire by time, then in the order they were scheduled (asyncio leaves ties to the
      heap): the heap holds ``(when, sequence, handle)`` tuples, compared in C;
    - when nothing is ready (and the loop is not stopping), time is set to the next live
      timer's time exactly (never rounded, never moved backwards) and every timer due at
      that time fires; cancelled timers never run and never make time jump; a timer at
      +inf (``asyncio.sleep(math.inf)``) never fires;
    - with no timer pending and nothing ready, the loop blocks in the selector (I/O, another
      thread's `call_soon_threadsafe`, an executor's result wake it);
    - the selector is polled (without blocking) on every iteration only while some file
      descriptor other than the self-pipe is registered; otherwise every `_POLL_EVERY`
      iterations and whenever the loop would block;
    - inside `run_forever` one `_run_once` call runs iterations until `stop()` (asyncio's
      `run_forever` checks `_stopping` after each call anyway); called directly it runs one;
    - in debug mode handles are built by asyncio (with their source tracebacks), thread and
      callback checks run, and a callback that takes more than `slow_callback_duration` of
      real time is logged (loop time does not pass during a callback).
    """

    # asyncio's private attributes used here (see the list above), for the type checker.
    _ready: collections.deque[Any]
    _scheduled: list[tuple[float, int, Any]]
    _timer_cancelled_count: int
    _stopping: bool
    _closed: bool
    _debug: bool
    _thread_id: int | None
    _current_handle: Any
    _task_factory: Any
    _selector: selectors.BaseSelector

    def __init__(self, start: float = 0.0) -> None:
        super().__init__(selectors.DefaultSelector())
        self._virtual_now = float(start)
        self._timer_sequence = itertools.count()
        self._own_fds = len(self._selector.get_map())  # the self-pipe
        self._io_watched = False  # some other file descriptor may be registered
        self._polls_skipped = 0

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by `seconds` (timers now due fire on the next iteration)."""
        if not seconds >= 0:
            raise ValueError(f"seconds = {seconds} (time never goes backwards)")
        self._virtual_now += seconds

    # -- scheduling ---------------------------------------------------------------------

    def call_soon(  # type: ignore[override]
        self,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.Handle:
        if self._closed:
            raise RuntimeError("Event loop is closed")
        if self._debug:
            return super().call_soon(callback, *args, context=context)
        return self._ready_handle(callback, args, context)

    def _call_soon(
        self,
        callback: Callable[..., object],
        args: tuple[Any, ...],
        context: contextvars.Context | None,
    ) -> asyncio.Handle:
        # call_soon_threadsafe's path (deque.append is atomic).
        if self._debug:
            return super()._call_soon(callback, args, context)  # type: ignore[misc, no-any-return]
        return self._ready_handle(callback, args, context)

    def call_later(  # type: ignore[override]
        self,
        delay: float,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        if delay is None:
            raise TypeError("delay must not be None")
        when = self._virtual_now + delay
        if self._closed:
            raise RuntimeError("Event loop is closed")
        if self._debug:
            return self._debug_timer(when, callback, args, context)
        return self._timer(when, callback, args, context)

    def call_at(  # type: ignore[override]
        self,
        when: float,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        if when is None:
            raise TypeError("when cannot be None")
        if self._closed:
            raise RuntimeError("Event loop is closed")
        if self._debug:
            return self._debug_timer(when, callback, args, context)
        return self._timer(when, callback, args, context)

    def _ready_handle(
        self,
        callback: Callable[..., object],
        args: tuple[Any, ...],
        context: contextvars.Context | None,
    ) -> asyncio.Handle:
        """A Handle built without `__init__` (what it would set), queued as ready."""
        handle = _fill(_new(_Handle), callback, args, self, context)
        self._ready.append(handle)
        return handle  # type: ignore[no-any-return]

    def _timer(
        self,
        when: float,
        callback: Callable[..., object],
        args: tuple[Any, ...],
        context: contextvars.Context | None,
    ) -> asyncio.TimerHandle:
        """A timer built without `__init__`, pushed on the heap."""
        timer = _fill(_new(_VirtualTimer), callback, args, self, context)
        timer._when = when
        timer._scheduled = True
        heappush(self._scheduled, (when, next(self._timer_sequence), timer))
        return timer  # type: ignore[no-any-return]

    def _debug_timer(
        self,
        when: float,
        callback: Callable[..., object],
        args: tuple[Any, ...],
        context: contextvars.Context | None,
    ) -> asyncio.TimerHandle:
        self._check_thread()  # type: ignore[attr-defined]
        self._check_callback(callback, "call_at")  # type: ignore[attr-defined]
        timer: Any = _VirtualTimer(when, callback, args, self, context)
        if timer._source_traceback:
            del timer._source_traceback[-2:]  # this method and call_at / call_later
        heappush(self._scheduled, (when, next(self._timer_sequence), timer))
        timer._scheduled = True
        return timer  # type: ignore[no-any-return]

    def create_future(self) -> asyncio.Future[Any]:
        return _Future(loop=self)

    def create_task(  # type: ignore[override]
        self,
        coro: Coroutine[Any, Any, T],
        *,
        name: str | None = None,
        context: contextvars.Context | None = None,
        **kwargs: Any,
    ) -> asyncio.Task[T]:
        # BaseEventLoop.create_task without the checks that do not apply here.
        if self._closed or self._debug or self._task_factory is not None or kwargs:
            return super().create_task(coro, name=name, context=context, **kwargs)
        return _Task(coro, loop=self, name=name, context=context)

    def _add_reader(self, fd: Any, callback: Callable[..., object], *args: Any) -> asyncio.Handle:
        self._io_watched = True
        return super()._add_reader(fd, callback, *args)  # type: ignore[misc, no-any-return]

    def _add_writer(self, fd: Any, callback: Callable[..., object], *args: Any) -> asyncio.Handle:
        self._io_watched = True
        return super()._add_writer(fd, callback, *args)  # type: ignore[misc, no-any-return]

    # -- running ------------------------------------------------------------------------

    def _poll(self, timeout: float | None) -> None:
        self._polls_skipped = 0
        events = self._selector.select(timeout)
        if events:
            self._process_events(events)  # type: ignore[attr-defined]
        self._io_watched = len(self._selector.get_map()) > self._own_fds

    def _drop_cancelled_timers(self) -> None:
        scheduled = self._scheduled
        live = []
        for entry in scheduled:
            if entry[2]._cancelled:
                entry[2]._scheduled = False
            else:
                live.append(entry)
        heapify(live)
        scheduled[:] = live  # in place: _run_once holds the list
        self._timer_cancelled_count = 0

    def _run_once(self) -> None:
        ready = self._ready
        scheduled = self._scheduled
        popleft = ready.popleft
        append = ready.append
        looping = self._thread_id is not None
        while True:
            cancelled = self._timer_cancelled_count
            if cancelled > _MIN_CANCELLED_TO_COMPACT and cancelled * 2 > len(scheduled):
                self._drop_cancelled_timers()
            now = self._virtual_now
            if ready or self._stopping:
                if self._io_watched or self._polls_skipped >= _POLL_EVERY:
                    self._poll(0)
                else:
                    self._polls_skipped += 1
            else:
                while scheduled and scheduled[0][2]._cancelled:
                    heappop(scheduled)[2]._scheduled = False
                    self._timer_cancelled_count -= 1
                if not scheduled or scheduled[0][0] == _INFINITY:
                    # Nothing will ever be due (a timer at +inf never fires): wait for I/O or
                    # another thread, as a real-time loop would.
                    self._poll(None)
                elif self._io_watched or self._polls_skipped >= _POLL_EVERY:
                    self._poll(0)
                else:
                    self._polls_skipped += 1
                if not ready and scheduled:
                    when = scheduled[0][0]
                    if when > now:
                        now = self._virtual_now = float(when)
            while scheduled and scheduled[0][0] <= now:
                timer = heappop(scheduled)[2]
                timer._scheduled = False
                if timer._cancelled:
                    self._timer_cancelled_count -= 1
                else:
                    append(timer)
            if self._debug:
                self._run_ready_debug()
            else:
                for _ in range(len(ready)):
                    handle = popleft()
                    if handle._cancelled:
                        continue
                    # Handle._run, inlined.
                    try:
                        handle._context.run(handle._callback, *handle._args)
                    except (SystemExit, KeyboardInterrupt):
                        raise
                    except BaseException as exc:
                        self._callback_failed(handle, exc)
                handle = None  # break cycles when an exception occurs
            if self._stopping or not looping:
                return

    def _callback_failed(self, handle: Any, exc: BaseException) -> None:
        """What Handle._run does when its callback raises."""
        context: dict[str, Any] = {
            "message": f"Exception in callback {handle!r}",
            "exception": exc,
            "handle": handle,
        }
        if handle._source_traceback:
            context["source_traceback"] = handle._source_traceback
        self.call_exception_handler(context)

    def _run_ready_debug(self) -> None:
        ready = self._ready
        for _ in range(len(ready)):
            handle = ready.popleft()
            if handle._cancelled:
                continue
            self._current_handle = handle
            started = time.perf_counter()
            try:
                handle._run()
            finally:
                self._current_handle = None
            took = time.perf_counter() - started
            if took >= self.slow_callback_duration:
                logger.warning("Executing %r took %.3f seconds (real time)", handle, took)


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
    """Run a coroutine to completion on a new loop of the given kind, then close the loop.

    As `asyncio.run` does: Ctrl-C (SIGINT, when called from the main thread) cancels the
    coroutine, which then cleans up as on any cancellation, and KeyboardInterrupt is raised
    once it has; tasks still pending at the end are cancelled and awaited before the async
    generators are closed (closing one that a live task is iterating fails).
    """
    runner = asyncio.Runner(loop_factory=lambda: new_loop(kind, speed))
    try:
        asyncio.set_event_loop(runner.get_loop())
        coro = main() if callable(main) else main
        return runner.run(coro)
    finally:
        try:
            runner.close()
        finally:
            asyncio.set_event_loop(None)


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
