"""Acceptance scenarios of spec section 13 C: deal execution.

Deals are injected through `apis.Mediator.deal.create` with the global mode `heteronomous`
(as a management tool would), so each test controls exactly which deals exist and when.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from apis.config.policy import Policy
from apis.emulator import ConverterModel
from apis.emulator.driver import EmulatedDriver
from apis.hardware.modes import ConverterMode
from apis.unit.data import UnitSnapshot
from apis.unit.deal import Deal
from apis.unit.execution import DealExecution

from .harness import Rig, sample

FOUR = ["E001", "E002", "E003", "E004"]
HETERONOMOUS: dict[str, Any] = {"operationMode": "heteronomous"}
RSOC = [70.0, 50.0, 70.0, 50.0]
VR, CHARGE, DISCHARGE, WAIT = (
    ConverterMode.VOLTAGE_REFERENCE,
    ConverterMode.CHARGE,
    ConverterMode.DISCHARGE,
    ConverterMode.WAITING,
)


def deal_json(discharge: str, charge: str, amount: float = 50, **extra: Any) -> dict[str, Any]:
    return {
        "unitId": charge, "negotiationId": "injected", "requestUnitId": charge,
        "acceptUnitId": discharge, "type": "charge", "chargeUnitId": charge,
        "dischargeUnitId": discharge, "dealGridCurrentA": 1.0, "dealAmountWh": amount, **extra,
    }


def rig_of(tmp_path: Path, policy: dict[str, Any] | None = None, **kwargs: Any) -> Rig:
    policy = {**HETERONOMOUS, **(policy or {})}
    return Rig(tmp_path, kwargs.pop("units", FOUR), kwargs.pop("rsoc", RSOC), policy=policy,
               **kwargs)


async def inject(rig: Rig, discharge: str, charge: str, amount: float = 50,
                 **extra: Any) -> str:
    c = rig.cluster
    assert await c.wait_for(lambda: c.grid_master_unit() is not None, 120)
    return (await c.inject_deal(deal_json(discharge, charge, amount, **extra))).deal_id


@contextlib.asynccontextmanager
async def foreign_controller(rig: Rig, unit: str) -> AsyncIterator[None]:
    """A foreign source's own controller, reading its converter every 5 s: without it the
    converter's communication watchdog would stop the source after 60 s."""
    driver = EmulatedDriver(rig.world, unit)

    async def poll() -> None:
        while True:
            await driver.read()
            await asyncio.sleep(5)

    task = asyncio.create_task(poll(), name=f"foreign-{unit}")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def deal_of(rig: Rig, deal_id: str) -> Deal | None:
    stored = await rig.cluster.registry.deal(deal_id)
    return stored.deal if stored else None


async def until_started(rig: Rig, deal_id: str, timeout: float = 300) -> Deal:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        deal = await deal_of(rig, deal_id)
        if deal is not None and deal.started:
            return deal
        await asyncio.sleep(1)
    raise AssertionError(f"deal {deal_id} did not start")


async def until_finished(rig: Rig, deal_id: str, timeout: float = 3600) -> Deal:
    c = rig.cluster
    assert await c.wait_for(lambda: any(f.deal.deal_id == deal_id for f in c.finished), timeout)
    return next(f.deal for f in c.finished if f.deal.deal_id == deal_id)


def test_scenario_19_happy_path(tmp_path: Path) -> None:
    rig = rig_of(tmp_path)

    async def scenario(rig: Rig) -> tuple[Deal, dict[str, list[str]], list[Deal]]:
        deal = await until_finished(rig, await inject(rig, "E001", "E002"))
        await asyncio.sleep(1)
        interlocks = {u: list(unit.state.deal_ids) for u, unit in rig.cluster.units.items()}
        return deal, interlocks, await rig.cluster.deals()

    deal, interlocks, remaining = rig.run(scenario)
    e002, e001 = rig.writes("E002"), rig.writes("E001")
    start = e002[0]
    assert (start.kind, start.mode, start.dvg, start.dig, start.drg) == ("set", VR, 350, 2.3, 0)
    steps = [w.dvg for w in e002[1:5]]
    assert all(w.kind == "voltage" for w in e002[1:5])
    assert set(steps[:3]) <= {330, 340, 360, 370} and steps[3] == 350
    first = e001[0]
    assert (first.kind, first.mode, first.dvg, first.dig) == ("set", DISCHARGE, 380, 1.0)
    assert first.t > e002[4].t
    assert deal.charge_unit_compensated_grid_current_a is not None
    assert abs(deal.charge_unit_compensated_grid_current_a - 1.0) <= 0.03
    # stop: E001's current to 0, then WAIT; then E002 lowered to 310 V, then WAIT
    assert [(w.kind, w.dig) for w in e001[-2:]] == [("current", 0.0), ("set", 0.0)]
    assert e001[-1].mode is WAIT
    assert (e002[-2].kind, e002[-2].dvg) == ("voltage", 310.0)
    assert (e002[-1].kind, e002[-1].mode) == ("set", WAIT)
    assert e001[-1].t <= e002[-2].t
    assert deal.cumulate_amount_wh is not None and deal.cumulate_amount_wh > 50
    assert abs(deal.cumulate_amount_wh - 50) <= 0.25
    assert remaining == [] and all(ids == [] for ids in interlocks.values())
    for unit in ("E001", "E002"):
        files = rig.deal_files(unit)
        assert [p.name for p in files] == [deal.deal_id]
        record = rig.read_deal_file(files[0])
        for key in ("activateDateTime", "rampUpDateTime", "warmUpDateTime", "startDateTime",
                    "stopDateTime", "deactivateDateTime", "cumulateAmountWh"):
            assert record[key] not in (None, "--"), key
    rig.assert_one_voltage_reference()


def _snapshot(unit: str, wb: float, t: float) -> UnitSnapshot:
    return UnitSnapshot.from_json(unit, {
        "dcdc": {"status": {"status": "0x0014"}, "meter": {"wb": wb, "ig": 1.0}},
        "time": "2020/01/01-00:00:00", "timestamp": t,
    })


def _execution(reference_side: str) -> DealExecution:
    data = sample("policy.json")
    data["gridMaster"]["deal"]["referenceSide"] = reference_side
    policy = Policy.model_validate(data)

    async def nothing(*args: object) -> None:
        return None

    return DealExecution(policy=policy, registry=None, link=None,  # type: ignore[arg-type]
                         dispose=nothing, publish_log=nothing, raise_global=lambda e: None)


def test_scenario_20_energy_integration() -> None:
    for side, charge_wb, discharge_wb in (("chargeUnit", 100.0, -120.0),
                                         ("dischargeUnit", 80.0, -100.0)):
        execution = _execution(side)
        deal = Deal.from_json(deal_json("E001", "E002"))
        deal.deal_id = "d"
        t0 = 1_000_000.0
        execution.data = {"E002": _snapshot("E002", charge_wb, t0),
                          "E001": _snapshot("E001", discharge_wb, t0)}
        deal.start_date_time = "x"
        deal.cumulate_amount_wh = 0.0
        execution._sample_power(deal)
        amounts = []
        for n in range(1, 4):
            execution.data = {"E002": _snapshot("E002", charge_wb, t0 + 5 * n),
                              "E001": _snapshot("E001", discharge_wb, t0 + 5 * n)}
            execution._integrate(deal)
            amounts.append(deal.cumulate_amount_wh)
        per_pass = 100 * 5 / 3600  # ~0.139 Wh per 5 s pass at 100 W
        assert amounts == [per_pass * 1, per_pass * 2, per_pass * 3], side
        assert deal.charge_unit_cumulate_amount_wh == charge_wb * 15 / 3600
        assert deal.discharge_unit_cumulate_amount_wh == -discharge_wb * 15 / 3600


def test_scenario_21_second_deal_sharing_the_voltage_reference(tmp_path: Path) -> None:
    rig = rig_of(tmp_path)

    async def scenario(rig: Rig) -> tuple[Deal, float, float, float]:
        await until_started(rig, await inject(rig, "E001", "E002", 200))
        await asyncio.sleep(5)
        before = rig.world.unit_data("E002").dcdc.meter.ig
        injected_at = asyncio.get_running_loop().time()
        second = await until_started(rig, await inject(rig, "E003", "E002", 50))
        await asyncio.sleep(2)
        return second, before, injected_at, rig.world.unit_data("E002").dcdc.meter.ig

    second, before, injected_at, after = rig.run(scenario)
    assert [w for w in rig.writes("E002") if w.t >= injected_at] == []  # no command
    e003 = rig.mode_writes("E003")[0]
    assert (e003.mode, e003.dvg, e003.dig) == (DISCHARGE, 380, 1.0)
    assert not second.master
    target = second.compensation_target_voltage_reference_grid_current_a
    assert target is not None and abs(target - (before + 1.0)) < 0.01
    assert abs(after - target) <= 0.03 + 0.01
    rig.assert_one_voltage_reference()


def test_scenario_22_second_independent_pair(tmp_path: Path) -> None:
    rig = rig_of(tmp_path)

    async def scenario(rig: Rig) -> tuple[Deal, float, float]:
        await until_started(rig, await inject(rig, "E001", "E002", 200))
        await asyncio.sleep(5)
        before = rig.world.unit_data("E002").dcdc.meter.ig
        second = await until_started(rig, await inject(rig, "E003", "E004", 50))
        await asyncio.sleep(2)
        return second, before, rig.world.unit_data("E002").dcdc.meter.ig

    second, before, after = rig.run(scenario)
    e004, e003 = rig.mode_writes("E004")[0], rig.mode_writes("E003")[0]
    assert (e004.mode, e004.dvg, e004.dig) == (CHARGE, 350, 1.0)
    assert (e003.mode, e003.dvg, e003.dig) == (DISCHARGE, 380, 1.0)
    assert not second.master
    assert abs(after - before) <= 0.03 + 0.01
    rig.assert_one_voltage_reference()


def test_scenario_23_second_deal_waits_for_the_first(tmp_path: Path) -> None:
    rig = rig_of(tmp_path)

    async def scenario(rig: Rig) -> tuple[Deal, Deal]:
        first_id = await inject(rig, "E001", "E002", 50)
        second_id = await inject(rig, "E003", "E004", 50)
        first = await until_finished(rig, first_id)
        return first, await until_finished(rig, second_id)

    first, second = rig.run(scenario)
    assert first.start_date_time is not None and second.activate_date_time is not None
    assert second.activate_date_time >= first.start_date_time
    assert first.is_master is None and second.abort_reason is None
    e004 = rig.mode_writes("E004")[0]
    e002_ramped = [w for w in rig.writes("E002") if w.kind == "voltage"][3]  # authorised
    assert e004.t > e002_ramped.t


def test_scenario_24_direction_conflict(tmp_path: Path) -> None:
    rig = rig_of(tmp_path)

    async def scenario(rig: Rig) -> Deal:
        await until_started(rig, await inject(rig, "E001", "E002", 200))
        return await until_finished(rig, await inject(rig, "E002", "E003", 50), 120)

    conflict = rig.run(scenario)
    assert conflict.abort_reason == "E002 : other charge side deal found"
    assert conflict.activate_date_time == "--"
    assert rig.writes("E003") == []
    assert all(p.name != conflict.deal_id for p in rig.deal_files("E002") + rig.deal_files("E003"))


def test_scenario_25_capacity_limit(tmp_path: Path) -> None:
    rig = rig_of(tmp_path, {"safety": {"sumOfDealGridCurrentMaxA": 1.5}})

    async def scenario(rig: Rig) -> Deal:
        await until_started(rig, await inject(rig, "E001", "E002", 200))
        return await until_finished(rig, await inject(rig, "E003", "E004", 50), 120)

    rejected = rig.run(scenario)
    assert rejected.abort_reason is not None and "sumOfDealGridCurrentMaxA" in rejected.abort_reason
    assert rig.writes("E003") == rig.writes("E004") == []


def test_scenario_25_capacity_limit_by_topology(tmp_path: Path) -> None:
    topology = {"enabled": True, "branchIds": ["B1"],
                "branchAssociation": {"B1": {"forwardUnitIds": ["E001", "E003"],
                                             "backwardUnitIds": ["E002", "E004"]}},
                "branchCurrentCapacityA": {"B1": 1.5}}
    rig = rig_of(tmp_path, {"safety": {"gridTopologyBasedEvaluation": topology}})

    async def scenario(rig: Rig) -> Deal:
        await until_started(rig, await inject(rig, "E001", "E002", 200))
        return await until_finished(rig, await inject(rig, "E003", "E004", 50), 120)

    rejected = rig.run(scenario)
    assert rejected.abort_reason is not None and "branch B1" in rejected.abort_reason


def test_scenario_26_authorisation_failure_and_reset_limit(tmp_path: Path) -> None:
    rig = rig_of(tmp_path)
    hook = {"testFeature": {"dcdc": {"failBeforeAuthorize": True}}}

    async def scenario(rig: Rig) -> Deal:
        return await until_finished(rig, await inject(rig, "E001", "E002", 50, **hook), 1800)

    deal = rig.run(scenario)
    assert len(deal.reset) == 3
    assert deal.abort_reason == "deal reset limit exceeded"
    e002 = rig.mode_writes("E002")
    assert [w.mode for w in e002] == [VR, WAIT] * 3
    assert rig.writes("E001") == []
    files = rig.deal_files("E002")
    assert [p.name for p in files] == [deal.deal_id]
    assert rig.read_deal_file(files[0])["abortReason"] == "deal reset limit exceeded"


def test_scenario_27_first_voltage_reference_voltage_guard(tmp_path: Path) -> None:
    # E003 stands for a foreign source on the grid: emulated, but not running APIS
    rig = rig_of(tmp_path, units=["E001", "E002", "E003"], rsoc=[70.0, 50.0, 60.0])
    rig.cluster.unit_ids = ["E001", "E002"]

    async def scenario(rig: Rig) -> tuple[Deal, float]:
        rig.world.set_converter("E003", VR, 300.0, 2.3, 0.0)
        async with foreign_controller(rig, "E003"):
            await asyncio.sleep(30)  # the grid now measures 300 V, inside the UVLO band
            deal_id = await inject(rig, "E001", "E002", 50)
            await asyncio.sleep(60)
            waiting = await deal_of(rig, deal_id)
            assert waiting is not None and not waiting.activated and rig.writes() == []
            rig.world.set_converter("E003", WAIT, 350.0, 0.0, 0.0)  # the band is left
        released = asyncio.get_running_loop().time()
        return await until_finished(rig, deal_id), released

    deal, released = rig.run(scenario)
    assert deal.abort_reason is None
    assert rig.mode_writes("E002")[0].t > released


def test_scenario_27_foreign_voltage_stops_everything(tmp_path: Path) -> None:
    rig = rig_of(tmp_path, units=["E001", "E002", "E003"], rsoc=[70.0, 50.0, 60.0])
    rig.cluster.unit_ids = ["E001", "E002"]

    async def scenario(rig: Rig) -> tuple[Deal, str, list[str]]:
        rig.world.set_converter("E003", VR, 330.0, 2.3, 0.0)
        async with foreign_controller(rig, "E003"):
            await asyncio.sleep(30)
            deal = await until_finished(rig, await inject(rig, "E001", "E002", 50), 120)
            await asyncio.sleep(15)  # CC units scrammed, then the VR after the delay; stop
        gm = rig.cluster.units[rig.cluster.grid_master_units()[0]].grid_master
        assert gm is not None
        mode = await rig.cluster.registry.global_mode("autonomous")
        return deal, mode, [e.message for e in gm.handled_errors]

    deal, mode, errors = rig.run(scenario)
    assert mode == "stop"
    assert any("invalid grid voltage" in e for e in errors)
    # no converter was started; the scram only sent WAIT
    assert all(w.mode is WAIT for w in rig.mode_writes("E001") + rig.mode_writes("E002"))
    assert deal.abort_reason is not None or deal.scram_reason is not None


def test_scenario_28_ramp_up_timeout(tmp_path: Path) -> None:
    slow = ConverterModel(voltage_ramp_v_per_s=1.0, response_time_s=0.05)
    rig = rig_of(tmp_path, converter=slow)

    async def scenario(rig: Rig) -> tuple[Deal, str]:
        deal = await until_finished(rig, await inject(rig, "E001", "E002", 50), 600)
        await asyncio.sleep(15)
        return deal, await rig.cluster.registry.global_mode("autonomous")

    deal, mode = rig.run(scenario)
    assert deal.abort_reason is not None and "ramping up timed out" in deal.abort_reason
    assert deal.activate_date_time is not None
    assert mode == "stop"
    modes = [w.mode for w in rig.mode_writes("E002")]
    assert modes[:2] == [VR, WAIT] and set(modes[2:]) <= {WAIT}  # aborted, then scrammed
    record = rig.read_deal_file(rig.deal_files("E002")[0])
    assert "ramping up timed out" in record["abortReason"]


def test_scenario_29_force_stop_on_state_of_charge(tmp_path: Path) -> None:
    rig = rig_of(tmp_path)

    async def scenario(rig: Rig) -> tuple[Deal, Deal]:
        first = await inject(rig, "E001", "E002", 300)
        await until_started(rig, first)
        rig.world.set_rsoc("E001", 19.0)
        low = await until_finished(rig, first, 60)
        second = await inject(rig, "E003", "E004", 300)
        await until_started(rig, second)
        rig.world.set_rsoc("E004", 96.0)
        return low, await until_finished(rig, second, 60)

    low, high = rig.run(scenario)
    assert low.abort_reason == "E001 : dischargeUnitLowerLimitRsoc"
    assert high.abort_reason == "E004 : chargeUnitUpperLimitRsoc"
    e001, e002 = rig.mode_writes("E001"), rig.mode_writes("E002")
    assert e001[-1].mode is WAIT and e002[-1].mode is WAIT and e001[-1].t <= e002[-1].t


def test_scenario_30_master_hand_over(tmp_path: Path) -> None:
    rig = rig_of(tmp_path)

    async def scenario(rig: Rig) -> tuple[Deal, float, list[str]]:
        first = await inject(rig, "E001", "E002", 50)
        await until_started(rig, first)
        second = await inject(rig, "E003", "E004", 300)
        await until_started(rig, second)
        await until_finished(rig, first)
        ended = asyncio.get_running_loop().time() - 1
        await asyncio.sleep(30)
        now = await deal_of(rig, second)
        assert now is not None
        return now, ended, rig.cluster.grid_master_units()

    second, ended, gms = rig.run(scenario)
    assert second.master
    late = [w for w in rig.writes() if w.t >= ended]
    e002 = [w for w in late if w.unit == "E002"]
    e004 = [w for w in late if w.unit == "E004"]
    assert (e002[0].kind, e002[0].dvg, e002[0].drg) == ("voltage", 350.0, 0.039)  # will hand
    assert (e004[0].kind, e004[0].mode, e004[0].dvg, e004[0].drg) == ("set", VR, 350.0, 0.039)
    assert e002[-1].mode is WAIT  # did hand over
    assert (e004[1].kind, e004[1].drg) == ("voltage", 0.0)  # did take over: droop off
    assert e002[0].t <= e004[0].t <= e002[-1].t <= e004[1].t
    assert [w.mode for w in late if w.unit == "E001"][-1] is WAIT
    assert gms == ["E004"]
    rig.assert_one_voltage_reference()


def test_scenario_31_grid_voltage_optimisation(tmp_path: Path) -> None:
    policy = {"gridMaster": {"gridVoltageOptimization": {"enabled": True}}}
    rig = rig_of(tmp_path, policy)

    async def scenario(rig: Rig) -> None:
        await until_started(rig, await inject(
            rig, "E001", "E002", 50,
            chargeUnitEfficientGridVoltageV=334.75, dischargeUnitEfficientGridVoltageV=338.0,
        ))
        await asyncio.sleep(10)

    rig.run(scenario)
    voltages = [w.dvg for w in rig.writes("E002") if w.kind == "voltage"]
    assert voltages[-1] == 336.375

    (tmp_path / "low").mkdir()
    low = rig_of(tmp_path / "low", policy)

    async def low_scenario(rig: Rig) -> None:
        await until_started(rig, await inject(
            rig, "E001", "E002", 50,
            chargeUnitEfficientGridVoltageV=295.0, dischargeUnitEfficientGridVoltageV=305.0,
        ))
        await asyncio.sleep(10)

    low.run(low_scenario)
    assert [w.dvg for w in low.writes("E002") if w.kind == "voltage"][-1] == 330.0
