"""Unit data (spec section 9): what a unit tells the Grid Master about itself.

`unit_data_json` builds the JSON object of one acquisition; `UnitSnapshot` is the Grid
Master's typed, read-only view of such an object (it may have crossed the bus).

Ours beyond the original: `timestamp`, the acquisition time in seconds since the epoch at
full resolution (`time` has one-second resolution), used for exact energy integration.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from apis.config.hwconfig import HwConfig
from apis.config.policy import Policy
from apis.config.unitconfig import UnitConfig
from apis.hardware.driver import UnitData
from apis.hardware.modes import ConverterMode
from apis.unit.memo import IdentityMemo
from apis.unit.user import remaining_capacity_wh

APIS_VERSION = "3.0.0"


def deal_interlock_capacity(hw: HwConfig, policy: Policy) -> int:
    """How many deals a unit can join at once: floor(gridCurrentCapacityA / deal current)."""
    return int(hw.grid_current_capacity_a // policy.mediator.deal.grid_current_a)


def unit_data_json(
    data: UnitData,
    config: UnitConfig,
    hw: HwConfig,
    policy: Policy,
    *,
    deal_ids: list[str],
    is_grid_master: bool,
    global_mode: str,
    local_mode: str | None,
    effective_mode: str,
) -> dict[str, Any]:
    parts = _config_parts.get(config, hw, policy)
    apis: dict[str, Any] = {
        "version": APIS_VERSION,
        "remaining_capacity_wh": remaining_capacity_wh(
            hw.battery_nominal_capacity_wh, data.battery.rsoc
        ),
        "deal_interlock_capacity": parts.deal_interlock_capacity,
        "operation_mode": {"global": global_mode, "local": local_mode, "effective": effective_mode},
    }
    if deal_ids:
        apis["deal_id_list"] = list(deal_ids)
    if is_grid_master:
        apis["is_grid_master"] = True
    # a copy of the template: the caller may edit what it gets (its values are strings)
    oesunit = (parts.oesunit_autonomous if effective_mode == "autonomous" else parts.oesunit).copy()
    return {
        "apis": apis,
        "oesunit": oesunit,
        "battery": data.battery.to_json(),
        "dcdc": data.dcdc.to_json(),
        "time": data.apis_time,
        "timestamp": _timestamp(data.time),
    }


@dataclass(frozen=True, slots=True)
class _ConfigParts:
    """What a unit's data takes from its configuration alone, for one (config, hw, policy)."""

    config: UnitConfig
    hw: HwConfig
    policy: Policy
    deal_interlock_capacity: int
    oesunit: dict[str, str]  # templates, copied for each reply: "budo" "0" and "1"
    oesunit_autonomous: dict[str, str]

    @classmethod
    def of(cls, config: UnitConfig, hw: HwConfig, policy: Policy) -> _ConfigParts:
        oesunit = {
            "communityId": config.community_id,
            "clusterId": config.cluster_id,
            "id": config.unit_id,
            "display": config.display_name,
            "sn": config.serial_number,
            "budo": "0",
            "ip": "NA",
            "ipv6_ll": "NA",
            "ipv6_g": "NA",
            "mac": "NA",
        }
        return cls(
            config, hw, policy, deal_interlock_capacity(hw, policy),
            oesunit, {**oesunit, "budo": "1"},  # same key order
        )


# Every unit builds its data at every acquisition from configuration objects that change only
# when a file is reloaded (then a new object: they are frozen).
_config_parts: IdentityMemo[_ConfigParts] = IdentityMemo(_ConfigParts.of)


# The last acquisition time converted and its timestamp: the units of a world read the same
# time object (one per world time), and `timestamp` of a naive time converts local time.
# Kept by identity, not equality: equal naive times may differ in `fold`, and so in timestamp.
_last_timestamp: tuple[datetime | None, float] = (None, 0.0)


def _timestamp(time: datetime) -> float:
    global _last_timestamp
    last, timestamp = _last_timestamp
    if last is not time:
        timestamp = time.timestamp()
        _last_timestamp = (time, timestamp)
    return timestamp


@dataclass(frozen=True, slots=True)
class UnitSnapshot:
    """The Grid Master's view of one unit's data."""

    unit_id: str
    mode: ConverterMode | None  # None: a code APIS does not know
    vg: float
    ig: float
    wb: float
    dvg: float
    drg: float
    dig: float
    rsoc: float
    time: str
    timestamp: float
    raw: dict[str, Any]

    @classmethod
    def from_json(cls, unit_id: str, data: dict[str, Any]) -> UnitSnapshot:
        dcdc = data.get("dcdc") or {}
        meter = dcdc.get("meter") or {}
        vdis = dcdc.get("vdis") or {}
        return cls(
            unit_id=unit_id,
            mode=_mode_of((dcdc.get("status") or {}).get("status", "")),
            vg=float(meter.get("vg", 0.0)),
            ig=float(meter.get("ig", 0.0)),
            wb=float(meter.get("wb", 0.0)),
            dvg=float(vdis.get("dvg", 0.0)),
            drg=float(vdis.get("drg", 0.0)),
            dig=float((dcdc.get("param") or {}).get("dig", 0.0)),
            rsoc=float((data.get("battery") or {}).get("rsoc", 0.0)),
            time=str(data.get("time", "")),
            timestamp=float(data.get("timestamp", 0.0)),
            raw=data,
        )

    @property
    def is_voltage_reference(self) -> bool:
        return self.mode is ConverterMode.VOLTAGE_REFERENCE

    @property
    def is_waiting(self) -> bool:
        return self.mode is ConverterMode.WAITING

    @property
    def deal_ids(self) -> list[str]:
        return list((self.raw.get("apis") or {}).get("deal_id_list") or [])


# mode code as sent (e.g. "0x0014") -> its mode: the Grid Master parses every unit's code at
# every collection, and there are four of them
_MODE_BY_CODE: dict[str, ConverterMode] = {}


def _mode_of(code: Any) -> ConverterMode | None:
    """`ConverterMode.from_code(code)`, None for a code APIS does not know."""
    if type(code) is str:
        mode = _MODE_BY_CODE.get(code)
        if mode is not None:
            return mode
    try:
        mode = ConverterMode.from_code(code)
    except ValueError:
        return None
    if type(code) is str and len(_MODE_BY_CODE) < 64:  # spellings of the four codes
        _MODE_BY_CODE[code] = mode
    return mode
