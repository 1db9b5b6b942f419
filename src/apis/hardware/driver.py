"""The DeviceDriver protocol: what the unit software may read from and do to its hardware.

The battery is a read-only nature (RSOC, permission); the converter is the managed one
(mode, grid voltage `dvg`, droop `drg`, grid current limit `dig`). Every implementation (the
serial driver, the HTTP client, an emulated unit) returns these typed values; `to_json`
gives the wire shapes of the Device Driver Web API (`dcdc_v2`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from apis.hardware.modes import ConverterMode

APIS_TIME_FORMAT = "%Y/%m/%d-%H:%M:%S"

# battery_operation_status values
BATTERY_SHARING_DENIED = 0
BATTERY_SHARING_PERMITTED = 3


class DriverError(Exception):
    """A driver could not do what was asked (device silent, refused, or bad reply)."""


class CommandRefused(DriverError):
    """A converter command outside the configured limits or the mode table.

    Nothing reached the converter. The message names the parameter, the value and the limit.
    """


@dataclass(frozen=True, slots=True)
class ConverterStatus:
    mode: ConverterMode
    alarm: str = "0000 0000 0000"
    alarm_state: str = "No alarm"  # "No alarm" / "Light alarm" / "Heavy alarm"
    running_state: str = "off"  # "off" / "charge" / "discharge"
    status_name: str = ""

    @property
    def operation_mode(self) -> str:
        return self.mode.operation_mode

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.mode.code,
            "alarmState": self.alarm_state,
            "statusName": self.status_name or self.mode.operation_mode,
            "alarm": self.alarm,
            "runningState": self.running_state,
            "operationMode": self.mode.operation_mode,
        }


@dataclass(frozen=True, slots=True)
class Meter:
    """Measured values. Sign of `ig`, `wg`, `ib`, `wb`: positive while the unit charges."""

    vg: float = 0.0
    ig: float = 0.0
    wg: float = 0.0
    vb: float = 0.0
    ib: float = 0.0
    wb: float = 0.0
    tmp: float = 25.0

    def to_json(self) -> dict[str, Any]:
        return {
            "wg": self.wg, "tmp": self.tmp, "vb": self.vb, "wb": self.wb,
            "vg": self.vg, "ib": self.ib, "ig": self.ig,
        }


@dataclass(frozen=True, slots=True)
class VoltageSetting:
    """`vdis`: grid voltage set-point (V) and droop ratio."""

    dvg: float = 0.0
    drg: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"dvg": self.dvg, "drg": self.drg}


@dataclass(frozen=True, slots=True)
class CurrentSetting:
    """`param`: grid current limit `dig` (A, a magnitude) and informational protection values."""

    dig: float = 0.0
    ogv: float | None = None
    ugv: float | None = None
    cib: float | None = None
    obv: float | None = None
    ubv: float | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dig": self.dig}
        for key in ("ogv", "ugv", "cib", "obv", "ubv"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


@dataclass(frozen=True, slots=True)
class ConverterData:
    """The whole `dcdc` object."""

    status: ConverterStatus
    meter: Meter = field(default_factory=Meter)
    vdis: VoltageSetting = field(default_factory=VoltageSetting)
    param: CurrentSetting = field(default_factory=CurrentSetting)

    @property
    def mode(self) -> ConverterMode:
        return self.status.mode

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status.to_json(),
            "meter": self.meter.to_json(),
            "vdis": self.vdis.to_json(),
            "param": self.param.to_json(),
        }


@dataclass(frozen=True, slots=True)
class BatteryData:
    rsoc: float  # %
    battery_operation_status: int = BATTERY_SHARING_PERMITTED

    @property
    def sharing_permitted(self) -> bool:
        return self.battery_operation_status == BATTERY_SHARING_PERMITTED

    def to_json(self) -> dict[str, Any]:
        return {"rsoc": self.rsoc, "battery_operation_status": self.battery_operation_status}


@dataclass(frozen=True, slots=True)
class UnitData:
    """One acquisition: converter, battery and the time it was taken."""

    dcdc: ConverterData
    battery: BatteryData
    time: datetime

    @property
    def apis_time(self) -> str:
        return self.time.strftime(APIS_TIME_FORMAT)

    def to_flat_json(self) -> dict[str, Any]:
        """The flat `/all/get` shape of the `dcdc_v2` driver."""
        return {**self.battery.to_json(), **self.dcdc.to_json()}


@dataclass(frozen=True, slots=True)
class DriverVersion:
    comm_interface_version: str = "2.0"
    driver_version: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "comm_interface_version": self.comm_interface_version,
            "dcdc_batt_comm_version": self.driver_version,
        }


@runtime_checkable
class DeviceDriver(Protocol):
    """Async access to one unit's battery (read only) and converter (grid side only).

    `set*` raise `CommandRefused` for values outside the configured limits (before anything
    reaches the converter) and `DriverError` when the device fails; they return the converter
    data read back after the command.
    """

    async def read(self) -> UnitData: ...

    async def read_converter(self) -> ConverterData: ...

    async def set(
        self, mode: ConverterMode, dvg: float, dig: float, drg: float
    ) -> ConverterData: ...

    async def set_voltage(self, dvg: float, drg: float) -> ConverterData: ...

    async def set_current(self, dig: float) -> ConverterData: ...

    async def version(self) -> DriverVersion: ...


@dataclass(frozen=True, slots=True)
class CommandLimits:
    """The range a converter command must lie in, or it is refused before it is sent.

    Built from the unit's hwConfig (`gridCurrentCapacityA`, `safety.range.dcdc.meter.vg`)
    intersected with the device's own range (EZA2500: dvg 260-390 V, drg 0-3.999,
    dig 0-8.5162 A).
    """

    dvg_min: float = 260.0
    dvg_max: float = 390.0
    dig_max: float = 8.5162
    drg_max: float = 3.999

    def check(
        self,
        mode: ConverterMode | None = None,
        dvg: float | None = None,
        dig: float | None = None,
        drg: float | None = None,
    ) -> None:
        """Raise `CommandRefused` naming the first parameter outside its limit."""
        del mode  # any ConverterMode is a legal mode; parsing already refused the others
        if dvg is not None and not (self.dvg_min <= dvg <= self.dvg_max):
            raise CommandRefused(
                f"dvg = {dvg} (must be within {self.dvg_min}..{self.dvg_max} V)"
            )
        if dig is not None and not (0.0 <= dig <= self.dig_max):
            raise CommandRefused(f"dig = {dig} (must be within 0..{self.dig_max} A)")
        if drg is not None and not (0.0 <= drg <= self.drg_max):
            raise CommandRefused(f"drg = {drg} (must be within 0..{self.drg_max})")
