"""Reading records and figures back: time-range queries with filters and paging, the same
SQL for SQLite and PostgreSQL (through `RecordStore.query`). The callers (the operations
web API) check the parameters; these functions take them as given.

A range is half open, [start, end), in seconds since the epoch; None is unbounded. A page
is `limit` rows after `offset`; `Result.more` says whether another page follows. Text
filters match a substring, ASCII letters in any case.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from apis.loglevels import JUL_LEVELS
from apis.records.store import RecordStore

LEVELS = tuple(JUL_LEVELS)  # most severe first
OUTCOMES = ("completed", "aborted", "open")
RESOLUTIONS = ("hour", "day")


@dataclass(frozen=True)
class Column:
    name: str  # as the API gives it
    sql: str
    kind: str = "number"  # number, integer, text, time (seconds since the epoch), json


@dataclass
class Result:
    columns: tuple[Column, ...]
    rows: list[tuple[Any, ...]]
    more: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def dicts(self) -> list[dict[str, Any]]:
        names = [c.name for c in self.columns]
        return [dict(zip(names, row, strict=True)) for row in self.rows]


@dataclass(frozen=True)
class Window:
    start: float | None = None
    end: float | None = None
    limit: int = 100
    offset: int = 0
    newest_first: bool = True


def levels_at_or_above(level: str) -> tuple[str, ...]:
    """The java.util.logging levels as severe as `level` or more (a JUL name)."""
    return LEVELS[:LEVELS.index(level) + 1]


def like_pattern(text: str) -> str:
    """`text` as a LIKE pattern matching it anywhere (with ESCAPE '\\'), lower case."""
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class _Where:
    def __init__(self) -> None:
        self.parts: list[str] = []
        self.params: list[Any] = []

    def add(self, sql: str, *params: Any) -> None:
        self.parts.append(sql)
        self.params.extend(params)

    def range(self, column: str, window: Window) -> None:
        if window.start is not None:
            self.add(f"{column} >= ?", window.start)
        if window.end is not None:
            self.add(f"{column} < ?", window.end)

    def among(self, column: str, values: Sequence[Any]) -> None:
        if values:
            self.add(f"{column} IN ({', '.join('?' * len(values))})", *values)

    def text(self) -> str:
        return " WHERE " + " AND ".join(self.parts) if self.parts else ""


def _page(store: RecordStore, columns: tuple[Column, ...], table: str, where: _Where,
          order: str, window: Window) -> Result:
    sql = (f"SELECT {', '.join(c.sql for c in columns)} FROM {table}{where.text()} "
           f"ORDER BY {order} LIMIT ? OFFSET ?")
    rows = store.query(sql, [*where.params, window.limit + 1, window.offset])
    return Result(columns, [_typed(columns, r) for r in rows[:window.limit]],
                  more=len(rows) > window.limit)


def _typed(columns: tuple[Column, ...], row: Sequence[Any]) -> tuple[Any, ...]:
    """Database values as the API gives them (PostgreSQL's sums of integers are Decimal)."""
    out = []
    for column, value in zip(columns, row, strict=True):
        if value is not None and column.kind in ("number", "time"):
            value = float(value)
        elif value is not None and column.kind == "integer":
            value = int(value)
        out.append(value)
    return tuple(out)


def _direction(window: Window) -> str:
    return "DESC" if window.newest_first else "ASC"


# ---- log lines -----------------------------------------------------------------------------

LOG_COLUMNS = (
    Column("at", "at", "time"), Column("unitId", "unit_id", "text"),
    Column("level", "level", "text"), Column("logger", "logger", "text"),
    Column("thread", "thread", "text"), Column("message", "message", "text"),
    Column("line", "line", "text"), Column("origin", "origin", "text"),
    Column("seq", "seq", "integer"),
)


def logs(store: RecordStore, window: Window, units: Sequence[str] = (),
         level: str | None = None, text: str | None = None) -> Result:
    where = _Where()
    where.range("at", window)
    where.among("unit_id", units)
    if level is not None and level != LEVELS[-1]:
        where.among("level", levels_at_or_above(level))
    if text:
        where.add("LOWER(line) LIKE ? ESCAPE '\\'", like_pattern(text))
    d = _direction(window)
    return _page(store, LOG_COLUMNS, "log_lines", where, f"at {d}, origin {d}, seq {d}",
                 window)


# ---- deals ---------------------------------------------------------------------------------

DEAL_COLUMNS = (
    Column("dealId", "deal_id", "text"), Column("createdAt", "created_at", "time"),
    Column("startedAt", "started_at", "time"), Column("endedAt", "ended_at", "time"),
    Column("completedAt", "completed_at", "time"), Column("abortedAt", "aborted_at", "time"),
    Column("abortReason", "abort_reason", "text"),
    Column("dischargeUnitId", "discharge_unit_id", "text"),
    Column("chargeUnitId", "charge_unit_id", "text"), Column("state", "state", "text"),
    Column("removed", "removed", "integer"),
    Column("dealAmountWh", "deal_amount_wh"), Column("cumulateAmountWh", "cumulate_amount_wh"),
    Column("chargedWh", "charged_wh"), Column("dischargedWh", "discharged_wh"),
    Column("communityId", "community_id", "text"), Column("clusterId", "cluster_id", "text"),
    Column("versions", "versions", "integer"),
    Column("lastReportedAt", "last_reported_at", "time"),
)


def deals(store: RecordStore, window: Window, units: Sequence[str] = (),
          text: str | None = None, outcome: str | None = None) -> Result:
    """Deals whose life overlaps the range (created before its end, not ended before its
    start), one row each (`deal_summaries`)."""
    where = _Where()
    if window.end is not None:
        where.add("created_at < ?", window.end)
    if window.start is not None:
        where.add("COALESCE(ended_at, last_reported_at) >= ?", window.start)
    if units:
        marks = ", ".join("?" * len(units))
        where.add(f"(charge_unit_id IN ({marks}) OR discharge_unit_id IN ({marks}))",
                  *units, *units)
    if text:
        pattern = like_pattern(text)
        where.add("(LOWER(deal_id) LIKE ? ESCAPE '\\' OR "
                  "LOWER(COALESCE(abort_reason, '')) LIKE ? ESCAPE '\\')", pattern, pattern)
    if outcome == "completed":
        where.add("completed_at IS NOT NULL")
    elif outcome == "aborted":
        where.add("aborted_at IS NOT NULL")
    elif outcome == "open":
        where.add("ended_at IS NULL")
    d = _direction(window)
    return _page(store, DEAL_COLUMNS, "deal_summaries", where, f"created_at {d}, deal_id {d}",
                 window)


VERSION_COLUMNS = (
    Column("revision", "revision", "integer"), Column("operation", "operation", "text"),
    Column("reportedAt", "reported_at", "time"), Column("state", "state", "text"),
    Column("cumulateAmountWh", "cumulate_amount_wh"),
    Column("communityId", "community_id", "text"), Column("clusterId", "cluster_id", "text"),
    Column("deal", "deal", "json"),
)


def deal_versions(store: RecordStore, deal_id: str, window: Window) -> Result:
    where = _Where()
    where.add("deal_id = ?", deal_id)
    d = _direction(window)
    return _page(store, VERSION_COLUMNS, "deal_versions", where, f"revision {d}", window)


# ---- unit data -----------------------------------------------------------------------------

UNIT_DATA_COLUMNS = (
    Column("sampledAt", "sampled_at", "time"), Column("unitId", "unit_id", "text"),
    Column("rsoc", "rsoc"), Column("gridV", "grid_v"), Column("gridA", "grid_a"),
    Column("gridW", "grid_w"), Column("batteryV", "battery_v"),
    Column("batteryA", "battery_a"), Column("batteryW", "battery_w"),
    Column("converterMode", "converter_mode", "text"),
    Column("operationMode", "operation_mode", "text"), Column("pvW", "pv_w"),
    Column("loadW", "load_w"),
    Column("batteryOperationStatus", "battery_operation_status", "integer"),
)


def unit_data(store: RecordStore, window: Window, units: Sequence[str] = ()) -> Result:
    where = _Where()
    where.range("sampled_at", window)
    where.among("unit_id", units)
    d = _direction(window)
    return _page(store, UNIT_DATA_COLUMNS, "unit_data", where, f"sampled_at {d}, unit_id {d}",
                 window)


# ---- energy and availability ---------------------------------------------------------------

_FIGURES = (
    Column("chargedWh", "charged_wh"), Column("dischargedWh", "discharged_wh"),
    Column("boughtWh", "bought_wh"), Column("soldWh", "sold_wh"), Column("pvWh", "pv_wh"),
    Column("loadWh", "load_wh"), Column("dealsMade", "deals_made", "integer"),
    Column("dealsCompleted", "deals_completed", "integer"),
    Column("dealsAborted", "deals_aborted", "integer"),
    Column("samples", "samples", "integer"),
    Column("expectedSamples", "expected_samples", "integer"),
)
HOUR_COLUMNS = (Column("hourStart", "hour_start", "time"), Column("unitId", "unit_id", "text"),
                *_FIGURES)
DAY_COLUMNS = (Column("day", "day", "text"), Column("dayStart", "day_start", "time"),
               Column("unitId", "unit_id", "text"), *_FIGURES)


def availability_of(samples: int | None, expected: int | None) -> float | None:
    """Share of the expected samples that arrived (at most 1), None if none were expected."""
    if not expected or samples is None:
        return None
    return min(1.0, samples / expected)


def energy(store: RecordStore, resolution: str, window: Window,
           units: Sequence[str] = ()) -> Result:
    """Per unit and hour (``unit_hours``) or local day (``unit_days``), oldest first unless
    `window.newest_first`; each row with its `availability`."""
    table, time_column, columns = (("unit_hours", "hour_start", HOUR_COLUMNS)
                                   if resolution == "hour"
                                   else ("unit_days", "day_start", DAY_COLUMNS))
    where = _Where()
    where.range(time_column, window)
    where.among("unit_id", units)
    d = _direction(window)
    result = _page(store, columns, table, where, f"{time_column} {d}, unit_id {d}", window)
    samples, expected = len(columns) - 2, len(columns) - 1
    result.columns = (*columns, Column("availability", "", "number"))
    result.rows = [(*r, availability_of(r[samples], r[expected])) for r in result.rows]
    return result


def availability(store: RecordStore, start: float | None, end: float | None,
                 units: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Per unit: samples arrived and expected in the hours that begin in the range, their
    share, and the downtimes that overlap the range."""
    window = Window(start, end)
    where = _Where()
    where.range("hour_start", window)
    where.among("unit_id", units)
    sums = store.query("SELECT unit_id, SUM(samples), SUM(expected_samples) FROM unit_hours"
                       f"{where.text()} GROUP BY unit_id ORDER BY unit_id", where.params)
    gaps = _Where()
    if end is not None:
        gaps.add("start_at < ?", end)
    if start is not None:
        gaps.add("(end_at IS NULL OR end_at > ?)", start)
    gaps.among("unit_id", units)
    down: dict[str, list[dict[str, Any]]] = {}
    for unit, begin, finish, missing in store.query(
            "SELECT unit_id, start_at, end_at, missing_samples FROM unit_downtimes"
            f"{gaps.text()} ORDER BY unit_id, start_at", gaps.params):
        down.setdefault(str(unit), []).append({
            "startAt": float(begin), "endAt": None if finish is None else float(finish),
            "missingSamples": int(missing)})
    out = []
    for unit, got, expected in sums:
        got_i = int(got) if got is not None else 0
        expected_i = int(expected) if expected is not None else None
        out.append({"unitId": str(unit), "samples": got_i, "expectedSamples": expected_i,
                    "availability": availability_of(got_i, expected_i),
                    "downtimes": down.pop(str(unit), [])})
    for unit, gaps_of_unit in sorted(down.items()):
        out.append({"unitId": unit, "samples": 0, "expectedSamples": None,
                    "availability": None, "downtimes": gaps_of_unit})
    return out


# ---- what the store holds ------------------------------------------------------------------


def log_units(store: RecordStore) -> list[str]:
    """The units that have log lines, one index probe each (a loose index scan on
    ``log_lines_unit``, not a scan of every line)."""
    rows = store.query(
        "WITH RECURSIVE u(id) AS (SELECT MIN(unit_id) FROM log_lines UNION ALL "
        "SELECT (SELECT MIN(unit_id) FROM log_lines WHERE unit_id > u.id) FROM u "
        "WHERE u.id IS NOT NULL) SELECT id FROM u WHERE id IS NOT NULL")
    return [str(r[0]) for r in rows]


def time_zone(store: RecordStore) -> str:
    """The zone the figures' days are counted in (UTC before the first pass)."""
    rows = store.query("SELECT text FROM figure_state WHERE name = ?", ["time_zone"])
    return str(rows[0][0]) if rows and rows[0][0] else "UTC"


def status(store: RecordStore) -> dict[str, Any]:
    """The figures' state, the units the records know, and the times they span."""
    state = {str(name): (number, text) for name, number, text in
             store.query("SELECT name, number, text FROM figure_state")}
    units = sorted({str(u) for (u,) in store.query("SELECT unit_id FROM unit_spans")} | {
        str(u) for row in store.query(
            "SELECT DISTINCT charge_unit_id, discharge_unit_id FROM deal_summaries")
        for u in row if u is not None} | set(log_units(store)))
    (first_line, last_line), = store.query("SELECT MIN(at), MAX(at) FROM log_lines")
    (first_sample, last_sample), = store.query(
        "SELECT MIN(first_sampled_at), MAX(last_sampled_at) FROM unit_spans")

    def number(name: str) -> float | None:
        value = state.get(name, (None, None))[0]
        return None if value is None else float(value)

    return {
        "units": units,
        "timeZone": state.get("time_zone", (None, None))[1] or "UTC",
        "figuresStoredThrough": number("stored_through"),
        "figuresHorizon": number("horizon"),
        "unitDataPeriodS": number("period_s"),
        "logLines": {"first": first_line, "last": last_line},
        "unitData": {"first": first_sample, "last": last_sample},
    }
