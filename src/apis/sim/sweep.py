"""Scenario sweeps: the same simulation for each value of one parameter, compared.

Each case gets its own full output folder (`cases/<param>=<value>/`); the comparison is one
table (`sweep.csv`, `sweep.md`) and one plot (`sweep.png`).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apis.sim.community import SimSettings
from apis.sim.simulate import PhaseProgress, SimOutcome, simulate

COLUMNS = (
    ("value", "value"),
    ("units", "units"),
    ("energy_shared_kwh", "energy shared (kWh)"),
    ("self_sufficiency_pct", "self-sufficiency (%)"),
    ("self_sufficiency_without_pct", "without sharing (%)"),
    ("gain_pct_points", "gain (points)"),
    ("bought_kwh", "bought (kWh)"),
    ("curtailed_kwh", "curtailed (kWh)"),
    ("converter_loss_kwh", "converter loss (kWh)"),
    ("line_loss_kwh", "line loss (kWh)"),
    ("control_overhead_kwh", "control overhead (kWh)"),
    ("deals_made", "deals made"),
    ("deals_completed", "completed"),
    ("deals_aborted", "aborted"),
    ("overshoot_mean_wh", "overshoot mean (Wh)"),
)


@dataclass
class SweepCase:
    value: str
    outcome: SimOutcome

    def row(self) -> dict[str, Any]:
        s = self.outcome.summary
        com, deals, losses = s["community"], s["deals"], s["losses"]
        comparison = s.get("comparison", {})
        without = comparison.get("self_sufficiency_without_sharing", com["self_sufficiency"])
        return {
            "value": self.value,
            "units": s["settings"]["units"],
            "energy_shared_kwh": deals["energy_shared_wh"] / 1000,
            "self_sufficiency_pct": 100 * com["self_sufficiency"],
            "self_sufficiency_without_pct": 100 * without,
            "gain_pct_points": 100 * (com["self_sufficiency"] - without),
            "bought_kwh": com["bought_wh"] / 1000,
            "curtailed_kwh": com["curtailed_wh"] / 1000,
            "converter_loss_kwh": losses["converter_wh"] / 1000,
            "line_loss_kwh": losses["line_wh"] / 1000,
            "control_overhead_kwh": losses["control_overhead_wh"] / 1000,
            "deals_made": deals["made"],
            "deals_completed": deals["completed"],
            "deals_aborted": deals["aborted"],
            "overshoot_mean_wh": deals["overshoot_mean_wh"],
        }


def case_folder(parameter: str, value: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]", "_", f"{parameter}={value}")


def _fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def run_sweep(
    settings: SimSettings,
    parameter: str,
    values: list[str],
    out: Path,
    progress: PhaseProgress | None = None,
) -> tuple[list[SweepCase], list[Path]]:
    """Every case (full outputs in out/cases/...), then the comparison table and plot."""
    # Check every case's settings before spending time on the first run.
    case_settings = [settings.with_override(parameter, v) for v in values]
    cases = []
    for value, case in zip(values, case_settings, strict=True):
        label = f"{parameter}={value}"

        def told(phase: str, done: float, total: float, label: str = label) -> None:
            if progress is not None:
                progress(f"{label} {phase}", done, total)

        outcome = simulate(case, out / "cases" / case_folder(parameter, value), told)
        cases.append(SweepCase(value, outcome))
    return cases, write_comparison(out, parameter, cases)


def write_comparison(out: Path, parameter: str, cases: list[SweepCase]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    rows = [c.row() for c in cases]
    csv_path = out / "sweep.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([parameter if key == "value" else key for key, _ in COLUMNS])
        for row in rows:
            writer.writerow([_fmt(row[key]) for key, _ in COLUMNS])
    md_path = out / "sweep.md"
    header = [parameter if key == "value" else title for key, title in COLUMNS]
    lines = [
        f"# Sweep of {parameter}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(_fmt(row[key]) for key, _ in COLUMNS) + " |" for row in rows),
        "",
    ]
    md_path.write_text("\n".join(lines), encoding="utf-8")
    png_path = out / "sweep.png"
    _plot(png_path, parameter, rows)
    return [csv_path, md_path, png_path]


def _plot(path: Path, parameter: str, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [str(r["value"]) for r in rows]
    x = list(range(len(rows)))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(x, [r["self_sufficiency_pct"] for r in rows], "o-", label="with sharing")
    left.plot(x, [r["self_sufficiency_without_pct"] for r in rows], "s--",
              label="without sharing")
    left.set_xticks(x, labels)
    left.set_xlabel(parameter)
    left.set_ylabel("self-sufficiency (%)")
    left.legend(fontsize="small")
    right.bar(x, [r["energy_shared_kwh"] for r in rows], color="tab:green")
    right.set_xticks(x, labels)
    right.set_xlabel(parameter)
    right.set_ylabel("energy shared (kWh)")
    fig.suptitle(f"Sweep of {parameter}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
