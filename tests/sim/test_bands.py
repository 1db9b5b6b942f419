"""Scenario status bands moved as shares of each unit's capacity (`scenario.<band>`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apis.config.generate import TEMPERAMENTS, scenario_json
from apis.sim.bands import BandError, move_bands
from apis.sim.community import SimError, SimSettings, load_community


def test_a_band_boundary_moves_with_its_neighbour_and_the_limits_at_it() -> None:
    data = scenario_json(4800.0, TEMPERAMENTS[0])  # excess from 3840, sufficient 2880, ...
    moved = move_bands(data, {"excess": 3000.0}, {"excess": "scenario.excess = 0.625"})
    day = moved["06:00:00-22:00:00"]
    assert day["batteryStatus"] == {
        "3000-": "excess", "2880-3000": "sufficient", "1920-2880": "scarce", "-1920": "short"}
    # "discharge down to where excess begins" follows the boundary; other limits stay
    assert day["request"]["excess"]["discharge"]["limitWh"] == 3000
    assert day["request"]["short"]["charge"]["limitWh"] == 1920
    assert day["accept"]["excess"]["discharge"]["limitWh"] == 2880
    assert moved["00:00:00-06:00:00"]["batteryStatus"]["3000-"] == "excess"
    assert data["06:00:00-22:00:00"]["batteryStatus"]["3840-"] == "excess"  # not changed


def test_several_bands_move_at_once_so_an_order_passed_through_is_fine() -> None:
    data = scenario_json(4800.0, TEMPERAMENTS[0])
    # excess below the old sufficient boundary: only fine because sufficient moves too
    moved = move_bands(data, {"excess": 2400.0, "sufficient": 1500.0, "scarce": 480.0},
                       {"excess": "e", "sufficient": "s", "scarce": "c"})
    assert moved["06:00:00-22:00:00"]["batteryStatus"] == {
        "2400-": "excess", "1500-2400": "sufficient", "480-1500": "scarce", "-480": "short"}


def test_bands_out_of_order_are_refused_naming_the_parameter_and_the_band() -> None:
    data = scenario_json(4800.0, TEMPERAMENTS[0])
    with pytest.raises(BandError) as caught:
        move_bands(data, {"excess": 1440.0}, {"excess": "scenario.excess = 0.3"})
    message = str(caught.value)
    assert "scenario.excess = 0.3 (1440 Wh)" in message
    assert "'sufficient' band would run from 2880 to 1440 Wh" in message


def test_a_band_the_scenario_lacks_is_refused() -> None:
    data = scenario_json(4800.0, TEMPERAMENTS[0])
    with pytest.raises(BandError, match="no time window of the scenario has a movable 'gold'"):
        move_bands(data, {"gold": 100.0}, {"gold": "scenario.gold = 0.5"})
    with pytest.raises(BandError, match="movable 'short'"):  # begins at 0 Wh: cannot move
        move_bands(data, {"short": 100.0}, {"short": "scenario.short = 0.5"})


def _status(directory: Path, unit: str) -> dict[str, str]:
    scenario = json.loads((directory / unit / "scenario.json").read_text())
    return scenario["06:00:00-22:00:00"]["batteryStatus"]  # type: ignore[no-any-return]


def test_a_share_is_of_each_units_own_capacity(tmp_path: Path) -> None:
    settings = SimSettings(units=3, overrides=(("scenario.excess", "0.75"),))
    cluster = load_community(settings, tmp_path)
    capacities = {u.unit_id: u.hw_config.battery_nominal_capacity_wh for u in cluster.units}
    assert capacities == {"E001": 4800.0, "E002": 4800.0, "E003": 9600.0}
    assert "3600-" in _status(tmp_path, "E001")
    assert "7200-" in _status(tmp_path, "E003")
    # after battery.scale: the share is of the new capacity
    scaled = SimSettings(units=1, overrides=(("scenario.excess", "0.75"),
                                             ("battery.scale", "2")))
    load_community(scaled, tmp_path / "scaled")
    assert "7200-" in _status(tmp_path / "scaled", "E001")


@pytest.mark.parametrize(("value", "rule"), [
    ("1.5", "must be > 0 and < 1"), ("0", "must be > 0 and < 1"),
    ("high", "a number between 0 and 1"),
])
def test_a_bad_share_is_refused(tmp_path: Path, value: str, rule: str) -> None:
    settings = SimSettings(units=1, overrides=(("scenario.excess", value),))
    with pytest.raises(SimError) as caught:
        load_community(settings, tmp_path)
    message = str(caught.value)
    assert message.startswith("scenario.excess = ") and value in message
    assert rule in message
