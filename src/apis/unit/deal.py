"""The deal record (spec section 3.5): every field, its life-cycle state, its JSON form.

A deal's state is derived only from which phase timestamps are present (the placeholder
``--`` counts as present). Timestamps are APIS time strings of the reference-side unit.

Fields beyond the original's (ours, all optional in JSON):

- `cumulateTimestamp`: the reference unit's acquisition time in seconds (full resolution),
  the precise twin of `cumulateDateTime`, so energy is integrated over exact intervals.
- `chargeUnitPowerW` / `dischargeUnitPowerW`: each side's battery power attributed to the
  deal at `cumulateTimestamp` (for the trapezoid rule).
- `chargeUnitCumulateAmountWh` / `dischargeUnitCumulateAmountWh`: the energy counted on the
  battery side of each unit, so a deal records both ends of the transfer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from pydantic.alias_generators import to_camel

NOT_APPLICABLE = "--"  # a phase the deal never reached


class DealState(Enum):
    NOT_ACTIVATED = "notActivated"
    ACTIVATED = "activated"  # ramping up, authorising or compensating
    STARTED = "started"  # energy is being counted
    STOPPED = "stopped"  # slave side released
    DEACTIVATED = "deactivated"  # both sides released; about to be disposed of


@dataclass
class TimedReason:
    date_time: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"dateTime": self.date_time, "reason": self.reason}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TimedReason:
        return cls(str(data.get("dateTime", "")), str(data.get("reason", "")))


@dataclass
class Deal:
    # set at negotiation (requester side)
    unit_id: str
    negotiation_id: str
    request_unit_id: str
    accept_unit_id: str
    type: str  # the request's direction: "charge" or "discharge"
    charge_unit_id: str
    discharge_unit_id: str
    deal_grid_current_a: float
    deal_amount_wh: float
    request_amount_wh: float | None = None
    accept_amount_wh: float | None = None
    request_date_time: str | None = None
    accept_date_time: str | None = None
    request_point_per_wh: float | None = None
    accept_point_per_wh: float | None = None
    request_deal_grid_current_a: float | None = None
    accept_deal_grid_current_a: float | None = None
    point_per_wh: float | None = None
    charge_unit_efficient_grid_voltage_v: float | None = None
    discharge_unit_efficient_grid_voltage_v: float | None = None
    request_pair_unit_id: str | None = None
    accept_pair_unit_id: str | None = None
    # set at registration
    deal_id: str = ""
    create_date_time: str | None = None
    # set during execution
    compensation_target_voltage_reference_grid_current_a: float | None = None
    activate_date_time: str | None = None
    ramp_up_date_time: str | None = None
    warm_up_date_time: str | None = None
    discharge_unit_compensated_grid_current_a: float | None = None
    charge_unit_compensated_grid_current_a: float | None = None
    start_date_time: str | None = None
    cumulate_date_time: str | None = None
    cumulate_amount_wh: float | None = None
    stop_date_time: str | None = None
    deactivate_date_time: str | None = None
    is_master: bool | None = None
    reset: list[TimedReason] = field(default_factory=list)
    abort_date_time: str | None = None
    abort_reason: str | None = None
    abort: list[TimedReason] = field(default_factory=list)
    scram_date_time: str | None = None
    scram_reason: str | None = None
    need_to_stop_reasons: list[str] = field(default_factory=list)
    test_feature: dict[str, Any] | None = None
    # ours (see the module docstring)
    cumulate_timestamp: float | None = None
    charge_unit_power_w: float | None = None
    discharge_unit_power_w: float | None = None
    charge_unit_cumulate_amount_wh: float | None = None
    discharge_unit_cumulate_amount_wh: float | None = None

    # ---- state -------------------------------------------------------------------------

    @property
    def activated(self) -> bool:
        return self.activate_date_time is not None

    @property
    def ramped_up(self) -> bool:
        return self.ramp_up_date_time is not None

    @property
    def warmed_up(self) -> bool:
        return self.warm_up_date_time is not None

    @property
    def started(self) -> bool:
        return self.start_date_time is not None

    @property
    def stopped(self) -> bool:
        return self.stop_date_time is not None

    @property
    def deactivated(self) -> bool:
        return self.deactivate_date_time is not None

    @property
    def state(self) -> DealState:
        if self.deactivated:
            return DealState.DEACTIVATED
        if self.stopped:
            return DealState.STOPPED
        if self.started:
            return DealState.STARTED
        if self.activated:
            return DealState.ACTIVATED
        return DealState.NOT_ACTIVATED

    @property
    def master_side_active(self) -> bool:
        """The master side must be running: activated and not yet deactivated."""
        return self.activated and not self.deactivated

    @property
    def both_sides_active(self) -> bool:
        """The slave side must be running too: warmed up and not yet stopped."""
        return self.warmed_up and not self.stopped

    @property
    def both_inactive(self) -> bool:
        return not self.master_side_active

    @property
    def transitional(self) -> bool:
        return not self.both_sides_active and not self.both_inactive

    @property
    def master(self) -> bool:
        return bool(self.is_master)

    @property
    def aborted(self) -> bool:
        return self.abort_date_time is not None

    def involves(self, unit_id: str) -> bool:
        return unit_id in (self.charge_unit_id, self.discharge_unit_id)

    def direction_of(self, unit_id: str) -> str:
        """``charge`` or ``discharge``: what `unit_id` does in this deal."""
        if unit_id == self.charge_unit_id:
            return "charge"
        if unit_id == self.discharge_unit_id:
            return "discharge"
        raise ValueError(f"unit {unit_id!r} is not part of deal {self.deal_id}")

    def compensated_current_of(self, unit_id: str) -> float:
        """The grid current attributed to this deal on `unit_id` (a magnitude)."""
        if unit_id == self.charge_unit_id:
            value = self.charge_unit_compensated_grid_current_a
        else:
            value = self.discharge_unit_compensated_grid_current_a
        return abs(value) if value is not None else self.deal_grid_current_a

    @property
    def progress(self) -> float:
        """Share of the amount counted so far, 0..1 (for displays)."""
        if not self.deal_amount_wh:
            return 0.0
        return max(0.0, min(1.0, (self.cumulate_amount_wh or 0.0) / self.deal_amount_wh))

    # ---- life-cycle edits -------------------------------------------------------------

    def record_abort(self, at: str, reason: str) -> None:
        """Abort record of section 5.8; missing phase timestamps become ``--``."""
        if self.abort_date_time is None:
            self.abort_date_time = at
            self.abort_reason = reason
        self.abort.append(TimedReason(at, reason))
        if not self.activated:
            self.activate_date_time = NOT_APPLICABLE
            self.deactivate_date_time = NOT_APPLICABLE
        if not self.started:
            self.start_date_time = NOT_APPLICABLE
            self.stop_date_time = NOT_APPLICABLE

    def record_reset(self, at: str, reason: str) -> None:
        """Back to "not activated" after a failed authorisation (section 5.5)."""
        self.activate_date_time = None
        self.ramp_up_date_time = None
        self.warm_up_date_time = None
        self.start_date_time = None
        self.stop_date_time = None
        self.deactivate_date_time = None
        self.is_master = None
        self.reset.append(TimedReason(at, reason))

    # ---- JSON --------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        # The Grid Master saves every deal each pass: the field names are precomputed, and
        # the common plain values take the first test.
        out: dict[str, Any] = {}
        values = self.__dict__
        for name, key in _JSON_NAMES:
            value = values[name]
            if type(value) in _PLAIN:
                out[key] = value
                continue
            if value is None or (isinstance(value, list) and not value):
                continue
            if name in ("reset", "abort"):
                value = [r.to_json() for r in value]
            elif isinstance(value, list | dict):
                value = _copy_json(value)
            out[key] = value
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Deal:
        # Every unit parses every deal each few seconds: the fields are set directly (what
        # the generated __init__ would do, without its per-field defaults machinery).
        fields: dict[str, Any] = {}
        for key, value in data.items():
            name = _SCALAR_FIELD_NAME.get(key)
            if name is not None and type(value) in _PLAIN:
                fields[name] = value  # most fields: a string or a number, taken as it is
                continue
            name = _FIELD_NAME.get(key)
            if name is None or value is None:
                continue  # unknown keys from newer peers are ignored
            if name in _LIST_FIELDS:
                if name == "need_to_stop_reasons":
                    value = [str(r) for r in value]
                else:
                    value = [TimedReason.from_json(r) for r in value]
            elif isinstance(value, list | dict):
                value = _copy_json(value)
            fields[name] = value
        if not _REQUIRED_SET.issubset(fields):
            missing = [n for n in _REQUIRED if n not in fields]
            raise ValueError(f"deal: missing {', '.join(_JSON_NAME[n] for n in missing)}")
        attributes = dict(_DEFAULTS)  # every field, in declaration order
        attributes.update(reset=[], abort=[], need_to_stop_reasons=[])
        attributes.update(fields)
        deal = object.__new__(cls)
        deal.__dict__.update(attributes)
        return deal

    def copy(self) -> Deal:
        """An independent copy (what ``from_json(to_json())`` gives, without the JSON)."""
        twin = object.__new__(Deal)
        fields = dict(self.__dict__)
        fields["reset"] = [TimedReason(r.date_time, r.reason) for r in self.reset]
        fields["abort"] = [TimedReason(r.date_time, r.reason) for r in self.abort]
        fields["need_to_stop_reasons"] = list(self.need_to_stop_reasons)
        if self.test_feature is not None:
            fields["test_feature"] = _copy_json(self.test_feature)
        twin.__dict__.update(fields)
        return twin


def _copy_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy_json(v) for v in value]
    return value


_JSON_NAME = {f.name: to_camel(f.name) for f in dataclasses.fields(Deal)}
_FIELD_NAME = {v: k for k, v in _JSON_NAME.items()}
_JSON_NAMES = tuple(_JSON_NAME.items())  # (field, JSON key) in declaration order
_PLAIN = frozenset((str, int, float, bool))  # values written (and read) as they are
_LIST_FIELDS = frozenset(("reset", "abort", "need_to_stop_reasons"))
# JSON key -> field, of the fields whose plain value from_json takes as it is
_SCALAR_FIELD_NAME = {k: n for k, n in _FIELD_NAME.items() if n not in _LIST_FIELDS}
_REQUIRED = [
    f.name
    for f in dataclasses.fields(Deal)
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
]
_REQUIRED_SET = frozenset(_REQUIRED)
_DEFAULTS = {  # required fields are always given: None here is only their place
    f.name: None if f.default is dataclasses.MISSING else f.default
    for f in dataclasses.fields(Deal)
}
