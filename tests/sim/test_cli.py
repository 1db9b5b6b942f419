"""`apis sim`: the acceptance run (20 units, one day), sweeps, errors; and what sharing buys
the default community."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from apis.cli import app
from apis.sim.community import SimSettings
from apis.sim.simulate import simulate

from .checks import check_conservation, check_report_agrees_with_csvs

runner = CliRunner()


# About 100 s of CPU on this 2-core machine (the real code of 20 units for a day, then the
# baseline and the outputs); the wall time grows with whatever else the machine runs.
@pytest.mark.timeout(1200)
def test_twenty_units_one_day(tmp_path: Path) -> None:
    out = tmp_path / "out"
    began = time.perf_counter()
    result = runner.invoke(app, ["sim", "--units", "20", "--days", "1", "--out", str(out), "-q"])
    wall = time.perf_counter() - began
    assert result.exit_code == 0, result.output
    for name in ("summary.json", "units.csv", "deals.csv", "report.html", "rsoc.png",
                 "shared_per_day.png", "grid_voltage.png", "import_export.png",
                 "run-info.json"):
        assert (out / name).is_file(), name
    summary = check_report_agrees_with_csvs(out)
    check_conservation(out)
    assert summary["settings"]["units"] == 20
    assert "Self-sufficiency with sharing" in result.output
    assert str(out / "report.html") in result.output
    print(f"20 units, 1 day: {wall:.1f} s wall (with baseline and outputs)")


def test_no_sharing_runs_only_the_baseline(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["sim", "--units", "3", "--days", "0.25", "--no-sharing", "--out", str(out), "-q"]
    )
    assert result.exit_code == 0, result.output
    summary = check_report_agrees_with_csvs(out)
    assert summary["settings"]["sharing"] is False
    assert "comparison" not in summary
    assert summary["deals"]["made"] == 0
    assert summary["losses"]["converter_wh"] == 0.0
    check_conservation(out)


def test_sweep_writes_one_comparison(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    result = runner.invoke(app, [
        "sim", "--units", "3", "--days", "0.05", "--start", "2020-01-01T10:00:00",
        "--sweep", "mediator.deal.gridCurrentA=1,2", "--out", str(out), "-q",
    ])
    assert result.exit_code == 0, result.output
    with (out / "sweep.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["mediator.deal.gridCurrentA"] for r in rows] == ["1", "2"]
    assert (out / "sweep.md").read_text().count("\n| ") == 3  # header and two cases
    assert (out / "sweep.png").stat().st_size > 1000
    for value in ("1", "2"):
        case = out / "cases" / f"mediator.deal.gridCurrentA={value}"
        summary = json.loads((case / "summary.json").read_text())
        assert summary["settings"]["overrides"] == {"mediator.deal.gridCurrentA": value}
        assert (case / "report.html").is_file()


def test_errors_name_the_setting(tmp_path: Path) -> None:
    result = runner.invoke(app, ["sim", "--config", str(tmp_path), "--units", "3"])
    assert result.exit_code == 2
    assert "--config and --units" in result.output
    result = runner.invoke(app, ["sim", "--sweep", "mediator.deal.nope=1,2", "--out",
                                 str(tmp_path / "x"), "-q"])
    assert result.exit_code == 2
    assert "no key 'nope' under mediator.deal" in result.output
    result = runner.invoke(app, ["sim", "--config", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert "not a directory" in result.output


@pytest.mark.timeout(900)
def test_sharing_beats_no_sharing_for_the_default_community() -> None:
    # The embedded 4-unit cluster, default seed and start, two days: what the day's deals
    # moved to short houses is not bought from the utility in the night.
    outcome = simulate(SimSettings(days=2))
    comparison = outcome.summary["comparison"]
    assert outcome.summary["deals"]["completed"] >= 1
    assert comparison["self_sufficiency_gain"] > 0, comparison
    assert comparison["bought_saved_wh"] > 0
