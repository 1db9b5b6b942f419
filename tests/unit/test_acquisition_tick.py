"""The acquisition tick: read the driver unless a read happened within the last period."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

from apis.unit.controller import TICK_TOLERANCE_S, needs_read

from .checks import until
from .harness import Rig


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
