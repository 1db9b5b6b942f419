"""The records store: one schema, one small interface, SQLite or PostgreSQL behind it.

Tables (times are seconds since the epoch, UTC, as DOUBLE PRECISION; JSON as text):

- ``log_lines``: one row per action log line. Key (origin, seq): the JetStream stream it came
  from (name and creation time, so a stream made anew does not collide with the old one's
  sequences) and its sequence there. ``at`` is the line's own time (the stream's time of
  arrival for a line without one).
- ``deal_versions``: every version of every deal the registry held. Key (deal_id,
  revision): the revision is the key-value stream's sequence of that write. ``operation``
  is ``PUT`` for a version, ``DEL``/``PURGE`` when the deal left the registry (``deal`` is
  then NULL). ``reported_at`` is when the registry stored the version.
- ``unit_data``: unit data samples. Key (unit_id, sampled_at): the receiver's sampling time.
- ``rejected``: messages that could not be kept as records (malformed, wrong types, a unit
  id that does not fit), with the reason, so that nothing acknowledged is dropped silently.

Every write is insert-or-ignore on the key, in one transaction per batch: a batch that is
delivered again (the receiver died between committing and acknowledging) adds nothing.

Derived figures (`records.figures` computes them from the tables above and replaces them
whole, so that computing them again gives the same rows; `FIGURE_TABLES`):

- ``deal_summaries``: one row per deal: its units, when it was first stored, started,
  ended, completed or aborted (registry times, ``reported_at``), and the energy counted.
- ``deal_hours``: the energy of each deal per unit and hour (``hour_start``, a multiple of
  3600 s since the epoch): charged on its charge unit, discharged on its discharge unit.
- ``unit_hours`` and ``unit_days``: per unit and hour / local day (``day`` YYYY-MM-DD in the
  figures' time zone, ``day_start`` its first second): energy charged and discharged
  through deals; bought from and sold to the utility, PV and load, integrated from unit
  data (NULL where no sample carried the value); deals made, completed, aborted; unit data
  samples that arrived and were expected (NULL when the unit was never sampled).
- ``unit_downtimes``: gaps in a unit's samples longer than two sampling periods, from the
  first missed sample to the next sample that came (``end_at`` NULL: not back yet).
- ``unit_spans``: each sampled unit's first and last sample.
- ``figure_state``: how far the figures are computed (``stored_through``, ``horizon``) and
  in which time zone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

TABLES = ("log_lines", "deal_versions", "unit_data", "rejected")
FIGURE_TABLES = ("deal_summaries", "deal_hours", "unit_hours", "unit_days", "unit_downtimes",
                 "unit_spans", "figure_state")
# the column each table's retention is measured on
TIME_COLUMNS = {
    "log_lines": "at",
    "deal_versions": "reported_at",
    "unit_data": "sampled_at",
    "rejected": "stored_at",
}


class StoreError(Exception):
    """The store did not take a write or a read (the message says why); nothing committed."""


@dataclass(frozen=True, slots=True)
class LogRow:
    origin: str
    seq: int
    unit_id: str
    at: float
    level: str
    logger: str | None
    thread: str | None
    message: str
    line: str


@dataclass(frozen=True, slots=True)
class DealRow:
    deal_id: str
    revision: int
    operation: str
    reported_at: float
    community_id: str | None
    cluster_id: str | None
    charge_unit_id: str | None
    discharge_unit_id: str | None
    state: str | None
    cumulate_amount_wh: float | None
    deal: str | None  # JSON


@dataclass(frozen=True, slots=True)
class UnitDataRow:
    unit_id: str
    sampled_at: float
    community_id: str | None
    cluster_id: str | None
    rsoc: float | None
    battery_operation_status: int | None
    grid_v: float | None
    grid_a: float | None
    grid_w: float | None
    battery_v: float | None
    battery_a: float | None
    battery_w: float | None
    converter_mode: str | None
    operation_mode: str | None
    pv_w: float | None
    load_w: float | None
    unit_time: float | None
    data: str  # JSON


@dataclass(frozen=True, slots=True)
class RejectRow:
    origin: str
    seq: int
    subject: str
    reason: str
    data: str


Row = LogRow | DealRow | UnitDataRow | RejectRow

# Column lists, in the dataclasses' order; `stored_at` is added by the store at commit.
COLUMNS: dict[type[Any], tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    LogRow: ("log_lines", tuple(LogRow.__slots__), ("origin", "seq")),
    DealRow: ("deal_versions", tuple(DealRow.__slots__), ("deal_id", "revision")),
    UnitDataRow: ("unit_data", tuple(UnitDataRow.__slots__), ("unit_id", "sampled_at")),
    RejectRow: ("rejected", tuple(RejectRow.__slots__), ("origin", "seq")),
}

# One schema for both databases: these type names mean the same to SQLite and PostgreSQL.
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS log_lines (
        origin TEXT NOT NULL, seq BIGINT NOT NULL, unit_id TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL, level TEXT NOT NULL, logger TEXT, thread TEXT,
        message TEXT NOT NULL, line TEXT NOT NULL, stored_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (origin, seq))""",
    "CREATE INDEX IF NOT EXISTS log_lines_at ON log_lines (at)",
    "CREATE INDEX IF NOT EXISTS log_lines_unit ON log_lines (unit_id, at)",
    """CREATE TABLE IF NOT EXISTS deal_versions (
        deal_id TEXT NOT NULL, revision BIGINT NOT NULL, operation TEXT NOT NULL,
        reported_at DOUBLE PRECISION NOT NULL, community_id TEXT, cluster_id TEXT,
        charge_unit_id TEXT, discharge_unit_id TEXT, state TEXT,
        cumulate_amount_wh DOUBLE PRECISION, deal TEXT, stored_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (deal_id, revision))""",
    "CREATE INDEX IF NOT EXISTS deal_versions_at ON deal_versions (reported_at)",
    """CREATE TABLE IF NOT EXISTS unit_data (
        unit_id TEXT NOT NULL, sampled_at DOUBLE PRECISION NOT NULL, community_id TEXT,
        cluster_id TEXT, rsoc DOUBLE PRECISION, battery_operation_status BIGINT,
        grid_v DOUBLE PRECISION, grid_a DOUBLE PRECISION, grid_w DOUBLE PRECISION,
        battery_v DOUBLE PRECISION, battery_a DOUBLE PRECISION, battery_w DOUBLE PRECISION,
        converter_mode TEXT, operation_mode TEXT, pv_w DOUBLE PRECISION,
        load_w DOUBLE PRECISION, unit_time DOUBLE PRECISION, data TEXT NOT NULL,
        stored_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (unit_id, sampled_at))""",
    "CREATE INDEX IF NOT EXISTS unit_data_at ON unit_data (sampled_at)",
    """CREATE TABLE IF NOT EXISTS rejected (
        origin TEXT NOT NULL, seq BIGINT NOT NULL, subject TEXT NOT NULL,
        reason TEXT NOT NULL, data TEXT NOT NULL, stored_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (origin, seq))""",
    "CREATE INDEX IF NOT EXISTS rejected_at ON rejected (stored_at)",
    # what the figures read to find new records
    "CREATE INDEX IF NOT EXISTS deal_versions_stored ON deal_versions (stored_at)",
    "CREATE INDEX IF NOT EXISTS unit_data_stored ON unit_data (stored_at)",
    # ---- derived figures (records.figures) ----
    """CREATE TABLE IF NOT EXISTS deal_summaries (
        deal_id TEXT NOT NULL PRIMARY KEY, charge_unit_id TEXT, discharge_unit_id TEXT,
        community_id TEXT, cluster_id TEXT, created_at DOUBLE PRECISION NOT NULL,
        started_at DOUBLE PRECISION, ended_at DOUBLE PRECISION,
        completed_at DOUBLE PRECISION, aborted_at DOUBLE PRECISION, abort_reason TEXT,
        state TEXT, removed BIGINT NOT NULL, deal_amount_wh DOUBLE PRECISION,
        cumulate_amount_wh DOUBLE PRECISION, charged_wh DOUBLE PRECISION NOT NULL,
        discharged_wh DOUBLE PRECISION NOT NULL, versions BIGINT NOT NULL,
        last_revision BIGINT NOT NULL, last_reported_at DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS deal_summaries_created ON deal_summaries (created_at)",
    """CREATE TABLE IF NOT EXISTS deal_hours (
        deal_id TEXT NOT NULL, unit_id TEXT NOT NULL, hour_start DOUBLE PRECISION NOT NULL,
        charged_wh DOUBLE PRECISION NOT NULL, discharged_wh DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (deal_id, unit_id, hour_start))""",
    "CREATE INDEX IF NOT EXISTS deal_hours_unit ON deal_hours (unit_id, hour_start)",
    """CREATE TABLE IF NOT EXISTS unit_hours (
        unit_id TEXT NOT NULL, hour_start DOUBLE PRECISION NOT NULL,
        charged_wh DOUBLE PRECISION NOT NULL, discharged_wh DOUBLE PRECISION NOT NULL,
        bought_wh DOUBLE PRECISION, sold_wh DOUBLE PRECISION, pv_wh DOUBLE PRECISION,
        load_wh DOUBLE PRECISION, deals_made BIGINT NOT NULL, deals_completed BIGINT NOT NULL,
        deals_aborted BIGINT NOT NULL, samples BIGINT NOT NULL, expected_samples BIGINT,
        PRIMARY KEY (unit_id, hour_start))""",
    "CREATE INDEX IF NOT EXISTS unit_hours_at ON unit_hours (hour_start)",
    """CREATE TABLE IF NOT EXISTS unit_days (
        unit_id TEXT NOT NULL, day TEXT NOT NULL, day_start DOUBLE PRECISION NOT NULL,
        charged_wh DOUBLE PRECISION NOT NULL, discharged_wh DOUBLE PRECISION NOT NULL,
        bought_wh DOUBLE PRECISION, sold_wh DOUBLE PRECISION, pv_wh DOUBLE PRECISION,
        load_wh DOUBLE PRECISION, deals_made BIGINT NOT NULL, deals_completed BIGINT NOT NULL,
        deals_aborted BIGINT NOT NULL, samples BIGINT NOT NULL, expected_samples BIGINT,
        PRIMARY KEY (unit_id, day))""",
    "CREATE INDEX IF NOT EXISTS unit_days_at ON unit_days (day_start)",
    """CREATE TABLE IF NOT EXISTS unit_downtimes (
        unit_id TEXT NOT NULL, start_at DOUBLE PRECISION NOT NULL, end_at DOUBLE PRECISION,
        missing_samples BIGINT NOT NULL, PRIMARY KEY (unit_id, start_at))""",
    """CREATE TABLE IF NOT EXISTS unit_spans (
        unit_id TEXT NOT NULL PRIMARY KEY, first_sampled_at DOUBLE PRECISION NOT NULL,
        last_sampled_at DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS figure_state (
        name TEXT NOT NULL PRIMARY KEY, number DOUBLE PRECISION, text TEXT)""",
)


def insert_statements(
    rows: Sequence[Row], stored_at: float
) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """(insert-or-ignore statement with `?` placeholders, parameter rows) per table."""
    by_type: dict[type[Any], list[tuple[Any, ...]]] = {}
    for row in rows:
        values = tuple(getattr(row, name) for name in COLUMNS[type(row)][1])
        by_type.setdefault(type(row), []).append((*values, stored_at))
    out = []
    for kind, params in by_type.items():
        table, columns, key = COLUMNS[kind]
        names = ", ".join((*columns, "stored_at"))
        marks = ", ".join("?" * (len(columns) + 1))
        sql = (
            f"INSERT INTO {table} ({names}) VALUES ({marks}) "
            f"ON CONFLICT ({', '.join(key)}) DO NOTHING"
        )
        out.append((sql, params))
    return out


def purge_statements(cutoffs: Mapping[str, float]) -> list[tuple[str, str, float]]:
    """(table, delete statement, cutoff) for the tables named in `cutoffs`."""
    out = []
    for table, cutoff in cutoffs.items():
        if table not in TIME_COLUMNS:
            raise ValueError(f"retention table = {table!r} (must be one of {', '.join(TABLES)})")
        out.append((table, f"DELETE FROM {table} WHERE {TIME_COLUMNS[table]} < ?", cutoff))
    return out


# (statement with `?` placeholders, one parameter row per execution)
Change = tuple[str, Sequence[Sequence[Any]]]


class RecordStore(Protocol):
    """Where the receiver commits records. Calls block: run them off the event loop, one at a
    time (one thread). Every failure is a `StoreError`; a store reconnects by itself at the
    next call after its server went away."""

    description: str

    def write(self, rows: Sequence[Row], stored_at: float) -> int:
        """Insert-or-ignore all rows in one transaction; return how many were new."""
        ...

    def purge(self, cutoffs: Mapping[str, float]) -> dict[str, int]:
        """Delete rows older than each table's cutoff; return the deleted counts."""
        ...

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of a read-only statement with `?` placeholders (for tools and tests)."""
        ...

    def apply(self, changes: Sequence[Change]) -> None:
        """Run each statement (`?` placeholders) once per parameter row, all in one
        transaction (the derived figures' replacements)."""
        ...

    def close(self) -> None: ...


def open_store(url: str, *, read_only: bool = False) -> RecordStore:
    """`postgresql://...` (or `postgres://`): PostgreSQL; anything else a SQLite file path
    (``sqlite:///path`` also). `read_only`: a reader's connection (the web app): the schema
    is neither made nor changed, every write is refused by the database."""
    if url.startswith(("postgresql://", "postgres://")):
        from apis.records.pgstore import PostgresStore

        return PostgresStore(url, read_only=read_only)
    from apis.records.sqlitestore import SqliteStore

    path = url.removeprefix("sqlite://") if url.startswith("sqlite://") else url
    return SqliteStore(path, read_only=read_only)
