"""Faults mid-deal (emulator fault injection, virtual time), and Force / Soft Stop.

After each fault: no converter command outside its limits, never two stiff voltage
references (the rig checks it on every run), every deal ended with a record on each live
unit saying how it ended and how much energy moved, and no deal left in the registry.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from apis.hardware.modes import ConverterMode
from apis.unit import subjects
from apis.unit.deal import Deal

from .checks import assert_deals_recorded, assert_within_limits, until
from .harness import Rig
from .test_scenarios_c import FOUR, inject, rig_of, until_finished, until_started

WAIT, VR = ConverterMode.WAITING, ConverterMode.VOLTAGE_REFERENCE


def mode_of(rig: Rig, unit: str) -> ConverterMode:
    return rig.world.unit_data(unit).dcdc.mode


async def two_deals(rig: Rig) -> tuple[str, str]:
    """Deal 1 E001 -> E002 (VR on E002), deal 2 E003 -> E004 (E004 in CHARGE), both running."""
    first = await inject(rig, "E001", "E002", amount=200)
    await until_started(rig, first)
    second = await inject(rig, "E003", "E004", amount=200)
    await until_started(rig, second)
    return first, second


async def all_ended(rig: Rig, deal_ids: tuple[str, ...], timeout: float = 300) -> list[Deal]:
    deals = [await until_finished(rig, d, timeout) for d in deal_ids]

    async def gone() -> bool:
        return not any(d.deal_id in deal_ids for d in await rig.cluster.deals())

    await until(gone, timeout)
    return deals


def _registry_empty(rig: Rig) -> object:
    async def check() -> bool:
        return not await rig.cluster.deals()

    return check


def finish(rig: Rig, live: list[str]) -> None:
    assert_within_limits(rig)
    assert_deals_recorded(rig, live)


def test_fault_driver_stops_answering_on_the_voltage_reference(tmp_path: Path) -> None:
    rig = rig_of(tmp_path)

    async def scenario(rig: Rig) -> list[Deal]:
        ids = await two_deals(rig)
        rig.world.inject_driver_timeout("E002", 5.0)
        deals = await all_ended(rig, ids)
        await until(lambda: all(mode_of(rig, u) is WAIT for u in ("E001", "E003", "E004")), 120)
        rig.world.clear_faults("E002")
        await until(lambda: mode_of(rig, "E002") is WAIT, 120)
        return deals

    deals = rig.run(scenario)
    assert all(d.abort_date_time or d.scram_date_time for d in deals)
    finish(rig, FOUR)


def test_fault_converter_alarm(tmp_path: Path) -> None:
    rig = rig_of(tmp_path)

    async def scenario(rig: Rig) -> list[Deal]:
        ids = await two_deals(rig)
        rig.world.inject_converter_alarm("E003")
        deals = await all_ended(rig, ids[1:])
        await until(lambda: mode_of(rig, "E003") is WAIT and mode_of(rig, "E004") is WAIT, 60)
        deals += await all_ended(rig, ids[:1], timeout=3600)
        return deals

    deals = rig.run(scenario)
    assert deals[0].abort_reason and "heavy alarm" in deals[0].abort_reason
    assert deals[1].abort_reason is None  # the other pair finished normally
    finish(rig, FOUR)


def test_fault_meter_out_of_safety_range(tmp_path: Path) -> None:
    rig = rig_of(tmp_path)

    async def scenario(rig: Rig) -> list[Deal]:
        ids = await two_deals(rig)
        rig.world.inject_over_temperature("E002", 25.0)  # the voltage reference overheats
        deals = await all_ended(rig, ids)
        await until(lambda: all(mode_of(rig, u) is WAIT for u in FOUR), 120)
        return deals

    deals = rig.run(scenario)
    assert any("dcdc.meter.tmp" in (d.abort_reason or d.scram_reason or "") for d in deals)
    finish(rig, FOUR)


def test_fault_battery_denies_sharing(tmp_path: Path) -> None:
    rig = rig_of(tmp_path)
    period = rig.config.policy.controller.data_acquisition_period_msec / 1000

    async def scenario(rig: Rig) -> tuple[list[Deal], float]:
        ids = await two_deals(rig)
        loop = asyncio.get_running_loop()
        start = loop.time()
        rig.world.inject_sharing_denied("E001")
        deals = await all_ended(rig, ids[:1], timeout=100)
        await until(lambda: mode_of(rig, "E001") is WAIT, 100, step=0.1)
        took = loop.time() - start
        deals += await all_ended(rig, ids[1:], timeout=3600)
        return deals, took

    deals, took = rig.run(scenario)
    assert took < 100
    assert took <= period + 6.0, took  # about one data-acquisition period
    assert deals[0].abort_reason and "battery_operation_status" in deals[0].abort_reason
    assert deals[1].abort_reason is None
    finish(rig, FOUR)


def test_fault_two_grid_masters(tmp_path: Path) -> None:
    rig = rig_of(tmp_path)

    async def scenario(rig: Rig) -> tuple[list[Deal], list[str], list[str]]:
        c = rig.cluster
        ids = await two_deals(rig)
        first = c.grid_master_unit()
        assert first is not None
        intruder = next(u for u in FOUR if u != first)
        unit = c.units[intruder]
        assert unit.registry is not None
        gms = [c.units[first].grid_master, None]
        await unit.registry.clear_grid_master()  # bypass the lock, as after a partition
        await unit.start_grid_master()
        gms[1] = unit.grid_master
        deals = await all_ended(rig, ids, timeout=120)
        await until(lambda: all(mode_of(rig, u) is WAIT for u in FOUR), 30)
        handled = [
            [str(e) for e in gm.handled_errors] if gm is not None else [] for gm in gms
        ]
        await until(lambda: len(c.grid_master_units()) == 1, 300)
        return deals, handled[0], handled[1]

    deals, first_errors, second_errors = rig.run(scenario)
    for errors in (first_errors, second_errors):  # both stop everything and reset
        assert any("another GridMaster exists" in e for e in errors), errors
    assert all(d.scram_date_time for d in deals)
    finish(rig, FOUR)


def test_fault_unit_dies_mid_deal(tmp_path: Path) -> None:
    rig = rig_of(tmp_path)

    async def scenario(rig: Rig) -> list[Deal]:
        ids = await two_deals(rig)
        await rig.cluster.kill_unit("E003")  # the CC discharge side of deal 2
        deals = await all_ended(rig, ids[1:], timeout=120)
        await until(lambda: mode_of(rig, "E004") is WAIT, 60)
        deals += await all_ended(rig, ids[:1], timeout=3600)
        return deals

    deals = rig.run(scenario)
    assert deals[0].abort_reason and "E003" in deals[0].abort_reason
    assert deals[1].abort_reason is None
    finish(rig, ["E001", "E002", "E004"])


def test_fault_voltage_reference_dies_mid_deal(tmp_path: Path) -> None:
    rig = rig_of(tmp_path)

    async def scenario(rig: Rig) -> tuple[list[Deal], str | None]:
        c = rig.cluster
        ids = await two_deals(rig)
        await until(lambda: c.grid_master_unit() == "E002", 60)
        await c.kill_unit("E002")  # the voltage reference, and the Grid Master with it
        await until(lambda: all(mode_of(rig, u) is WAIT for u in ("E001", "E003", "E004")),
                    300)
        deals = await all_ended(rig, ids, timeout=600)
        await until(lambda: c.grid_master_unit() is not None, 300)
        return deals, c.grid_master_unit()

    deals, gm = rig.run(scenario)
    assert gm in ("E001", "E003", "E004")
    assert all(d.abort_date_time or d.scram_date_time for d in deals)
    finish(rig, ["E001", "E003", "E004"])


# ---- Force Stop and Soft Stop ------------------------------------------------------------


async def set_global_mode(rig: Rig, mode: str) -> None:
    observer = rig.cluster._observer
    assert observer is not None
    await observer.request(subjects.OPERATION_MODE, mode,
                           {subjects.COMMAND: "set", subjects.OPERATOR: "test"}, timeout=30)


@pytest.mark.parametrize("state", ["ramping", "running", "two_deals", "manual"])
def test_force_stop_from_any_state(tmp_path: Path, state: str) -> None:
    rig = rig_of(tmp_path)
    loop_s = rig.config.policy.grid_master.main_loop_period_msec / 1000

    async def scenario(rig: Rig) -> float:
        c = rig.cluster
        if state == "ramping":
            deal_id = await inject(rig, "E001", "E002")
            await until(lambda: mode_of(rig, "E002") is VR, 60, step=0.05)
        elif state == "running":
            await until_started(rig, await inject(rig, "E001", "E002"))
        elif state == "two_deals":
            await two_deals(rig)
        else:
            await until(lambda: c.grid_master_unit() is not None, 120)
            await set_global_mode(rig, "manual")
            observer = c._observer
            assert observer is not None
            await observer.request(subjects.controller_control_manual("E001"),
                                   {"command": "VOLTAGE_REFERENCE"}, timeout=30)
            await asyncio.sleep(30)
            await observer.request(subjects.controller_control_manual("E003"),
                                   {"command": "DISCHARGE", "params": {"gridCurrentA": 1}},
                                   timeout=30)
        assert not all(mode_of(rig, u) is WAIT for u in FOUR)
        await set_global_mode(rig, "stop")
        took = await until(lambda: all(mode_of(rig, u) is WAIT for u in FOUR), 60, step=0.1)
        await until(_registry_empty(rig), 30)
        await asyncio.sleep(120)  # and it stays so
        assert all(mode_of(rig, u) is WAIT for u in FOUR)
        assert not await c.deals()
        _ = deal_id if state == "ramping" else None
        return took

    took = rig.run(scenario)
    assert took <= 2 * loop_s, took
    finish(rig, FOUR)


def test_soft_stop_lets_running_deals_finish_and_starts_none(tmp_path: Path) -> None:
    rig = Rig(tmp_path, FOUR, [95.0, 50.0, 70.0, 70.0], policy={"operationMode": "autonomous"})

    async def scenario(rig: Rig) -> tuple[Deal, int, int]:
        c = rig.cluster

        async def running() -> Deal | None:
            return next((d for d in await c.deals() if d.started and not d.stopped), None)

        await until(running, 600)
        deal = await running()
        assert deal is not None
        await set_global_mode(rig, "heteronomous")
        def created() -> int:
            return sum(u.mediator.deals_created for u in c.units.values() if u.mediator)

        counts = created()
        ended = await until_finished(rig, deal.deal_id, timeout=3600)
        await until(_registry_empty(rig), 3600)
        await asyncio.sleep(1800)  # half an hour of Soft Stop: no new deal
        during = created() - counts
        assert all(mode_of(rig, u) is WAIT for u in FOUR)
        await set_global_mode(rig, "autonomous")  # Run resumes
        await until(lambda: created() > counts + during, 600)
        resumed = created()
        return ended, during, resumed - counts

    deal, during, resumed = rig.run(scenario)
    assert deal.abort_date_time is None and deal.scram_date_time is None
    assert (deal.cumulate_amount_wh or 0) >= deal.deal_amount_wh
    assert during == 0
    assert resumed > 0
    finish(rig, FOUR)
