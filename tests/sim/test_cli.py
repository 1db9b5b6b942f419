"""`apis sim`: a run through the CLI, sweeps, errors; and what sharing buys the default
community."""

from __future__ import annotations

import csv
import json
from datetime import datetime
from pathlib import Path

from typer.testing import CliRunner

from apis.cli import app
from apis.sim.community import SimSettings
from apis.sim.simulate import simulate

from .checks import check_conservation, check_report_agrees_with_csvs
from .conftest import CliRun

runner = CliRunner()


def test_cli_run_writes_and_prints_the_outcome(community_run: CliRun) -> None:
    # The acceptance run (20 units, one day) is benchmarks/sim_acceptance.py; here the same
    # command on 6 units for 6 hours of daytime (see conftest.py).
    out = community_run.out
    summary = check_report_agrees_with_csvs(out)
    check_conservation(out)
    assert summary["settings"]["units"] == 6
    assert "Self-sufficiency with sharing" in community_run.output
    assert str(out / "report.html") in community_run.output


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


def test_sharing_beats_no_sharing_for_the_default_community() -> None:
    # The embedded 4-unit cluster, default seed, from noon to 04:48 the next day: the
    # afternoon's deals move energy to short houses, which then buy less from the utility
    # in the night (a run that ends before the houses buy, or starts after the deals,
    # shows nothing).
    outcome = simulate(SimSettings(days=0.7, start=datetime(2020, 1, 1, 12)))
    comparison = outcome.summary["comparison"]
    assert outcome.summary["deals"]["completed"] >= 1
    assert comparison["self_sufficiency_gain"] > 0, comparison
    assert comparison["bought_saved_wh"] > 0


def test_a_plan_sweep_runs_through_the_command_group(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    result = runner.invoke(app, [
        "sim", "--units", "3", "--days", "0.5", "--fidelity", "plan",
        "--sweep", "seed=1,2", "--jobs", "1", "--out", str(out), "-q",
    ])
    assert result.exit_code == 0, result.output
    with (out / "sweep.csv").open() as f:
        assert [r["seed"] for r in csv.DictReader(f)] == ["1", "2"]
    for seed in (1, 2):
        summary = json.loads((out / "cases" / f"seed={seed}" / "summary.json").read_text())
        assert summary["settings"]["fidelity"] == "plan"
        assert summary["settings"]["seed"] == seed


def test_scheduler_refusals_name_the_options(tmp_path: Path) -> None:
    out = tmp_path / "x"
    result = runner.invoke(app, ["sim", "--units", "3", "--scheduler", "tcp://127.0.0.1:1",
                                 "--out", str(out), "-q"])
    assert result.exit_code == 2
    assert "--scheduler = 'tcp://127.0.0.1:1' without --sweep" in result.output
    result = runner.invoke(app, ["sim", "--units", "3", "--fidelity", "plan", "--sweep",
                                 "seed=1,2", "--jobs", "2", "--scheduler",
                                 "tcp://127.0.0.1:1", "--out", str(out), "-q"])
    assert result.exit_code == 2
    assert "--jobs = 2 with --scheduler" in result.output
    result = runner.invoke(app, ["sim", "--sweep", "seed=1,2", "--scheduler", "127.0.0.1:1",
                                 "--out", str(out), "-q"])
    assert result.exit_code == 2
    assert "--scheduler = '127.0.0.1:1' (must be a Dask scheduler address" in result.output
    assert not out.exists()
