"""Rows that wait in memory for the store, for sources that cannot wait for us themselves (UDP
datagrams, an in-process cluster's log): kept in order, committed in batches, a failed commit
retried with backoff (0.5 s doubling to 30 s) while rows keep coming; beyond `capacity`
waiting rows, new ones are counted as dropped and said so after the next commit. With
`linger_s`, a commit waits that long (loop time) after the first row, to take more at once
(fewer commits, each a disk sync).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable, Sequence

from apis.records.store import Row, StoreError

log = logging.getLogger(__name__)

RETRY_FIRST_S = 0.5
RETRY_MAX_S = 30.0

Write = Callable[[Sequence[Row]], Awaitable[int]]  # commit in one transaction; StoreError


class PendingRows:
    def __init__(self, write: Write, what: str, *, batch: int = 500,
                 capacity: int = 100_000, linger_s: float = 0.0) -> None:
        self._write = write
        self.what = what  # for the log: "action log datagrams"
        self.batch = batch
        self.capacity = capacity
        self.linger_s = linger_s
        self.committed = 0  # rows the store took (new ones)
        self.dropped = 0
        self._reported_drops = 0
        self._rows: collections.deque[Row] = collections.deque()
        self._arrived = asyncio.Event()

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def full(self) -> bool:
        return len(self._rows) >= self.capacity

    def add(self, row: Row) -> bool:
        """Keep `row` for the next commit; False (counted as dropped) when full."""
        if self.full:
            self.dropped += 1
            return False
        self._rows.append(row)
        self._arrived.set()
        return True

    async def run(self) -> None:
        """Commit as rows come, until cancelled (then call `flush`)."""
        while True:
            await self._arrived.wait()
            if self.linger_s > 0:
                await asyncio.sleep(self.linger_s)
            self._arrived.clear()
            while self._rows:
                await self._commit_next()

    async def _commit_next(self) -> None:
        rows = [self._rows[i] for i in range(min(self.batch, len(self._rows)))]
        delay = RETRY_FIRST_S
        attempt = 0
        while True:
            try:
                self.committed += await self._write(rows)
                break
            except StoreError as exc:
                failure = str(exc)
            except Exception as exc:  # a fault of ours: kept and retried all the same
                log.exception("records: commit of %d rows (%s) failed", len(rows), self.what)
                failure = repr(exc)
            attempt += 1
            log.error("records: %d %s not committed (attempt %d; again in %.1f s; %d "
                      "waiting): %s", len(rows), self.what, attempt, delay, len(self._rows),
                      failure)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)
        if attempt:
            log.info("records: %d %s committed after %d failed attempts", len(rows),
                     self.what, attempt)
        for _ in rows:
            self._rows.popleft()
        if self.dropped > self._reported_drops:
            log.error("records: %d %s dropped: more than %d waited for the store",
                      self.dropped - self._reported_drops, self.what, self.capacity)
            self._reported_drops = self.dropped

    async def flush(self) -> None:
        """Commit what still waits, once (at the end); say what could not be kept."""
        if not self._rows:
            return
        rows = list(self._rows)
        try:
            self.committed += await self._write(rows)
        except StoreError as exc:
            log.error("records: %d %s lost at stop (not committed): %s", len(rows), self.what,
                      exc)
            return
        self._rows.clear()
