"""Cross-file rules, the cluster loader, the default cluster and the design figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apis.config import ConfigError, load_cluster
from apis.config.advice import design_figures
from apis.config.generate import default_cluster_dir, write_cluster
from tests.config.conftest import SAMPLE_DIR, edit_json


def problems_of(directory: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_cluster(directory)
    return [str(p) for p in info.value.problems]


def test_original_sample_directory_loads() -> None:
    cluster = load_cluster(SAMPLE_DIR)
    assert cluster.unit_ids == ["E001"]
    assert cluster.grid.unit_ids == ["E001"]  # the default grid: one bus


def test_generated_cluster_loads_and_is_diverse(tmp_path: Path) -> None:
    write_cluster(tmp_path, 6)
    cluster = load_cluster(tmp_path)
    assert cluster.unit_ids == [f"E00{i}" for i in range(1, 7)]
    assert cluster.grid_path == tmp_path / "grid.json"
    capacities = {u.hw_config.battery_nominal_capacity_wh for u in cluster.units}
    assert len(capacities) > 1
    scenarios = {json.dumps(u.scenario.to_json(), sort_keys=True) for u in cluster.units}
    assert len(scenarios) > 1
    assert cluster.policy.operation_mode == "autonomous"
    assert cluster.policy.large_capacity_unit_ids == ["E003"]


def test_embedded_default_is_what_init_writes(tmp_path: Path) -> None:
    write_cluster(tmp_path, 4)
    shipped = default_cluster_dir()
    for path in sorted(tmp_path.rglob("*.json")):
        rel = path.relative_to(tmp_path)
        assert json.loads((shipped / rel).read_text()) == json.loads(path.read_text()), rel
    assert load_cluster(shipped).unit_ids == ["E001", "E002", "E003", "E004"]


def test_deal_current_within_converter_capacity(tmp_path: Path) -> None:
    write_cluster(tmp_path, 2)
    edit_json(tmp_path / "E002" / "hwConfig.json",
              lambda d: d.update(gridCurrentCapacityA=0.5))
    assert problems_of(tmp_path) == [
        "policy.json: mediator.deal.gridCurrentA = 1 (must be <= gridCurrentCapacityA = 0.5 "
        "of E002/hwConfig.json)"
    ]


def test_operating_range_inside_hw_safety_range(tmp_path: Path) -> None:
    write_cluster(tmp_path, 2)
    edit_json(tmp_path / "policy.json",
              lambda d: d["operationGridVoltageVRange"].update(max=395))
    assert problems_of(tmp_path) == [
        f"policy.json: operationGridVoltageVRange.max = 395 (must be within "
        f"safety.range.dcdc.meter.vg -4..390 of {u}/hwConfig.json)"
        for u in ("E001", "E002")
    ]


def test_operation_voltage_inside_operating_range(tmp_path: Path) -> None:
    write_cluster(tmp_path, 2)
    edit_json(tmp_path / "policy.json", lambda d: d.update(operationGridVoltageV=290))
    assert problems_of(tmp_path) == [
        "policy.json: operationGridVoltageV = 290 (must be within operationGridVoltageVRange "
        "300..380)"
    ]


def test_battery_status_ranges_cover_capacity(tmp_path: Path) -> None:
    write_cluster(tmp_path, 2)

    def gap_and_overlap(d: dict) -> None:
        d["06:00:00-22:00:00"]["batteryStatus"] = {
            "3000-4000": "excess", "2000-3100": "sufficient", "500-1500": "scarce",
            "-400": "short"}

    edit_json(tmp_path / "E001" / "scenario.json", gap_and_overlap)
    assert problems_of(tmp_path) == [
        "E001/scenario.json: 06:00:00-22:00:00.batteryStatus (ranges '-400' and '500-1500' "
        "leave 400..500 Wh uncovered)",
        "E001/scenario.json: 06:00:00-22:00:00.batteryStatus (ranges '500-1500' and "
        "'2000-3100' leave 1500..2000 Wh uncovered)",
        "E001/scenario.json: 06:00:00-22:00:00.batteryStatus (ranges '2000-3100' and "
        "'3000-4000' overlap)",
        "E001/scenario.json: 06:00:00-22:00:00.batteryStatus (ranges end at 4000 Wh; "
        "4000..4800 Wh of the battery capacity is uncovered)",
    ]


def test_time_windows_cover_the_day(tmp_path: Path) -> None:
    write_cluster(tmp_path, 2)
    edit_json(tmp_path / "E002" / "scenario.json",
              lambda d: d.pop("22:00:00-24:00:00"))
    assert problems_of(tmp_path) == [
        "E002/scenario.json: time windows leave 22:00:00-24:00:00 uncovered "
        "(windows must cover 00:00:00-24:00:00)"
    ]
    # A gap is a rule of the file itself, so it shows even while other files are broken.
    edit_json(tmp_path / "policy.json", lambda d: d.update(gridCurrentStepA=0))
    assert len(problems_of(tmp_path)) == 2


def test_files_beside_an_unreadable_config_json_are_still_checked(sample_dir: Path) -> None:
    (sample_dir / "config.json").write_text('{"unitId": "E001",')
    edit_json(sample_dir / "scenario.json", lambda d: d["00:00:00-24:00:00"]["request"][
        "short"]["charge"].update(limitWh=-10))
    found = problems_of(sample_dir)
    assert len(found) == 2 and found[0].startswith("config.json: not valid JSON")
    assert found[1] == ("scenario.json: 00:00:00-24:00:00.request.short.charge.limitWh = -10 "
                        "(must be >= 0)")


def test_members_contain_every_unit(tmp_path: Path) -> None:
    write_cluster(tmp_path, 3)
    edit_json(tmp_path / "policy.json",
              lambda d: d.update(memberUnitIds=["E001", "E002"], largeCapacityUnitIds=[]))
    found = problems_of(tmp_path)
    assert ("policy.json: memberUnitIds = ['E001', 'E002'] (must contain unit 'E003' of "
            "E003/config.json)") in found
    assert "grid.json: nodes (unit node 'E003' is not in memberUnitIds)" in found


def test_policy_identical_on_all_units_ignoring_key_order(tmp_path: Path) -> None:
    write_cluster(tmp_path, 2)
    # Same policy, other key order and defaults left out: accepted.
    own = json.loads((tmp_path / "policy.json").read_text())
    reordered = dict(reversed(list(own.items())))
    reordered.pop("gridUvloMaskV")  # 10 is the default
    (tmp_path / "E002" / "policy.json").write_text(json.dumps(reordered))
    edit_json(tmp_path / "E002" / "config.json", lambda d: d.update(policyFile="./policy.json"))
    load_cluster(tmp_path)
    # A real difference: refused.
    edit_json(tmp_path / "E002" / "policy.json", lambda d: d.update(gridCurrentStepA=2))
    assert problems_of(tmp_path) == [
        "E002/policy.json: differs from policy.json (the policy must be identical on all units)"
    ]


def test_duplicate_unit_ids_and_grid_nodes(tmp_path: Path) -> None:
    write_cluster(tmp_path, 2)
    edit_json(tmp_path / "E002" / "config.json", lambda d: d.update(unitId="E001"))
    found = problems_of(tmp_path)
    assert "E002/config.json: unitId = 'E001' (already used by E001/config.json)" in found


def test_grid_must_hold_every_unit(tmp_path: Path) -> None:
    write_cluster(tmp_path, 2)
    (tmp_path / "grid.json").write_text(json.dumps({
        "nodes": [{"id": "E001"}, {"id": "J", "kind": "junction"}],
        "lines": [{"id": "a", "from": "E001", "to": "J", "resistanceOhm": 0.1}]}))
    assert problems_of(tmp_path) == ["grid.json: nodes (no unit node for unit 'E002')"]


def test_capacity_above_current_safety_range(tmp_path: Path) -> None:
    write_cluster(tmp_path, 2)
    edit_json(tmp_path / "E001" / "hwConfig.json", lambda d: d.update(gridCurrentCapacityA=3))
    assert problems_of(tmp_path) == [
        "E001/hwConfig.json: gridCurrentCapacityA = 3 (must be <= "
        "safety.range.dcdc.meter.ig.max = 2.5, or a voltage reference at full current trips "
        "its own check)"
    ]


def test_scenario_limits_and_pair_units(tmp_path: Path) -> None:
    write_cluster(tmp_path, 2)

    def bad(d: dict) -> None:
        d["06:00:00-22:00:00"]["request"]["excess"]["discharge"]["limitWh"] = 99999
        d["06:00:00-22:00:00"]["accept"]["short"]["charge"]["pairUnitId"] = "E999"

    edit_json(tmp_path / "E001" / "scenario.json", bad)
    assert problems_of(tmp_path) == [
        "E001/scenario.json: 06:00:00-22:00:00.request.excess.discharge.limitWh = 99999 "
        "(must be within 0..4800 Wh)",
        "E001/scenario.json: 06:00:00-22:00:00.accept.short.charge.pairUnitId = 'E999' "
        "(must be one of memberUnitIds)",
    ]


def test_topology_branch_units_are_members(tmp_path: Path) -> None:
    write_cluster(tmp_path, 2)
    edit_json(tmp_path / "policy.json", lambda d: d["safety"].update(
        gridTopologyBasedEvaluation={
            "enabled": True, "branchIds": ["B"],
            "branchAssociation": {"B": {"forwardUnitIds": ["E001"],
                                        "backwardUnitIds": ["E007"]}},
            "branchCurrentCapacityA": {"B": 2}}))
    assert problems_of(tmp_path) == [
        "policy.json: safety.gridTopologyBasedEvaluation.branchAssociation.B "
        "(unit 'E007' is not in memberUnitIds)"
    ]


def test_design_figures_of_the_sample() -> None:
    cluster = load_cluster(SAMPLE_DIR)
    f = design_figures(cluster.policy, [u.hw_config for u in cluster.units])
    assert f.min_deal_duration_s == pytest.approx(50 / 350 * 3600)
    # 5 loop passes of 5 s + 5 s data age; 9 checkpoints x 3 attempts x 0.1 s
    assert f.loop_time_s == pytest.approx(30.0)
    assert f.checkpoint_time_s == pytest.approx(2.7)
    assert f.control_loss_share == pytest.approx(32.7 / 514.2857, rel=1e-4)
    assert f.control_loss_too_high
    # 4 members x 2 slots each / 2 units per deal = 4 deals of 1 A
    assert f.max_parallel_deals == 4
    assert f.max_cluster_deal_current_a == 4
    assert not f.current_limit_exceeded


def test_design_figures_of_the_default() -> None:
    cluster = load_cluster(default_cluster_dir())
    f = design_figures(cluster.policy, [u.hw_config for u in cluster.units])
    assert not f.control_loss_too_high
