"""Profiles from files: the original emulator's CSV formats and the simple format."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from apis.emulator import World
from apis.emulator.house import SampledProfiles, read_original_solar_csv

# A year of hourly PV (W) in the original emulator's solar format, made by this project.
REFERENCE_SOLAR = Path(__file__).resolve().parents[1] / "data" / "original-emulator" / "solar.csv"
AT = datetime(2020, 1, 1)


def _write_solar(path: Path) -> None:
    rows = []
    for day in range(365):
        rows.append(",".join(str(day + h if 6 <= h <= 18 else 0) for h in range(24)))
    path.write_text("\n".join(rows) + "\n")


def _write_load(path: Path, households: int = 2, days: int = 2) -> None:
    header = ",".join(["date", "house"] + [f"c{k}" for k in range(2, 54)])
    lines = [header]
    for day in range(days):
        for house in range(1, households + 1):
            halves = [f"{0.1 * house + 0.001 * k:.3f}" for k in range(48)]
            lines.append(",".join([f"d{day}", str(house), "x", "x", "x", "x", *halves]))
    path.write_text("\n".join(lines) + "\n")


def test_original_formats(tmp_path: Path) -> None:
    _write_solar(tmp_path / "solar.csv")
    _write_load(tmp_path / "load.csv")
    profiles = SampledProfiles.from_original(
        tmp_path / "solar.csv", tmp_path / "load.csv", ["E001", "E002"]
    )
    pv, load = profiles.power_w(12 * 3600.0, AT)
    assert pv.tolist() == [12.0, 12.0]  # day 0, hour 12; same PV for every unit
    # Hour 12 is the 25th half-hour sample: 0.1 * house + 0.024 kW.
    assert load == pytest.approx([124.0, 224.0])
    pv, _ = profiles.power_w(12.5 * 3600.0, AT)
    assert pv.tolist() == [12.5, 12.5]  # halfway to hour 13 (value 13)
    with pytest.raises(ValueError, match="household 3"):
        SampledProfiles.from_original(tmp_path / "solar.csv", tmp_path / "load.csv", ["E003"])


def test_simple_format_drives_a_world(tmp_path: Path) -> None:
    path = tmp_path / "house.csv"
    path.write_text("time,pv_w,load_w\n0,0,500\n1800,1000,500\n3600,0,500\n")
    profiles = SampledProfiles.from_simple_csv(path, 2)
    world = World.with_units(2, profiles=profiles, initial_rsoc=50.0)
    world.advance(3600)
    c = world.counters("E001")
    assert c.pv_wh == pytest.approx(500.0, rel=1e-3)  # a triangle: 1000 W x 1 h / 2
    assert c.load_wh == pytest.approx(500.0, rel=1e-9)
    bad = tmp_path / "bad.csv"
    bad.write_text("t,pv,load\n0,0,0\n")
    with pytest.raises(ValueError, match="header"):
        SampledProfiles.from_simple_csv(bad, 1)


def test_reference_solar_sample() -> None:
    pv = read_original_solar_csv(REFERENCE_SOLAR)
    assert pv.shape == (365 * 24,)
    assert 2000 < float(np.max(pv)) < 3500 and float(np.min(pv)) == 0.0
