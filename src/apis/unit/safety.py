"""Safety checks (spec 12.2, 12.3): pure functions over unit data, deals and configuration,
plus the small memory that turns a first detection into a WARN and a second consecutive one
into an ERROR.

Local (each unit, after every successful acquisition):

- always: a heavy converter alarm, a battery that withdrew permission
  (`battery_operation_status` != 3), a mode whose `operationMode` text does not match it;
- static ranges of hwConfig `safety.range.dcdc.meter.{tmp,vg,vb,ig,ib}` (in every mode,
  `manual` included, as the original code does);
- unless the effective mode is `manual`: converter mode against this unit's deals, and the
  dynamic check of the measured values against the set-points (suppressed while the
  Controller runs a voltage-reference start, authorisation or hand-over).

Global (the Grid Master, every pass, on data collected at one instant):

- the collected unit IDs equal `memberUnitIds` (WARN only);
- current balance: over the units of deals with both sides active, |sum ig| <=
  `sumOfDealingUnitGridCurrentAllowancePerUnitA` x number of units (WARN, then ERROR);
- the sum of deal currents <= `sumOfDealGridCurrentMaxA` (ours: checked every pass too, not
  only at admission, so a policy reloaded with a lower limit is enforced);
- with topology evaluation: per branch, |sum ig of the forward units| <= its capacity.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from apis.config.hwconfig import HwConfig
from apis.config.policy import Policy
from apis.hardware.driver import UnitData
from apis.hardware.modes import ConverterMode
from apis.unit.data import UnitSnapshot
from apis.unit.deal import Deal
from apis.unit.memo import IdentityMemo

METERS = ("tmp", "vg", "vb", "ig", "ib")


@dataclass(frozen=True, slots=True)
class Finding:
    """One violation: `key` identifies the check (for the WARN-then-ERROR memory)."""

    key: str
    category: str  # HARDWARE / LOGIC / USER
    message: str
    tolerated_once: bool  # first detection WARN, second consecutive ERROR
    warn_only: bool = False  # never more than a WARN


class Consecutive:
    """WARN on the first detection of a tolerated finding, ERROR on the second in a row;
    a check that passes forgets its count."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def levels(self, findings: Iterable[Finding]) -> list[tuple[Finding, str]]:
        out: list[tuple[Finding, str]] = []
        now: set[str] = set()
        for f in findings:
            if f.warn_only:
                out.append((f, "WARN"))
                continue
            if not f.tolerated_once:
                out.append((f, "ERROR"))
                continue
            now.add(f.key)
            out.append((f, "ERROR" if f.key in self._seen else "WARN"))
        self._seen = now
        return out


# ---- local -----------------------------------------------------------------------------


def always_checks(data: UnitData) -> list[Finding]:
    out = []
    status = data.dcdc.status
    if status.alarm_state == "Heavy alarm":
        out.append(Finding("alarm", "HARDWARE", f"dcdc heavy alarm ({status.alarm})", False))
    if data.battery.battery_operation_status != 3:
        out.append(
            Finding(
                "battery",
                "HARDWARE",
                f"battery_operation_status = {data.battery.battery_operation_status} "
                "(energy sharing not permitted; must be 3)",
                False,
            )
        )
    return out


def static_checks(data: UnitData, hw: HwConfig) -> list[Finding]:
    out = []
    meter = data.dcdc.meter
    values = (meter.tmp, meter.vg, meter.vb, meter.ig, meter.ib)  # as METERS
    for (name, low, high), value in zip(_meter_bounds.get(hw), values, strict=True):
        value = float(value)
        if not low <= value <= high:
            out.append(
                Finding(
                    f"range.{name}",
                    "HARDWARE",
                    f"dcdc.meter.{name} = {value:g} (safety range {low:g}..{high:g})",
                    False,
                )
            )
    return out


def _bounds_of(hw: HwConfig) -> tuple[tuple[str, float, float], ...]:
    """(name, min, max) of each of METERS."""
    ranges = hw.meter_ranges
    return tuple((name, getattr(ranges, name).min, getattr(ranges, name).max) for name in METERS)


# Every unit checks every acquisition against a hwConfig that changes only when its file is
# reloaded (then a new object: it is frozen).
_meter_bounds: IdentityMemo[tuple[tuple[str, float, float], ...]] = IdentityMemo(_bounds_of)


def _direction_mode(deal: Deal, unit_id: str) -> ConverterMode:
    return (
        ConverterMode.CHARGE if deal.charge_unit_id == unit_id else ConverterMode.DISCHARGE
    )


def mode_deal_checks(
    unit_id: str, data: UnitData, deals: list[Deal], effective_mode: str
) -> list[Finding]:
    """Section 12.3.3: what the converter does must match this unit's deals and mode."""
    mode = data.dcdc.mode
    mine = [d for d in deals if d.involves(unit_id)]
    if not mine:
        if mode is not ConverterMode.WAITING:
            return [
                Finding(
                    "active-without-deal",
                    "HARDWARE",
                    f"converter in {mode.name} but no deal",
                    True,
                )
            ]
        return []
    if effective_mode in ("stop", "manual"):
        return [
            Finding(
                "deal-in-mode",
                "USER",
                f"effective operation mode is {effective_mode} but deal exists",
                False,
            )
        ]
    out = []
    active = [d for d in mine if d.master_side_active]
    directions = {d.direction_of(unit_id) for d in active}
    if len(directions) > 1:
        out.append(
            Finding("direction", "LOGIC", "deals in both directions on this unit", True)
        )
    both = [d for d in active if d.both_sides_active]
    if both:
        allowed = {ConverterMode.VOLTAGE_REFERENCE} | {_direction_mode(d, unit_id) for d in both}
        if any(d.transitional for d in active):
            allowed.add(ConverterMode.WAITING)
        if mode not in allowed:
            out.append(
                Finding(
                    "mode-vs-deal",
                    "HARDWARE",
                    f"converter in {mode.name}, deals need "
                    f"{'/'.join(sorted(m.name for m in allowed))}",
                    True,
                )
            )
    elif not active and mode is not ConverterMode.WAITING:
        out.append(
            Finding(
                "mode-vs-deal",
                "HARDWARE",
                f"converter in {mode.name} while none of its deals is active",
                True,
            )
        )
    return out


def dynamic_checks(data: UnitData, hw: HwConfig, policy: Policy) -> list[Finding]:
    """The measured values against the set-points (section 12.3.3 table)."""
    dcdc = data.dcdc
    mode = dcdc.mode
    ig, vg = dcdc.meter.ig, dcdc.meter.vg
    dig, dvg = dcdc.param.dig, dcdc.vdis.dvg
    allowance = hw.grid_current_allowance_a
    r = policy.operation_grid_voltage_v_range
    problem = None
    if mode is ConverterMode.WAITING:
        if abs(ig) > allowance:
            problem = f"WAIT but ig = {ig:.3f} A (allowance {allowance} A)"
    elif mode is ConverterMode.VOLTAGE_REFERENCE:
        if abs(vg - dvg) > policy.grid_voltage_allowance_v:
            problem = (
                f"voltage reference vg = {vg:.2f} V but dvg = {dvg:.2f} V "
                f"(allowance {policy.grid_voltage_allowance_v} V)"
            )
    else:
        expected = dig if mode is ConverterMode.CHARGE else -dig
        if abs(ig - expected) > allowance:
            problem = f"{mode.name} ig = {ig:.3f} A but dig = {dig:.3f} A (allowance {allowance} A)"
        elif not r.min <= vg <= r.max:
            problem = f"{mode.name} vg = {vg:.2f} V outside {r.min:g}..{r.max:g} V"
    if problem is None:
        return []
    return [Finding("dynamic", "HARDWARE", problem, True)]


# ---- global ----------------------------------------------------------------------------


def global_checks(
    policy: Policy, data: dict[str, UnitSnapshot], deals: list[Deal]
) -> list[Finding]:
    out = []
    members = set(policy.member_unit_ids)
    if set(data) != members:
        missing = sorted(members - set(data))
        out.append(
            Finding(
                "members", "HARDWARE", f"illegal member list (missing {missing})", False, True
            )
        )
    safety = policy.safety
    both = [d for d in deals if d.both_sides_active]
    units = {u for d in both for u in (d.charge_unit_id, d.discharge_unit_id)}
    if units and units <= set(data):
        total = sum(data[u].ig for u in units)
        allowance = safety.sum_of_dealing_unit_grid_current_allowance_per_unit_a * len(units)
        if abs(total) > allowance:
            out.append(
                Finding(
                    "balance",
                    "HARDWARE",
                    f"sum of ig of dealing units {sorted(units)} = {total:.3f} A "
                    f"(allowance {allowance:.3f} A)",
                    True,
                )
            )
    active = [d for d in deals if d.master_side_active]
    topology = safety.grid_topology_based_evaluation
    if topology.enabled:
        for branch in topology.branch_ids:
            forward, _ = topology.branch_units(branch)
            capacity = abs(topology.branch_capacity_a(branch))
            current = sum(data[u].ig for u in forward if u in data)
            if abs(current) > capacity:
                out.append(
                    Finding(
                        f"branch.{branch}",
                        "HARDWARE",
                        f"branch {branch} current {current:.3f} A (capacity {capacity} A)",
                        False,
                    )
                )
    else:
        total_deal = sum(d.deal_grid_current_a for d in active)
        if total_deal > safety.sum_of_deal_grid_current_max_a + 1e-9:
            out.append(
                Finding(
                    "sum-of-deals",
                    "HARDWARE",
                    f"sum of deal grid current {total_deal} A "
                    f"(sumOfDealGridCurrentMaxA {safety.sum_of_deal_grid_current_max_a} A)",
                    False,
                )
            )
    return out
