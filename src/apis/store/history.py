"""History of a cluster in SQLite: finished deals, errors, operation-mode changes, and the
scheduled Soft Stops.

One small embedded database (stdlib `sqlite3`); ``:memory:`` by default (the demo), a file
path when the history must survive a restart. Every record keeps its full JSON next to the
few columns that are queried, so nothing of a deal is lost and new fields need no migration.

Calls are synchronous and short (one statement each); callers on an event loop may use them
directly. One connection, guarded by a lock, so a store may be shared across threads.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# what does not change over the versions of one deal: its units and its creation time
_IDENTITY = ("requestUnitId", "acceptUnitId", "chargeUnitId", "dischargeUnitId",
             "createDateTime")
_PARTIES = ("requestUnitId", "acceptUnitId", "chargeUnitId", "dischargeUnitId")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS deal (
    deal_id TEXT PRIMARY KEY,
    charge_unit_id TEXT NOT NULL,
    discharge_unit_id TEXT NOT NULL,
    create_date_time TEXT,
    deal_amount_wh REAL,
    cumulate_amount_wh REAL,
    ended TEXT NOT NULL,           -- completed / aborted / scrammed
    finished_at REAL NOT NULL,     -- wall-clock seconds it was recorded
    record TEXT NOT NULL           -- the full deal JSON
);
CREATE INDEX IF NOT EXISTS deal_finished ON deal (finished_at);
CREATE TABLE IF NOT EXISTS error (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    unit_id TEXT NOT NULL,
    category TEXT NOT NULL,
    extent TEXT NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL,
    source TEXT NOT NULL           -- "cluster" (seen on the bus) or "injected"
);
CREATE TABLE IF NOT EXISTS schedule (
    scope TEXT NOT NULL,           -- "global" or a unit id
    operation TEXT NOT NULL,       -- "softStop"
    at REAL NOT NULL,              -- wall-clock seconds it is due
    created_by TEXT NOT NULL,
    PRIMARY KEY (scope, operation)
);
CREATE TABLE IF NOT EXISTS mode_change (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    scope TEXT NOT NULL,           -- "global" or a unit id
    old_mode TEXT,
    new_mode TEXT,
    changed_by TEXT NOT NULL
);
"""


def deal_ending(record: Mapping[str, Any]) -> str | None:
    """How a deal record ended (``completed``, ``aborted``, ``scrammed``), None while live."""
    if record.get("scramDateTime") is not None:
        return "scrammed"
    if record.get("abortDateTime") is not None:
        return "aborted"
    if record.get("deactivateDateTime") is not None:
        return "completed"
    return None


@dataclass(frozen=True, slots=True)
class ModeChange:
    at: float
    scope: str
    old_mode: str | None
    new_mode: str | None
    changed_by: str

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "scope": self.scope,
            "from": self.old_mode,
            "to": self.new_mode,
            "by": self.changed_by,
        }


class HistoryStore:
    def __init__(self, path: str | Path = ":memory:") -> None:
        self.path = str(path)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @property
    def schedules(self) -> ScheduleStore:
        return ScheduleStore(self)

    # ---- deals ---------------------------------------------------------------------------

    def add_deal(
        self,
        record: Mapping[str, Any],
        at: float,
        *,
        sender: str | None = None,
        grid_master: str | None = None,
    ) -> bool:
        """Store a finished deal (replacing an earlier record of the same deal).

        Returns False, storing nothing, when the record has no dealId or has not ended; and,
        logged as refused, when the dealId is stored for a different deal (other units or
        another creation time), or when `sender` (the unit that published the record, None:
        the caller vouches for it) is neither one of the deal's units nor `grid_master`.
        """
        deal_id = record.get("dealId")
        ended = deal_ending(record)
        if not deal_id or ended is None:
            return False
        if sender is not None and sender not in (
            *(record.get(key) for key in _PARTIES), *((grid_master,) if grid_master else ())
        ):
            log.error("history: deal %s refused: sender %r is neither a unit of the deal nor "
                      "the Grid Master (%s)", deal_id, sender, grid_master)
            return False
        with self._lock:
            row = self._db.execute(
                "SELECT record FROM deal WHERE deal_id = ?", (str(deal_id),)
            ).fetchone()
            if row is not None:
                stored = json.loads(row["record"])
                differs = [k for k in _IDENTITY if stored.get(k) != record.get(k)]
                if differs:
                    key = differs[0]
                    log.error("history: deal %s refused: %s = %r, the stored deal's is %r "
                              "(another deal)", deal_id, key, record.get(key), stored.get(key))
                    return False
            self._db.execute(
                "INSERT OR REPLACE INTO deal VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    str(deal_id),
                    str(record.get("chargeUnitId", "")),
                    str(record.get("dischargeUnitId", "")),
                    record.get("createDateTime"),
                    _number(record.get("dealAmountWh")),
                    _number(record.get("cumulateAmountWh")),
                    ended,
                    at,
                    json.dumps(dict(record), separators=(",", ":")),
                ),
            )
        return True

    def deals(
        self, *, limit: int = 100, offset: int = 0, unit_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Finished deals, newest first; each is the full record plus ``ended``."""
        query = "SELECT record, ended, finished_at FROM deal"
        args: list[Any] = []
        if unit_id is not None:
            query += " WHERE charge_unit_id = ? OR discharge_unit_id = ?"
            args += [unit_id, unit_id]
        query += " ORDER BY finished_at DESC, rowid DESC LIMIT ? OFFSET ?"
        args += [limit, offset]
        with self._lock:
            rows = self._db.execute(query, args).fetchall()
        out = []
        for row in rows:
            record = json.loads(row["record"])
            record["ended"] = row["ended"]
            record["finishedAt"] = row["finished_at"]
            out.append(record)
        return out

    def deal_count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM deal").fetchone()[0])

    def energy_wh(self) -> float:
        """Energy of every finished deal (their `cumulateAmountWh`)."""
        with self._lock:
            value = self._db.execute("SELECT total(cumulate_amount_wh) FROM deal").fetchone()[0]
        return float(value)

    # ---- errors --------------------------------------------------------------------------

    def add_error(self, error: Mapping[str, Any], at: float, source: str = "cluster") -> int:
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO error (at, unit_id, category, extent, level, message, source) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    at,
                    str(error.get("unitId", "")),
                    str(error.get("category", "UNKNOWN")),
                    str(error.get("extent", "UNKNOWN")),
                    str(error.get("level", "UNKNOWN")),
                    str(error.get("message", "")),
                    source,
                ),
            )
        return int(cursor.lastrowid or 0)

    def errors(self, *, limit: int = 100, unit_id: str | None = None) -> list[dict[str, Any]]:
        """Errors, newest first."""
        query = "SELECT * FROM error"
        args: list[Any] = []
        if unit_id is not None:
            query += " WHERE unit_id = ?"
            args.append(unit_id)
        query += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._db.execute(query, args).fetchall()
        return [
            {
                "id": row["id"],
                "at": row["at"],
                "unitId": row["unit_id"],
                "category": row["category"],
                "extent": row["extent"],
                "level": row["level"],
                "message": row["message"],
                "source": row["source"],
            }
            for row in rows
        ]

    def error_count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM error").fetchone()[0])

    # ---- operation-mode changes ---------------------------------------------------------------

    def add_mode_change(self, change: ModeChange) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO mode_change (at, scope, old_mode, new_mode, changed_by) "
                "VALUES (?, ?, ?, ?, ?)",
                (change.at, change.scope, change.old_mode, change.new_mode, change.changed_by),
            )

    def mode_changes(self, *, limit: int = 100, scope: str | None = None) -> list[ModeChange]:
        """Mode changes, newest first."""
        query = "SELECT * FROM mode_change"
        args: list[Any] = []
        if scope is not None:
            query += " WHERE scope = ?"
            args.append(scope)
        query += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._db.execute(query, args).fetchall()
        return [
            ModeChange(row["at"], row["scope"], row["old_mode"], row["new_mode"],
                       row["changed_by"])
            for row in rows
        ]

    def last_mode_change(self, scope: str) -> ModeChange | None:
        changes = self.mode_changes(limit=1, scope=scope)
        return changes[0] if changes else None


@dataclass(frozen=True, slots=True)
class Schedule:
    scope: str  # "global" or a unit id
    operation: str  # "softStop"
    at: float  # wall-clock seconds
    created_by: str


class ScheduleStore:
    """Scheduled operations, one per scope and operation (setting again replaces it)."""

    def __init__(self, history: HistoryStore) -> None:
        self._history = history

    def set(self, schedule: Schedule) -> None:
        h = self._history
        with h._lock:
            h._db.execute(
                "INSERT OR REPLACE INTO schedule VALUES (?, ?, ?, ?)",
                (schedule.scope, schedule.operation, schedule.at, schedule.created_by),
            )

    def delete(self, scope: str, operation: str) -> bool:
        h = self._history
        with h._lock:
            cursor = h._db.execute(
                "DELETE FROM schedule WHERE scope = ? AND operation = ?", (scope, operation)
            )
        return cursor.rowcount > 0

    def all(self) -> list[Schedule]:
        h = self._history
        with h._lock:
            rows = h._db.execute("SELECT * FROM schedule ORDER BY at").fetchall()
        return [Schedule(r["scope"], r["operation"], r["at"], r["created_by"]) for r in rows]

    def due(self, now: float) -> list[Schedule]:
        return [s for s in self.all() if s.at <= now]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
