"""The User's decisions (spec sections 3.1-3.4): pure functions of a scenario and numbers.

- `evaluate_request`: from the battery status, should this unit ask to charge or discharge?
- `evaluate_accept`: may this unit answer a foreign request, and with how much?
- `select_accept`: which of the accepts to take (`amount`, `pointAndAmount`).
- `deal_amount`: the amount rules.

Requests and accepts travel as JSON objects with the keys of section 1.8 (`type`,
`amountWh`, `pointPerWh`, `pairUnitId`, `efficientGridVoltageV`, `dateTime`,
`dealGridCurrentA`, `unitId`).
"""

from __future__ import annotations

from typing import Any

from apis.config.policy import DealPolicy
from apis.config.scenario import DealRule, ScenarioBlock

Offer = dict[str, Any]  # a request or an accept, JSON form


class ScenarioEvaluationError(ValueError):
    """The scenario gives no usable answer (no status range matched, negative amount...)."""


def opposite(direction: str) -> str:
    return "discharge" if direction == "charge" else "charge"


def remaining_capacity_wh(capacity_wh: float, rsoc: float) -> int:
    """`apis.remaining_capacity_wh` = int(batteryNominalCapacityWh x rsoc / 100)."""
    return int(capacity_wh * rsoc / 100)


def battery_status(block: ScenarioBlock, remaining_wh: float) -> str:
    status = block.status_of(remaining_wh)
    if status is None:
        keys = list(block.battery_status)
        raise ScenarioEvaluationError(
            f"remaining capacity {remaining_wh} Wh matches no batteryStatus range {keys}"
        )
    return status


def _amount(rule: DealRule, direction: str, remaining_wh: int, where: str) -> int:
    limit = int(rule.limit_wh)
    amount = limit - remaining_wh if direction == "charge" else remaining_wh - limit
    if amount < 0:
        raise ScenarioEvaluationError(
            f"{where}.{direction}: limitWh = {rule.limit_wh} gives a negative amount "
            f"{amount} Wh at remaining capacity {remaining_wh} Wh"
        )
    return amount


def _offer(direction: str, amount: int, rule: DealRule) -> Offer:
    offer: Offer = {"type": direction, "amountWh": amount}
    if rule.point_per_wh is not None:
        offer["pointPerWh"] = rule.point_per_wh
    if rule.pair_unit_id is not None:
        offer["pairUnitId"] = rule.pair_unit_id
    return offer


def evaluate_request(block: ScenarioBlock, remaining_wh: int) -> Offer | None:
    """The request this unit should make now, or None (section 3.1).

    Raises ScenarioEvaluationError when no status matches or the amount is negative.
    """
    status = battery_status(block, remaining_wh)
    entry = block.request.get(status) or {}
    # charge wins when both directions are present
    direction = "charge" if "charge" in entry else "discharge" if "discharge" in entry else None
    if direction is None:
        return None
    rule = entry[direction]  # type: ignore[index]
    amount = _amount(rule, direction, remaining_wh, f"request.{status}")
    if amount == 0:
        return None
    return _offer(direction, amount, rule)


def evaluate_accept(
    block: ScenarioBlock, remaining_wh: int, request: Offer, own_unit_id: str
) -> Offer | None:
    """The accept this unit gives to a foreign `request`, or None (section 3.2)."""
    pair = request.get("pairUnitId")
    if pair is not None and pair != own_unit_id:
        return None
    direction = opposite(str(request.get("type")))
    status = battery_status(block, remaining_wh)
    entry = block.accept.get(status) or {}
    rule = entry.get(direction)  # type: ignore[call-overload]
    if rule is None:
        return None
    if rule.pair_unit_id is not None and rule.pair_unit_id != request.get("unitId"):
        return None
    amount = _amount(rule, direction, remaining_wh, f"accept.{status}")
    if amount == 0:
        return None
    return _offer(direction, amount, rule)


def select_accept(strategy: str | None, request: Offer, accepts: list[Offer]) -> Offer | None:
    """The accept to take (section 3.3); unknown or missing strategy means `amount`."""
    pair = request.get("pairUnitId")
    if pair is not None:
        accepts = [a for a in accepts if a.get("unitId") == pair]
    if strategy == "pointAndAmount":
        return _by_point_and_amount(request, accepts)
    return _by_amount(accepts)


def _by_amount(accepts: list[Offer]) -> Offer | None:
    best: Offer | None = None
    for accept in accepts:
        amount = accept.get("amountWh")
        if amount is None:
            continue
        if best is None or amount > best["amountWh"]:
            best = accept  # strictly greater: the first one wins ties
    return best


def _by_point_and_amount(request: Offer, accepts: list[Offer]) -> Offer | None:
    price = request.get("pointPerWh")
    buying = request.get("type") == "charge"
    candidates = []
    for accept in accepts:
        offered = accept.get("pointPerWh")
        if offered is None or accept.get("amountWh") is None:
            continue
        if price is not None and (offered > price if buying else offered < price):
            continue
        candidates.append(accept)
    best: Offer | None = None
    for accept in candidates:
        if best is None:
            best = accept
            continue
        better_price = (
            accept["pointPerWh"] < best["pointPerWh"]
            if buying
            else accept["pointPerWh"] > best["pointPerWh"]
        )
        same_price = accept["pointPerWh"] == best["pointPerWh"]
        if better_price or (same_price and accept["amountWh"] > best["amountWh"]):
            best = accept
    return best


def deal_amount(request_wh: float, accept_wh: float, rules: DealPolicy) -> int:
    """Section 3.4: the smaller amount, capped, rounded down to the unit; 0 = no deal."""
    amount = int(min(request_wh, accept_wh))
    amount = min(amount, rules.amount_max_wh)
    amount = (amount // rules.amount_unit_wh) * rules.amount_unit_wh
    if amount < rules.amount_min_wh:
        return 0
    return amount


def deal_fields(
    request: Offer, accept: Offer, amount_wh: int, negotiation_id: str
) -> dict[str, Any]:
    """The negotiation fields of a deal (section 3.5), JSON form."""
    charge = request["type"] == "charge"
    charge_side, discharge_side = (request, accept) if charge else (accept, request)
    fields: dict[str, Any] = {
        "unitId": request["unitId"],
        "negotiationId": negotiation_id,
        "requestUnitId": request["unitId"],
        "acceptUnitId": accept["unitId"],
        "requestDateTime": request.get("dateTime"),
        "acceptDateTime": accept.get("dateTime"),
        "requestPointPerWh": request.get("pointPerWh"),
        "acceptPointPerWh": accept.get("pointPerWh"),
        "requestDealGridCurrentA": request.get("dealGridCurrentA"),
        "acceptDealGridCurrentA": accept.get("dealGridCurrentA"),
        "type": request["type"],
        "chargeUnitId": charge_side["unitId"],
        "dischargeUnitId": discharge_side["unitId"],
        "pointPerWh": charge_side.get("pointPerWh"),
        "chargeUnitEfficientGridVoltageV": charge_side.get("efficientGridVoltageV"),
        "dischargeUnitEfficientGridVoltageV": discharge_side.get("efficientGridVoltageV"),
        "dealGridCurrentA": min(
            float(request["dealGridCurrentA"]), float(accept["dealGridCurrentA"])
        ),
        "requestAmountWh": request["amountWh"],
        "acceptAmountWh": accept["amountWh"],
        "dealAmountWh": amount_wh,
        "requestPairUnitId": request.get("pairUnitId"),
        "acceptPairUnitId": accept.get("pairUnitId"),
    }
    return {k: v for k, v in fields.items() if v is not None}
