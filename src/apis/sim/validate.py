"""`apis sim validate`: the planning fidelity against the faithful one, same communities and seeds.

Each seed's community runs in both fidelities (each with its baseline); the figures are
added up over the seeds, and the table gives both totals, the difference and the target:

- energy shared and energy bought from the utility within +-3 %, deals made and completed
  within +-5 % (relative to the faithful total);
- self-sufficiency (with sharing, and of the baseline) within +-0.5 percentage points
  (the community's over all seeds: 1 - bought / load);
- curtailed PV and the losses by kind are shown without a target.

The faithful runs also measure the control latency (deal created to its current started),
on a grid already energised and on a dark one, next to the values the planning model used.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from apis.sim.community import SimSettings
from apis.sim.simulate import PhaseProgress, simulate
from apis.sim.summary import parse_apis_time
from apis.unit.deal import Deal

Figures = dict[str, float]


@dataclass(frozen=True)
class Check:
    key: str
    label: str
    kind: str  # "relative" (share of the faithful value), "points" (percentage points), ""
    target: float | None  # None: shown, no target


CHECKS = (
    Check("energy_shared_kwh", "energy shared (kWh)", "relative", 0.03),
    Check("deals_made", "deals made", "relative", 0.05),
    Check("deals_completed", "deals completed", "relative", 0.05),
    Check("self_sufficiency_pct", "self-sufficiency with sharing (%)", "points", 0.5),
    Check("self_sufficiency_without_pct", "self-sufficiency without sharing (%)", "points", 0.5),
    Check("bought_kwh", "bought from the utility (kWh)", "relative", 0.03),
    Check("curtailed_kwh", "curtailed PV (kWh)", "relative", None),
    Check("converter_loss_kwh", "losses: converter (kWh)", "relative", None),
    Check("line_loss_kwh", "losses: line (kWh)", "relative", None),
    Check("control_overhead_kwh", "losses: control overhead (kWh)", "relative", None),
    Check("standby_kwh", "converter standby (kWh)", "relative", None),
)


def _totals(summaries: list[dict[str, Any]]) -> Figures:
    def total(path: tuple[str, ...]) -> float:
        out = 0.0
        for s in summaries:
            node: Any = s
            for key in path:
                node = node[key]
            out += float(node)
        return out

    load = total(("community", "load_wh"))
    base_load = total(("baseline", "community", "load_wh"))
    return {
        "energy_shared_kwh": total(("deals", "energy_shared_wh")) / 1000,
        "deals_made": total(("deals", "made")),
        "deals_completed": total(("deals", "completed")),
        "self_sufficiency_pct": 100 * (1 - total(("community", "bought_wh")) / load)
        if load else 100.0,
        "self_sufficiency_without_pct":
            100 * (1 - total(("baseline", "community", "bought_wh")) / base_load)
            if base_load else 100.0,
        "bought_kwh": total(("community", "bought_wh")) / 1000,
        "curtailed_kwh": total(("community", "curtailed_wh")) / 1000,
        "converter_loss_kwh": total(("losses", "converter_wh")) / 1000,
        "line_loss_kwh": total(("losses", "line_wh")) / 1000,
        "control_overhead_kwh": total(("losses", "control_overhead_wh")) / 1000,
        "standby_kwh": total(("losses", "standby_wh")) / 1000,
    }


@dataclass
class Row:
    check: Check
    faithful: float
    plan: float

    @property
    def difference(self) -> float:
        if self.check.kind == "points":
            return self.plan - self.faithful
        if self.faithful == 0:
            return 0.0 if self.plan == 0 else float("inf")
        return (self.plan - self.faithful) / abs(self.faithful)

    @property
    def passed(self) -> bool | None:
        if self.check.target is None:
            return None
        return abs(self.difference) <= self.check.target + 1e-12

    def cells(self) -> list[str]:
        c = self.check
        if c.kind == "points":
            diff, target = f"{self.difference:+.2f} pp", f"+-{c.target} pp"
        else:
            diff = f"{100 * self.difference:+.1f} %"
            target = f"+-{100 * c.target:g} %" if c.target is not None else ""
        ok = {True: "ok", False: "FAILS", None: ""}[self.passed]
        return [c.label, f"{self.faithful:.3f}", f"{self.plan:.3f}", diff, target, ok]


@dataclass
class Validation:
    units: int
    days: float
    seeds: int
    rows: list[Row]
    latency: dict[str, Any]
    wall_s: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(r.passed is not False for r in self.rows)

    def table(self) -> str:
        header = ["figure", "faithful", "plan", "difference", "target", ""]
        rows = [header, *(r.cells() for r in self.rows)]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = [
            f"Planning fidelity against faithful: {self.units} units, {self.days:g} day(s), "
            f"seeds 0..{self.seeds - 1} (totals over the seeds)",
            "",
            "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |",
            "|" + "|".join("-" * (w + 2) for w in widths) + "|",
        ]
        for row in rows[1:]:
            lines.append("| " + " | ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            ) + " |")
        lat = self.latency
        lines += [
            "",
            f"Control latency (deal created -> current started), faithful: live grid median "
            f"{_fmt(lat['live_median_s'])} s over {lat['live_deals']} deals, dark grid median "
            f"{_fmt(lat['dark_median_s'])} s over {lat['dark_deals']} deals; planning model: "
            f"{lat['plan_live_s']:g} s and {lat['plan_dark_s']:g} s.",
            f"Wall time: faithful {self.wall_s.get('faithful', 0.0):.1f} s, plan "
            f"{self.wall_s.get('plan', 0.0):.1f} s (runs with their baselines).",
            "All targets met." if self.passed else "Some targets are NOT met.",
        ]
        return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:g}"


def latencies(deals: list[Deal]) -> tuple[list[float], list[float]]:
    """(live, dark) created -> started times (s) of the deals that started. Dark: no other
    deal carried current when it started (a voltage reference had to start first)."""
    spans: list[tuple[datetime, datetime | None]] = []
    timed: list[tuple[datetime, datetime]] = []
    for d in deals:
        created, started = parse_apis_time(d.create_date_time), parse_apis_time(d.start_date_time)
        if created is None or started is None:
            continue
        spans.append((started, parse_apis_time(d.stop_date_time)))
        timed.append((created, started))
    live: list[float] = []
    dark: list[float] = []
    for created, started in timed:
        running = any(s < started and (e is None or e > started) for s, e in spans)
        (live if running else dark).append((started - created).total_seconds())
    return live, dark


def validate(
    units: int,
    days: float,
    seeds: int,
    start: datetime | None = None,
    progress: PhaseProgress | None = None,
    plan_settings: Callable[[SimSettings], SimSettings] | None = None,
) -> Validation:
    """Both fidelities on the same generated communities, seeds 0..seeds-1."""
    summaries: dict[str, list[dict[str, Any]]] = {"faithful": [], "plan": []}
    wall = {"faithful": 0.0, "plan": 0.0}
    live: list[float] = []
    dark: list[float] = []
    plan_used: SimSettings | None = None
    for seed in range(seeds):
        base = SimSettings(units=units, days=days, seed=seed)
        if start is not None:
            base = dataclasses.replace(base, start=start)
        plan = dataclasses.replace(base, fidelity="plan")
        if plan_settings is not None:
            plan = plan_settings(plan)
        plan_used = plan
        for fidelity, settings in (("faithful", base), ("plan", plan)):
            told = None
            if progress is not None:
                told = _labelled(progress, f"seed {seed} {fidelity}")
            outcome = simulate(settings, None, told)
            summaries[fidelity].append(outcome.summary)
            wall[fidelity] += float(outcome.run_info["wall_s"]) + float(
                outcome.run_info["baseline_wall_s"] or 0.0)
            if fidelity == "faithful":
                deals = getattr(outcome.result, "deals", [])
                a, b = latencies(deals)
                live += a
                dark += b
    faithful, planned = _totals(summaries["faithful"]), _totals(summaries["plan"])
    rows = [Row(c, faithful[c.key], planned[c.key]) for c in CHECKS]
    assert plan_used is not None
    latency = {
        "live_median_s": statistics.median(live) if live else None,
        "live_deals": len(live),
        "dark_median_s": statistics.median(dark) if dark else None,
        "dark_deals": len(dark),
        "plan_live_s": plan_used.plan.latency_live_s,
        "plan_dark_s": plan_used.plan.latency_dark_s,
    }
    return Validation(units, days, seeds, rows, latency, wall)


def _labelled(progress: PhaseProgress, label: str) -> PhaseProgress:
    return lambda phase, done, total: progress(f"{label} {phase}", done, total)
