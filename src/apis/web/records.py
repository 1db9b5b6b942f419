"""The operations API's view of the records store (`apis records`): time-range queries of
log lines, deals, unit data and the derived energy figures, paged, as JSON or CSV.

The store is opened read only (`apis web --records STORE_URL`), lazily and again after a
failure, on one thread of its own: a store that is not there yet or went away is a 503
naming why, and the rest of the app goes on. Reading needs no token, as everywhere in this
API; the app's request guard (Host, Origin, body size) applies as to every route.

Parameters (each route lists the ones it takes; any other is refused, so that a typo does
not silently widen a query): ``from``, ``to`` (seconds since the epoch, a date YYYY-MM-DD,
or an ISO 8601 date-time; dates and date-times without an offset are in the records' time
zone, the one their days are counted in; ``to`` is exclusive), ``unit`` (repeat it or
separate ids with commas), ``level`` (the least severe level shown), ``text`` (a
substring), ``limit`` and ``offset`` (a page), ``order`` (``newest`` or ``oldest`` first),
``format`` (``json`` or ``csv``). A bad value is a 422 naming the parameter, the value and
what it must be.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import math
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, Response

from apis.loglevels import jul_level, python_level
from apis.records import queries
from apis.records.inbound import DEAL_ID, UNIT_ID
from apis.records.store import RecordStore, StoreError, open_store

T = TypeVar("T")

MAX_LIMIT = 10_000  # rows in one page, JSON or CSV
MAX_OFFSET = 1_000_000
MAX_UNITS = 100
MAX_TEXT = 200
MAX_TIME_TEXT = 64
LATEST_EPOCH = 253_402_300_800.0  # 10000-01-01: no calendar shows later
ZONE_CACHE_S = 60.0
COMMON = ("from", "to", "unit", "limit", "offset", "order", "format")
ALWAYS_ALLOWED = ("token",)  # the app's token parameter (for the original tools)


class RecordsUnavailable(Exception):
    """The records store cannot be read now (the text says why)."""


class RecordsReader:
    """Read-only access to one records store, on a thread of its own."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._store: RecordStore | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="web-records")
        self._zone: tuple[float, ZoneInfo] | None = None

    @property
    def description(self) -> str:
        """Which store, without a password (shown on the pages)."""
        if not self.url.startswith(("postgresql:", "postgres:")):
            return f"SQLite {self.url.removeprefix('sqlite://')}"
        parts = urlsplit(self.url)
        host = parts.netloc.rsplit("@", 1)[-1]
        user = f"{parts.username}@" if parts.username else ""
        return f"PostgreSQL {parts.scheme}://{user}{host}{parts.path}"

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._store is None:
            self._store = open_store(self.url, read_only=True)
        return fn(self._store, *args)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(store, *args)` on the store's thread; RecordsUnavailable if the store fails."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._call, fn, *args)
        except StoreError as exc:
            raise RecordsUnavailable(str(exc)) from None

    async def zone(self) -> ZoneInfo:
        """The time zone the figures' days are counted in (cached a minute)."""
        now = time.monotonic()
        if self._zone is not None and now - self._zone[0] < ZONE_CACHE_S:
            return self._zone[1]
        name = await self.call(queries.time_zone)
        try:
            zone = ZoneInfo(name)
        except (ValueError, KeyError):
            zone = ZoneInfo("UTC")
        self._zone = (now, zone)
        return zone

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        if self._store is not None:
            self._store.close()
            self._store = None


# ---- parameters ----------------------------------------------------------------------------


def bad(name: str, value: Any, must: str) -> HTTPException:
    return HTTPException(422, f"{name} = {str(value)[:100]!r} ({must})")


def _allowed(request: Request, names: Sequence[str]) -> None:
    for key in request.query_params:
        if key not in names and key not in ALWAYS_ALLOWED:
            raise HTTPException(422, f"query parameter {key[:60]!r} is not one of this "
                                f"route's: {', '.join(names)}")


def _one(request: Request, name: str) -> str | None:
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise bad(name, values, "give it once")
    return values[0] if values else None


def _integer(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = _one(request, name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise bad(name, text, f"must be an integer within {low}..{high}") from None
    if not low <= value <= high:
        raise bad(name, text, f"must be within {low}..{high}")
    return value


def _choice(request: Request, name: str, choices: Sequence[str], default: str) -> str:
    text = _one(request, name)
    if text is None:
        return default
    if text not in choices:
        raise bad(name, text, f"must be one of {', '.join(choices)}")
    return text


def parse_time(name: str, text: str, zone: ZoneInfo) -> float:
    """Seconds since the epoch, a date (its midnight in `zone`) or an ISO 8601 date-time
    (in `zone` without an offset)."""
    must = ("must be seconds since the epoch, a date YYYY-MM-DD or an ISO 8601 date-time, "
            "e.g. 2026-01-01T09:00:00+09:00")
    stripped = text.strip()
    if len(stripped) > MAX_TIME_TEXT:
        raise bad(name, stripped, must)
    value: float | None
    try:
        value = float(stripped)
    except ValueError:
        value = None
    if value is None:
        try:
            if re.fullmatch(r"\d{4}-\d{2}-\d{2}", stripped):
                day = date.fromisoformat(stripped)
                when = datetime(day.year, day.month, day.day, tzinfo=zone)
            else:
                when = datetime.fromisoformat(stripped)
                if when.tzinfo is None:
                    when = when.replace(tzinfo=zone)
            value = when.timestamp()
        except (ValueError, OverflowError, OSError):
            raise bad(name, stripped, must) from None
    if not math.isfinite(value) or not 0 <= value < LATEST_EPOCH:
        raise bad(name, stripped, "must lie within 1970-01-01..9999-12-31")
    return value


def _units(request: Request) -> list[str]:
    units: list[str] = []
    for value in request.query_params.getlist("unit"):
        for part in value.split(","):
            unit = part.strip()
            if not unit:
                continue
            if not UNIT_ID.fullmatch(unit):
                raise bad("unit", unit, "must be a unit id: 1-64 of A-Z a-z 0-9 _ -")
            if unit not in units:
                units.append(unit)
    if len(units) > MAX_UNITS:
        raise bad("unit", f"{len(units)} units", f"must be at most {MAX_UNITS}")
    return units


def _text(request: Request) -> str | None:
    text = _one(request, "text")
    if text is not None and len(text) > MAX_TEXT:
        raise bad("text", text, f"is {len(text)} characters long; at most {MAX_TEXT}")
    return text or None


def _level(request: Request) -> str | None:
    text = _one(request, "level")
    if not text:
        return None
    try:
        return jul_level(python_level(text))
    except ValueError:
        raise bad("level", text, "must be one of " + ", ".join(queries.LEVELS)) from None


async def _window(request: Request, reader: RecordsReader, default_limit: int,
                  default_order: str = "newest") -> queries.Window:
    limit = _integer(request, "limit", default_limit, 1, MAX_LIMIT)
    offset = _integer(request, "offset", 0, 0, MAX_OFFSET)
    order = _choice(request, "order", ("newest", "oldest"), default_order)
    start_text, end_text = _one(request, "from"), _one(request, "to")
    start = end = None
    if start_text is not None or end_text is not None:
        zone = await _zone(reader)
        start = parse_time("from", start_text, zone) if start_text is not None else None
        end = parse_time("to", end_text, zone) if end_text is not None else None
    if start is not None and end is not None and start > end:
        raise HTTPException(422, f"from = {start_text!r} is after to = {end_text!r} (from "
                            "must not be later than to)")
    return queries.Window(start, end, limit, offset, order == "newest")


async def _zone(reader: RecordsReader) -> ZoneInfo:
    try:
        return await reader.zone()
    except RecordsUnavailable as exc:
        raise HTTPException(503, f"records store not readable: {exc}") from None


# ---- answers -------------------------------------------------------------------------------


def _csv_value(column: queries.Column, value: Any) -> Any:
    if value is None:
        return ""
    if column.kind == "time":
        return datetime.fromtimestamp(value, UTC).isoformat(timespec="milliseconds")
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value  # a spreadsheet would take it for a formula
    return value


def csv_text(result: queries.Result) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([c.name for c in result.columns])
    for row in result.rows:
        writer.writerow([_csv_value(c, v) for c, v in zip(result.columns, row, strict=True)])
    return out.getvalue()


def _answer(result: queries.Result, window: queries.Window, what: str, fmt: str) -> Response:
    if fmt == "csv":
        return Response(csv_text(result), media_type="text/csv; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="{what}.csv"',
            "X-More": "true" if result.more else "false"})
    rows = result.dicts()
    for column in result.columns:
        if column.kind == "json":
            for row in rows:
                text = row[column.name]
                row[column.name] = json.loads(text) if isinstance(text, str) else text
    return JSONResponse({
        "from": window.start, "to": window.end, "limit": window.limit,
        "offset": window.offset, "more": result.more,
        "nextOffset": window.offset + len(rows) if result.more else None,
        "rows": rows, **result.extra,
    })


def records_router(reader: RecordsReader | None) -> APIRouter:
    router = APIRouter(prefix="/api/records", tags=["records"])

    def need() -> RecordsReader:
        if reader is None:
            raise HTTPException(503, "no records store: start the web app with --records "
                                "STORE_URL (the store of `apis records`)")
        return reader

    async def run(fn: Callable[..., T], *args: Any) -> T:
        try:
            return await need().call(fn, *args)
        except RecordsUnavailable as exc:
            raise HTTPException(503, f"records store not readable: {exc}") from None

    @router.get("/status", summary="What the records store holds: units, time spans, how "
                "far the figures are computed, their time zone")
    async def status(request: Request) -> dict[str, Any]:
        _allowed(request, ())
        out = await run(queries.status)
        return {"store": need().description, **out}

    @router.get("/logs", summary="Action log lines: from, to, unit, level (least severe "
                "shown), text; paged; json or csv")
    async def logs(request: Request) -> Response:
        _allowed(request, (*COMMON, "level", "text"))
        fmt = _choice(request, "format", ("json", "csv"), "json")
        units, level, text = _units(request), _level(request), _text(request)
        window = await _window(request, need(), 100)
        result = await run(queries.logs, window, units, level, text)
        return _answer(result, window, "logs", fmt)

    @router.get("/deals", summary="Deals whose life overlaps from..to (one row each, with "
                "outcome and energy): unit, text (deal id or abort reason), outcome; paged")
    async def deals(request: Request) -> Response:
        _allowed(request, (*COMMON, "text", "outcome"))
        fmt = _choice(request, "format", ("json", "csv"), "json")
        units, text = _units(request), _text(request)
        outcome = _one(request, "outcome")
        if outcome is not None and outcome not in queries.OUTCOMES:
            raise bad("outcome", outcome, "must be one of " + ", ".join(queries.OUTCOMES))
        window = await _window(request, need(), 100)
        result = await run(queries.deals, window, units, text, outcome)
        return _answer(result, window, "deals", fmt)

    @router.get("/deals/{deal_id}/versions", summary="Every stored version of one deal")
    async def versions(deal_id: str, request: Request) -> Response:
        _allowed(request, ("limit", "offset", "order", "format"))
        if not DEAL_ID.fullmatch(deal_id):
            raise bad("dealId", deal_id, "1-128 of A-Z a-z 0-9 _ = - .")
        fmt = _choice(request, "format", ("json", "csv"), "json")
        window = await _window(request, need(), 1000, "oldest")
        result = await run(queries.deal_versions, deal_id, window)
        if not result.rows and window.offset == 0:
            raise HTTPException(404, f"dealId = {deal_id!r} (no versions stored)")
        return _answer(result, window, f"deal-{deal_id}", fmt)

    @router.get("/unit-data", summary="Unit data samples (RSOC, grid and battery V/A/W, "
                "modes, PV, load): from, to, unit; paged")
    async def unit_data(request: Request) -> Response:
        _allowed(request, COMMON)
        fmt = _choice(request, "format", ("json", "csv"), "json")
        units = _units(request)
        window = await _window(request, need(), 1000, "oldest")
        result = await run(queries.unit_data, window, units)
        return _answer(result, window, "unit-data", fmt)

    @router.get("/energy", summary="Energy per unit and hour or day (charged, discharged, "
                "bought, sold, PV, load in Wh; deals made, completed, aborted; availability)")
    async def energy(request: Request) -> Response:
        _allowed(request, (*COMMON, "resolution"))
        fmt = _choice(request, "format", ("json", "csv"), "json")
        resolution = _choice(request, "resolution", queries.RESOLUTIONS, "day")
        units = _units(request)
        window = await _window(request, need(), 1000, "oldest")
        result = await run(queries.energy, resolution, window, units)
        return _answer(result, window, f"energy-{resolution}", fmt)

    @router.get("/availability", summary="Per unit: samples arrived and expected in the "
                "hours that begin in from..to, their share, and the downtimes overlapping it")
    async def availability(request: Request) -> dict[str, Any]:
        _allowed(request, ("from", "to", "unit"))
        units = _units(request)
        window = await _window(request, need(), 1)
        rows = await run(queries.availability, window.start, window.end, units)
        return {"from": window.start, "to": window.end, "units": rows}

    return router
