"""A DeviceDriver over a serial battery (Modbus RTU) and a serial EZA2500 converter.

Mode changes follow the seed's order (`modes.transition_steps`); every write's echo must be
what was sent (checked by `Eza2500Converter`). The driver remembers what the converter holds
(mode, voltage and current set-points: the echoes and confirmed reads), reads are checked
against it (a change is taken once confirmed), and it forgets it when a command fails half
way, so the next command reads the converter afresh. A watchdog puts the converter in
Waiting when the battery denies sharing. All converter traffic of one operation holds one
lock, so the watchdog never lands between the steps of a mode change.
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
        # What the converter holds, by command: echoes of writes and confirmed reads.
        self._held: dict[eza.Command, dict[str, float]] = {}
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
        vdis = await self._read_held(eza.GRID_VOLTAGE)
        param = await self._read_held(eza.CURRENT_LIMITS)
        return await self._snapshot(mode, vdis, param["dig"])

    async def _read_held(self, command: eza.Command) -> dict[str, float]:
        values = await self.converter.read(command, self._held.get(command))
        self._held[command] = values
        return values

    async def _read_mode(self) -> ConverterMode:
        raw = int((await self._read_held(eza.MODE))["mode"])
        try:
            self._mode = ConverterMode(raw)
        except ValueError:
            self._mode = None
            raise DriverError(f"converter mode = 0x{raw:04x} (not one APIS sets)") from None
        return self._mode

    def _forget(self) -> None:
        """A command failed part way: what the converter holds is unknown until read."""
        self._mode = None
        self._held.clear()

    async def _snapshot(
        self, mode: ConverterMode, vdis: dict[str, float], dig: float
    ) -> ConverterData:
        status = await self._read_held(eza.STATUS)
        alarms = await self._read_held(eza.ALARMS)
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

    async def _write(self, command: eza.Command, values: dict[str, float]) -> dict[str, float]:
        """Write and remember the echo: what the converter now holds, at its resolution
        (dvg = 260 is held as 259.9976 V), which the converter checked equals the request."""
        self._held.pop(command, None)  # unknown until the echo confirms it
        echo = await self.converter.write(command, values)
        self._held[command] = echo
        return echo

    async def _write_voltage(self, values: dict[str, float]) -> dict[str, float]:
        return await self._write(eza.GRID_VOLTAGE, values)

    async def _write_current(self, values: dict[str, float]) -> dict[str, float]:
        return await self._write(eza.CURRENT_LIMITS, values)

    async def _write_mode(self, mode: ConverterMode) -> None:
        self._mode = None  # unknown until confirmed
        await self._write(eza.MODE, {"mode": mode})
        self._mode = mode

    async def set(self, mode: ConverterMode, dvg: float, dig: float, drg: float) -> ConverterData:
        voltage, current = self._voltage_values(dvg, drg), self._current_values(dig)
        async with self._operation:
            # Read, not remembered: the converter's own watchdog may have stopped it.
            present = await self._read_mode()
            try:
                steps = transition_steps(present, mode)
            except ModeTransitionRefused as error:
                raise CommandRefused(str(error)) from None
            try:
                return await self._change(mode, steps, voltage, current, dig)
            except DriverError:
                self._forget()
                raise

    async def _change(
        self, mode: ConverterMode, steps: tuple[ModeChangeStep, ...],
        voltage: dict[str, float], current: dict[str, float], dig: float,
    ) -> ConverterData:
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
            try:
                vdis = await self._write_voltage(voltage)
                mode = await self._read_mode()
                dig = (await self._read_held(eza.CURRENT_LIMITS))["dig"]
                return await self._snapshot(mode, vdis, dig)
            except DriverError:
                self._forget()
                raise

    async def set_current(self, dig: float) -> ConverterData:
        current = self._current_values(dig)
        async with self._operation:
            try:
                echo = await self._write_current(current)
                mode = await self._read_mode()
                vdis = await self._read_held(eza.GRID_VOLTAGE)
                return await self._snapshot(mode, vdis, echo["dig"])
            except DriverError:
                self._forget()
                raise

    async def clear_alarm(self) -> ConverterData:
        """Clear the converter's latched alarms (9-4 with d0 = d1 = 0), then read it back.

        Changes no set-point and no mode; the reply shows whether an alarm is still present.
        """
        async with self._operation:
            self._held.pop(eza.ALARMS, None)
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
