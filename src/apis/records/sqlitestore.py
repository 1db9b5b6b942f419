"""The records store in one SQLite file (WAL; a commit is on disk before it returns).

A write that fails (the file's disk full or read-only, the file locked too long) drops the
connection; the next call opens the file again, so a store that was fixed is used again.
Read only (the web app): the file is opened with ``mode=ro``; it must exist.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from apis.records.store import (
    SCHEMA,
    Change,
    Row,
    StoreError,
    insert_statements,
    purge_statements,
)

BUSY_TIMEOUT_S = 10.0


class SqliteStore:
    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self.description = f"SQLite {self.path}" + (" (read only)" if read_only else "")
        if not self.path.parent.is_dir():
            raise StoreError(
                f"store = {str(self.path)!r}: folder {self.path.parent} does not exist"
            )
        if read_only and not self.path.is_file():
            raise StoreError(f"store = {str(self.path)!r}: no such file (a records store "
                             "that `apis records` made)")
        self._db: sqlite3.Connection | None = None
        self._connection()

    def _connection(self) -> sqlite3.Connection:
        if self._db is not None:
            return self._db
        try:
            # one thread uses it at a time (the receiver's store thread), not always the same
            if self.read_only:
                db = sqlite3.connect(f"file:{quote(str(self.path.absolute()))}?mode=ro",
                                     uri=True, check_same_thread=False, isolation_level=None,
                                     timeout=BUSY_TIMEOUT_S)
                self._db = db
                return db
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                 timeout=BUSY_TIMEOUT_S)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.description}: {exc}") from exc
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed batch survives a power loss, not only a crash, before its ack
            db.execute("PRAGMA synchronous=FULL")
            for statement in SCHEMA:
                db.execute(statement)
        except sqlite3.Error as exc:
            db.close()
            raise StoreError(f"{self.description}: {exc}") from exc
        self._db = db
        return db

    def _drop(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None

    def write(self, rows: Sequence[Row], stored_at: float) -> int:
        if not rows:
            return 0
        return self._transaction(insert_statements(rows, stored_at))

    def apply(self, changes: Sequence[Change]) -> None:
        if changes:
            self._transaction(changes)

    def _transaction(self, statements: Sequence[Change]) -> int:
        """Every statement with each of its parameter rows, in one transaction; returns the
        rows changed."""
        db = self._connection()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                before = db.total_changes
                for sql, params in statements:
                    db.executemany(sql, params)
                added = db.total_changes - before
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    try:
                        db.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                raise
        except sqlite3.Error as exc:
            self._drop()
            raise StoreError(f"{self.description}: {exc}") from exc
        return added

    def purge(self, cutoffs: Mapping[str, float]) -> dict[str, int]:
        db = self._connection()
        out = {}
        try:
            for table, sql, cutoff in purge_statements(cutoffs):
                out[table] = db.execute(sql, (cutoff,)).rowcount
        except sqlite3.Error as exc:
            self._drop()
            raise StoreError(f"{self.description}: retention: {exc}") from exc
        return out

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        db = self._connection()
        try:
            return [tuple(row) for row in db.execute(sql, tuple(params)).fetchall()]
        except sqlite3.Error as exc:
            raise StoreError(f"{self.description}: {exc}") from exc

    def close(self) -> None:
        self._drop()
