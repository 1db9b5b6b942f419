"""Checks shared by the fault and safety tests: after a fault, everything ended properly."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from apis.hardware.driver import UnitData
from apis.hardware.modes import ConverterMode

from .harness import Rig, WatchedDriver


def assert_within_limits(rig: Rig) -> None:
    """No converter write outside the configured limits."""
    policy = rig.config.policy
    r = policy.operation_grid_voltage_v_range
    for w in rig.writes():
        capacity = rig.config.unit(w.unit).hw_config.grid_current_capacity_a
        if w.dig is not None:
            assert 0.0 <= w.dig <= capacity + 1e-9, w
        if w.dvg is not None and w.mode is not ConverterMode.WAITING:
            assert r.min <= w.dvg <= r.max, w


def assert_deals_recorded(
    rig: Rig, live: list[str], down: Callable[[str, float], bool] | None = None
) -> list[dict[str, Any]]:
    """Every finished deal that reached the converters has a file on each live unit of it,
    saying how it ended (deactivated, aborted or scrammed) and how much energy moved.
    `down(unit, t)`: the unit's process was not running at loop time `t` (it could not
    write the final record then)."""
    records = []
    for finished in rig.cluster.finished:
        deal = finished.deal
        if deal.activate_date_time in (None, "--") and not deal.reset:
            continue
        for unit in (deal.charge_unit_id, deal.discharge_unit_id):
            if unit not in live or (down is not None and down(unit, finished.at)):
                continue
            files = [p for p in rig.deal_files(unit) if p.name == deal.deal_id]
            assert files, f"no deal file for {deal.deal_id} on {unit}"
            data = rig.read_deal_file(files[0])
            assert data.get("deactivateDateTime") or data.get("scramDateTime"), (unit, data)
            started = data.get("startDateTime") not in (None, "--")
            if started:
                assert isinstance(data.get("cumulateAmountWh"), int | float), data
            records.append(data)
    return records


async def all_waiting(rig: Rig, units: list[str]) -> bool:
    return all(rig.world.unit_data(u).dcdc.mode is ConverterMode.WAITING for u in units)


async def until(condition: Any, timeout: float, step: float = 0.5) -> float:
    """Wait (loop time) until `condition()` (sync or async) holds; return the time taken."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return loop.time() - start
        if loop.time() - start > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(step)


class OffsetDriver(WatchedDriver):
    """A driver whose grid-current meter reads `offset_a` high (a drifting sensor)."""

    def __init__(self, inner: WatchedDriver, offset_a: float,
                 modes: tuple[ConverterMode, ...]) -> None:
        super().__init__(inner.inner, inner.watch)
        self.offset_a = offset_a
        self.modes = modes
        self.active = True

    async def read(self) -> UnitData:
        data = await self.inner.read()
        if not self.active or data.dcdc.mode not in self.modes:
            return data
        meter = replace(data.dcdc.meter, ig=data.dcdc.meter.ig + self.offset_a)
        return replace(data, dcdc=replace(data.dcdc, meter=meter))
