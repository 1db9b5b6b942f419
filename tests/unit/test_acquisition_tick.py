"""The acquisition tick: read the driver unless a read happened within the last period."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from apis import clock
from apis.bus.memory import MemoryBus
from apis.hardware.driver import DriverError
from apis.unit.controller import TICK_TOLERANCE_S, Controller, needs_read, within
from apis.unit.registry import Registry
from apis.unit.state import UnitState

from .checks import until
from .harness import Rig, write_config

T = TypeVar("T")


def test_never_read_reads() -> None:
    assert needs_read(0.0, -math.inf, 5.0)


def test_a_read_within_the_period_is_used_instead() -> None:
    assert not needs_read(102.0, 100.0, 5.0)
    assert needs_read(105.0, 100.0, 5.0)
    assert needs_read(106.0, 100.0, 5.0)


def test_a_read_a_rounding_error_short_of_a_period_counts_as_a_period_old() -> None:
    # At a loop time of hours, "a period ago" can come out a few 1e-13 s short.
    now = 39600.3
    assert needs_read(now, now - 5.0 + 2e-13, 5.0)
    assert not needs_read(now, now - 5.0 + 2 * TICK_TOLERANCE_S, 5.0)


def test_units_read_once_a_period_when_the_grid_master_collects_urgently(
    tmp_path: Path,
) -> None:
    """With the Grid Master reading every unit urgently each pass, the local loop checks
    those readings: about one driver read per unit per period, not two, and the local
    safety check still runs every period."""
    rig = Rig(tmp_path, ["E001", "E002"], [50.0, 50.0])
    reads: dict[str, int] = {"E001": 0, "E002": 0}
    for unit_id, driver in rig.cluster.drivers.items():
        original = driver.read

        async def counted(unit_id: str = unit_id, original=original):  # type: ignore[no-untyped-def]
            reads[unit_id] += 1
            return await original()

        driver.read = counted  # type: ignore[method-assign]

    async def scenario(rig: Rig) -> tuple[dict[str, int], int]:
        c = rig.cluster
        await until(lambda: c.grid_master_unit() is not None, 120)
        controller = c.units["E001"].controller
        assert controller is not None
        checks = 0
        check_safety = controller.check_safety

        async def counted_check(data):  # type: ignore[no-untyped-def]
            nonlocal checks
            checks += 1
            return await check_safety(data)

        controller.check_safety = counted_check  # type: ignore[method-assign]
        for unit_id in reads:
            reads[unit_id] = 0
        await asyncio.sleep(300.0)
        return dict(reads), checks

    counted, checks = rig.run(scenario)
    ticks = 300 / (rig.config.policy.controller.data_acquisition_period_msec / 1000)
    for unit_id, n in counted.items():
        assert ticks * 0.9 <= n <= ticks * 1.3, (unit_id, n)
    assert ticks - 1 <= checks <= ticks + 1


# ---- the bound on a driver read --------------------------------------------------------

LIMIT = 4.0


def _virtual(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return clock.run(main, "virtual")


def test_a_read_that_does_not_wait_needs_no_timer() -> None:
    async def main() -> tuple[str, int]:
        loop = asyncio.get_running_loop()

        async def read() -> str:
            return "data"

        timers = len(loop._scheduled)  # type: ignore[attr-defined]
        result = await within(LIMIT, read())
        return result, len(loop._scheduled) - timers  # type: ignore[attr-defined]

    assert _virtual(main) == ("data", 0)


def test_a_read_that_waits_within_the_bound_gives_its_result() -> None:
    async def main() -> tuple[str, float]:
        loop = asyncio.get_running_loop()
        start = loop.time()

        async def read() -> str:
            for _ in range(3):
                await asyncio.sleep(1.0)
            return "late data"

        return await within(LIMIT, read()), loop.time() - start

    assert _virtual(main) == ("late data", 3.0)


@pytest.mark.parametrize("waits_first", [False, True])
def test_a_hung_read_is_cut_off_at_the_bound(waits_first: bool) -> None:
    """Cut off `LIMIT` after the read started, whether it hangs at once or after a wait
    (TimeoutError, as `asyncio.timeout` raises), and the read sees its cancellation."""

    async def main() -> tuple[str, float, bool]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        cancelled = False

        async def read() -> str:
            nonlocal cancelled
            if waits_first:
                await asyncio.sleep(LIMIT - 0.5)
            try:
                await asyncio.Event().wait()  # never set: a driver that hangs
            except asyncio.CancelledError:
                cancelled = True
                raise
            return "never"

        try:
            async with asyncio.timeout(10 * LIMIT):  # should the bound fail: a failure, no hang
                await within(LIMIT, read())
        except TimeoutError as e:
            return repr(e), loop.time() - start, cancelled
        return "not cut off", loop.time() - start, cancelled

    assert _virtual(main) == ("TimeoutError()", LIMIT, True)


def test_a_failing_read_fails_and_the_caller_can_still_be_cancelled() -> None:
    async def main() -> tuple[str, str]:
        async def failing() -> str:
            await asyncio.sleep(1.0)
            raise DriverError("device silent")

        try:
            await within(LIMIT, failing())
            failed = "no error"
        except DriverError as e:
            failed = str(e)

        async def hung() -> str:
            await asyncio.Event().wait()
            return "never"

        task = asyncio.ensure_future(within(LIMIT, hung()))
        await asyncio.sleep(1.0)
        task.cancel()
        try:
            await task
            outcome = "finished"
        except asyncio.CancelledError:
            outcome = "cancelled"  # a cancellation from outside stays one
        return failed, outcome

    assert _virtual(main) == ("device silent", "cancelled")


def test_a_hung_driver_is_reported_after_the_policy_s_bound(tmp_path: Path) -> None:
    """The Controller bounds a read by requestTimeoutMsec x retryLimit + 1 s and reports a
    driver that hangs as a failed communication."""
    files = write_config(tmp_path, ["E001"]).units[0]
    c = files.policy.controller
    bound = c.request_timeout_msec * c.retry_limit / 1000 + 1.0

    class HungDriver:
        async def read(self) -> None:
            await asyncio.Event().wait()

    async def main() -> tuple[float, list[tuple[str, str, str, str]]]:
        reports: list[tuple[str, str, str, str]] = []

        async def report(category: str, where: str, level: str, message: str) -> None:
            reports.append((category, where, level, message))

        bus = MemoryBus()
        controller = Controller(
            config=files.config, hw=files.hw_config, policy=files.policy,
            driver=HungDriver(),  # type: ignore[arg-type]
            bus=bus, registry=await Registry.open(bus), state=UnitState("E001", 2),
            rng=random.Random(0), report=report,
        )
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(10 * bound):  # should the bound fail: no hang
                await controller.acquire()
        took = loop.time() - start
        task = asyncio.ensure_future(controller.acquisition_loop())
        await asyncio.sleep(bound + 0.5)
        task.cancel()
        await bus.close()
        return took, reports

    took, reports = _virtual(main)
    assert took == bound
    assert reports == [
        ("HARDWARE", "LOCAL", "ERROR", "Communication failed with Device Driver: TimeoutError()")
    ]


def test_after_a_command_the_tick_reads_the_driver_again(tmp_path: Path) -> None:
    """A read for somebody else spares the tick its own read only while no command has
    changed the converter since: else the check would judge the converter as it was (a unit
    told to WAIT as its deal ended was found "in CHARGE but no deal")."""
    rig = Rig(tmp_path, ["E001", "E002"], [50.0, 50.0])

    async def scenario(rig: Rig) -> list[str]:
        c = rig.cluster
        await until(lambda: c.grid_master_unit() is not None, 120)
        controller = c.units["E002"].controller
        assert controller is not None
        period = rig.config.policy.controller.data_acquisition_period_msec / 1000
        await controller.acquire()  # the Grid Master's urgent read, say: WAIT
        started = asyncio.get_running_loop().time()
        await controller.execute("VOLTAGE_REFERENCE", {})  # no deal: a real violation
        await asyncio.sleep(period)  # one tick
        found = [f.message for t, level, f in controller.findings
                 if t >= started and level == "WARN"]
        await controller.execute("WAIT", {})
        return found

    found = rig.run(scenario)
    assert any("VOLTAGE_REFERENCE but no deal" in m for m in found), found
