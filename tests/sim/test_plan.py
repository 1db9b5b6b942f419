"""The planning fidelity: its outputs add up like the faithful run's, it repeats for a seed,
and it agrees with the faithful fidelity on a small community (4 units, 1 day, 2 seeds)
within the targets of `apis sim validate`."""

from __future__ import annotations

import csv
import json
from datetime import datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from apis.cli import app
from apis.config.policy import ForceStopCondition, PolicySafety
from apis.sim.community import SimSettings, community
from apis.sim.plan import run_plan
from apis.sim.summary import summarize
from apis.sim.validate import validate
from apis.unit.decisions import DealFlow, admission_failure, force_stop_reason

from .checks import check_conservation, check_report_agrees_with_csvs
from .conftest import COMMUNITY_ARGS, CliRun


@pytest.fixture(scope="module")
def plan_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("plan") / "out"
    result = CliRunner().invoke(
        app, ["sim", *COMMUNITY_ARGS, "--fidelity", "plan", "--sample-interval", "300",
              "--out", str(out), "-q"],
    )
    assert result.exit_code == 0, result.output
    return out


def test_plan_outputs_add_up_and_name_the_fidelity(plan_out: Path) -> None:
    summary = check_report_agrees_with_csvs(plan_out)
    check_conservation(plan_out)
    assert summary["settings"]["fidelity"] == "plan"
    assert summary["settings"]["plan"]["latency_live_s"] > 0
    assert summary["deals"]["made"] >= 1 and summary["deals"]["completed"] >= 1
    assert json.loads((plan_out / "run-info.json").read_text())["fidelity"] == "plan"
    assert "plan fidelity" in (plan_out / "report.html").read_text()
    for name in ("units.csv", "deals.csv"):
        with (plan_out / name).open(newline="") as f:
            rows = list(csv.DictReader(f))
        assert rows and {r["fidelity"] for r in rows} == {"plan"}
    # 6 units, 6 hours, one row per unit per 300 s
    with (plan_out / "units.csv").open(newline="") as f:
        assert sum(1 for _ in f) == 1 + 6 * 72
    for plot in ("rsoc.png", "shared_per_day.png", "grid_voltage.png", "import_export.png"):
        assert (plan_out / plot).stat().st_size > 0


def test_plan_repeats_for_a_seed() -> None:
    settings = SimSettings(units=5, days=0.5, start=datetime(2020, 3, 1, 8), seed=3,
                           fidelity="plan")
    with community(settings) as cluster:
        first = json.dumps(summarize(run_plan(settings, cluster)))
        again = json.dumps(summarize(run_plan(settings, cluster)))
    assert first == again
    assert json.loads(first)["deals"]["made"] >= 1


def test_faithful_outputs_name_their_fidelity(community_run: CliRun) -> None:
    out = community_run.out
    assert json.loads((out / "summary.json").read_text())["settings"]["fidelity"] == "faithful"
    with (out / "deals.csv").open(newline="") as f:
        assert {r["fidelity"] for r in csv.DictReader(f)} == {"faithful"}


def test_the_planning_fidelity_agrees_with_the_faithful_one() -> None:
    result = validate(units=4, days=1, seeds=2)
    table = result.table()
    assert result.passed, table
    checked = {r.check.key: r for r in result.rows}
    for key in ("energy_shared_kwh", "bought_kwh", "deals_made", "deals_completed",
                "self_sufficiency_pct", "self_sufficiency_without_pct"):
        assert checked[key].passed, table
    assert checked["deals_made"].faithful >= 10  # a comparison of something
    assert result.latency["live_deals"] + result.latency["dark_deals"] >= 10


def test_admission_limits_and_force_stop_rules() -> None:
    safety = PolicySafety(sum_of_deal_grid_current_max_a=2)
    a = DealFlow("E001", "E002", 1.0)
    assert admission_failure(safety, 3, 0, a, []) is None
    assert admission_failure(safety, 3, 3, a, []) == "deal reset limit exceeded"
    # E002 discharges in `a`: it cannot charge in another deal at the same time
    assert admission_failure(safety, 3, 0, DealFlow("E002", "E003", 1.0), [a]) == (
        "E002 : other discharge side deal found")
    assert admission_failure(safety, 3, 0, DealFlow("E003", "E004", 1.0), [a]) is None
    failure = admission_failure(safety, 3, 0, DealFlow("E003", "E004", 1.5), [a])
    assert failure is not None and "sumOfDealGridCurrentMaxA" in failure
    condition = ForceStopCondition(discharge_unit_lower_limit_rsoc=20,
                                   charge_unit_upper_limit_rsoc=95)
    assert force_stop_reason(condition, "E002", 50.0, "E001", 50.0) is None
    assert force_stop_reason(condition, "E002", 19.9, "E001", 50.0) == (
        "E002 : dischargeUnitLowerLimitRsoc")
    assert force_stop_reason(condition, "E002", 50.0, "E001", 95.1) == (
        "E001 : chargeUnitUpperLimitRsoc")
