"""The records store in PostgreSQL (psycopg 3): the same schema and statements as SQLite.

A connection that breaks (the server restarted or went away) is dropped; the next call
connects again, so the receiver's retries find the server when it is back. Read only (the
web app): the session's transactions are read only and the schema is left as it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

from apis.records.store import (
    SCHEMA,
    Change,
    Row,
    StoreError,
    insert_statements,
    purge_statements,
)

CONNECT_TIMEOUT_S = 5


def _pg(sql: str) -> str:
    return sql.replace("?", "%s")  # our statements hold no literal question marks


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[-1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


class PostgresStore:
    def __init__(self, url: str, *, read_only: bool = False) -> None:
        self.url = url
        self.read_only = read_only
        self.description = f"PostgreSQL {_without_password(url)}" + (
            " (read only)" if read_only else "")
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        conn = self._connection()
        if read_only:
            return
        try:
            with conn.transaction():
                for statement in SCHEMA:
                    conn.execute(statement)
        except psycopg.Error as exc:
            self._drop()
            raise StoreError(f"{self.description}: schema: {_text(exc)}") from exc

    def _connection(self) -> psycopg.Connection[tuple[Any, ...]]:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        try:
            if self.read_only:
                self._conn = psycopg.connect(self.url, autocommit=True,
                                             connect_timeout=CONNECT_TIMEOUT_S,
                                             options="-c default_transaction_read_only=on")
            else:
                self._conn = psycopg.connect(self.url, autocommit=True,
                                             connect_timeout=CONNECT_TIMEOUT_S)
        except psycopg.Error as exc:
            raise StoreError(f"{self.description}: cannot connect: {_text(exc)}") from exc
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
            self._conn = None

    def write(self, rows: Sequence[Row], stored_at: float) -> int:
        if not rows:
            return 0
        return self._transaction(insert_statements(rows, stored_at))

    def apply(self, changes: Sequence[Change]) -> None:
        if changes:
            self._transaction(changes)

    def _transaction(self, statements: Sequence[Change]) -> int:
        conn = self._connection()
        added = 0
        try:
            with conn.transaction(), conn.cursor() as cursor:
                for sql, params in statements:
                    if not params:
                        continue
                    cursor.executemany(_pg(sql), params)
                    added += max(0, cursor.rowcount)
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.OperationalError) or conn.broken:
                self._drop()
            raise StoreError(f"{self.description}: {_text(exc)}") from exc
        return added

    def purge(self, cutoffs: Mapping[str, float]) -> dict[str, int]:
        conn = self._connection()
        out = {}
        try:
            for table, sql, cutoff in purge_statements(cutoffs):
                out[table] = max(0, conn.execute(_pg(sql), (cutoff,)).rowcount)
        except psycopg.Error as exc:
            self._drop()
            raise StoreError(f"{self.description}: retention: {_text(exc)}") from exc
        return out

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        conn = self._connection()
        try:
            return list(conn.execute(_pg(sql), tuple(params)).fetchall())
        except psycopg.Error as exc:
            self._drop()
            raise StoreError(f"{self.description}: {_text(exc)}") from exc

    def close(self) -> None:
        self._drop()


def _text(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
