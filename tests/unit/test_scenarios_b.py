"""Acceptance scenarios of spec section 13 B: negotiation."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from apis.bus.base import RemoteFailure
from apis.config.policy import DealPolicy
from apis.config.scenario import Scenario, TimeWindow
from apis.unit.deal import Deal
from apis.unit.mediator import DealCreationFailed
from apis.unit.user import (
    deal_amount,
    deal_fields,
    evaluate_accept,
    evaluate_request,
    select_accept,
)

from .checks import until
from .harness import Rig, sample

FOUR = ["E001", "E002", "E003", "E004"]


def _scenario(data: dict[str, object] | None = None) -> Scenario:
    return Scenario.from_json(data if data is not None else sample("scenario.json"))


def _block() -> object:
    block = _scenario().block_at("12:00:00")
    assert block is not None
    return block


def test_scenario_10_basic_deal(tmp_path: Path) -> None:
    rig = Rig(tmp_path, FOUR, [95.0, 50.0, 70.0, 66.0])  # E001 4560 Wh, E002 2400 Wh

    async def scenario(rig: Rig) -> tuple[list[Deal], dict[str, list[str]]]:
        c = rig.cluster
        assert await c.wait_for(lambda: bool(c.units["E002"].state.deal_ids), 120)
        deals = await c.deals()
        return deals, {u: list(unit.state.deal_ids) for u, unit in c.units.items()}

    deals, interlocks = rig.run(scenario)
    assert 1 <= len(deals) <= 2
    for deal in deals:
        assert deal.charge_unit_id == "E002" and deal.discharge_unit_id == "E001"
        assert deal.deal_amount_wh == 50 and deal.deal_grid_current_a == 1
        assert deal.point_per_wh == 10
        assert deal.create_date_time is not None
        if deal.request_unit_id == "E001":  # discharge request of 240 Wh, accept of 1200
            assert deal.type == "discharge" and 237 <= (deal.request_amount_wh or 0) <= 240
            assert 1198 <= (deal.accept_amount_wh or 0) <= 1201
        else:  # charge request of 480 Wh, accept of 960
            assert deal.type == "charge" and 478 <= (deal.request_amount_wh or 0) <= 481
            assert 957 <= (deal.accept_amount_wh or 0) <= 960
        assert deal.deal_id in interlocks["E001"] and deal.deal_id in interlocks["E002"]


def test_scenario_11_no_need(tmp_path: Path) -> None:
    block = _block()
    assert evaluate_request(block, 4000) is None  # type: ignore[arg-type]  # sufficient
    assert evaluate_request(block, 3000) is None  # type: ignore[arg-type]  # scarce
    request = evaluate_request(block, 4360)  # type: ignore[arg-type]  # excess, 40 Wh
    assert request == {"type": "discharge", "amountWh": 40, "pointPerWh": 10}
    # in a cluster: E001 at 4360 Wh asks for 40 Wh, below amountMinWh: no negotiation
    rig = Rig(tmp_path, FOUR, [4360 / 48, 80.0, 70.0, 66.0])

    async def scenario(rig: Rig) -> tuple[int, int]:
        await asyncio.sleep(600)
        c = rig.cluster
        negotiations = sum(u.mediator.negotiations for u in c.units.values() if u.mediator)
        return negotiations, len(c.finished) + len(await c.deals())

    assert rig.run(scenario) == (0, 0)


def test_scenario_12_point_and_amount() -> None:
    request = {"type": "charge", "amountWh": 480, "pointPerWh": 10, "unitId": "E002"}
    accepts = [
        {"unitId": "E001", "type": "discharge", "amountWh": 900, "pointPerWh": 12},
        {"unitId": "E003", "type": "discharge", "amountWh": 100, "pointPerWh": 8},
        {"unitId": "E004", "type": "discharge", "amountWh": 500, "pointPerWh": 8},
    ]
    assert select_accept("pointAndAmount", request, accepts) == accepts[2]
    assert select_accept("pointAndAmount", request, accepts[:1]) is None
    selling = {"type": "discharge", "amountWh": 480, "pointPerWh": 10, "unitId": "E001"}
    offers = [
        {"unitId": "E002", "type": "charge", "amountWh": 500, "pointPerWh": 9},
        {"unitId": "E003", "type": "charge", "amountWh": 100, "pointPerWh": 11},
    ]
    assert select_accept("pointAndAmount", selling, offers) == offers[1]


def test_scenario_13_amount_strategy() -> None:
    request = {"type": "charge", "amountWh": 480, "unitId": "E002"}
    accepts = [
        {"unitId": "E001", "amountWh": 300},
        {"unitId": "E003", "amountWh": 900},
        {"unitId": "E004", "amountWh": 500},
    ]
    assert select_accept("amount", request, accepts) == accepts[1]
    assert select_accept(None, request, accepts) == accepts[1]  # default
    rules = DealPolicy(amount_min_wh=50, amount_max_wh=50, amount_unit_wh=50)
    assert deal_amount(480, 900, rules) == 50
    assert deal_amount(40, 900, rules) == 0
    wide = DealPolicy(amount_min_wh=100, amount_max_wh=500, amount_unit_wh=50)
    assert deal_amount(480, 372, wide) == 350
    assert deal_amount(99, 900, wide) == 0


def test_scenario_14_pair_unit_id(tmp_path: Path) -> None:
    block = _block()
    request = {"type": "discharge", "amountWh": 240, "pointPerWh": 10, "unitId": "E001",
               "pairUnitId": "E003", "dealGridCurrentA": 1}
    assert evaluate_accept(block, 2400, request, "E002") is None  # type: ignore[arg-type]
    assert evaluate_accept(block, 2400, request, "E004") is None  # type: ignore[arg-type]
    accept = evaluate_accept(block, 2400, request, "E003")  # type: ignore[arg-type]
    assert accept == {"type": "charge", "amountWh": 1200, "pointPerWh": 10}
    accepts = [{**accept, "unitId": "E003", "dealGridCurrentA": 1},
               {**accept, "unitId": "E002", "amountWh": 2000, "dealGridCurrentA": 1}]
    chosen = select_accept("amount", request, accepts)
    assert chosen is not None and chosen["unitId"] == "E003"
    assert deal_fields(request, chosen, 50, "n1")["requestPairUnitId"] == "E003"
    # in a cluster: E001 (excess) may only deal with E003, although E002 is short too
    data = sample("scenario.json")
    data["00:00:00-24:00:00"]["request"]["excess"]["discharge"]["pairUnitId"] = "E003"
    rig = Rig(tmp_path, FOUR, [95.0, 70.0, 50.0, 66.0], scenarios={"E001": data})

    async def scenario(rig: Rig) -> list[Deal]:
        c = rig.cluster

        async def own_requests() -> list[Deal]:  # E003 may ask E001 first: that is allowed
            return [d for d in await c.deals() if d.request_unit_id == "E001"]

        await until(own_requests, 300)
        return await own_requests()

    deals = rig.run(scenario)
    assert deals and all(d.charge_unit_id == "E003" for d in deals)
    assert all(d.request_pair_unit_id == "E003" for d in deals)


def test_scenario_15_busy_unit(tmp_path: Path) -> None:
    rig = Rig(tmp_path, FOUR, [95.0, 50.0, 70.0, 66.0], policy={"operationMode": "heteronomous"})

    async def scenario(rig: Rig) -> tuple[object, object, str]:
        c = rig.cluster
        assert await c.wait_for(lambda: c.grid_master_unit() is not None, 120)
        e001 = c.units["E001"]
        await c.registry.set_global_mode("autonomous")
        e001.state.deal_ids.extend(["busy-1", "busy-2"])  # two interlocks held
        assert e001.user is not None and e001.mediator is not None
        request = await e001.user.request_now()
        accept = await e001.user.accept_for(
            {"type": "charge", "amountWh": 480, "unitId": "E002", "pointPerWh": 10}
        )
        with pytest.raises(RemoteFailure) as failure:  # DealCreationFailed, across the bus
            await c.inject_deal(_deal_json("E001", "E002"))
        with pytest.raises(DealCreationFailed):
            await e001.mediator.create_deal(Deal.from_json(_deal_json("E001", "E002")))
        return request, accept, str(failure.value) + e001.user.last_refusal

    request, accept, why = rig.run(scenario)
    assert request is None and accept is None
    assert "busy" in why


def _deal_json(discharge: str, charge: str, amount: float = 50) -> dict[str, object]:
    return {
        "unitId": charge, "negotiationId": "injected", "requestUnitId": charge,
        "acceptUnitId": discharge, "type": "charge", "chargeUnitId": charge,
        "dischargeUnitId": discharge, "dealGridCurrentA": 1.0, "dealAmountWh": amount,
    }


def test_scenario_16_mode_gating(tmp_path: Path) -> None:
    # global heteronomous: nobody negotiates, but an injected deal is executed
    rig = Rig(tmp_path, FOUR, [95.0, 50.0, 70.0, 66.0], policy={"operationMode": "heteronomous"})

    async def scenario(rig: Rig) -> tuple[int, Deal]:
        c = rig.cluster
        assert await c.wait_for(lambda: c.grid_master_unit() is not None, 120)
        await asyncio.sleep(60)
        negotiations = sum(u.mediator.negotiations for u in c.units.values() if u.mediator)
        await c.inject_deal(_deal_json("E001", "E002"))
        assert await c.wait_for(lambda: len(c.finished) == 1, 1800)
        return negotiations, c.finished[0].deal

    negotiations, deal = rig.run(scenario)
    assert negotiations == 0
    assert deal.abort_reason is None and deal.cumulate_amount_wh is not None
    assert abs(deal.cumulate_amount_wh - 50) <= 0.25


def test_scenario_16_local_heteronomous(tmp_path: Path) -> None:
    rig = Rig(tmp_path, FOUR, [95.0, 50.0, 70.0, 66.0])

    async def scenario(rig: Rig) -> tuple[list[Deal], str]:
        c = rig.cluster
        assert await c.wait_for(lambda: bool(c.units["E002"].state.deal_ids), 120)
        e002 = c.units["E002"]
        e002.state.local_mode = "heteronomous"
        running = set(e002.state.deal_ids)
        assert await c.wait_for(lambda: not (set(e002.state.deal_ids) & running), 1800)
        await asyncio.sleep(120)
        assert e002.user is not None
        await e002.user.request_now()
        return [f.deal for f in c.finished], e002.user.last_refusal + str(e002.state.deal_ids)

    finished, why = rig.run(scenario)
    assert finished and all(d.abort_reason is None for d in finished)  # ran to completion
    assert why == "effective mode heteronomous[]"


def test_scenario_17_no_grid_master_no_trade(tmp_path: Path) -> None:
    policy = {"gridMaster": {"gridMasterSelection": {"strategy": "fixed", "fixedUnitId": "E004"}}}
    rig = Rig(tmp_path, FOUR, [95.0, 50.0, 70.0, 66.0], policy=policy)
    rig.cluster.unit_ids = ["E001", "E002", "E003"]  # the only allowed Grid Master is down

    async def scenario(rig: Rig) -> tuple[int, str]:
        await asyncio.sleep(300)
        c = rig.cluster
        e001 = c.units["E001"]
        assert e001.user is not None
        assert await e001.user.request_now() is None
        negotiations = sum(u.mediator.negotiations for u in c.units.values() if u.mediator)
        return negotiations + len(await c.deals()), e001.user.last_refusal

    assert rig.run(scenario) == (0, "no Grid Master")


def _windows(*windows: tuple[str, str, dict[str, object]]) -> Scenario:
    """A scenario from windows as given (the file loader also insists they cover the day)."""
    base = _scenario()
    blocks = []
    for start, end, change in windows:
        block = base.windows[0].block
        if change:
            block = block.model_copy(update=change)
        blocks.append(TimeWindow(start, end, block))
    return Scenario(base.refreshing_period_msec, base.accept_selection, tuple(blocks))


def test_scenario_18_scenario_time_windows() -> None:
    block = _scenario().windows[0].block
    morning_request = dict(block.request)
    morning_request["short"] = {
        "charge": block.request["excess"]["discharge"].model_copy(
            update={"limit_wh": 3000, "point_per_wh": 10}
        )
    }
    scenario = _windows(
        ("00:00:00", "12:00:00", {"request": morning_request}), ("12:00:00", "24:00:00", {})
    )
    before, after = scenario.block_at("11:59:59"), scenario.block_at("12:00:00")
    assert before is not None and after is not None
    assert evaluate_request(before, 2400) == {"type": "charge", "amountWh": 600, "pointPerWh": 10}
    assert evaluate_request(after, 2400) == {"type": "charge", "amountWh": 480, "pointPerWh": 10}
    gap = _windows(("00:00:00", "12:00:00", {}))
    assert gap.block_at("13:00:00") is None  # no entry matched: no request, no accept


def test_scenario_18_uncovered_time_in_a_cluster(tmp_path: Path) -> None:
    rig = Rig(tmp_path, ["E001", "E002"], [95.0, 50.0])

    async def scenario(rig: Rig) -> tuple[object, object, str, int]:
        e002 = rig.cluster.units["E002"]
        assert e002.user is not None
        e002.user.scenario = _windows(("06:00:00", "24:00:00", {}))  # the world starts at 00:00
        await asyncio.sleep(300)
        made = await e002.user.request_now()
        accepted = await e002.user.accept_for(
            {"type": "discharge", "amountWh": 240, "unitId": "E001", "pointPerWh": 10}
        )
        return made, accepted, e002.user.last_refusal, len(await rig.cluster.deals())

    made, accepted, why, deals = rig.run(scenario)
    assert made is None and accepted is None and why == "no scenario entry matched"
    assert deals == 0  # E001's requests find no accept either
