"""Writing a run's outputs: summary.json, units.csv, deals.csv, PNG plots and report.html.

`report.html` is one self-contained file (the plots are embedded as base64 data URIs) that
reads offline. Wall-clock figures (how long the run took, its speed, memory) go only to
`run-info.json`, so that `summary.json` is the same, bit for bit, for the same run.
"""

from __future__ import annotations

import base64
import csv
import html
import json
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from apis.sim.recorder import ENERGY_COLUMNS
from apis.sim.run import RunResult
from apis.sim.summary import (
    AnyResult,
    deal_delivered_wh,
    deal_loss_wh,
    deal_outcome,
    deal_overshoot_wh,
)

UNITS_COLUMNS = (
    "time", "unit", "rsoc_pct", "battery_wh", "pv_w", "load_w", "converter_w",
    *(name for name, _ in ENERGY_COLUMNS), "fidelity",
)
DEALS_COLUMNS = (
    "deal_id", "request_unit", "accept_unit", "charge_unit", "discharge_unit", "type",
    "grid_current_a", "created", "activated", "started", "stopped", "deactivated",
    "deal_amount_wh", "delivered_wh", "charge_unit_wh", "discharge_unit_wh", "loss_wh",
    "overshoot_wh", "outcome", "reason", "fidelity",
)
PLOTS = {
    "rsoc.png": "State of charge of every unit",
    "shared_per_day.png": "Energy shared per day",
    "grid_voltage.png": "DC grid voltage",
    "import_export.png": "Per-unit DC grid import and export, and utility purchases",
}


FAITHFUL = "faithful"


def _num(value: float) -> str:
    return f"{value:.6f}"


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def write_units_csv(path: Path, result: RunResult) -> None:
    """Per unit per sample: RSOC, mean powers and energies of the interval."""
    s = result.samples
    interval_h = s.interval_s / 3600.0
    arrays = {name: s.array(name) for name, _ in ENERGY_COLUMNS}
    rsoc, battery = s.array("rsoc"), s.array("battery_wh")
    start = result.settings.start
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(UNITS_COLUMNS)
        previous = 0.0
        for k, t in enumerate(s.times_s):
            hours = (t - previous) / 3600.0 if t > previous else interval_h
            previous = t
            stamp = (start + timedelta(seconds=round(t, 6))).isoformat()
            for i, unit in enumerate(s.unit_ids):
                grid_net = arrays["grid_out_wh"][k, i] - arrays["grid_in_wh"][k, i]
                out.writerow([
                    stamp, unit, _num(rsoc[k, i]), _num(battery[k, i]),
                    _num(arrays["pv_wh"][k, i] / hours), _num(arrays["load_wh"][k, i] / hours),
                    _num(grid_net / hours),
                    *(_num(arrays[name][k, i]) for name, _ in ENERGY_COLUMNS),
                    FAITHFUL,
                ])


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return _num(value)
    return str(value)


def write_deals_csv(path: Path, result: RunResult) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(DEALS_COLUMNS)
        for d in result.deals:
            outcome = deal_outcome(d)
            reason = d.scram_reason if outcome == "scram" else d.abort_reason
            out.writerow([_cell(v) for v in (
                d.deal_id, d.request_unit_id, d.accept_unit_id, d.charge_unit_id,
                d.discharge_unit_id, d.type, float(d.deal_grid_current_a), d.create_date_time,
                d.activate_date_time, d.start_date_time, d.stop_date_time,
                d.deactivate_date_time, float(d.deal_amount_wh), deal_delivered_wh(d),
                d.charge_unit_cumulate_amount_wh, d.discharge_unit_cumulate_amount_wh,
                deal_loss_wh(d), deal_overshoot_wh(d), outcome, reason, FAITHFUL,
            )])


# ---- plots ---------------------------------------------------------------------------------


def write_plots(directory: Path, result: AnyResult, summary: dict[str, Any]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result.samples
    hours = np.asarray(s.times_s) / 3600.0
    written = []
    fidelity = result.settings.fidelity

    def save(fig: Any, name: str) -> None:
        fig.axes[0].set_title(f"{PLOTS[name]} ({fidelity} fidelity)")
        fig.tight_layout()
        path = directory / name
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)

    many = len(s.unit_ids) > 12
    fig, ax = plt.subplots(figsize=(9, 4))
    rsoc = s.array("rsoc")
    for i, unit in enumerate(s.unit_ids):
        ax.plot(hours, rsoc[:, i], lw=0.7 if many else 1.2, label=None if many else unit)
    ax.set_xlabel("hours since start")
    ax.set_ylabel("RSOC (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(PLOTS["rsoc.png"])
    if not many:
        ax.legend(fontsize="small", ncol=4)
    save(fig, "rsoc.png")

    fig, ax = plt.subplots(figsize=(9, 3.5))
    per_day = summary["shared_per_day_wh"]
    ax.bar(list(per_day), [v / 1000.0 for v in per_day.values()], color="tab:green")
    ax.set_ylabel("kWh delivered by deals")
    ax.set_title(PLOTS["shared_per_day.png"])
    ax.tick_params(axis="x", labelrotation=45 if len(per_day) > 7 else 0)
    save(fig, "shared_per_day.png")

    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.plot(hours, s.grid_voltage_max, lw=0.8, label="highest unit node")
    ax.plot(hours, s.grid_voltage_min, lw=0.8, label="lowest unit node")
    ax.set_xlabel("hours since start")
    ax.set_ylabel("V (0 = grid not energised)")
    ax.set_title(PLOTS["grid_voltage.png"])
    ax.legend(fontsize="small")
    save(fig, "grid_voltage.png")

    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(s.unit_ids) + 3), 4))
    x = np.arange(len(s.unit_ids))
    rows = summary["per_unit"]
    width = 0.28
    ax.bar(x - width, [r["dc_grid_in_wh"] / 1000 for r in rows], width, label="DC grid import")
    ax.bar(x, [r["dc_grid_out_wh"] / 1000 for r in rows], width, label="DC grid export")
    ax.bar(x + width, [r["bought_wh"] / 1000 for r in rows], width, label="bought (utility)")
    ax.set_xticks(x, s.unit_ids, rotation=90 if many else 0, fontsize="small")
    ax.set_ylabel("kWh")
    ax.set_title(PLOTS["import_export.png"])
    ax.legend(fontsize="small")
    save(fig, "import_export.png")
    return written


# ---- report.html ---------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #ddd;margin:.5em 0}
.note{color:#555;font-size:.9em}
"""


def _kwh(wh: float) -> str:
    return f"{wh / 1000.0:,.3f} kWh"


def _pct(share: float) -> str:
    return f"{100.0 * share:.2f} %"


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _image(path: Path, title: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<h3>{html.escape(title)}</h3><img alt="{html.escape(title)}" ' \
           f'src="data:image/png;base64,{data}">'


def key_figures(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) of the report's headline table, as shown."""
    com, deals, losses = summary["community"], summary["deals"], summary["losses"]
    rows = [("Energy shared (delivered by deals)", _kwh(deals["energy_shared_wh"]))]
    comparison = summary.get("comparison")
    if comparison is not None:
        rows += [
            ("Self-sufficiency with sharing",
             _pct(comparison["self_sufficiency_with_sharing"])),
            ("Self-sufficiency without sharing",
             _pct(comparison["self_sufficiency_without_sharing"])),
        ]
    else:
        rows.append(("Self-sufficiency", _pct(com["self_sufficiency"])))
    rows += [
        ("Bought from the utility", _kwh(com["bought_wh"])),
        ("Curtailed PV", _kwh(com["curtailed_wh"])),
        ("Losses: converter", _kwh(losses["converter_wh"])),
        ("Losses: line", _kwh(losses["line_wh"])),
        ("Losses: control overhead", _kwh(losses["control_overhead_wh"])),
        ("Converter standby (with or without sharing)", _kwh(losses["standby_wh"])),
        ("Deals made", str(deals["made"])),
        ("Deals completed", str(deals["completed"])),
        ("Deals aborted", str(deals["aborted"])),
        ("Deal overshoot (mean of completed)",
         f"{deals['overshoot_mean_wh']:.3f} Wh ({deals['overshoot_mean_pct']:.3f} %)"),
        ("Deal overshoot (largest)", f"{deals['overshoot_max_wh']:.3f} Wh"),
        ("Two voltage references at once (count, longest)",
         f"{summary['voltage_conflicts']['count']}, "
         f"{summary['voltage_conflicts']['longest_s']:.3f} s"),
    ]
    return rows


def write_html(path: Path, summary: dict[str, Any], plots: Sequence[Path]) -> None:
    s = summary["settings"]
    com = summary["community"]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>APIS simulation report ({html.escape(s['fidelity'])} fidelity)</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>APIS simulation report ({html.escape(s['fidelity'])} fidelity)</h1>",
        f"<p>{html.escape(s['community'])}: {s['units']} units, {s['days']:g} day(s) from "
        f"{html.escape(s['start'])}, seed {s['seed']}, sharing "
        f"{'on' if s['sharing'] else 'off'}, {html.escape(s['fidelity'])} fidelity"
        + (f" (step {s['plan']['step_s']:g} s, control latency {s['plan']['latency_live_s']:g} s"
           f" on a live grid, {s['plan']['latency_dark_s']:g} s on a dark one)"
           if "plan" in s else "")
        + (f", overrides {html.escape(json.dumps(s['overrides']))}" if s["overrides"] else "")
        + ".</p>",
        "<h2>Key figures</h2>",
        _table(("Figure", "Value"), key_figures(summary)),
    ]
    comparison = summary.get("comparison")
    if comparison is not None:
        base = summary["baseline"]["community"]
        parts += [
            "<h2>With and without sharing</h2>",
            "<p class='note'>The baseline is the same community, seed and weather with every "
            "converter idle (no unit software running).</p>",
            _table(("", "with sharing", "without sharing"), [
                ("Self-sufficiency", _pct(com["self_sufficiency"]),
                 _pct(base["self_sufficiency"])),
                ("Bought from the utility", _kwh(com["bought_wh"]), _kwh(base["bought_wh"])),
                ("Curtailed PV", _kwh(com["curtailed_wh"]), _kwh(base["curtailed_wh"])),
                ("Load", _kwh(com["load_wh"]), _kwh(base["load_wh"])),
                ("PV", _kwh(com["pv_wh"]), _kwh(base["pv_wh"])),
                ("Storage change", _kwh(com["storage_change_wh"]),
                 _kwh(base["storage_change_wh"])),
            ]),
        ]
    bal = summary["balance"]
    parts += [
        "<h2>Energy balance of the community</h2>",
        _table(("Term", "Energy"), [
            ("In: PV + bought", _kwh(bal["energy_in_wh"])),
            ("Out: load + curtailed + spilled", _kwh(bal["energy_out_wh"])),
            ("Losses (converters incl. standby, lines)", _kwh(bal["losses_wh"])),
            ("Storage change", _kwh(bal["storage_change_wh"])),
            ("Left over (rounding)", f"{bal['error_wh']:.3e} Wh"),
        ]),
        "<h2>Plots</h2>",
        *(_image(p, PLOTS.get(p.name, p.name)) for p in plots),
        "<h2>Units</h2>",
        _table(
            ("Unit", "Battery", "PV", "Load", "Bought", "Curtailed", "DC import", "DC export",
             "Self-sufficiency", "Deals (charge/discharge)"),
            [
                (r["unit"], _kwh(r["capacity_wh"]), _kwh(r["pv_wh"]), _kwh(r["load_wh"]),
                 _kwh(r["bought_wh"]), _kwh(r["curtailed_wh"]), _kwh(r["dc_grid_in_wh"]),
                 _kwh(r["dc_grid_out_wh"]), _pct(r["self_sufficiency"]),
                 f"{r['deals_charging']}/{r['deals_discharging']}")
                for r in summary["per_unit"]
            ],
        ),
        "<h2>Definitions</h2><ul class='note'>",
        "<li>Self-sufficiency = 1 - bought / load: the share of household consumption met "
        "without the utility.</li>",
        "<li>Energy shared: what the deals counted as delivered (cumulateAmountWh, measured "
        "on the voltage-reference side).</li>",
        "<li>Converter losses grow with the power moved; control overhead is the converters' "
        "no-load loss while they switch for sharing; line losses are I&sup2;R in the DC grid; "
        "standby is drawn with or without sharing.</li>",
        "<li>Deal overshoot: delivered minus agreed amount, over completed deals.</li>",
        "</ul>",
        "<p class='note'>Files: summary.json, units.csv (per unit per minute), deals.csv, "
        "the PNG plots; run-info.json holds the wall-clock figures.</p>",
        "</body></html>",
    ]
    path.write_text("\n".join(parts), encoding="utf-8")


def write_outputs(
    directory: Path,
    result: AnyResult,
    summary: dict[str, Any],
    run_info: dict[str, Any],
) -> list[Path]:
    """Every output file of one run into `directory` (created); returns the files. A
    planning run has streamed its units.csv and deals.csv there already."""
    directory.mkdir(parents=True, exist_ok=True)
    files = [directory / "summary.json", directory / "units.csv", directory / "deals.csv"]
    write_json(files[0], summary)
    if isinstance(result, RunResult):
        write_units_csv(files[1], result)
        write_deals_csv(files[2], result)
    elif set(result.files) != set(files[1:]):
        raise ValueError(f"planning run streamed {result.files}, not into {directory}")
    plots = write_plots(directory, result, summary)
    html_path = directory / "report.html"
    write_html(html_path, summary, plots)
    info_path = directory / "run-info.json"
    write_json(info_path, run_info)
    log_path = directory / "sim.log"
    log_path.write_text("".join(line + "\n" for line in result.log_lines), encoding="utf-8")
    return [*files, *plots, html_path, info_path, log_path]
