"""The records store in one SQLite file (WAL; a commit is on disk before it returns)."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from apis.records.store import SCHEMA, Row, StoreError, insert_statements, purge_statements


class SqliteStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.description = f"SQLite {self.path}"
        if not self.path.parent.is_dir():
            raise StoreError(
                f"store = {str(self.path)!r}: folder {self.path.parent} does not exist"
            )
        try:
            # one thread uses it at a time (the receiver's store thread), not always the same
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                       timeout=10.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed batch survives a power loss, not only a crash, before its ack
            self._db.execute("PRAGMA synchronous=FULL")
            for statement in SCHEMA:
                self._db.execute(statement)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.description}: {exc}") from exc

    def write(self, rows: Sequence[Row], stored_at: float) -> int:
        if not rows:
            return 0
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                before = db.total_changes
                for sql, params in insert_statements(rows, stored_at):
                    db.executemany(sql, params)
                added = db.total_changes - before
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"{self.description}: {exc}") from exc
        return added

    def purge(self, cutoffs: Mapping[str, float]) -> dict[str, int]:
        out = {}
        try:
            for table, sql, cutoff in purge_statements(cutoffs):
                out[table] = self._db.execute(sql, (cutoff,)).rowcount
        except sqlite3.Error as exc:
            raise StoreError(f"{self.description}: retention: {exc}") from exc
        return out

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return [tuple(row) for row in self._db.execute(sql, tuple(params)).fetchall()]
        except sqlite3.Error as exc:
            raise StoreError(f"{self.description}: {exc}") from exc

    def close(self) -> None:
        self._db.close()
