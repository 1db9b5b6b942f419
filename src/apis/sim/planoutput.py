"""What the planning model writes while it runs: units.csv and deals.csv streamed to disk, and
the deal figures tallied as deals end, so that memory stays bounded whatever the length.

The columns are those of the faithful run's files (`apis.sim.report`), the figures those of
`apis.sim.summary.deal_figures`, `shared_per_day` and the per-unit deal roles.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

from apis.hardware.driver import APIS_TIME_FORMAT

FloatArray = NDArray[np.float64]
FIDELITY = "plan"


def apis_time(start: datetime, t: float) -> str:
    return (start + timedelta(seconds=t)).strftime(APIS_TIME_FORMAT)


@dataclass
class PlanDeal:
    """One deal of the planning model (times in s since the start; None: not reached)."""

    deal_id: str
    request_unit: str
    accept_unit: str
    charge: int  # unit indices
    discharge: int
    type: str
    grid_current_a: float
    amount_wh: float
    created: float
    started: float | None = None
    stopped: float | None = None
    abort_reason: str | None = None
    charge_wh: float = 0.0  # battery side, counted while it runs
    discharge_wh: float = 0.0
    charge_w: float = 0.0  # attributed battery powers of the present configuration
    discharge_w: float = 0.0
    since: float = 0.0  # time the counters were last brought up to date
    version: int = 0  # bumped when its expected end moves

    @property
    def outcome(self) -> str:
        if self.abort_reason is not None:
            return "aborted"
        return "completed" if self.stopped is not None else "running"

    def bring_up_to(self, t: float) -> None:
        if self.started is None or self.stopped is not None:
            return
        span = (t - self.since) / 3600.0
        if span > 0:
            self.charge_wh += self.charge_w * span
            self.discharge_wh += self.discharge_w * span
        self.since = t


@dataclass
class DealTally:
    """The deal figures of the summary, added up deal by deal."""

    start: datetime
    unit_ids: list[str]
    made: int = 0
    completed: int = 0
    aborted: int = 0
    running_at_end: int = 0
    energy_shared_wh: float = 0.0
    agreed_wh: float = 0.0
    overshoot_sum_wh: float = 0.0
    overshoot_max_wh: float | None = None
    overshoot_relative_sum: float = 0.0
    overshoots: int = 0
    per_day_wh: dict[str, float] = field(default_factory=dict)
    charging: list[int] = field(default_factory=list)
    discharging: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.charging = [0] * len(self.unit_ids)
        self.discharging = [0] * len(self.unit_ids)

    def add(self, deal: PlanDeal, delivered_wh: float) -> None:
        self.made += 1
        outcome = deal.outcome
        if outcome == "completed":
            self.completed += 1
            overshoot = delivered_wh - deal.amount_wh
            self.overshoot_sum_wh += overshoot
            self.overshoots += 1
            if self.overshoot_max_wh is None or overshoot > self.overshoot_max_wh:
                self.overshoot_max_wh = overshoot
            if deal.amount_wh:
                self.overshoot_relative_sum += overshoot / deal.amount_wh
        elif outcome == "aborted":
            self.aborted += 1
        else:
            self.running_at_end += 1
        self.energy_shared_wh += delivered_wh
        self.agreed_wh += deal.amount_wh
        self.charging[deal.charge] += 1
        self.discharging[deal.discharge] += 1
        booked = deal.stopped if deal.stopped is not None else deal.since
        if deal.started is not None:
            day = (self.start + timedelta(seconds=booked)).date().isoformat()
            self.per_day_wh[day] = self.per_day_wh.get(day, 0.0) + delivered_wh

    def figures(self) -> dict[str, Any]:
        n = self.overshoots
        return {
            "made": self.made,
            "completed": self.completed,
            "aborted": self.aborted,
            "scram": 0,
            "running_at_end": self.running_at_end,
            "energy_shared_wh": float(self.energy_shared_wh),
            "agreed_wh": float(self.agreed_wh),
            "overshoot_mean_wh": float(self.overshoot_sum_wh / n) + 0.0 if n else 0.0,
            "overshoot_max_wh": float(self.overshoot_max_wh or 0.0) + 0.0,
            "overshoot_mean_pct": float(100.0 * self.overshoot_relative_sum / n) + 0.0
            if n else 0.0,
        }

    def shared_per_day(self, simulated_s: float) -> dict[str, float]:
        days = int(np.ceil(simulated_s / 86400.0 - 1e-9)) or 1
        first = self.start.date().toordinal()
        out = {datetime.fromordinal(first + k).date().isoformat(): 0.0 for k in range(days)}
        for day, wh in self.per_day_wh.items():
            out[day] = out.get(day, 0.0) + wh
        return {k: float(v) + 0.0 for k, v in sorted(out.items())}


def _num(value: float) -> str:
    return f"{value:.6f}"


class DealWriter:
    """deals.csv, a row per deal as it ends (and the unfinished ones at the run's end)."""

    def __init__(self, path: Path | None, start: datetime, unit_ids: list[str],
                 columns: tuple[str, ...]) -> None:
        self.start = start
        self.unit_ids = unit_ids
        self.file: IO[str] | None = None
        self.writer: Any = None
        if path is not None:
            self.file = path.open("w", newline="", encoding="utf-8")
            self.writer = csv.writer(self.file)
            self.writer.writerow(columns)

    def _time(self, t: float | None, reached: bool = True) -> str:
        if t is None:
            return "" if reached else "N/A"
        return apis_time(self.start, t)

    def write(self, deal: PlanDeal, delivered_wh: float) -> None:
        if self.writer is None:
            return
        outcome = deal.outcome
        started = deal.started is not None
        ids = self.unit_ids
        stop = self._time(deal.stopped) if started else ("N/A" if outcome != "running" else "")
        overshoot = _num(delivered_wh - deal.amount_wh) if outcome == "completed" else ""
        self.writer.writerow([
            deal.deal_id, deal.request_unit, deal.accept_unit, ids[deal.charge],
            ids[deal.discharge], deal.type,
            _num(deal.grid_current_a), self._time(deal.created),
            self._time(deal.started) if started else ("N/A" if outcome != "running" else ""),
            self._time(deal.started) if started else ("N/A" if outcome != "running" else ""),
            stop, stop if outcome != "running" else "",
            _num(deal.amount_wh), _num(delivered_wh),
            _num(deal.charge_wh) if started else "", _num(deal.discharge_wh) if started else "",
            _num(deal.discharge_wh - deal.charge_wh) if started else "", overshoot, outcome,
            deal.abort_reason or "", FIDELITY,
        ])

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


class UnitsWriter:
    """units.csv, a block of rows (every unit) per sample interval."""

    def __init__(self, path: Path | None, start: datetime, unit_ids: list[str],
                 columns: tuple[str, ...]) -> None:
        self.start = start
        self.unit_ids = unit_ids
        self.file: IO[str] | None = None
        if path is not None:
            self.file = path.open("w", newline="", encoding="utf-8")
            self.file.write(",".join(columns) + "\n")
        self._row = "%s,%s" + ",%.6f" * 13 + f",{FIDELITY}\n"
        self.previous = 0.0

    def write(self, t: float, rsoc: FloatArray, battery: FloatArray,
              energy: dict[str, FloatArray], interval_s: float) -> None:
        if self.file is None:
            return
        hours = (t - self.previous) / 3600.0 if t > self.previous else interval_s / 3600.0
        self.previous = t
        stamp = (self.start + timedelta(seconds=round(t, 6))).isoformat()
        net = (energy["grid_out_wh"] - energy["grid_in_wh"]) / hours
        columns = [rsoc, battery, energy["pv_wh"] / hours, energy["load_wh"] / hours, net,
                   energy["pv_wh"], energy["load_wh"], energy["bought_wh"],
                   energy["curtailed_wh"], energy["spilled_wh"], energy["converter_loss_wh"],
                   energy["grid_in_wh"], energy["grid_out_wh"]]
        lists = [c.tolist() for c in columns]
        row = self._row
        self.file.write("".join(
            row % (stamp, unit, *values)
            for unit, *values in zip(self.unit_ids, *lists, strict=True)
        ))

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
