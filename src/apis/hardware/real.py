"""A DeviceDriver over a serial battery (Modbus RTU) and a serial EZA2500 converter.

Mode changes follow the seed's order (`modes.transition_steps`); every write is read back and
compared with what was sent. A watchdog puts the converter in Waiting when the battery denies
sharing. All converter traffic of one operation holds one lock, so the watchdog never lands
between the steps of a mode change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime

from apis.hardware import eza2500 as eza
from apis.hardware.converter import Eza2500Converter
from apis.hardware.driver import (
    BatteryData,
    CommandLimits,
    CommandRefused,
    ConverterData,
    ConverterStatus,
    CurrentSetting,
    DriverError,
    DriverVersion,
    Meter,
    UnitData,
    VoltageSetting,
)
from apis.hardware.modbus import ModbusBattery
from apis.hardware.modes import (
    ConverterMode,
    ModeChangeStep,
    ModeTransitionRefused,
    transition_steps,
)

log = logging.getLogger(__name__)

DRIVER_VERSION = "apis-1.0"


@dataclass(frozen=True, slots=True)
class WatchdogSettings:
    force_waiting: bool = True
    period_s: float = 10.0  # the converter reaches Waiting within this time of a denial

    def __post_init__(self) -> None:
        if self.period_s <= 0:
            raise ValueError(f"period_s = {self.period_s} (must be > 0)")


class RealDriver:
    """DeviceDriver of a unit with real (or twin) serial devices.

    Use as `async with RealDriver(...) as driver:`; the watchdog runs inside that block and is
    cancelled and awaited on exit.
    """

    def __init__(
        self,
        battery: ModbusBattery,
        converter: Eza2500Converter,
        limits: CommandLimits,
        watchdog: WatchdogSettings | None = None,
    ) -> None:
        self.battery = battery
        self.converter = converter
        self.limits = limits
        self.watchdog = watchdog or WatchdogSettings()
        self._operation = asyncio.Lock()
        self._mode: ConverterMode | None = None  # last mode read or written
        self._watchdog_task: asyncio.Task[None] | None = None
        self.watchdog_stops = 0  # how often the watchdog forced Waiting

    async def __aenter__(self) -> RealDriver:
        if self.watchdog.force_waiting:
            self._watchdog_task = asyncio.create_task(self._watch_battery(),
                                                      name="battery-watchdog")
        return self

    async def __aexit__(self, *exc: object) -> None:
        task, self._watchdog_task = self._watchdog_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- reading ---------------------------------------------------------------------------

    async def read(self) -> UnitData:
        battery = await self.battery.read()
        return UnitData(dcdc=await self.read_converter(), battery=battery, time=datetime.now())

    async def read_battery(self) -> BatteryData:
        return await self.battery.read()

    async def read_converter(self) -> ConverterData:
        async with self._operation:
            return await self._read_all()

    async def _read_all(self) -> ConverterData:
        """Mode, voltage set-point, current limit, then the snapshot (caller holds the lock)."""
        mode = await self._read_mode()
        vdis = await self.converter.read(eza.GRID_VOLTAGE)
        param = await self.converter.read(eza.CURRENT_LIMITS)
        return await self._snapshot(mode, vdis, param["dig"])

    async def _read_mode(self) -> ConverterMode:
        raw = int((await self.converter.read(eza.MODE))["mode"])
        try:
            self._mode = ConverterMode(raw)
        except ValueError:
            self._mode = None
            raise DriverError(f"converter mode = 0x{raw:04x} (not one APIS sets)") from None
        return self._mode

    async def _snapshot(
        self, mode: ConverterMode, vdis: dict[str, float], dig: float
    ) -> ConverterData:
        status = await self.converter.read(eza.STATUS)
        alarms = await self.converter.read(eza.ALARMS)
        meter = await self.converter.read(eza.METER)
        cst = int(status["cst"])
        running, alarm_state = eza.decode_cst(cst)
        p = self.converter.settings.protection
        return ConverterData(
            status=ConverterStatus(mode=mode, alarm=eza.alarm_text(int(alarms["alm1"]), cst),
                                   alarm_state=alarm_state, running_state=running,
                                   status_name="Ignore"),
            meter=Meter(vg=meter["vg"], ig=meter["ig"], wg=meter["wg"], vb=meter["vb"],
                        ib=meter["ib"], wb=meter["wb"], tmp=meter["tmp"]),
            vdis=VoltageSetting(dvg=vdis["dvg"], drg=vdis["drg"]),
            param=CurrentSetting(dig=dig, ogv=p.ogv, ugv=p.ugv, cib=p.cib, obv=p.obv,
                                 ubv=p.ubv),
        )

    # --- setting ---------------------------------------------------------------------------

    def _voltage_values(self, dvg: float, drg: float) -> dict[str, float]:
        """The 4-4 values, refused (CommandRefused) before anything is sent."""
        self.limits.check(dvg=dvg, drg=drg)
        values = {"dvg": dvg, "drg": drg}
        try:
            eza.encode_write(eza.GRID_VOLTAGE, values)
        except eza.EzaEncodeError as error:
            raise CommandRefused(str(error)) from None
        return values

    def _current_values(self, dig: float) -> dict[str, float]:
        """The 6-4 values (dig plus the configured thresholds), refused before sending."""
        self.limits.check(dig=dig)
        p = self.converter.settings.protection
        values = {"cib": p.cib, "dig": dig, "ubv": p.ubv, "ugv": p.ugv, "obv": p.obv,
                  "ogv": p.ogv}
        try:
            eza.encode_write(eza.CURRENT_LIMITS, values)
        except eza.EzaEncodeError as error:
            raise CommandRefused(str(error)) from None
        return values

    async def _write_voltage(self, values: dict[str, float]) -> dict[str, float]:
        echo = await self.converter.write(eza.GRID_VOLTAGE, values)
        self._verify("dvg", values["dvg"], echo["dvg"], eza.GRID_VOLTAGE.fields[0])
        self._verify("drg", values["drg"], echo["drg"], eza.GRID_VOLTAGE.fields[1])
        return echo

    async def _write_current(self, values: dict[str, float]) -> dict[str, float]:
        echo = await self.converter.write(eza.CURRENT_LIMITS, values)
        self._verify("dig", values["dig"], echo["dig"], eza.CURRENT_LIMITS.fields[1])
        return echo

    async def _write_mode(self, mode: ConverterMode) -> None:
        self._mode = None  # unknown until confirmed
        echo = int((await self.converter.write(eza.MODE, {"mode": mode}))["mode"])
        if echo != mode:
            raise DriverError(f"mode echo = 0x{echo:04x} (sent {mode.code})")
        self._mode = mode

    @staticmethod
    def _verify(name: str, sent: float, echo: float, f: eza.Field) -> None:
        if f.to_raw(sent) != f.to_raw(echo) and abs(sent - echo) > f.rating / 2**f.q:
            raise DriverError(f"{name} echo = {echo} (sent {sent})")

    async def set(self, mode: ConverterMode, dvg: float, dig: float, drg: float) -> ConverterData:
        voltage, current = self._voltage_values(dvg, drg), self._current_values(dig)
        async with self._operation:
            present = self._mode if self._mode is not None else await self._read_mode()
            try:
                steps = transition_steps(present, mode)
            except ModeTransitionRefused as error:
                raise CommandRefused(str(error)) from None
            vdis: dict[str, float] = {}
            dig_echo = dig
            for step in steps:
                if step is ModeChangeStep.SET_VOLTAGE:
                    vdis = await self._write_voltage(voltage)
                elif step is ModeChangeStep.SET_CURRENT:
                    dig_echo = (await self._write_current(current))["dig"]
                else:
                    await self._write_mode(mode)
            # Read back: the reply describes the converter after the change.
            now = await self._read_mode()
            if now is not mode:
                raise DriverError(f"mode read back = {now.code} (set {mode.code})")
            return await self._snapshot(now, vdis, dig_echo)

    async def set_voltage(self, dvg: float, drg: float) -> ConverterData:
        voltage = self._voltage_values(dvg, drg)
        async with self._operation:
            vdis = await self._write_voltage(voltage)
            mode = self._mode if self._mode is not None else await self._read_mode()
            dig = (await self.converter.read(eza.CURRENT_LIMITS))["dig"]
            return await self._snapshot(mode, vdis, dig)

    async def set_current(self, dig: float) -> ConverterData:
        current = self._current_values(dig)
        async with self._operation:
            echo = await self._write_current(current)
            mode = self._mode if self._mode is not None else await self._read_mode()
            vdis = await self.converter.read(eza.GRID_VOLTAGE)
            return await self._snapshot(mode, vdis, echo["dig"])

    async def clear_alarm(self) -> ConverterData:
        """Clear the converter's latched alarms (9-4 with d0 = d1 = 0), then read it back.

        Changes no set-point and no mode; the reply shows whether an alarm is still present.
        """
        async with self._operation:
            await self.converter.write(eza.ALARMS, {"d0": 0, "d1": 0})
            return await self._read_all()

    async def version(self) -> DriverVersion:
        return DriverVersion("2.0", DRIVER_VERSION)

    # --- watchdog --------------------------------------------------------------------------

    async def force_waiting_if_denied(self) -> bool:
        """One watchdog pass; True if it had to stop the converter."""
        battery = await self.battery.read()
        if battery.sharing_permitted:
            return False
        async with self._operation:
            mode = self._mode if self._mode is not None else await self._read_mode()
            if mode is ConverterMode.WAITING:
                return False
            # Mode first (the seed's order for going to Stop); set-points may stay.
            await self._write_mode(ConverterMode.WAITING)
        self.watchdog_stops += 1
        log.warning("battery denies sharing: converter forced from %s to Waiting", mode.code)
        return True

    async def _watch_battery(self) -> None:
        # Fixed delay: a slow pass never overlaps the next one.
        while True:
            await asyncio.sleep(self.watchdog.period_s)
            try:
                await self.force_waiting_if_denied()
            except DriverError as error:
                log.warning("battery watchdog pass failed: %s", error)
