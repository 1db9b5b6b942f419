"""An in-memory DeviceDriver for Web API tests: records what reached the 'converter'."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime

from apis.hardware.driver import (
    BatteryData,
    ConverterData,
    ConverterStatus,
    CurrentSetting,
    DriverError,
    DriverVersion,
    Meter,
    UnitData,
    VoltageSetting,
)
from apis.hardware.modes import ConverterMode


@dataclass
class FakeDriver:
    data: ConverterData = field(
        default_factory=lambda: ConverterData(
            ConverterStatus(ConverterMode.WAITING),
            Meter(vg=350.0, vb=48.0),
            VoltageSetting(350.0, 0.0),
            CurrentSetting(0.0, ogv=400.0, ugv=300.0, cib=52.0, obv=59.0, ubv=40.0),
        )
    )
    battery: BatteryData = field(default_factory=lambda: BatteryData(70.5, 3))
    calls: list[tuple[str, tuple[object, ...]]] = field(default_factory=list)
    fail_next: int = 0

    def _maybe_fail(self) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise DriverError("converter read timeout (injected)")

    async def read(self) -> UnitData:
        self._maybe_fail()
        return UnitData(self.data, self.battery, datetime(2020, 1, 1))

    async def read_converter(self) -> ConverterData:
        self._maybe_fail()
        return self.data

    async def set(self, mode: ConverterMode, dvg: float, dig: float, drg: float) -> ConverterData:
        self._maybe_fail()
        self.calls.append(("set", (mode, dvg, dig, drg)))
        self.data = replace(self.data, status=ConverterStatus(mode),
                            vdis=VoltageSetting(dvg, drg), param=replace(self.data.param, dig=dig))
        return self.data

    async def set_voltage(self, dvg: float, drg: float) -> ConverterData:
        self._maybe_fail()
        self.calls.append(("set_voltage", (dvg, drg)))
        self.data = replace(self.data, vdis=VoltageSetting(dvg, drg))
        return self.data

    async def set_current(self, dig: float) -> ConverterData:
        self._maybe_fail()
        self.calls.append(("set_current", (dig,)))
        self.data = replace(self.data, param=replace(self.data.param, dig=dig))
        return self.data

    async def version(self) -> DriverVersion:
        return DriverVersion("2.0", "fake")


async def wait_until(predicate: Callable[[], bool], timeout_s: float, poll_s: float = 0.05) -> None:
    """Poll `predicate` until it holds; fail the test after `timeout_s` (generous, loaded CI)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    for _ in iter(int, 1):
        if predicate():
            return
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(poll_s)


@dataclass
class AlarmFakeDriver(FakeDriver):
    """A FakeDriver that can also clear alarms (`AlarmClearing`); starts with a light alarm."""

    def __post_init__(self) -> None:
        self.data = replace(self.data, status=replace(
            self.data.status, alarm="4010 0001 0000", alarm_state="Light alarm"))

    async def clear_alarm(self) -> ConverterData:
        self._maybe_fail()
        self.calls.append(("clear_alarm", ()))
        self.data = replace(self.data, status=replace(
            self.data.status, alarm="0000 0000 0000", alarm_state="No alarm"))
        return self.data
