"""The DeviceDriver protocol: what the unit software may read from and do to its hardware.

The battery is a read-only nature (RSOC, permission); the converter is the managed one
(mode, grid voltage `dvg`, droop `drg`, grid current limit `dig`). Every implementation (the
serial driver, the HTTP client, an emulated unit) returns these typed values; `to_json`
gives the wire shapes of the Device Driver Web API (`dcdc_v2`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from apis.hardware.modes import ConverterMode

if TYPE_CHECKING:
    from apis.config.hwconfig import HwConfig

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
        code, operation_mode = _MODE_TEXTS[self.mode]
        return {
            "status": code,
            "alarmState": self.alarm_state,
            "statusName": self.status_name or operation_mode,
            "alarm": self.alarm,
            "runningState": self.running_state,
            "operationMode": operation_mode,
        }


# mode -> (`code`, `operation_mode`): every unit writes its status at every acquisition, and
# the code is formatted anew at each `ConverterMode.code`
_MODE_TEXTS = {mode: (mode.code, mode.operation_mode) for mode in ConverterMode}


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
        # the optional values, in this order, when set (written out: at every acquisition)
        if self.ogv is not None:
            out["ogv"] = self.ogv
        if self.ugv is not None:
            out["ugv"] = self.ugv
        if self.cib is not None:
            out["cib"] = self.cib
        if self.obv is not None:
            out["obv"] = self.obv
        if self.ubv is not None:
            out["ubv"] = self.ubv
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


@functools.lru_cache(maxsize=256)
def format_apis_time(time: datetime) -> str:
    """`time` as APIS writes it (cached: the units of a cluster format the same instants
    over and over, and strftime is slow)."""
    return time.strftime(APIS_TIME_FORMAT)


@dataclass(frozen=True, slots=True)
class UnitData:
    """One acquisition: converter, battery and the time it was taken."""

    dcdc: ConverterData
    battery: BatteryData
    time: datetime

    @property
    def apis_time(self) -> str:
        return format_apis_time(self.time)

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


@runtime_checkable
class AlarmClearing(Protocol):
    """An optional DeviceDriver capability: clear the converter's latched alarms.

    Only drivers that can send the device's own clear-alarm command implement it (the serial
    driver: EZA2500 command 9-4). It returns the converter data read back afterwards.
    """

    async def clear_alarm(self) -> ConverterData: ...


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

    @classmethod
    def from_hwconfig(cls, hw: HwConfig, device: CommandLimits | None = None) -> CommandLimits:
        """The device's range narrowed by the unit's hwConfig.

        dig_max = min(device, `gridCurrentCapacityA`); dvg = device range intersected with
        `safety.range.dcdc.meter.vg`. An empty intersection is a configuration error.
        """
        device = device or cls()
        vg = hw.safety.range.dcdc.meter.vg
        dvg_min, dvg_max = max(device.dvg_min, vg.min), min(device.dvg_max, vg.max)
        if dvg_min > dvg_max:
            raise ValueError(
                f"safety.range.dcdc.meter.vg = {vg.min}..{vg.max} (must overlap the "
                f"converter's dvg range {device.dvg_min}..{device.dvg_max} V)"
            )
        return cls(
            dvg_min=dvg_min,
            dvg_max=dvg_max,
            dig_max=min(device.dig_max, hw.grid_current_capacity_a),
            drg_max=device.drg_max,
        )

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


# --- parsing the wire shapes back (used by the HTTP client) ---------------------------------


def _object(value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DriverError(f"{key} = {value!r} (must be a JSON object)")
    return value


def _number(obj: dict[str, Any], key: str, default: float, path: str) -> float:
    value = obj.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DriverError(f"{path}.{key} = {value!r} (must be a number)")
    return float(value)


def converter_status_from_json(
    obj: Any, previous: ConverterStatus | None = None
) -> ConverterStatus:
    """A `status` object; keys it lacks keep their `previous` values."""
    status = _object(obj, "status")
    if "status" in status:
        try:
            mode = ConverterMode.from_code(status["status"])
        except (ValueError, AttributeError) as error:
            raise DriverError(f"status.status: {error}") from None
    elif previous is not None:
        mode = previous.mode
    else:
        raise DriverError(f"status.status missing (status = {status!r})")
    base = previous or ConverterStatus(mode)
    return ConverterStatus(
        mode=mode,
        alarm=str(status.get("alarm", base.alarm)),
        alarm_state=str(status.get("alarmState", base.alarm_state)),
        running_state=str(status.get("runningState", base.running_state)),
        status_name=str(status.get("statusName", base.status_name)),
    )


def converter_data_from_json(obj: Any, previous: ConverterData | None = None) -> ConverterData:
    """A (possibly partial) `dcdc` object, deep-merged over `previous` as apis-main does."""
    data = _object(obj, "dcdc")
    if "status" in data:
        status = converter_status_from_json(
            data["status"], previous.status if previous else None
        )
    elif previous is not None:
        status = previous.status
    else:
        raise DriverError(f"dcdc.status missing (keys: {sorted(data)})")
    meter = previous.meter if previous else Meter()
    if "meter" in data:
        m = _object(data["meter"], "meter")
        meter = Meter(**{k: _number(m, k, getattr(meter, k), "meter")
                         for k in ("vg", "ig", "wg", "vb", "ib", "wb", "tmp")})
    vdis = previous.vdis if previous else VoltageSetting()
    if "vdis" in data:
        v = _object(data["vdis"], "vdis")
        vdis = VoltageSetting(dvg=_number(v, "dvg", vdis.dvg, "vdis"),
                              drg=_number(v, "drg", vdis.drg, "vdis"))
    param = previous.param if previous else CurrentSetting()
    if "param" in data:
        p = _object(data["param"], "param")
        optional: dict[str, float | None] = {}
        for key in ("ogv", "ugv", "cib", "obv", "ubv"):
            old = getattr(param, key)
            optional[key] = _number(p, key, old, "param") if key in p else old
        param = CurrentSetting(dig=_number(p, "dig", param.dig, "param"), **optional)
    return ConverterData(status=status, meter=meter, vdis=vdis, param=param)


def battery_data_from_json(obj: Any) -> BatteryData:
    """`{rsoc, battery_operation_status}`; a missing status (the original emulator) = 3."""
    battery = _object(obj, "battery")
    if "rsoc" not in battery or battery["rsoc"] is None:
        raise DriverError(f"rsoc missing (keys: {sorted(battery)})")
    status = battery.get("battery_operation_status")
    if status is None:
        status = BATTERY_SHARING_PERMITTED
    valid = not isinstance(status, bool) and isinstance(status, int | float)
    if not valid or status not in (0, 1, 2, 3):
        raise DriverError(f"battery_operation_status = {status!r} (must be 0, 1, 2 or 3)")
    return BatteryData(rsoc=_number(battery, "rsoc", 0.0, "battery"),
                       battery_operation_status=int(status))


def unit_data_from_flat_json(
    obj: Any, time: datetime, previous: ConverterData | None = None
) -> UnitData:
    """The flat `/all/get` shape of `dcdc_v2`."""
    flat = _object(obj, "/all/get")
    return UnitData(
        dcdc=converter_data_from_json(
            {k: v for k, v in flat.items() if k in ("status", "meter", "vdis", "param")},
            previous,
        ),
        battery=battery_data_from_json(flat),
        time=time,
    )


def parse_apis_time(text: Any) -> datetime:
    try:
        return datetime.strptime(str(text), APIS_TIME_FORMAT)
    except ValueError:
        raise DriverError(f"time = {text!r} (must be {APIS_TIME_FORMAT})") from None


def driver_version_from_json(obj: Any) -> DriverVersion:
    """`comm_interface_version` (or the documented `comm_protocol_version`) with major 2."""
    version = _object(obj, "version")
    interface = version.get("comm_interface_version", version.get("comm_protocol_version"))
    if not isinstance(interface, str) or "." not in interface:
        raise DriverError(f"comm_interface_version = {interface!r} (must be 'major.minor')")
    return DriverVersion(interface, str(version.get("dcdc_batt_comm_version", "")))
