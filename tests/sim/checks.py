"""Recomputing a run's figures from its CSV files, independently of the summary code."""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def close(a: float, b: float, rows: int = 1) -> bool:
    """Equal up to the CSV's rounding (6 decimals per value, `rows` values summed)."""
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6 * rows + 1e-6)


def rows_of_deals(out: Path) -> list[dict[str, str]]:
    return read_csv(out / "deals.csv")


def figures_from_csvs(out: Path) -> dict[str, Any]:
    units = read_csv(out / "units.csv")
    deals = read_csv(out / "deals.csv")
    totals: dict[str, float] = defaultdict(float)
    last_battery: dict[str, float] = {}
    for row in units:
        for key in ("pv_wh", "load_wh", "bought_wh", "curtailed_wh", "spilled_wh",
                    "converter_loss_wh", "grid_in_wh", "grid_out_wh"):
            totals[key] += float(row[key])
        last_battery[row["unit"]] = float(row["battery_wh"])
    completed = [d for d in deals if d["outcome"] == "completed"]
    overshoots = [float(d["overshoot_wh"]) for d in completed]
    return {
        **totals,
        "rows": len(units),
        "battery_end_wh": sum(last_battery.values()),
        "self_sufficiency": 1.0 - totals["bought_wh"] / totals["load_wh"],
        "deals_made": len(deals),
        "deals_completed": len(completed),
        "deals_aborted": sum(d["outcome"] in ("aborted", "scram") for d in deals),
        "energy_shared_wh": sum(float(d["delivered_wh"]) for d in deals),
        "overshoot_mean_wh": sum(overshoots) / len(overshoots) if overshoots else 0.0,
        "overshoot_max_wh": max(overshoots) if overshoots else 0.0,
    }


def check_report_agrees_with_csvs(out: Path) -> dict[str, Any]:
    """The summary and the report's headline table match what the CSVs add up to."""
    summary = json.loads((out / "summary.json").read_text())
    csvs = figures_from_csvs(out)
    com, deals = summary["community"], summary["deals"]
    rows = csvs["rows"]
    for key in ("pv_wh", "load_wh", "bought_wh", "curtailed_wh", "spilled_wh"):
        assert close(com[key], csvs[key], rows), (key, com[key], csvs[key])
    assert close(com["dc_grid_in_wh"], csvs["grid_in_wh"], rows)
    assert close(com["dc_grid_out_wh"], csvs["grid_out_wh"], rows)
    assert close(com["battery_end_wh"], csvs["battery_end_wh"], rows)
    assert math.isclose(com["self_sufficiency"], csvs["self_sufficiency"], abs_tol=1e-9)
    assert deals["made"] == csvs["deals_made"]
    assert deals["completed"] == csvs["deals_completed"]
    assert deals["aborted"] == csvs["deals_aborted"]
    assert close(deals["energy_shared_wh"], csvs["energy_shared_wh"], len(rows_of_deals(out)))
    assert close(deals["overshoot_mean_wh"], csvs["overshoot_mean_wh"], 1)
    assert close(deals["overshoot_max_wh"], csvs["overshoot_max_wh"], 1)
    # the converter losses in the summary are the CSV's, split into their parts
    losses = summary["losses"]
    parts = losses["converter_wh"] + losses["control_overhead_wh"] + losses["standby_wh"]
    assert close(parts, csvs["converter_loss_wh"], rows)
    # the report shows the same numbers
    html = (out / "report.html").read_text()
    assert f"{csvs['energy_shared_wh'] / 1000:,.3f} kWh" in html
    assert f"{csvs['bought_wh'] / 1000:,.3f} kWh" in html
    assert f"{csvs['curtailed_wh'] / 1000:,.3f} kWh" in html
    assert f"{100 * csvs['self_sufficiency']:.2f} %" in html
    for label, count in (("Deals made", csvs["deals_made"]),
                         ("Deals completed", csvs["deals_completed"]),
                         ("Deals aborted", csvs["deals_aborted"])):
        assert f"<td>{label}</td><td>{count}</td>" in html
    return summary


def check_conservation(out: Path) -> None:
    """Community energy in = out + losses + storage change, from the CSVs."""
    summary = json.loads((out / "summary.json").read_text())
    csvs = figures_from_csvs(out)
    energy_in = csvs["pv_wh"] + csvs["bought_wh"]
    energy_out = csvs["load_wh"] + csvs["curtailed_wh"] + csvs["spilled_wh"]
    line = summary["losses"]["line_wh"]
    losses = csvs["converter_loss_wh"] + line
    storage = csvs["battery_end_wh"] - summary["community"]["battery_start_wh"]
    moved = energy_in + energy_out
    assert abs(energy_in - energy_out - losses - storage) < 1e-6 * moved + 0.05
    # what left the units into the DC grid arrived, less the line losses
    assert abs(csvs["grid_out_wh"] - csvs["grid_in_wh"] - line) < 1e-6 * moved + 0.05
    assert abs(summary["balance"]["error_wh"]) < 1e-6 * moved
