"""The outputs of a run with deals (6 generated units, 6 hours of daytime, through the CLI):
every output file, the figures against the CSVs, the energy balance, the deals."""

from __future__ import annotations

import json
import re

from .checks import check_conservation, check_report_agrees_with_csvs, read_csv
from .conftest import CliRun

OUTPUTS = ("summary.json", "units.csv", "deals.csv", "rsoc.png", "shared_per_day.png",
           "grid_voltage.png", "import_export.png", "report.html", "run-info.json")


def test_every_output_file_is_written(community_run: CliRun) -> None:
    out = community_run.out
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    units = read_csv(out / "units.csv")
    assert len(units) == 6 * 360  # 6 units x 360 minutes
    assert units[0]["time"] == "2020-01-01T09:01:00"
    assert units[-1]["time"] == "2020-01-01T15:00:00"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["units"] == 6


def test_report_is_self_contained(community_run: CliRun) -> None:
    html = (community_run.out / "report.html").read_text()
    sources = re.findall(r'src="([^"]*)"', html)
    assert len(sources) == 4
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in html and "https://" not in html
    assert "<link" not in html and "<script" not in html


def test_report_figures_agree_with_the_csvs(community_run: CliRun) -> None:
    summary = check_report_agrees_with_csvs(community_run.out)
    assert summary["deals"]["made"] >= 2  # the run did share


def test_energy_is_conserved(community_run: CliRun) -> None:
    check_conservation(community_run.out)
    summary = json.loads((community_run.out / "summary.json").read_text())
    # the baseline balances too
    base = summary["baseline"]["balance"]
    assert abs(base["error_wh"]) < 1e-6 * (base["energy_in_wh"] + base["energy_out_wh"])


def test_deals_complete_near_their_amount(community_run: CliRun) -> None:
    deals = read_csv(community_run.out / "deals.csv")
    completed = [d for d in deals if d["outcome"] == "completed"]
    assert completed
    for d in completed:
        amount, delivered = float(d["deal_amount_wh"]), float(d["delivered_wh"])
        assert abs(delivered - amount) <= 0.005 * amount
        # the discharging battery gave more than the charging one got: losses on the way
        assert float(d["loss_wh"]) > 0
        assert d["charge_unit"] != d["discharge_unit"]
    summary = json.loads((community_run.out / "summary.json").read_text())
    losses = summary["losses"]
    assert losses["converter_wh"] > 0 and losses["line_wh"] > 0
    assert losses["control_overhead_wh"] > 0
    # hand-overs may overlap two references (with droop) for an instant, never longer
    assert summary["voltage_conflicts"]["longest_s"] < 1.0


def test_summary_has_no_wall_clock_figures(community_run: CliRun) -> None:
    out = community_run.out
    text = (out / "summary.json").read_text()
    assert "wall" not in text and "speed" not in text
    info = json.loads((out / "run-info.json").read_text())
    assert info["wall_s"] > 0 and info["speed"] > 0 and info["peak_memory_mb"] > 0
