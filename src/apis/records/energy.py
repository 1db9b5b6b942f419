"""The arithmetic of the derived figures, on plain values (no store): a deal's energy over
time from its versions, energy integrated from unit-data samples, expected samples and the
gaps between them. `records.figures` reads the store, calls these and writes the results.

Times are seconds since the epoch; buckets are `HOUR_S` long and start at multiples of it.

**A deal's energy.** Each version of a deal carries the energy counted so far: on the
charge unit ``chargeUnitCumulateAmountWh`` (energy into its battery), on the discharge unit
``dischargeUnitCumulateAmountWh`` (out of its battery), or, when a version lacks them (the
original's deals), ``cumulateAmountWh`` for both. What a version adds to the one before it
is spread evenly over the time between the two versions' registry times (``reported_at``):
the deal's progress as the versions show it. A count that goes down started over (the deal
was reset and started again): the new count is all new energy. What the first version
that has a count already holds (versions before it were never stored) is put at that
version's time.

**Energy from samples.** Between two consecutive samples of a unit at most `GAP_PERIODS`
sampling periods apart, a power is taken to change linearly from one sample's value to the
next one's, and integrated exactly over each bucket's share of the interval. Across a wider
gap nothing is integrated (the unit was not heard: unknown, not zero). A quantity is
integrated only between two samples that both carry it; a bucket where no pair did has no
value for it (None), not 0. Bought and sold are the AC meter's power drawn from the
utility (``dcdc.powermeter.p2``, the UPS input) taken as positive and negative parts.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

HOUR_S = 3600.0
GAP_PERIODS = 2  # a gap longer than this many periods is downtime
EPSILON_S = 1e-6  # sampling instants are rounded to the millisecond
SAMPLE_QUANTITIES = ("bought_wh", "sold_wh", "pv_wh", "load_wh")


def bucket_of(at: float, size: float = HOUR_S) -> float:
    return math.floor(at / size) * size


def spread(start: float, end: float, amount: float,
           size: float = HOUR_S) -> Iterator[tuple[float, float]]:
    """(bucket start, share) of `amount` spread evenly over [start, end]; all of it in the
    bucket of `end` when the interval is empty."""
    if end <= start:
        yield bucket_of(end, size), amount
        return
    length = end - start
    bucket = bucket_of(start, size)
    while bucket < end:
        overlap = min(end, bucket + size) - max(start, bucket)
        if overlap > 0:
            yield bucket, amount * overlap / length
        bucket += size


# ---- deals ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DealVersion:
    revision: int
    operation: str  # PUT, DEL, PURGE
    reported_at: float
    deal: Mapping[str, Any] | None  # the record of a PUT


@dataclass
class DealFigures:
    deal_id: str
    charge_unit_id: str | None = None
    discharge_unit_id: str | None = None
    community_id: str | None = None
    cluster_id: str | None = None
    created_at: float = 0.0
    started_at: float | None = None
    ended_at: float | None = None
    completed_at: float | None = None
    aborted_at: float | None = None
    abort_reason: str | None = None
    state: str | None = None
    removed: bool = False
    deal_amount_wh: float | None = None
    cumulate_amount_wh: float | None = None
    charged_wh: float = 0.0
    discharged_wh: float = 0.0
    versions: int = 0
    last_revision: int = 0
    last_reported_at: float = 0.0
    # (unit id, hour start) -> [charged Wh, discharged Wh]
    hours: dict[tuple[str, float], list[float]] = field(default_factory=dict)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _real(value: Any) -> bool:
    """A phase time that is there and is not the never-reached placeholder ``--``."""
    return isinstance(value, str) and value != "" and value != "--"


class _Counter:
    """One side's cumulative count across versions, turned into energy per bucket."""

    def __init__(self) -> None:
        self.last: tuple[float, float] | None = None  # (time, count)
        self.total = 0.0

    def add(self, at: float, count: float | None) -> Iterator[tuple[float, float]]:
        if count is None or count < 0:
            return
        if self.last is None:
            added, start = count, at
        else:
            before_at, before = self.last
            added = count - before if count >= before else count
            start = min(before_at, at)
        self.last = (at, count)
        if added != 0:
            self.total += added
            yield from spread(start, at, added)


def deal_figures(deal_id: str, versions: Sequence[DealVersion],
                 homes: tuple[str | None, str | None] = (None, None)) -> DealFigures | None:
    """The summary and hourly energy of one deal from its versions (any order); None when
    no version is a deal record (only removals were stored)."""
    ordered = sorted(versions, key=lambda v: v.revision)
    puts = [v for v in ordered if v.operation == "PUT" and v.deal is not None]
    if not puts:
        return None
    out = DealFigures(deal_id, created_at=ordered[0].reported_at, versions=len(ordered),
                      last_revision=ordered[-1].revision,
                      last_reported_at=ordered[-1].reported_at)
    out.community_id, out.cluster_id = homes
    charged, discharged = _Counter(), _Counter()
    first_deactivated: float | None = None
    for version in ordered:
        at = version.reported_at
        if version.operation != "PUT" or version.deal is None:
            out.removed = True
            if out.ended_at is None:
                out.ended_at = at
            continue
        deal = version.deal
        out.removed = False
        charge, discharge = deal.get("chargeUnitId"), deal.get("dischargeUnitId")
        out.charge_unit_id = charge if isinstance(charge, str) else out.charge_unit_id
        out.discharge_unit_id = discharge if isinstance(discharge, str) else out.discharge_unit_id
        out.deal_amount_wh = _number(deal.get("dealAmountWh"))
        out.cumulate_amount_wh = _number(deal.get("cumulateAmountWh"))
        out.state = _state(deal)
        if out.started_at is None and _real(deal.get("startDateTime")):
            out.started_at = at
        if out.ended_at is None and deal.get("deactivateDateTime") is not None:
            out.ended_at = at
        if first_deactivated is None and _real(deal.get("deactivateDateTime")):
            first_deactivated = at
        if out.aborted_at is None and (deal.get("abortDateTime") is not None
                                       or deal.get("scramDateTime") is not None):
            out.aborted_at = at
            reason = deal.get("abortReason") or deal.get("scramReason")
            out.abort_reason = str(reason)[:500] if reason is not None else None
        common = out.cumulate_amount_wh
        charge_count = _number(deal.get("chargeUnitCumulateAmountWh"))
        discharge_count = _number(deal.get("dischargeUnitCumulateAmountWh"))
        if out.charge_unit_id is not None:
            for bucket, wh in charged.add(at, charge_count if charge_count is not None
                                          else common):
                out.hours.setdefault((out.charge_unit_id, bucket), [0.0, 0.0])[0] += wh
        if out.discharge_unit_id is not None:
            for bucket, wh in discharged.add(at, discharge_count if discharge_count is not None
                                             else common):
                out.hours.setdefault((out.discharge_unit_id, bucket), [0.0, 0.0])[1] += wh
    if out.aborted_at is None:
        out.completed_at = first_deactivated
    out.charged_wh, out.discharged_wh = charged.total, discharged.total
    return out


_STATES = (
    ("deactivateDateTime", "deactivated"),
    ("stopDateTime", "stopped"),
    ("startDateTime", "started"),
    ("activateDateTime", "activated"),
)


def _state(deal: Mapping[str, Any]) -> str:
    """As the deal record defines it: the latest phase whose time is present."""
    return next((name for key, name in _STATES if deal.get(key) is not None), "notActivated")


# ---- unit data -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    pv_w: float | None = None
    load_w: float | None = None
    ac_w: float | None = None  # power drawn from the utility (negative: fed into it)


def ac_power(data_json: str | None) -> float | None:
    """``dcdc.powermeter.p2`` of a unit data object (JSON text), if it is a number."""
    if not data_json:
        return None
    try:
        data = json.loads(data_json)
    except ValueError:
        return None
    dcdc = data.get("dcdc") if isinstance(data, dict) else None
    meter = dcdc.get("powermeter") if isinstance(dcdc, dict) else None
    return _number(meter.get("p2")) if isinstance(meter, dict) else None


def _powers(sample: Sample) -> dict[str, float | None]:
    ac = sample.ac_w
    return {
        "bought_wh": None if ac is None else max(ac, 0.0),
        "sold_wh": None if ac is None else max(-ac, 0.0),
        "pv_wh": sample.pv_w,
        "load_wh": sample.load_w,
    }


def integrate(samples: Sequence[Sample], period_s: float,
              size: float = HOUR_S) -> dict[float, dict[str, float]]:
    """Energy (Wh) per bucket and quantity from time-ordered samples; a quantity appears in
    a bucket only where a pair of samples carried it (see the module docstring)."""
    out: dict[float, dict[str, float]] = {}
    widest = GAP_PERIODS * period_s + EPSILON_S
    for before, after in itertools.pairwise(samples):
        t0, t1 = before.at, after.at
        if not 0 < t1 - t0 <= widest:
            continue
        p0s, p1s = _powers(before), _powers(after)
        for name in SAMPLE_QUANTITIES:
            p0, p1 = p0s[name], p1s[name]
            if p0 is None or p1 is None:
                continue
            slope = (p1 - p0) / (t1 - t0)
            bucket = bucket_of(t0, size)
            while bucket < t1:
                u, v = max(t0, bucket), min(t1, bucket + size)
                if v > u:
                    pu, pv = p0 + slope * (u - t0), p0 + slope * (v - t0)
                    got = out.setdefault(bucket, {})
                    got[name] = got.get(name, 0.0) + (v - u) * (pu + pv) / 2 / 3600
                bucket += size
    return out


def instants(start: float, end: float, period_s: float) -> int:
    """How many sampling instants (multiples of the period) lie in [start, end)."""
    if end <= start:
        return 0
    first = math.ceil(start / period_s - EPSILON_S)
    last = math.ceil(end / period_s - EPSILON_S) - 1
    return max(0, last - first + 1)


@dataclass(frozen=True, slots=True)
class Downtime:
    start_at: float  # the first sampling instant missed
    end_at: float | None  # the sample that came next; None: none yet
    missing: int  # samples missed


def downtimes(times: Sequence[float], period_s: float, horizon: float) -> list[Downtime]:
    """Gaps longer than `GAP_PERIODS` periods between time-ordered samples, and one still
    open at `horizon` after the last sample."""
    out = []
    widest = GAP_PERIODS * period_s + EPSILON_S
    for t0, t1 in itertools.pairwise(times):
        if t1 - t0 > widest:
            out.append(Downtime(t0 + period_s, t1, instants(t0 + period_s, t1, period_s)))
    if times and horizon - times[-1] > widest:
        last = times[-1]
        out.append(Downtime(last + period_s, None, instants(last + period_s, horizon, period_s)))
    return out
