"""Settings, the community's configuration and sweep overrides (no simulation)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apis.config.errors import ConfigError
from apis.config.generate import default_cluster_dir, write_cluster
from apis.sim.community import (
    SimError,
    SimSettings,
    community,
    parse_sweep,
    scale_scenario_json,
)


def test_default_community_is_the_embedded_cluster() -> None:
    with community(SimSettings()) as cluster:
        assert cluster.unit_ids == ["E001", "E002", "E003", "E004"]
        # a private copy: state and deal-log paths inside it, not in the shared /tmp/apis
        assert cluster.root is not None
        config = cluster.units[0].config
        assert str(cluster.root) in config.state_file_format
        assert str(cluster.root) in config.deal_log_dir_format
    assert not cluster.root.exists()  # removed after the run


def test_generated_units() -> None:
    with community(SimSettings(units=6)) as cluster:
        assert len(cluster.unit_ids) == 6


def test_bad_settings_name_the_setting() -> None:
    with pytest.raises(SimError, match="--days"):
        SimSettings(days=0)
    with pytest.raises(SimError, match="--units"):
        SimSettings(units=0)
    with pytest.raises(SimError, match="--config and --units"):
        SimSettings(config_dir=Path("x"), units=3)


def test_policy_override_is_written_to_the_copy() -> None:
    settings = SimSettings().with_override("mediator.deal.gridCurrentA", "2")
    with community(settings) as cluster:
        assert cluster.policy.mediator.deal.grid_current_a == 2.0
        assert all(u.policy.mediator.deal.grid_current_a == 2.0 for u in cluster.units)
        on_disk = json.loads(cluster.units[0].policy_path.read_text())
        assert on_disk["mediator"]["deal"]["gridCurrentA"] == 2
    original = json.loads((default_cluster_dir() / "policy.json").read_text())
    assert original["mediator"]["deal"]["gridCurrentA"] == 1


def test_unknown_key_names_the_key_and_the_known_ones() -> None:
    settings = SimSettings().with_override("mediator.deal.gridCurrnetA", "2")
    with pytest.raises(SimError, match=r"no key 'gridCurrnetA' under mediator.deal .*gridCurrentA"):
        with community(settings):
            pass


def test_invalid_value_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="gridCurrentA"):
        with community(SimSettings().with_override("mediator.deal.gridCurrentA", "-1")):
            pass


def test_hwconfig_override() -> None:
    with community(SimSettings().with_override("hwConfig.gridCurrentCapacityA", "2")) as c:
        assert all(u.hw_config.grid_current_capacity_a == 2.0 for u in c.units)


def test_battery_size_scales_the_scenario_thresholds() -> None:
    with community(SimSettings()) as base, \
            community(SimSettings().with_override("battery", "9600")) as cluster:
        for before, after in zip(base.units, cluster.units, strict=True):
            assert after.hw_config.battery_nominal_capacity_wh == 9600.0
            factor = 9600.0 / before.hw_config.battery_nominal_capacity_wh
            old = before.scenario.block_at("12:00:00")
            new = after.scenario.block_at("12:00:00")
            assert old is not None and new is not None
            old_edges = [r.lower for r in old.ranges if r.lower is not None]
            new_edges = [r.lower for r in new.ranges if r.lower is not None]
            assert new_edges == [round(e * factor) for e in old_edges]
        with community(SimSettings().with_override("battery.scale", "2")) as doubled:
            assert [u.hw_config.battery_nominal_capacity_wh for u in doubled.units] == [
                2 * u.hw_config.battery_nominal_capacity_wh for u in base.units
            ]


def test_scale_scenario_json() -> None:
    data = {"00:00:00-24:00:00": {
        "batteryStatus": {"3840-": "excess", "1920-3840": "sufficient", "-1920": "short"},
        "request": {"short": {"charge": {"limitWh": 1920, "pointPerWh": 10}}},
    }}
    scaled = scale_scenario_json(data, 0.5)
    block = scaled["00:00:00-24:00:00"]
    assert block["batteryStatus"] == {"1920-": "excess", "960-1920": "sufficient",
                                      "-960": "short"}
    assert block["request"]["short"]["charge"] == {"limitWh": 960, "pointPerWh": 10}


def test_units_and_seed_overrides_change_the_settings(tmp_path: Path) -> None:
    assert SimSettings(units=4).with_override("units", "8").units == 8
    assert SimSettings().with_override("seed", "7").seed == 7
    write_cluster(tmp_path, 2)
    with pytest.raises(SimError, match="not with --config"):
        SimSettings(config_dir=tmp_path).with_override("units", "3")
    with pytest.raises(SimError, match="integer"):
        SimSettings().with_override("units", "many")


def test_parse_sweep() -> None:
    assert parse_sweep("mediator.deal.gridCurrentA=1,1.5, 2") == (
        "mediator.deal.gridCurrentA", ["1", "1.5", "2"]
    )
    for bad in ("units", "=1,2", "units="):
        with pytest.raises(SimError, match="param=v1,v2"):
            parse_sweep(bad)
