"""`apis config check | init | schema`, through typer's runner and as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from apis.config.cli import config_app
from apis.config.generate import write_cluster
from tests.config.conftest import SAMPLE_DIR, edit_json

runner = CliRunner()


def test_check_original_sample_prints_design_figures() -> None:
    result = runner.invoke(config_app, ["check", str(SAMPLE_DIR)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "ok" in out and "E001" in out
    assert "minimum deal duration: 514 s" in out
    assert "control time per deal: 32.7 s" in out
    assert "control-loss share of a deal: 6.4 %" in out
    assert "grid current of a full cluster: 4 A in 4 parallel deals" in out
    assert "sumOfDealGridCurrentMaxA = 100 A" in out
    assert "warning the control-loss share exceeds 5 %" in out


def test_check_five_mistakes_names_all_five(tmp_path: Path) -> None:
    write_cluster(tmp_path, 3)
    edit_json(tmp_path / "policy.json",
              lambda d: d["mediator"]["deal"].update(gridCurrentA=-1))
    edit_json(tmp_path / "E001" / "hwConfig.json",
              lambda d: d.update(batteryNominalCapacityWh="big"))
    edit_json(tmp_path / "E002" / "scenario.json",
              lambda d: d.pop("00:00:00-06:00:00"))
    edit_json(tmp_path / "E003" / "config.json", lambda d: d.update(systemType="dcdc_v9"))
    (tmp_path / "grid.json").write_text('{"nodes": [], "lines": [')
    result = runner.invoke(config_app, ["check", str(tmp_path)])
    assert result.exit_code == 2, result.output
    out = result.output
    assert "5 problem(s)" in out
    assert "policy.json: mediator.deal.gridCurrentA = -1 (must be > 0)" in out
    assert "E001/hwConfig.json: batteryNominalCapacityWh = 'big' (must be a number)" in out
    assert ("E002/scenario.json: time windows leave 00:00:00-06:00:00 uncovered "
            "(windows must cover 00:00:00-24:00:00)") in out
    assert ("E003/config.json: systemType = 'dcdc_v9' (must be one of 'dcdc_emulator', "
            "'dcdc_v1' or 'dcdc_v2')") in out
    assert "grid.json: not valid JSON" in out


def five_mistakes(folder: Path) -> None:
    """Five mistakes across the four original-format files, each judged within its file."""
    edit_json(folder / "policy.json", lambda d: d["mediator"]["deal"].update(gridCurrentA=-1))
    edit_json(folder / "policy.json", lambda d: d.update(operationGridVoltageV=500))
    edit_json(folder / "hwConfig.json", lambda d: d.update(batteryNominalCapacityWh="big"))
    edit_json(folder / "scenario.json",
              lambda d: d["00:00:00-24:00:00"]["batteryStatus"].update({"4320-": "excess",
                                                                         "4000-4320": "full"}))
    edit_json(folder / "config.json", lambda d: d.pop("unitId"))


FIVE_MISTAKES = [
    "config.json: unitId: missing (required key)",
    "hwConfig.json: batteryNominalCapacityWh = 'big' (must be a number)",
    "policy.json: mediator.deal.gridCurrentA = -1 (must be > 0)",
    "policy.json: operationGridVoltageV = 500 (must be within operationGridVoltageVRange "
    "300..380)",
    "scenario.json: 00:00:00-24:00:00.batteryStatus (ranges '3600-4320' and '4000-4320' "
    "overlap)",
]


def test_check_original_folder_names_every_mistake_of_every_file(sample_dir: Path) -> None:
    # Issue 23: the missing unitId hid the other four, a wrong gridCurrentA hid the voltage.
    five_mistakes(sample_dir)
    result = runner.invoke(config_app, ["check", str(sample_dir)])
    assert result.exit_code == 2, result.output
    lines = [line.removeprefix("  x ") for line in result.output.splitlines()]
    assert lines == ["5 problem(s):", *FIVE_MISTAKES]


def test_unit_process_reports_the_same_problems(sample_dir: Path) -> None:
    five_mistakes(sample_dir)
    unit = subprocess.run(
        [sys.executable, "-m", "apis", "unit", "--config", str(sample_dir / "config.json")],
        capture_output=True, text=True, timeout=120,
    )
    assert unit.returncode == 2, unit.stdout + unit.stderr
    assert "Traceback" not in unit.stderr
    lines = unit.stderr.splitlines()
    assert lines[0] == "apis unit: refused to start: 5 configuration problem(s):"
    assert lines[1:] == [f"  {sample_dir}/{line}" for line in FIVE_MISTAKES]


def test_check_reports_cross_file_problems_once_files_are_valid(tmp_path: Path) -> None:
    write_cluster(tmp_path, 2)
    edit_json(tmp_path / "E002" / "hwConfig.json", lambda d: d.update(gridCurrentCapacityA=0.5))
    result = runner.invoke(config_app, ["check", str(tmp_path)])
    assert result.exit_code == 2
    assert ("policy.json: mediator.deal.gridCurrentA = 1 (must be <= gridCurrentCapacityA = "
            "0.5 of E002/hwConfig.json)") in result.output


def test_init_then_check(tmp_path: Path) -> None:
    target = tmp_path / "cluster"
    result = runner.invoke(config_app, ["init", str(target), "--units", "4"])
    assert result.exit_code == 0, result.output
    assert "wrote 14 files for 4 unit(s)" in result.output
    result = runner.invoke(config_app, ["check", str(target)])
    assert result.exit_code == 0, result.output
    assert "4 unit(s) (E001, E002, E003, E004)" in result.output
    assert "warning the control-loss" not in result.output
    # A second init refuses to overwrite.
    result = runner.invoke(config_app, ["init", str(target)])
    assert result.exit_code == 1


def test_check_files_and_missing_path(tmp_path: Path) -> None:
    result = runner.invoke(
        config_app,
        ["check", str(SAMPLE_DIR / "policy.json"), str(SAMPLE_DIR / "scenario.json")],
    )
    assert result.exit_code == 0, result.output
    assert result.output.count("ok ") == 2
    result = runner.invoke(config_app, ["check", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "no such file or directory" in result.output


def test_check_config_json_pulls_in_its_files() -> None:
    result = runner.invoke(config_app, ["check", str(SAMPLE_DIR / "config.json")])
    assert result.exit_code == 0, result.output
    assert "minimum deal duration" in result.output


def test_schema_writes_one_schema_per_file(tmp_path: Path) -> None:
    result = runner.invoke(config_app, ["schema", str(tmp_path)])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["config.schema.json", "grid.schema.json", "hwConfig.schema.json",
                     "policy.schema.json", "scenario.schema.json"]
    policy = json.loads((tmp_path / "policy.schema.json").read_text())
    assert "memberUnitIds" in policy["properties"]
    assert "mediator" in policy["properties"]
    scenario = json.loads((tmp_path / "scenario.schema.json").read_text())
    assert "batteryStatus" in scenario["$defs"]["ScenarioBlock"]["properties"]


def test_apis_command_as_a_subprocess(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "apis", "config"]
    init = subprocess.run([*base, "init", str(tmp_path / "c"), "--units", "4"],
                          capture_output=True, text=True, timeout=120)
    assert init.returncode == 0, init.stderr
    check = subprocess.run([*base, "check", str(tmp_path / "c")],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "control-loss share" in check.stdout
    bad = subprocess.run([*base, "check", str(tmp_path / "missing")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
