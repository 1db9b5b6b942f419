"""VirtualTimeLoop: asyncio's semantics on a clock that jumps to the next timer.

Ordering (FIFO callbacks, timers by time then by scheduling order), cancellation, exact time
jumps, timeouts, stop/close, and wake-ups from I/O and other threads when no timer is pending.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from apis import clock
from apis.clock import VirtualTimeLoop


def run(main: Callable[[], Coroutine[Any, Any, Any]], start: float = 0.0) -> Any:
    loop = VirtualTimeLoop(start)
    try:
        return loop.run_until_complete(main())
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def run_in_thread(main: Callable[[], Coroutine[Any, Any, Any]], limit_s: float = 10.0) -> Any:
    """Run on a virtual loop in a worker thread; fail (instead of hanging) if it blocks."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = run(main)
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(limit_s)
    assert not worker.is_alive(), "the loop never woke up"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


# -- ordering -------------------------------------------------------------------------------


def test_call_soon_is_fifo_and_runs_in_batches_like_asyncio() -> None:
    """Callbacks added by a callback run in the next batch, after timers then due: the same
    order as asyncio's own loop."""

    def scenario(loop: asyncio.AbstractEventLoop, order: list[str]) -> None:
        def a() -> None:
            order.append("a")
            loop.call_soon(b)
            loop.call_later(0, t)
            loop.call_soon(b2)

        def b() -> None:
            order.append("b")
            loop.call_soon(c)

        def b2() -> None:
            order.append("b2")

        def c() -> None:
            order.append("c")
            loop.call_soon(loop.stop)

        def t() -> None:
            order.append("t")

        for name in ("x", "y"):
            loop.call_soon(order.append, name)
        loop.call_soon(a)
        loop.call_soon(order.append, "z")

    orders = []
    for loop in (asyncio.new_event_loop(), VirtualTimeLoop()):
        order: list[str] = []
        try:
            scenario(loop, order)
            loop.run_forever()
        finally:
            loop.close()
        orders.append(order)
    assert orders[1] == ["x", "y", "a", "z", "b", "b2", "t", "c"]
    assert orders[0] == orders[1]


def test_equal_time_timers_fire_in_scheduling_order() -> None:
    async def main() -> list[tuple[float, int]]:
        loop = asyncio.get_running_loop()
        fired: list[tuple[float, int]] = []
        rng = random.Random(1)
        whens = [float(rng.randrange(5)) for _ in range(500)]
        for i, when in enumerate(whens):
            if i % 2:
                loop.call_at(when, lambda i=i: fired.append((loop.time(), i)))
            else:
                loop.call_later(when, lambda i=i: fired.append((loop.time(), i)))
        await asyncio.sleep(10)
        expected = sorted(range(500), key=lambda i: (whens[i], i))
        assert [i for _, i in fired] == expected
        assert all(t == whens[i] for t, i in fired)
        return fired

    assert run(main) == run(main)


def test_timers_scheduled_by_timers_at_the_same_time_fire_after_them() -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        fired: list[str] = []

        def first() -> None:
            fired.append("first")
            loop.call_at(1.0, fired.append, "added at 1")  # due now: next batch

        loop.call_at(1.0, first)
        loop.call_at(1.0, fired.append, "second")
        loop.call_at(2.0, fired.append, "at 2")
        await asyncio.sleep(3)
        return fired

    assert run(main) == ["first", "second", "added at 1", "at 2"]


def test_same_seed_same_trace() -> None:
    """A random mix of tasks, sleeps (many ties), timeouts and cancellations gives the same
    trace on every run."""

    async def main(seed: int) -> list[tuple[float, int, str]]:
        loop = asyncio.get_running_loop()
        rng = random.Random(seed)
        trace: list[tuple[float, int, str]] = []

        async def worker(k: int) -> None:
            for step in range(30):
                delay = rng.choice([0, 0.5, 1.0, 1.0, 2.5])
                try:
                    async with asyncio.timeout(rng.choice([0.7, 3.0])):
                        await asyncio.sleep(delay)
                    trace.append((loop.time(), k, f"woke {step}"))
                except TimeoutError:
                    trace.append((loop.time(), k, f"timeout {step}"))
                if rng.random() < 0.2:
                    handle = loop.call_later(rng.choice([0.5, 1.0]), trace.append,
                                             (loop.time(), k, "never"))
                    handle.cancel()

        await asyncio.gather(*(worker(k) for k in range(40)))
        return trace

    first = run(lambda: main(7))
    assert first == run(lambda: main(7))
    assert not any(what == "never" for _, _, what in first)
    times = [t for t, _, _ in first]
    assert times == sorted(times)


# -- cancellation ---------------------------------------------------------------------------


def test_cancelled_timers_never_run_and_never_move_time() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        fired: list[str] = []
        loop.call_later(5, fired.append, "cancelled").cancel()
        handles: list[asyncio.TimerHandle] = []
        loop.call_at(3, lambda: handles[0].cancel())  # due with it, scheduled first: runs first
        handles.append(loop.call_at(3, fired.append, "cancelled too"))
        loop.call_at(3, fired.append, "kept")
        await asyncio.sleep(0)
        await asyncio.sleep(4)
        assert fired == ["kept"]
        assert loop.time() == 4.0
        # Only cancelled timers left: time stays put while there is nothing to wait for.
        loop.call_later(100, fired.append, "late").cancel()
        await asyncio.sleep(0)
        assert loop.time() == 4.0

    run(main)


def test_many_cancelled_timers_are_dropped_from_the_heap() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        fired: list[int] = []
        handles = [loop.call_later(1000 + i, fired.append, i) for i in range(1000)]
        for i, handle in enumerate(handles):
            if i % 10:
                handle.cancel()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        scheduled = loop._scheduled  # type: ignore[attr-defined]
        assert len(scheduled) == 100
        assert loop._timer_cancelled_count == 0  # type: ignore[attr-defined]
        assert all(not h._scheduled for i, h in enumerate(handles) if i % 10)  # type: ignore[attr-defined]
        await asyncio.sleep(5000)
        assert fired == list(range(0, 1000, 10))
        assert loop._timer_cancelled_count == 0  # type: ignore[attr-defined]

    run(main)


def test_cancelling_a_timer_that_fired_or_a_call_soon_handle() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        fired: list[str] = []
        timer = loop.call_later(1, fired.append, "timer")
        soon = loop.call_soon(fired.append, "soon")
        soon.cancel()
        assert soon.cancelled()
        await asyncio.sleep(2)
        timer.cancel()  # already ran: no effect, no count
        assert timer.cancelled()
        assert fired == ["timer"]
        assert loop._timer_cancelled_count == 0  # type: ignore[attr-defined]

    run(main)


# -- time -----------------------------------------------------------------------------------


def test_time_jumps_only_when_nothing_is_ready() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(1, lambda: None)
        for _ in range(1000):
            await asyncio.sleep(0)
            assert loop.time() == 0.0
        await asyncio.sleep(2)
        assert loop.time() == 2.0

    run(main)


def test_a_long_chain_of_sleeps_at_large_times_lands_exactly_on_each_timer() -> None:
    async def main() -> int:
        loop = asyncio.get_running_loop()
        assert loop.time() == 1e6
        rng = random.Random(3)
        for _ in range(20000):
            delay = rng.choice([0.1, 0.001, 1e-7, 1 / 3, 30.0])
            due = loop.time() + delay
            await asyncio.sleep(delay)
            assert loop.time() == due
        start = loop.time()
        await asyncio.sleep(1e-12)  # below the resolution of floats near 1e6: no time passes
        assert loop.time() == start
        return 0

    run(main, start=1e6)


def test_a_timer_below_the_monotonic_clock_resolution_fires_at_its_time() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        fired: list[float] = []
        loop.call_at(1e-10, lambda: fired.append(loop.time()))
        loop.call_at(2e-10, lambda: fired.append(loop.time()))
        await asyncio.sleep(0)
        assert fired == []  # not due yet at 0
        await asyncio.sleep(1)
        assert fired == [1e-10, 2e-10]

    run(main)


def test_time_never_goes_backwards() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(10)
        fired: list[float] = []
        loop.call_at(3, lambda: fired.append(loop.time()))
        loop.call_later(-5, lambda: fired.append(loop.time()))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert fired == [10.0, 10.0]
        with pytest.raises(ValueError):
            loop.advance(-1)  # type: ignore[attr-defined]
        loop.advance(5)  # type: ignore[attr-defined]
        assert loop.time() == 15.0

    run(main)


def test_integer_times_give_float_loop_time() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        loop.call_at(7, done.set_result, None)
        await done
        assert loop.time() == 7.0
        assert isinstance(loop.time(), float)

    run(main)


def test_timeouts_and_wait_for() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(3):
                await asyncio.sleep(10)
        assert loop.time() == 3.0
        async with asyncio.timeout(5):
            await asyncio.sleep(4)
        assert loop.time() == 7.0
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.sleep(10), 2.5)
        assert loop.time() == 9.5
        assert await asyncio.wait_for(asyncio.sleep(1, "ok"), 2) == "ok"
        assert loop.time() == 10.5
        # a rescheduled timeout
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1) as scope:
                scope.reschedule(loop.time() + 20)
                await asyncio.sleep(100)
        assert loop.time() == 30.5
        # many concurrent waits, some timing out
        results = await asyncio.gather(
            *(asyncio.wait_for(asyncio.sleep(i % 5, i), 2.5) for i in range(50)),
            return_exceptions=True,
        )
        assert [isinstance(r, TimeoutError) for r in results] == [i % 5 > 2 for i in range(50)]
        assert loop.time() == 33.0

    run(main)


def test_sleep_forever_never_fires() -> None:
    """A timer at +inf is never due: with nothing else to do the loop waits for a wake-up
    (here another thread) instead of jumping to infinity."""

    async def main() -> float:
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(asyncio.sleep(math.inf))
        await asyncio.sleep(1)
        threading.Timer(0.05, loop.call_soon_threadsafe, (task.cancel,)).start()
        with pytest.raises(asyncio.CancelledError):
            await task
        return loop.time()

    assert run_in_thread(main) == 1.0


# -- tasks, futures, context ----------------------------------------------------------------


def test_tasks_futures_and_context_variables() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    async def child(n: int) -> str:
        await asyncio.sleep(n)
        return f"{var.get()}{n}"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        var.set("main")
        tasks = [asyncio.create_task(child(n), name=f"c{n}") for n in range(3)]
        assert [t.get_name() for t in tasks] == ["c0", "c1", "c2"]
        assert await asyncio.gather(*tasks) == ["main0", "main1", "main2"]
        seen: list[str] = []
        ctx = contextvars.copy_context()
        ctx.run(var.set, "other")
        loop.call_soon(lambda: seen.append(var.get()), context=ctx)
        loop.call_later(1, lambda: seen.append(var.get()))
        loop.call_at(loop.time() + 2, lambda: seen.append(var.get()), context=ctx)
        await asyncio.sleep(3)
        assert seen == ["other", "main", "other"]
        fut = loop.create_future()
        loop.call_later(1, fut.set_result, 42)
        assert await fut == 42
        task = asyncio.create_task(asyncio.sleep(100))
        await asyncio.sleep(1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert loop.time() == 7.0

    run(main)


def test_a_task_factory_is_honoured() -> None:
    made: list[str] = []

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        made.append(coro.__name__)
        return asyncio.Task(coro, loop=loop, **kwargs)

    async def hello() -> str:
        return "hi"

    async def main() -> str:
        asyncio.get_running_loop().set_task_factory(factory)
        return await asyncio.create_task(hello())

    assert run(main) == "hi"
    assert made[0] == "hello"  # (then run()'s shutdown_asyncgens)


def test_exceptions_in_callbacks_go_to_the_handler_and_the_loop_goes_on() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        caught: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: caught.append(context))

        def boom() -> None:
            raise ValueError("boom")

        loop.call_soon(boom)
        loop.call_later(1, boom)
        await asyncio.sleep(2)
        assert [type(c["exception"]) for c in caught] == [ValueError, ValueError]
        assert "Exception in callback" in caught[0]["message"]
        assert isinstance(caught[1]["handle"], asyncio.TimerHandle)

    run(main)


def test_system_exit_in_a_callback_propagates_and_the_loop_can_resume() -> None:
    loop = VirtualTimeLoop()
    try:
        fired: list[str] = []

        def leave() -> None:
            raise SystemExit(3)

        loop.call_soon(leave)
        loop.call_soon(fired.append, "after")
        with pytest.raises(SystemExit):
            loop.run_forever()
        assert not loop.is_running()
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert fired == ["after"]
    finally:
        loop.close()


# -- stop, close, async generators ----------------------------------------------------------


def test_stop_finishes_the_batch_and_does_not_move_time() -> None:
    loop = VirtualTimeLoop()
    try:
        fired: list[str] = []
        loop.call_later(10, fired.append, "timer")
        loop.call_soon(fired.append, "one")
        loop.call_soon(loop.stop)
        loop.call_soon(fired.append, "two")  # same batch: still runs
        loop.run_forever()
        assert fired == ["one", "two"]
        assert loop.time() == 0.0
        loop.stop()  # before run_forever: one iteration, no time jump
        loop.run_forever()
        assert fired == ["one", "two"]
        assert loop.time() == 0.0
        loop.call_later(20, loop.stop)
        loop.run_forever()
        assert fired == ["one", "two", "timer"]
        assert loop.time() == 20.0
    finally:
        loop.close()


def test_run_once_called_directly_runs_one_iteration() -> None:
    loop = VirtualTimeLoop()
    try:
        fired: list[str] = []
        loop.call_soon(lambda: loop.call_soon(fired.append, "second"))
        loop._run_once()
        assert fired == []
        loop._run_once()
        assert fired == ["second"]
        loop.call_later(5, fired.append, "timer")
        loop._run_once()
        assert fired == ["second", "timer"]
        assert loop.time() == 5.0
    finally:
        loop.close()


def test_run_until_complete_shutdown_asyncgens_and_close() -> None:
    closed: list[str] = []

    async def ticks() -> Any:
        try:
            while True:
                await asyncio.sleep(1)
                yield asyncio.get_running_loop().time()
        finally:
            closed.append("gen")

    async def main() -> list[float]:
        gen = ticks()
        got = [await gen.__anext__() for _ in range(3)]
        return got  # the generator is left suspended: shutdown_asyncgens closes it

    loop = VirtualTimeLoop(start=100.0)
    assert loop.run_until_complete(main()) == [101.0, 102.0, 103.0]
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert closed == ["gen"]
    loop.call_later(5, lambda: None)
    loop.close()
    assert loop.is_closed()
    with pytest.raises(RuntimeError, match="closed"):
        loop.call_soon(lambda: None)
    with pytest.raises(RuntimeError, match="closed"):
        loop.call_later(1, lambda: None)
    with pytest.raises(RuntimeError, match="closed"):
        loop.call_at(1, lambda: None)
    loop.close()  # twice is fine


def test_clock_run_gives_a_virtual_loop() -> None:
    async def main() -> tuple[bool, float]:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(3600)
        return isinstance(loop, VirtualTimeLoop), loop.time()

    started = time.perf_counter()
    assert clock.run(main, "virtual") == (True, 3600.0)
    assert time.perf_counter() - started < 5


# -- wake-ups from other threads and I/O ----------------------------------------------------


def test_run_in_executor_wakes_the_loop_when_no_timer_is_pending() -> None:
    async def main() -> tuple[str, float]:
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(None, lambda: (time.sleep(0.05), "done")[1])
        return result, loop.time()

    assert run_in_thread(main) == ("done", 0.0)


def test_call_soon_threadsafe_wakes_the_loop_when_no_timer_is_pending() -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        got: list[str] = []

        def other_thread() -> None:
            for i in range(50):
                time.sleep(0.001)
                loop.call_soon_threadsafe(got.append, f"m{i}")
            loop.call_soon_threadsafe(done.set_result, None)

        threading.Thread(target=other_thread).start()
        await done
        return got

    assert run_in_thread(main) == [f"m{i}" for i in range(50)]


def test_call_soon_threadsafe_while_the_loop_is_busy_with_timers() -> None:
    async def main() -> int:
        loop = asyncio.get_running_loop()
        got: list[float] = []
        sent = threading.Event()

        def other_thread() -> None:
            loop.call_soon_threadsafe(got.append, 1.0)
            sent.set()

        threading.Thread(target=other_thread).start()
        for _ in range(1_000_000):  # virtual seconds pass while the other thread runs
            await asyncio.sleep(1)
            if got:
                break
        assert sent.wait(5)
        return len(got)

    assert run_in_thread(main) == 1


def test_a_real_socket_on_a_virtual_loop() -> None:
    """TCP over loopback while a long virtual timer is pending: the loop polls the sockets on
    every iteration. (Whether the timer fires before the exchange ends depends on the kernel
    having the bytes ready when the loop polls, as with the stock loop on a virtual clock.)"""

    async def main() -> bytes:
        loop = asyncio.get_running_loop()

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write((await reader.readline()).upper())
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        sleeper = asyncio.create_task(asyncio.sleep(3600))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hello\n")
        answer = await reader.readline()
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        await sleeper
        assert loop.time() == 3600.0
        return answer

    assert run_in_thread(main) == b"HELLO\n"


def test_a_socket_woken_loop_with_no_timer_blocks_in_the_selector() -> None:
    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        import socket

        a, b = socket.socketpair()
        a.setblocking(False)
        threading.Timer(0.05, b.send, (b"ping",)).start()
        try:
            return await loop.sock_recv(a, 10)
        finally:
            a.close()
            b.close()

    assert run_in_thread(main) == b"ping"


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="needs SIGUSR1")
def test_signal_handlers_run_while_the_loop_only_jumps_between_timers() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        got: list[float] = []
        loop.add_signal_handler(signal.SIGUSR1, lambda: got.append(loop.time()))
        try:
            os.kill(os.getpid(), signal.SIGUSR1)
            for _ in range(10000):
                await asyncio.sleep(1)
                if got:
                    break
        finally:
            loop.remove_signal_handler(signal.SIGUSR1)
        assert got
        return got[0]

    assert run(main) < 1000.0


# -- debug mode -----------------------------------------------------------------------------


def test_debug_mode_keeps_the_semantics() -> None:
    loop = VirtualTimeLoop()
    loop.set_debug(True)
    try:

        async def main() -> list[int]:
            fired: list[int] = []
            for i in range(20):
                loop.call_later(i % 3, fired.append, i)
            handle = loop.call_later(1, fired.append, 99)
            handle.cancel()
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(5):
                    await asyncio.sleep(10)
            await asyncio.create_task(asyncio.sleep(1))
            return fired

        fired = loop.run_until_complete(main())
        assert fired == sorted(range(20), key=lambda i: (i % 3, i))
        assert loop.time() == 6.0
        with pytest.raises(TypeError):
            loop.call_later(1, main)  # type: ignore[arg-type]  # a coroutine function
    finally:
        loop.close()
    gc.collect()


def test_scaled_loop_still_runs() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(2)
        return loop.time()

    assert clock.run(main, "scaled", 200.0) >= 2.0


async def _follow_ticks(period: float, closed: list[str]) -> None:
    """Iterate an endless async generator of ticks; it notes in `closed` when it closes."""

    async def ticks() -> Any:
        try:
            while True:
                yield
                await asyncio.sleep(period)
        finally:
            closed.append("generator")

    async for _ in ticks():
        pass


@pytest.mark.parametrize("kind", ["real", "scaled", "virtual"])
def test_ctrl_c_cancels_the_run_which_cleans_up_then_raises_keyboard_interrupt(
    kind: str,
) -> None:
    """SIGINT during `clock.run` cancels the main coroutine; its task group cancels its
    tasks, their async generators close in order, and KeyboardInterrupt comes after."""
    closed: list[str] = []

    async def main() -> None:
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(_follow_ticks(0.01, closed))
                await asyncio.Event().wait()
        finally:
            closed.append("main")

    # From another thread, as a terminal's Ctrl-C comes: it may find the loop anywhere,
    # in the selector or between callbacks, not in the coroutine.
    interrupt = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    interrupt.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            clock.run(main, kind, 10.0)
    finally:
        interrupt.cancel()
    assert closed == ["generator", "main"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_tasks_left_pending_are_cancelled_before_their_generators_close() -> None:
    """A task still iterating an async generator when the main coroutine returns is
    cancelled and awaited first, so the generator closes without 'already running'."""
    closed: list[str] = []
    errors: list[dict[str, Any]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, c: errors.append(c))
        asyncio.get_running_loop().create_task(_follow_ticks(1.0, closed))
        await asyncio.sleep(2.5)

    clock.run(main, "virtual")
    assert closed == ["generator"] and errors == []
