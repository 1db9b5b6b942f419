"""The rules of negotiation and deal execution, as pure functions of numbers and policy.

The unit services (Mediator, DealExecution, UnitState) apply them inside their asyncio and
bus mechanics; the planning simulation (`apis.sim.plan`) applies the same functions without
those mechanics. One place for each rule:

- `worth_negotiating`: a request or an accept must be for more than `amountMinWh`;
- `deal_terms`: the amount of a deal from a request and the chosen accept (section 3.4),
  and whether both sides offer a positive deal current; 0 means no deal;
- `interlocks_full`: a unit holding as many deal interlocks as it has capacity for is busy;
- `admission_failure`: the Grid Master's limits on parallel deals when it activates one
  (reset limit, both directions on one unit, the sum of deal currents or the branch
  capacities);
- `force_stop_reason`: a started deal stops when its discharging battery falls below, or
  its charging battery rises above, the policy's limits;
- `attributed_power` and `seconds_to_amount`: the share of a unit's battery power that is
  a deal's when the unit serves several, and when a deal reaches its amount.

The user's own choices (status bands, requests, accepts, the accept selection) are the pure
functions of `apis.unit.user`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from apis.config.policy import DealPolicy, ForceStopCondition, PolicySafety
from apis.unit.user import Offer, deal_amount

STOP_NOW_S = 0.05  # closer than this to the amount: stop now


def worth_negotiating(amount_wh: float, rules: DealPolicy) -> bool:
    """A request is made, and an accept sent, only for more than `amountMinWh`."""
    return amount_wh > rules.amount_min_wh


def deal_terms(request: Offer, accept: Offer, rules: DealPolicy) -> int:
    """The deal amount (Wh) for a request and its chosen accept; 0: no deal (the amount
    rules give nothing, or a side offers no positive deal current)."""
    amount = deal_amount(request["amountWh"], accept["amountWh"], rules)
    if amount <= 0:
        return 0
    if float(request["dealGridCurrentA"]) <= 0 or float(accept["dealGridCurrentA"]) <= 0:
        return 0
    return amount


def interlocks_full(capacity: int, held: int) -> bool:
    """Busy: the unit can join no further deal (`deal_interlock_capacity` interlocks held)."""
    return capacity <= 0 or held >= capacity


@dataclass(frozen=True, slots=True)
class DealFlow:
    """What the admission rules look at of a deal: its two units and its current."""

    charge_unit_id: str
    discharge_unit_id: str
    grid_current_a: float


def admission_failure(
    safety: PolicySafety,
    reset_limit: int,
    resets: int,
    deal: DealFlow,
    active: Sequence[DealFlow],
) -> str | None:
    """Why the Grid Master may not activate `deal` beside the `active` ones (their master
    side is active), or None when it may."""
    if resets >= reset_limit:
        return "deal reset limit exceeded"
    for other in active:
        if other.charge_unit_id == deal.discharge_unit_id:
            return f"{deal.discharge_unit_id} : other charge side deal found"
        if other.discharge_unit_id == deal.charge_unit_id:
            return f"{deal.charge_unit_id} : other discharge side deal found"
    topology = safety.grid_topology_based_evaluation
    running = [*active, deal]
    if topology.enabled:
        for branch in topology.branch_ids:
            capacity = abs(topology.branch_capacity_a(branch))
            for side_units in topology.branch_units(branch):
                discharging = sum(
                    d.grid_current_a for d in running if d.discharge_unit_id in side_units
                )
                charging = sum(d.grid_current_a for d in running if d.charge_unit_id in side_units)
                if discharging > capacity or charging > capacity:
                    return f"branch {branch}: deal current would exceed {capacity} A"
    else:
        total = sum(d.grid_current_a for d in running)
        if total > safety.sum_of_deal_grid_current_max_a + 1e-9:
            return (
                f"sum of deal grid current {total} A would exceed "
                f"sumOfDealGridCurrentMaxA {safety.sum_of_deal_grid_current_max_a} A"
            )
    return None


def force_stop_reason(
    condition: ForceStopCondition,
    discharge_unit_id: str,
    discharge_rsoc: float,
    charge_unit_id: str,
    charge_rsoc: float,
) -> str | None:
    """Why a started deal must stop now (its batteries' limits), or None."""
    if discharge_rsoc < condition.discharge_unit_lower_limit_rsoc:
        return f"{discharge_unit_id} : dischargeUnitLowerLimitRsoc"
    if charge_rsoc > condition.charge_unit_upper_limit_rsoc:
        return f"{charge_unit_id} : chargeUnitUpperLimitRsoc"
    return None


def attributed_power(battery_power_w: float, mine_a: float, others_a: float) -> float:
    """A deal's share of a unit's battery power, by its share of the unit's compensated
    current (`others_a`: of the unit's other started deals). The caller makes sure that
    `mine_a + others_a > 0` when `others_a > 0`."""
    if others_a <= 0:
        return battery_power_w
    return battery_power_w * mine_a / (mine_a + others_a)


def seconds_to_amount(amount_wh: float, counted_wh: float, power_w: float) -> float | None:
    """Seconds until a deal counting `power_w` reaches its amount; None without power."""
    return (amount_wh - counted_wh) * 3600 / power_w if power_w > 0 else None


def amount_reached(amount_wh: float, counted_wh: float, remaining_s: float | None) -> bool:
    """The deal stops now: counted beyond its amount, or within `STOP_NOW_S` of it."""
    return counted_wh > amount_wh or (remaining_s is not None and remaining_s <= STOP_NOW_S)
