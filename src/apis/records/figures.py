"""Derived figures, kept in the store beside the records and computed from them again and
again, incrementally: per unit and hour and per unit and day, energy charged and
discharged through deals, bought from and sold to the utility, PV and load; deals made,
completed and aborted; unit-data samples that arrived and were expected (availability);
downtime intervals. The arithmetic is `records.energy`'s; the tables are described in
`records.store`.

A pass reads what was stored since the last one (by ``stored_at``, the receiver's commit
time, re-reading `margin` seconds before it so that a commit that overlapped the last pass
is not missed) and recomputes, from the records, only what those records touch:

- every deal with a new version: its summary and its hours, wholly;
- every unit with new samples: its hours from the sample before the first new one to the
  last new one, and its downtimes from that sample on;
- for every sampled unit, the hours between the last pass's horizon and this one's: the
  samples expected there grow with time, even when none arrive (a unit that went silent);
- the unit-hours that any of this touched (their figures are summed from ``deal_hours``,
  ``deal_summaries`` and the samples), then the days of those hours.

Each part replaces its rows (delete, insert) in one transaction, so a pass done twice, or
cut off half way and done again, gives the same rows. The state (``figure_state``) moves
on last. One pass covers at most `span_s` of stored time: a store that is far behind
(the first pass over a year of records) is caught up in a series of bounded passes.

The horizon is the present less a grace of one sampling period and 5 s: a sample taken
just now may not be committed yet, and is counted in the next pass instead of being
called missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apis.records.energy import (
    EPSILON_S,
    HOUR_S,
    SAMPLE_QUANTITIES,
    DealVersion,
    Sample,
    ac_power,
    bucket_of,
    deal_figures,
    downtimes,
    instants,
    integrate,
)
from apis.records.store import Change, RecordStore, StoreError, open_store

log = logging.getLogger(__name__)

DAY_S = 86_400.0
GRACE_S = 5.0
RETRY_MAX_S = 300.0
DEAL_CHUNK = 200  # deals replaced per transaction
POWERMETER_PATTERN = '%"powermeter"%'  # only such samples' JSON is read for the AC meter


@dataclass(frozen=True)
class FigureSettings:
    period_s: float = 60.0  # the unit-data sampling period
    time_zone: str = "UTC"  # where days begin
    every_s: float = 300.0  # between passes
    span_s: float = DAY_S  # most stored time one pass covers
    margin_s: float = 300.0  # re-read before the last pass's end (at least 2 periods + grace)

    def __post_init__(self) -> None:
        if not self.period_s > 0:
            raise ValueError(f"unit data period = {self.period_s} s (must be > 0)")
        if not self.every_s > 0:
            raise ValueError(f"figures every = {self.every_s} s (must be > 0)")
        if not self.span_s > 0:
            raise ValueError(f"figures span = {self.span_s} s (must be > 0)")
        self.zone()

    def zone(self) -> ZoneInfo:
        try:
            return ZoneInfo(self.time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"time zone = {self.time_zone!r} (must be an IANA name such as "
                             "UTC or Asia/Tokyo)") from None

    @property
    def grace_s(self) -> float:
        return self.period_s + GRACE_S

    @property
    def reread_s(self) -> float:
        return max(self.margin_s, 2 * self.grace_s)


@dataclass
class PassResult:
    deals: int = 0  # deals recomputed
    units: int = 0  # units whose hours were recomputed
    hours: int = 0
    days: int = 0
    stored_through: float = 0.0
    horizon: float = 0.0
    caught_up: bool = True


class Stopped(Exception):
    """The pass was asked to stop between two of its steps (nothing half written)."""


@dataclass
class _Touched:
    hours: dict[str, set[float]] = field(default_factory=dict)  # unit id -> hour starts

    def add(self, unit: str | None, hour: float) -> None:
        if unit is not None:
            self.hours.setdefault(unit, set()).add(hour)

    def add_range(self, unit: str, start: float, end: float) -> None:
        hour = bucket_of(start)
        while hour <= end:
            self.add(unit, hour)
            hour += HOUR_S


def _float(value: Any) -> float | None:
    return None if value is None else float(value)  # PostgreSQL's SUM of BIGINT: Decimal


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def read_state(store: RecordStore) -> dict[str, tuple[float | None, str | None]]:
    return {str(name): (_float(number), text) for name, number, text in
            store.query("SELECT name, number, text FROM figure_state")}


def _state_change(name: str, number: float | None, text: str | None = None) -> Change:
    return ("INSERT INTO figure_state (name, number, text) VALUES (?, ?, ?) ON CONFLICT (name) "
            "DO UPDATE SET number = excluded.number, text = excluded.text",
            [(name, number, text)])


def compute_pass(store: RecordStore, now: float, settings: FigureSettings,
                 should_stop: Callable[[], bool] = lambda: False) -> PassResult:
    """One incremental pass (see the module docstring). StoreError: nothing of the state
    moved; the next pass does the same work again."""
    state = read_state(store)
    through = state.get("stored_through", (None, None))[0]
    if through is None:
        lows = [row[0] for table in ("deal_versions", "unit_data")
                for row in store.query(f"SELECT MIN(stored_at) FROM {table}")]
        known = [float(x) for x in lows if x is not None]
        through = min(known) if known else now
        lower = -math.inf
    else:
        lower = through - settings.reread_s
    upper = max(min(now, through + settings.span_s), through)
    horizon_before = state.get("horizon", (None, None))[0]
    horizon = upper - settings.grace_s
    if horizon_before is not None:
        horizon = max(horizon, horizon_before)
    result = PassResult(stored_through=upper, horizon=horizon, caught_up=upper >= now)
    touched = _Touched()

    def check() -> None:
        if should_stop():
            raise Stopped

    result.deals = _deals(store, lower, upper, touched, check)
    downtime_from = _samples(store, lower, upper, horizon_before, horizon, touched)
    check()
    spans = {str(u): (float(a), float(b)) for u, a, b in store.query(
        "SELECT unit_id, first_sampled_at, last_sampled_at FROM unit_spans")}
    for unit, since in sorted(downtime_from.items()):
        check()
        store.apply(_downtimes(store, unit, since, horizon, settings.period_s))
    for unit, hours in sorted(touched.hours.items()):
        check()
        replaced, written = _unit_hours(store, unit, sorted(hours), spans.get(unit), horizon,
                                        settings.period_s)
        store.apply(replaced)
        result.hours += written
    result.units = len(touched.hours)
    check()
    zone = settings.zone()
    days: set[tuple[str, date]] = {
        (unit, _day_of(hour, zone)) for unit, hours in touched.hours.items() for hour in hours}
    changes: list[Change] = []
    if state.get("time_zone", (None, None))[1] != settings.time_zone:
        changes.append(("DELETE FROM unit_days", [()]))
        days = {(str(unit), _day_of(float(hour), zone)) for unit, hour in store.query(
            "SELECT unit_id, hour_start FROM unit_hours")}
    for unit, day in sorted(days):
        changes.extend(_unit_day(store, unit, day, zone))
    result.days = len(days)
    changes.append(_state_change("stored_through", upper))
    changes.append(_state_change("horizon", horizon))
    changes.append(_state_change("time_zone", None, settings.time_zone))
    changes.append(_state_change("period_s", settings.period_s))
    store.apply(changes)
    return result


# ---- deals ---------------------------------------------------------------------------------


def _deals(store: RecordStore, lower: float, upper: float, touched: _Touched,
           check: Callable[[], None]) -> int:
    ids = sorted(str(r[0]) for r in store.query(
        "SELECT DISTINCT deal_id FROM deal_versions WHERE stored_at >= ? AND stored_at < ?",
        [lower, upper]))
    for first in range(0, len(ids), DEAL_CHUNK):
        check()
        changes: list[Change] = []
        for deal_id in ids[first:first + DEAL_CHUNK]:
            changes.extend(_deal(store, deal_id, touched))
        store.apply(changes)
    return len(ids)


def _deal(store: RecordStore, deal_id: str, touched: _Touched) -> list[Change]:
    for unit, hour in store.query(
            "SELECT unit_id, hour_start FROM deal_hours WHERE deal_id = ?", [deal_id]):
        touched.add(str(unit), float(hour))
    for charge, discharge, *times in store.query(
            "SELECT charge_unit_id, discharge_unit_id, created_at, completed_at, aborted_at "
            "FROM deal_summaries WHERE deal_id = ?", [deal_id]):
        for at in times:
            if at is not None:
                touched.add(charge, bucket_of(float(at)))
                touched.add(discharge, bucket_of(float(at)))
    versions = []
    homes: tuple[str | None, str | None] = (None, None)
    for revision, operation, reported_at, community, cluster, text in store.query(
            "SELECT revision, operation, reported_at, community_id, cluster_id, deal "
            "FROM deal_versions WHERE deal_id = ? ORDER BY revision", [deal_id]):
        record = None
        if text is not None:
            with contextlib.suppress(ValueError):
                parsed = json.loads(text)
                record = parsed if isinstance(parsed, dict) else None
        if community is not None:
            homes = (community, cluster)
        versions.append(DealVersion(int(revision), str(operation), float(reported_at), record))
    changes: list[Change] = [
        ("DELETE FROM deal_hours WHERE deal_id = ?", [(deal_id,)]),
        ("DELETE FROM deal_summaries WHERE deal_id = ?", [(deal_id,)]),
    ]
    figures = deal_figures(deal_id, versions, homes)
    if figures is None:
        return changes
    for unit, hour in figures.hours:
        touched.add(unit, hour)
    for at in (figures.created_at, figures.completed_at, figures.aborted_at):
        if at is not None:
            touched.add(figures.charge_unit_id, bucket_of(at))
            touched.add(figures.discharge_unit_id, bucket_of(at))
    changes.append((
        "INSERT INTO deal_hours (deal_id, unit_id, hour_start, charged_wh, discharged_wh) "
        "VALUES (?, ?, ?, ?, ?)",
        [(deal_id, unit, hour, wh[0], wh[1]) for (unit, hour), wh in sorted(
            figures.hours.items())],
    ))
    f = figures
    changes.append((
        "INSERT INTO deal_summaries (deal_id, charge_unit_id, discharge_unit_id, community_id, "
        "cluster_id, created_at, started_at, ended_at, completed_at, aborted_at, abort_reason, "
        "state, removed, deal_amount_wh, cumulate_amount_wh, charged_wh, discharged_wh, "
        "versions, last_revision, last_reported_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(deal_id, f.charge_unit_id, f.discharge_unit_id, f.community_id, f.cluster_id,
          f.created_at, f.started_at, f.ended_at, f.completed_at, f.aborted_at,
          f.abort_reason, f.state, int(f.removed), f.deal_amount_wh, f.cumulate_amount_wh,
          f.charged_wh, f.discharged_wh, f.versions, f.last_revision, f.last_reported_at)],
    ))
    return changes


# ---- unit data -----------------------------------------------------------------------------


def _samples(store: RecordStore, lower: float, upper: float, horizon_before: float | None,
             horizon: float, touched: _Touched) -> dict[str, float]:
    """Touch the hours new samples and the moving horizon concern; update the spans;
    return, per unit, the time from which its downtimes are to be computed again."""
    new = store.query(
        "SELECT unit_id, MIN(sampled_at), MAX(sampled_at) FROM unit_data "
        "WHERE stored_at >= ? AND stored_at < ? GROUP BY unit_id", [lower, upper])
    spans = {str(u): (float(a), float(b)) for u, a, b in store.query(
        "SELECT unit_id, first_sampled_at, last_sampled_at FROM unit_spans")}
    since: dict[str, float] = {}
    for unit, low, high in new:
        unit, low, high = str(unit), float(low), float(high)
        before = store.query(
            "SELECT MAX(sampled_at) FROM unit_data WHERE unit_id = ? AND sampled_at < ?",
            [unit, low])[0][0]
        start = float(before) if before is not None else low
        touched.add_range(unit, start, high)
        since[unit] = start
        first, last = spans.get(unit, (low, high))
        spans[unit] = (min(first, low), max(last, high))
    for unit, (first, last) in spans.items():
        start = first if horizon_before is None else max(first, horizon_before)
        if horizon >= start:
            touched.add_range(unit, start, horizon)
        since.setdefault(unit, last)
    store.apply([(
        "INSERT INTO unit_spans (unit_id, first_sampled_at, last_sampled_at) VALUES (?, ?, ?) "
        "ON CONFLICT (unit_id) DO UPDATE SET first_sampled_at = excluded.first_sampled_at, "
        "last_sampled_at = excluded.last_sampled_at",
        [(unit, first, last) for unit, (first, last) in sorted(spans.items())],
    )])
    return since


def _downtimes(store: RecordStore, unit: str, since: float, horizon: float,
               period_s: float) -> list[Change]:
    times = [float(r[0]) for r in store.query(
        "SELECT sampled_at FROM unit_data WHERE unit_id = ? AND sampled_at >= ? "
        "AND sampled_at <= ? ORDER BY sampled_at", [unit, since, horizon])]
    gaps = downtimes(times, period_s, horizon) if times else []
    return [
        ("DELETE FROM unit_downtimes WHERE unit_id = ? AND start_at > ?", [(unit, since)]),
        ("INSERT INTO unit_downtimes (unit_id, start_at, end_at, missing_samples) "
         "VALUES (?, ?, ?, ?)", [(unit, g.start_at, g.end_at, g.missing) for g in gaps]),
    ]


def _runs(hours: Sequence[float]) -> Iterable[tuple[float, float]]:
    """Contiguous runs (first, last hour start) of sorted hour starts."""
    start = previous = hours[0]
    for hour in hours[1:]:
        if hour != previous + HOUR_S:
            yield start, previous
            start = hour
        previous = hour
    yield start, previous


_HOUR_COLUMNS = ("charged_wh", "discharged_wh", *SAMPLE_QUANTITIES, "deals_made",
                 "deals_completed", "deals_aborted", "samples", "expected_samples")


def _unit_hours(store: RecordStore, unit: str, hours: Sequence[float],
                span: tuple[float, float] | None, horizon: float,
                period_s: float) -> tuple[list[Change], int]:
    changes: list[Change] = []
    written = 0
    for first, last in _runs(hours):
        end = last + HOUR_S
        rows = _hour_rows(store, unit, first, end, span, horizon, period_s)
        changes.append(("DELETE FROM unit_hours WHERE unit_id = ? AND hour_start >= ? "
                        "AND hour_start < ?", [(unit, first, end)]))
        changes.append((
            f"INSERT INTO unit_hours (unit_id, hour_start, {', '.join(_HOUR_COLUMNS)}) "
            f"VALUES (?, ?, {', '.join('?' * len(_HOUR_COLUMNS))})",
            [(unit, hour, *(row[c] for c in _HOUR_COLUMNS)) for hour, row in rows],
        ))
        written += len(rows)
    return changes, written


def _hour_rows(store: RecordStore, unit: str, first: float, end: float,
               span: tuple[float, float] | None, horizon: float,
               period_s: float) -> list[tuple[float, dict[str, Any]]]:
    """The figures of `unit`'s hours in [first, end), only the hours with something."""
    deal_energy = {float(h): (float(c), float(d)) for h, c, d in store.query(
        "SELECT hour_start, SUM(charged_wh), SUM(discharged_wh) FROM deal_hours "
        "WHERE unit_id = ? AND hour_start >= ? AND hour_start < ? GROUP BY hour_start",
        [unit, first, end])}
    counts: dict[float, list[int]] = {}
    for times in store.query(
            "SELECT created_at, completed_at, aborted_at FROM deal_summaries "
            "WHERE (charge_unit_id = ? OR discharge_unit_id = ?) AND ("
            "(created_at >= ? AND created_at < ?) OR (completed_at >= ? AND completed_at < ?) "
            "OR (aborted_at >= ? AND aborted_at < ?))",
            [unit, unit, first, end, first, end, first, end]):
        for index, at in enumerate(times):
            if at is not None and first <= float(at) < end:
                counts.setdefault(bucket_of(float(at)), [0, 0, 0])[index] += 1
    samples: list[Sample] = []
    if span is not None:
        before = store.query("SELECT MAX(sampled_at) FROM unit_data WHERE unit_id = ? AND "
                             "sampled_at < ?", [unit, first])[0][0]
        after = store.query("SELECT MIN(sampled_at) FROM unit_data WHERE unit_id = ? AND "
                            "sampled_at >= ?", [unit, end])[0][0]
        low = float(before) if before is not None else first
        high = min(float(after) if after is not None else end, horizon)
        samples = [
            Sample(float(at), _float(pv), _float(load), ac_power(data))
            for at, pv, load, data in store.query(
                "SELECT sampled_at, pv_w, load_w, CASE WHEN data LIKE ? THEN data END "
                "FROM unit_data WHERE unit_id = ? AND sampled_at >= ? AND sampled_at <= ? "
                "ORDER BY sampled_at", [POWERMETER_PATTERN, unit, low, high])
        ]
    energy = integrate(samples, period_s)
    arrived: dict[float, int] = {}
    for sample in samples:
        if first <= sample.at < end:
            arrived[bucket_of(sample.at)] = arrived.get(bucket_of(sample.at), 0) + 1
    rows = []
    hour = first
    while hour < end:
        charged, discharged = deal_energy.get(hour, (0.0, 0.0))
        made, completed, aborted = counts.get(hour, [0, 0, 0])
        expected = None
        if span is not None:
            expected = instants(max(hour, span[0]), min(hour + HOUR_S, horizon + EPSILON_S),
                                period_s)
        got = energy.get(hour, {})
        row: dict[str, Any] = {
            "charged_wh": charged, "discharged_wh": discharged,
            **{name: got.get(name) for name in SAMPLE_QUANTITIES},
            "deals_made": made, "deals_completed": completed, "deals_aborted": aborted,
            "samples": arrived.get(hour, 0), "expected_samples": expected,
        }
        if (hour in deal_energy or hour in counts or got or row["samples"]
                or (expected or 0) > 0):
            rows.append((hour, row))
        hour += HOUR_S
    return rows


# ---- days ----------------------------------------------------------------------------------


def _day_of(hour: float, zone: ZoneInfo) -> date:
    return datetime.fromtimestamp(hour, zone).date()


def day_bounds(day: date, zone: ZoneInfo) -> tuple[float, float]:
    """The first second of `day` in `zone` and of the day after (epoch seconds)."""
    start = datetime(day.year, day.month, day.day, tzinfo=zone)
    after = day + timedelta(days=1)
    end = datetime(after.year, after.month, after.day, tzinfo=zone)
    return start.timestamp(), end.timestamp()


def _unit_day(store: RecordStore, unit: str, day: date, zone: ZoneInfo) -> list[Change]:
    start, end = day_bounds(day, zone)
    sums = store.query(
        "SELECT COUNT(*), " + ", ".join(f"SUM({c})" for c in _HOUR_COLUMNS) +
        " FROM unit_hours WHERE unit_id = ? AND hour_start >= ? AND hour_start < ?",
        [unit, start, end])[0]
    changes: list[Change] = [
        ("DELETE FROM unit_days WHERE unit_id = ? AND day = ?", [(unit, day.isoformat())])]
    if not sums[0]:
        return changes
    values = dict(zip(_HOUR_COLUMNS, sums[1:], strict=True))
    row = [
        _float(values[c]) if c.endswith("_wh") else _int(values[c]) for c in _HOUR_COLUMNS]
    changes.append((
        f"INSERT INTO unit_days (unit_id, day, day_start, {', '.join(_HOUR_COLUMNS)}) "
        f"VALUES (?, ?, ?, {', '.join('?' * len(_HOUR_COLUMNS))})",
        [(unit, day.isoformat(), start, *row)],
    ))
    return changes


# ---- the receiver's task -------------------------------------------------------------------


async def run_figures(url: str, settings: FigureSettings) -> None:
    """Compute the figures at once and then every `settings.every_s`, on a connection of
    its own (the receiver's commits do not wait for a pass), until cancelled. A failing
    pass is logged and tried again later; the receiver goes on."""
    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(1, thread_name_prefix="records-figures")
    stopping = False
    store: RecordStore | None = None
    delay = settings.every_s
    try:
        while True:
            try:
                if store is None:
                    store = await loop.run_in_executor(executor, open_store, url)
                result = await loop.run_in_executor(
                    executor, compute_pass, store, time.time(), settings, lambda: stopping)
            except StoreError as exc:
                log.error("records: figures not computed this time (again in %.0f s): %s",
                          delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, max(RETRY_MAX_S, settings.every_s))
                continue
            except Exception:  # a fault of ours: the receiver goes on all the same
                log.exception("records: figures not computed this time (again in %.0f s)",
                              settings.every_s)
                await asyncio.sleep(settings.every_s)
                continue
            delay = settings.every_s
            log.debug("records: figures through %s: %d deals, %d units, %d hours, %d days",
                      datetime.fromtimestamp(result.stored_through).isoformat(), result.deals,
                      result.units, result.hours, result.days)
            if not result.caught_up:
                continue
            await asyncio.sleep(settings.every_s)
    finally:
        stopping = True  # a pass in the thread ends at its next step
        await asyncio.shield(loop.run_in_executor(None, executor.shutdown, True))
        if store is not None:
            store.close()
