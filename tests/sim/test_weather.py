"""Year runs: PV from real weather (pvlib's typical year or a user's file), household load
with seasons or from a file, the checks on those files, and the monthly figures."""

from __future__ import annotations

import dataclasses
import json
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from apis.cli import app
from apis.config.loader import Cluster
from apis.emulator.house import BuiltinProfiles
from apis.sim.community import SimSettings, load_community
from apis.sim.plan import run_plan
from apis.sim.run import run
from apis.sim.seasons import YearProfiles
from apis.sim.simulate import simulate
from apis.sim.summary import deal_summary
from apis.sim.weather import (
    MAX_GAP_S,
    YEAR_S,
    read_load,
    read_weather,
    seasonal_factor,
    year_position,
)

runner = CliRunner()


def _daily_kwh_per_kwp() -> np.ndarray:
    """Daily PV energy per kWp of the built-in year (hourly samples: W x 1 h)."""
    series = read_weather("builtin")
    assert series.full_year
    day = (series.positions_s // 86400).astype(np.int64)
    return np.bincount(day, weights=series.values[:, 0], minlength=365) / 1000.0


def _month_mean(daily: np.ndarray, month: int) -> float:
    first = (date(2001, month, 1) - date(2001, 1, 1)).days
    last = (date(2001 + month // 12, month % 12 + 1, 1) - date(2001, 1, 1)).days
    return float(daily[first:last].mean())


def test_builtin_weather_is_a_plausible_northern_year() -> None:
    daily = _daily_kwh_per_kwp()
    assert daily.size == 365
    assert _month_mean(daily, 6) > 1.3 * _month_mean(daily, 12)  # 36 N: summer > winter
    assert 0.0 <= daily.min() and daily.max() < 8.0  # kWh per kWp per day
    assert 2.0 < daily.mean() < 6.0
    assert 1000.0 < daily.sum() < 2000.0  # kWh per kWp per year
    assert 0.0 <= read_weather("builtin").values.min()


def test_year_position_counts_a_non_leap_year() -> None:
    assert year_position(datetime(2020, 1, 1)) == 0.0
    assert year_position(datetime(2020, 2, 29, 12)) == year_position(datetime(2021, 2, 28, 12))
    assert year_position(datetime(2020, 3, 1)) == 59 * 86400.0
    assert year_position(datetime(2020, 12, 31, 23)) == YEAR_S - 3600.0


def test_seasonal_load_shape_has_winter_and_summer_peaks() -> None:
    days = np.arange(365) * 86400.0
    factor = seasonal_factor(days)
    assert factor.mean() == pytest.approx(1.0, abs=1e-3)
    jan, apr, jul, octo = (float(seasonal_factor(d * 86400.0)) for d in (15, 105, 196, 288))
    assert jan > jul > apr and jul > octo and jan == pytest.approx(1.30, abs=0.01)


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _ramp_csv(path: Path) -> Path:
    """PV per kWp = 10 W x the hour, hourly from 2020-01-01 00:00 to 2020-01-02 00:00."""
    rows = [f"2020-01-01 {h:02d}:00,{10 * h}" for h in range(24)] + ["2020-01-02 00:00,240"]
    return _write(path, ["time,pv_w_per_kwp", *rows])


def test_a_users_pv_csv_and_load_csv_are_used_as_given(tmp_path: Path) -> None:
    pv_file = _ramp_csv(tmp_path / "pv.csv")
    load_file = _write(tmp_path / "load.csv", [
        "time,house_a,house_b",
        *(f"2020-01-{d:02d} {h:02d}:00,300,700" for d in (1, 2) for h in range(24)),
        "2020-01-03 00:00,300,700",
    ])
    settings = SimSettings(units=4, days=1.0, fidelity="plan", sample_interval_s=900.0,
                           weather=str(pv_file), load=str(load_file), sharing=False)
    result = run_plan(settings, _cluster(settings, tmp_path / "community"))
    peak_kwp = BuiltinProfiles(4, seed=0).peak_w / 1000.0
    # the plan steps 60 s holding the power at the step's start: the left sum of 10 W/h
    expected_per_kwp = sum(10.0 * (k / 60.0) for k in range(1440)) / 60.0
    assert result.end_counters["pv_wh"] == pytest.approx(expected_per_kwp * peak_kwp, rel=1e-12)
    assert result.end_counters["load_wh"] == pytest.approx([7200.0, 16800.0, 7200.0, 16800.0],
                                                          rel=1e-12)
    # the faithful world reads the same source at an instant
    profiles = YearProfiles(4, 0, read_weather(str(pv_file)), read_load(str(load_file)), False)
    pv, load = profiles.power_w(0.0, datetime(2020, 1, 1, 13, 30))
    assert pv == pytest.approx(135.0 * peak_kwp, rel=1e-12)
    assert load.tolist() == [300.0, 700.0, 300.0, 700.0]


def test_ghi_csv_gives_pv_by_day_only(tmp_path: Path) -> None:
    rows = []
    for h in range(25):
        ghi = max(0.0, 800.0 * np.sin(np.pi * (h - 6) / 12)) if 6 <= h <= 18 else 0.0
        stamp = "2020-06-02 00:00" if h == 24 else f"2020-06-01 {h:02d}:00"
        rows.append(f"{stamp},{ghi:.1f},25")
    path = _write(tmp_path / "ghi.csv", ["# latitude=36.1", "# longitude=-79.95",
                                         "# tz_hours=-5", "time,ghi_w_m2,temp_air_c", *rows])
    series = read_weather(str(path))
    assert not series.full_year
    values = series.values[:, 0]
    assert values[:5].max() == 0.0 and values[20:].max() == 0.0
    assert 400.0 < values[12] < 1000.0  # noon, 800 W/m2 on the horizontal


def _cluster(settings: SimSettings, directory: Path) -> Cluster:
    return load_community(settings, directory)


BAD_CASES = {
    "missing": (None, "cannot be read"),
    "columns": (["time,irradiance", "2020-01-01 00:00,0", "2020-01-01 01:00,0"],
                "must hold time and one of pv_w_per_kwp, ghi_w_m2"),
    "non_numeric": (["time,pv_w_per_kwp", "2020-01-01 00:00,0", "2020-01-01 01:00,sunny"],
                    ":3: column pv_w_per_kwp = 'sunny' (a number needed)"),
    "negative": (["# latitude=36", "# longitude=-80", "time,ghi_w_m2", "2020-01-01 00:00,0",
                  "2020-01-01 01:00,-5"], ":5: column ghi_w_m2 = -5 (must be >= 0)"),
    "too_high": (["time,pv_w_per_kwp", "2020-01-01 00:00,0", "2020-01-01 01:00,9000"],
                 "column pv_w_per_kwp = 9000 (must be <= 1500)"),
    "gap": (["time,pv_w_per_kwp", "2020-01-01 00:00,0", "2020-01-01 01:00,0",
             "2020-01-01 06:00,0", "2020-01-02 01:00,0"],
            f":4: gap of 5.00 h before 01-01 06:00 (limit {MAX_GAP_S / 3600:g} h)"),
    "no_time": (["when,pv_w_per_kwp", "2020-01-01 00:00,0"],
                ":1: header = ['when', 'pv_w_per_kwp'] (must hold a time column)"),
    "bad_time": (["time,pv_w_per_kwp", "yesterday,0"], ":2: column time = 'yesterday'"),
    "no_site": (["time,ghi_w_m2", "2020-01-01 00:00,0", "2020-01-01 01:00,0"],
                "no '# latitude=...' line"),
    "short": (["time,pv_w_per_kwp", "2020-01-01 00:00,0", "2020-01-01 01:00,0"],
              "covers 01-01 00:00 .. 01-01 01:00 of the year, the run needs 01-01 00:00 .. "
              "01-02 00:00"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_weather_input_is_refused_with_exit_2(tmp_path: Path, case: str) -> None:
    lines, message = BAD_CASES[case]
    path = tmp_path / f"{case}.csv"
    if lines is not None:
        _write(path, lines)
    result = runner.invoke(app, ["sim", "--fidelity", "plan", "--units", "2", "--days", "1",
                                 "--weather", str(path), "--out", str(tmp_path / "o"), "-q"])
    output = result.output
    assert result.exit_code == 2, output
    assert "Traceback" not in output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    if case == "missing":
        assert f"--weather = '{path}'" in output and "existing file" in output
    else:
        assert str(path.resolve()) in output and message in output, output
    assert not (tmp_path / "o").exists()


def test_bad_load_input_is_refused_with_exit_2(tmp_path: Path) -> None:
    path = _write(tmp_path / "load.csv", ["time,a", "2020-01-01 00:00,100",
                                          "2020-01-01 01:00,-1"])
    result = runner.invoke(app, ["sim", "--fidelity", "plan", "--units", "2", "--days", "1",
                                 "--load", str(path), "--out", str(tmp_path / "o"), "-q"])
    assert result.exit_code == 2, result.output
    assert f"{path.resolve()}:3: column a = -1 (must be >= 0)" in result.output


def test_a_tmy_file_with_a_negative_value_is_refused(tmp_path: Path) -> None:
    from apis.sim.weather import WeatherError, builtin_path

    text = builtin_path().read_text(encoding="utf-8").splitlines()
    fields = text[14].split(",")  # the 13th hour of 1 January
    fields[4] = "-7"  # GHI
    text[14] = ",".join(fields)
    path = _write(tmp_path / "broken-tmy.csv", text)
    with pytest.raises(WeatherError, match=r"broken-tmy.csv:15: column ghi = -7 \(must be >= 0\)"):
        read_weather(str(path))


@pytest.mark.parametrize("fidelity", ["plan", "faithful"])
def test_two_days_with_builtin_weather_share_energy(fidelity: str, tmp_path: Path) -> None:
    settings = SimSettings(units=4, days=2.0, seed=1, start=datetime(2020, 6, 1),
                           fidelity=fidelity, weather="builtin", load="seasonal",
                           initial_rsoc=(90.0, 20.0, 85.0, 25.0),
                           sample_interval_s=900.0 if fidelity == "plan" else 60.0)
    result = (run_plan(settings, _cluster(settings, tmp_path)) if fidelity == "plan"
              else run(settings))
    deals = deal_summary(result)
    assert deals["made"] >= 1 and deals["energy_shared_wh"] > 0.0
    peak_kwp = BuiltinProfiles(4, seed=1).peak_w / 1000.0
    per_kwp_day = result.end_counters["pv_wh"] / peak_kwp / 2.0 / 1000.0
    assert np.all((per_kwp_day > 1.0) & (per_kwp_day < 8.0))  # kWh per kWp per day, June


def test_monthly_figures_for_a_run_over_two_months(tmp_path: Path) -> None:
    settings = SimSettings(units=4, days=20.0, seed=2, start=datetime(2020, 1, 22),
                           fidelity="plan", sample_interval_s=900.0, weather="builtin",
                           load="seasonal")
    outcome = simulate(settings, tmp_path / "out")
    monthly = outcome.summary["monthly"]
    assert [m["month"] for m in monthly] == ["2020-01", "2020-02"]
    com = outcome.summary["community"]
    assert sum(m["load_wh"] for m in monthly) == pytest.approx(com["load_wh"], rel=1e-9)
    assert sum(m["bought_wh"] for m in monthly) == pytest.approx(com["bought_wh"], rel=1e-9)
    assert sum(m["energy_shared_wh"] for m in monthly) == pytest.approx(
        outcome.summary["deals"]["energy_shared_wh"], rel=1e-9)
    for m in monthly:
        assert 0.0 <= m["self_sufficiency_without_sharing"] <= 1.0
        assert m["self_sufficiency_with_sharing"] == pytest.approx(
            1.0 - m["bought_wh"] / m["load_wh"])
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "<h2>Per month</h2>" in html and "2020-02" in html
    written = json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8"))
    assert written["settings"]["weather"] == "builtin"
    # a faithful run over a month boundary groups its samples the same way
    short = dataclasses.replace(settings, days=2 / 24, start=datetime(2020, 1, 31, 23),
                                fidelity="faithful", sample_interval_s=60.0)
    faithful = simulate(short).summary["monthly"]
    assert [m["month"] for m in faithful] == ["2020-01", "2020-02"]


def test_without_the_options_there_are_no_new_keys() -> None:
    settings = SimSettings(units=2, days=1.0, fidelity="plan", sample_interval_s=900.0)
    summary = simulate(settings).summary
    assert "monthly" not in summary
    assert "weather" not in summary["settings"] and "load" not in summary["settings"]
