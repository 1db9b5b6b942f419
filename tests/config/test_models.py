"""Each model: the original samples load unchanged; defaults; bad values named precisely."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from apis.config import ConfigError, GridConfig, HwConfig, Policy, Scenario, UnitConfig
from apis.config.base import strip_comments
from apis.config.errors import Problem
from apis.config.loader import load_files, load_model, load_scenario
from apis.config.scenario import ScenarioError, parse_range_key
from tests.config.conftest import SAMPLE_DIR


def sample(name: str) -> dict:
    return strip_comments(json.loads((SAMPLE_DIR / name).read_text()))


def messages(problems: list[Problem]) -> list[str]:
    return [str(p) for p in problems]


def test_sample_config_json_loads_with_every_key() -> None:
    c = UnitConfig.model_validate(sample("config.json"))
    assert c.unit_id == "E001"
    assert c.system_type == "dcdc_emulator"
    assert c.security.enabled is True
    assert c.connection.emulator.port == 4390
    assert c.connection.dcdc_controller.port == 4380
    assert c.deal_log_dir_format == "'{tmpdir}/apis/dealLog/'uuuu'/'MM'/'dd"
    assert c.control_center.account == "house-one"
    assert c.watchdog.uri == "/watchdog/restart"
    assert c.display_name == "house-one"


def test_config_json_defaults() -> None:
    c = UnitConfig.model_validate(
        {"unitId": "X1", "systemType": "dcdc_v2", "hwConfigFile": "h", "policyFile": "p",
         "scenarioFile": "s"}
    )
    assert c.display_name == "autoX1"
    assert c.serial_number == "NA"
    assert c.control_center.enabled is True  # the original's default
    assert c.policy_file_read_timeout_msec == 60000
    assert c.state_file_format == "{tmpdir}/apis/state/%s"


def test_sample_hwconfig_loads() -> None:
    hw = HwConfig.model_validate(sample("hwConfig.json"))
    assert hw.battery_nominal_capacity_wh == 4800
    assert hw.grid_current_capacity_a == 2.3
    assert hw.meter_ranges.vb.max == 58.4
    assert hw.meter_ranges.ig.min == -2.35
    assert hw.efficient_battery_grid_voltage_ratio == 6.5


def test_sample_policy_loads_with_every_key() -> None:
    p = Policy.model_validate(sample("policy.json"))
    assert p.operation_mode == "stop"
    assert p.member_unit_ids == ["E001", "E002", "E003", "E004"]
    assert p.operation_grid_voltage_v_range.max == 380
    assert p.controller.dcdc.voltage_reference.authorization.number_of_trials == 3
    assert p.controller.dcdc.checkpoint.retry_wait_msec == 100
    assert p.mediator.deal.amount_unit_wh == 50
    assert p.grid_master.grid_master_selection.fixed_unit_id == "E001"
    assert p.grid_master.deal.force_stop_condition.charge_unit_upper_limit_rsoc == 95
    assert p.safety.grid_topology_based_evaluation.enabled is False
    assert p.grid_voltage_step_v == 350  # undocumented key, code default


def test_policy_defaults_follow_the_original_code() -> None:
    p = Policy.model_validate({"memberUnitIds": ["A", "B"]})
    assert p.operation_mode == "stop"
    assert p.user.house_keeping_period_msec == 60000
    assert p.grid_master.main_loop_period_msec == 5000
    assert p.grid_master.voltage_reference_side == "chargeUnit"


def test_sample_scenario_loads() -> None:
    s = Scenario.from_json(sample("scenario.json"))
    assert [w.key for w in s.windows] == ["00:00:00-24:00:00"]
    block = s.block_at("23:59:59")
    assert block is not None
    assert block.status_of(4500) == "excess"
    assert block.status_of(4320) == "excess"  # lower bound inclusive
    assert block.status_of(4319) == "sufficient"
    assert block.status_of(0) == "short"
    assert block.request["short"]["charge"].limit_wh == 2880
    assert block.accept["scarce"]["charge"].point_per_wh == 10
    assert s.selection_at("12:00:00").strategy == "pointAndAmount"


def test_scenario_first_window_wins_and_own_selection() -> None:
    block = {"batteryStatus": {"-": "x"}, "request": {}, "accept": {}}
    s = Scenario.from_json({
        "00:00:00-12:00:00": {**block, "acceptSelection": {"strategy": "amount"}},
        "06:00:00-24:00:00": block,
        "acceptSelection": {"strategy": "pointAndAmount"},
    })
    assert s.window_at("07:00:00").key == "00:00:00-12:00:00"  # type: ignore[union-attr]
    assert s.window_at("12:00:00").key == "06:00:00-24:00:00"  # type: ignore[union-attr]
    assert s.selection_at("07:00:00").strategy == "amount"
    assert s.selection_at("13:00:00").strategy == "pointAndAmount"
    assert s.window_at("24:00:00") is None


def test_range_keys() -> None:
    assert parse_range_key("4320-") == (4320, None)
    assert parse_range_key("-2880") == (None, 2880)
    assert parse_range_key("2880-3600") == (2880, 3600)
    with pytest.raises(ValueError, match="lower 10 must be < upper 5"):
        parse_range_key("10-5")
    with pytest.raises(ValueError, match="must be 'lower-upper'"):
        parse_range_key("abc")


def test_scenario_reports_every_problem_with_its_path() -> None:
    with pytest.raises(ScenarioError) as info:
        Scenario.from_json({
            "refreshingPeriodMsec": -5,
            "acceptSelection": {"strategy": "cheapest"},
            "00:00:00-25:00:00": {},
            "nonsense": 1,
            "00:00:00-24:00:00": {
                "batteryStatus": {"0-": "ok"},
                "request": {"ok": {"charge": {"pointPerWh": 1}}},
                "accept": {"unknown": {}},
            },
        })
    text = str(info.value)
    assert "refreshingPeriodMsec: = -5 (must be an integer > 0)" in text
    assert "acceptSelection.strategy: = 'cheapest'" in text
    assert "00:00:00-25:00:00: time window" in text
    assert "nonsense: unknown key" in text
    assert "00:00:00-24:00:00.request.ok.charge.limitWh: missing (required key)" in text


def test_grid_model_and_default() -> None:
    g = GridConfig.single_bus(["E001", "E002"])
    assert g.unit_ids == ["E001", "E002"]
    assert [line.to_node for line in g.lines] == ["BUS", "BUS"]
    assert g.to_json()["lines"][0] == {
        "id": "E001-BUS", "from": "E001", "to": "BUS", "resistanceOhm": 0.05
    }
    with pytest.raises(ValueError, match=r"lines\.L1: node = 'NOPE' \(must be one of nodes\)"):
        GridConfig.model_validate({
            "nodes": [{"id": "A"}],
            "lines": [{"id": "L1", "from": "A", "to": "NOPE", "resistanceOhm": 1}],
        })
    with pytest.raises(ValueError, match="resistanceOhm"):
        GridConfig.model_validate({
            "nodes": [{"id": "A"}, {"id": "B"}],
            "lines": [{"id": "L1", "from": "A", "to": "B", "resistanceOhm": 0}],
        })


def test_policy_errors_name_file_path_value_and_rule(tmp_path: Path) -> None:
    data = sample("policy.json")
    data["mediator"]["deal"]["gridCurrentA"] = -1
    data["gridMaster"]["voltageReferenceSide"] = "nobody"
    data["controller"]["retryLimit"] = "three"
    data["heloPeriodMs"] = 5000
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(data))
    problems: list[Problem] = []
    assert load_model(Policy, path, "policy.json", problems) is None
    text = messages(problems)
    assert "policy.json: mediator.deal.gridCurrentA = -1 (must be > 0)" in text
    assert (
        "policy.json: gridMaster.voltageReferenceSide = 'nobody' "
        "(must be one of 'chargeUnit' or 'dischargeUnit')" in text
    )
    assert "policy.json: controller.retryLimit = 'three' (must be an integer)" in text
    assert "policy.json: heloPeriodMs: unknown key (value 5000)" in text


def test_policy_model_rules() -> None:
    with pytest.raises(ValueError, match=r"operationGridVoltageV = 390 \(must be within"):
        Policy.model_validate({"memberUnitIds": ["A"], "operationGridVoltageV": 390})
    with pytest.raises(ValueError, match="must be unique"):
        Policy.model_validate({"memberUnitIds": ["A", "A"]})
    with pytest.raises(ValueError, match="amountMinWh = 100"):
        Policy.model_validate(
            {"memberUnitIds": ["A"], "mediator": {"deal": {"amountMinWh": 100}}}
        )
    with pytest.raises(ValueError, match=r"min = 380 \(must be < max"):
        Policy.model_validate(
            {"memberUnitIds": ["A"], "operationGridVoltageVRange": {"min": 380, "max": 300}}
        )


def test_rules_across_keys_judged_beside_wrong_keys() -> None:
    with pytest.raises(ValueError) as info:
        Policy.model_validate({
            "memberUnitIds": ["A", "A"], "operationGridVoltageV": 390,
            "mediator": {"deal": {"gridCurrentA": 0, "amountMinWh": 100}},
            "largeCapacityUnitIds": ["Z"],
        })
    text = str(info.value)
    assert "gridCurrentA" in text and "amountMinWh = 100 (must be <= amountMaxWh" in text
    assert "must be unique" in text and "operationGridVoltageV = 390" in text
    assert "largeCapacityUnitIds: 'Z'" in text
    # A rule that reads a wrong key gives no verdict: only the wrong key is named.
    with pytest.raises(ValidationError) as wrong:
        Policy.model_validate({"memberUnitIds": ["A"], "operationGridVoltageV": "high",
                               "operationGridVoltageVRange": {"min": 400, "max": 380}})
    assert [e["loc"] for e in wrong.value.errors()] == [
        ("operationGridVoltageV",), ("operationGridVoltageVRange",)]


def test_topology_branches_checked_only_when_enabled() -> None:
    topo = {"enabled": True, "branchIds": ["B1"],
            "branchAssociation": {"B1": {"forwardUnitIds": ["A"], "backwardUnitIds": ["B"]}},
            "branchCurrentCapacityA": {"B1": 0}}
    with pytest.raises(ValueError, match=r"branchCurrentCapacityA\.B1 = 0 \(must be > 0\)"):
        Policy.model_validate({"memberUnitIds": ["A", "B"],
                               "safety": {"gridTopologyBasedEvaluation": topo}})
    topo["branchCurrentCapacityA"] = {"B1": 1.5}
    p = Policy.model_validate({"memberUnitIds": ["A", "B"],
                               "safety": {"gridTopologyBasedEvaluation": topo}})
    t = p.safety.grid_topology_based_evaluation
    assert t.branch_units("B1") == (["A"], ["B"])
    assert t.branch_capacity_a("B1") == 1.5


def test_hwconfig_range_order_and_encrypted_keys() -> None:
    with pytest.raises(ValueError, match=r"vg\.min = 400 \(must be <= vg\.max"):
        HwConfig.model_validate({"safety": {"range": {"dcdc": {"meter": {
            "vg": {"min": 400, "max": 380}}}}}})
    with pytest.raises(ValueError, match="encrypted values are not supported"):
        UnitConfig.model_validate({"unitId.encrypted": "xx", "systemType": "dcdc_v2"})


def test_loose_files_and_json_errors(tmp_path: Path) -> None:
    broken = tmp_path / "hwConfig.json"
    broken.write_text('{"batteryNominalCapacityWh": 4800,}')
    other = tmp_path / "notes.json"
    other.write_text("{}")
    problems, checked = load_files([broken, other, SAMPLE_DIR / "policy.json"])
    text = messages(problems)
    assert any("hwConfig.json: not valid JSON" in t and "line 1" in t for t in text)
    assert any("unknown file kind 'notes'" in t for t in text)
    assert checked == [str(broken), str(SAMPLE_DIR / "policy.json")]


def test_missing_file(tmp_path: Path) -> None:
    problems: list[Problem] = []
    assert load_scenario(tmp_path / "scenario.json", "scenario.json", problems) is None
    assert messages(problems) == ["scenario.json: file not found"]


def test_config_error_lists_every_problem() -> None:
    e = ConfigError([Problem("a.json", "x", "= 1 (must be > 2)"), Problem("b.json", "", "bad")])
    assert str(e) == "a.json: x = 1 (must be > 2)\nb.json: bad"
