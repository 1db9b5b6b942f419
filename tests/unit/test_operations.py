"""The operations interface (global and local modes, audit, manual control), file refresh,
and the grid control details of section 6 (stepping limits, `actual` take-over voltage)."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from apis.bus.base import RemoteFailure
from apis.hardware.modes import ConverterMode
from apis.unit import subjects
from apis.unit.modes import AUDIT_KEY

from .checks import until
from .harness import Rig
from .test_scenarios_c import FOUR, inject, rig_of, until_finished, until_started


def test_global_mode_set_get_and_audit(tmp_path: Path) -> None:
    rig = rig_of(tmp_path)

    async def scenario(rig: Rig) -> tuple[Any, Any, Any, list[str], str]:
        c = rig.cluster
        observer = c._observer
        assert observer is not None
        await until(lambda: c.grid_master_unit() is not None, 120)
        reply = await observer.request(
            subjects.OPERATION_MODE, "stop",
            {subjects.COMMAND: "set", subjects.OPERATOR: "alice"}, timeout=30,
        )
        got = await observer.request(subjects.OPERATION_MODE, None, timeout=30)
        audit = await c.registry.state.get(AUDIT_KEY)
        with pytest.raises(RemoteFailure, match="operationMode = 'stopp'"):
            await observer.request(subjects.OPERATION_MODE, "stopp",
                                   {subjects.COMMAND: "set"}, timeout=30)
        await asyncio.sleep(1)
        modes = [u.state.global_mode for u in c.units.values()]
        plain = await c.registry.state.get("operationMode")
        assert plain is not None
        return reply, got, audit.value if audit else None, modes, plain.value

    reply, got, audit, modes, plain = rig.run(scenario)
    assert reply in FOUR and got == "stop" and plain == "stop"
    assert audit["mode"] == "stop" and audit["by"] == "alice" and audit["at"]
    assert audit["previous"] is None
    assert modes == ["stop"] * 4


def test_local_mode_and_manual_control_refused_outside_manual(tmp_path: Path) -> None:
    rig = rig_of(tmp_path)

    async def scenario(rig: Rig) -> tuple[Any, Any, str]:
        c = rig.cluster
        observer = c._observer
        assert observer is not None
        await until(lambda: c.grid_master_unit() is not None, 120)
        await observer.request(subjects.operation_mode("E003"), "heteronomous",
                               {subjects.COMMAND: "set"}, timeout=30)
        local = await observer.request(subjects.operation_mode("E003"), None, timeout=30)
        with pytest.raises(RemoteFailure, match="must be null, heteronomous or stop"):
            await observer.request(subjects.operation_mode("E003"), "manual",
                                   {subjects.COMMAND: "set"}, timeout=30)
        data = await observer.request(subjects.controller_data("E003"), None, timeout=30)
        try:
            await observer.request(subjects.controller_control_manual("E003"),
                                   {"command": "CHARGE", "params": {"gridCurrentA": 1}},
                                   timeout=30)
            refused = ""
        except RemoteFailure as e:
            refused = str(e)
        await observer.request(subjects.operation_mode("E003"), None,
                               {subjects.COMMAND: "set"}, timeout=30)
        return local, data["apis"]["operation_mode"], refused

    local, modes, refused = rig.run(scenario)
    assert local == "heteronomous"
    assert modes == {"global": "heteronomous", "local": "heteronomous",
                     "effective": "heteronomous"}
    assert "effective mode is heteronomous (must be manual)" in refused
    assert not (tmp_path / "state" / "E003" / "operationMode").exists()  # null: file deleted


def test_files_are_re_read_and_a_different_policy_is_refused(tmp_path: Path) -> None:
    rig = rig_of(tmp_path)

    async def scenario(rig: Rig) -> tuple[Any, str | None, float]:
        c = rig.cluster
        await until(lambda: c.grid_master_unit() is not None, 120)
        unit = c.units["E002"]
        scenario_path = tmp_path / "E002" / "scenario.json"
        data = json.loads(scenario_path.read_text())
        data["refreshingPeriodMsec"] = 7000
        scenario_path.write_text(json.dumps(data))
        policy_path = tmp_path / "policy.json"
        policy = json.loads(policy_path.read_text())
        policy["gridCurrentStepA"] = 2
        policy_path.write_text(json.dumps(policy))
        await asyncio.sleep(15)
        assert unit.user is not None
        return unit.user.scenario.refreshing_period_msec, unit.refused_policy, \
            unit.policy.grid_current_step_a

    refresh, refused, step = rig.run(scenario)
    assert refresh == 7000
    assert refused is not None and "differs from the cluster's policy" in refused
    assert step == 1  # the policy in use stays the cluster's


def test_voltage_and_current_stepping_limits(tmp_path: Path) -> None:
    rig = rig_of(tmp_path, {"gridVoltageStepV": 10, "gridCurrentStepA": 0.4})

    async def scenario(rig: Rig) -> None:
        deal_id = await inject(rig, "E001", "E002")
        await until_finished(rig, deal_id, timeout=3600)

    rig.run(scenario)
    vr_voltages = [w.dvg for w in rig.writes("E002") if w.kind == "voltage"]
    assert vr_voltages, "authorisation moved the voltage"
    previous = 350.0
    for v in vr_voltages:
        assert v is not None and abs(v - previous) <= 10 + 1e-9, vr_voltages
        previous = v
    cc = [w for w in rig.writes("E001") if w.kind in ("set", "current")]
    digs = [w.dig for w in cc if w.dig is not None]
    assert digs[0] == pytest.approx(0.4)  # DISCHARGE starts at one step
    for a, b in itertools.pairwise(digs):
        assert abs(b - a) <= 0.4 + 0.05, digs  # then steps (compensation trims are small)


def test_hand_over_with_actual_take_over_voltage(tmp_path: Path) -> None:
    rig = rig_of(tmp_path, {"gridMaster": {"voltageReferenceTakeOverDvg": "actual"}})

    async def scenario(rig: Rig) -> None:
        first = await inject(rig, "E001", "E002", amount=50)
        await until_started(rig, first)
        second = await inject(rig, "E003", "E004", amount=100)
        await until_started(rig, second)
        await until_finished(rig, first, timeout=3600)
        await until(lambda: rig.world.unit_data("E004").dcdc.mode
                    is ConverterMode.VOLTAGE_REFERENCE, 60)
        await until_finished(rig, second, timeout=3600)

    rig.run(scenario)
    take_over = [w for w in rig.mode_writes("E004") if w.mode is ConverterMode.VOLTAGE_REFERENCE]
    assert take_over and take_over[0].drg == pytest.approx(0.039)
    # `actual`: E004 takes over at its own measured grid voltage, not E002's set-point
    assert take_over[0].dvg is not None and abs(take_over[0].dvg - 350.0) < 5.0
