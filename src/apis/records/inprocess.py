"""The operations records of an in-process cluster (`apis demo`): what `apis records` keeps of
a cluster on NATS, taken from the in-memory bus (there is no JetStream there), through the
receiver's checks (records.inbound) into a `RecordStore`.

- Log lines: a logging handler on the `apis` logger takes each line at `level` and up of the
  unit whose code logged it (`apis.unit.cluster.CURRENT_UNIT`; run the cluster with
  `label_handlers`, so that a message handler's lines are its unit's, not the sender's), as
  that unit's action log line (records.actionlog) with the cluster's clock; a line logged in
  another thread for a unit is handed to the loop. Lines of no unit (the web UI's and other
  endpoints made with `cluster.connect`, the demo's own) are not kept.
- Deal versions: every write of the deal registry, from a watch of its bucket, with its
  revision. A deal's removal from the registry is not recorded (the in-memory watch does not
  give the revision of a delete); its last version (deactivated or scrammed) is.
- Unit data: the receiver's sampler (the Grid Master's `data.all`, else each unit's data),
  every `unit_data_period_s` of the cluster's clock, aligned to it.
- With `figures_every_s`: the derived figures (records.figures), a pass every that many
  seconds of the cluster's clock on the store's thread, and passes at the end until they
  have caught up with what was committed.

Times (a line's, `sampled_at`, `reported_at`, `stored_at`) are the cluster's clock: for the
demo the emulated world's, so the records read as the simulated days they describe. Rows
wait in memory until committed (records.pending); the store is written from one thread.
No retention is enforced here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from apis.bus.base import BusError
from apis.bus.memory import cancel_and_wait
from apis.records.actionlog import ActionLogFormatter
from apis.records.buslog import log_subject
from apis.records.figures import FigureSettings, compute_pass
from apis.records.inbound import (
    DEAL_ID,
    DEALS_PREFIX,
    Refused,
    deal_version_row,
    kept_data,
    line_row,
    unit_data_fields,
    unit_data_subject,
)
from apis.records.pending import PendingRows
from apis.records.sampler import Sampler
from apis.records.store import RecordStore, RejectRow, Row, StoreError
from apis.unit.cluster import CURRENT_UNIT, InProcessCluster
from apis.unit.registry import DEALS_BUCKET

log = logging.getLogger(__name__)

COMMIT_LINGER_S = 5.0


class InProcessRecorder:
    def __init__(self, cluster: InProcessCluster, store: RecordStore, *,
                 clock: Callable[[], float], unit_data_period_s: float = 60.0,
                 level: int = logging.INFO, figures_every_s: float | None = None,
                 time_zone: str = "UTC") -> None:
        """`time_zone`: where the figures' days begin (an IANA name; ValueError if not)."""
        self.figures = (
            FigureSettings(period_s=unit_data_period_s, time_zone=time_zone,
                           every_s=figures_every_s)
            if figures_every_s is not None else None
        )
        self.cluster = cluster
        self.store = store
        self.clock = clock
        self.level = level
        started = datetime.now(UTC).isoformat(timespec="microseconds")
        self.origin = f"in-process@{started}#{os.getpid()}"
        self.seq = 0  # log lines and rejected rows, numbered as they come
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="records-store")
        # a commit every few seconds of the cluster's clock at most (each one a disk sync)
        self.pending = PendingRows(self._write, "records of the in-process cluster",
                                   linger_s=COMMIT_LINGER_S)
        self.bus = cluster.connect("records")
        self.sampler = Sampler(self.bus, None, unit_data_period_s, lambda: cluster.unit_ids,
                               deliver=self._sampled, clock=clock)
        self.homes = {u.unit_id: (u.config.community_id, u.config.cluster_id)
                      for u in cluster.config.units}
        self._formatters: dict[str, ActionLogFormatter] = {}
        self.handler = _UnitLines(self)

    async def _write(self, rows: Sequence[Row]) -> int:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.store.write, rows, self.clock())

    def _next(self) -> int:
        self.seq += 1
        return self.seq

    def _reject(self, subject: str, reason: str, data: bytes) -> None:
        log.error("records: %s refused: %s", subject[:120], reason)
        self.pending.add(RejectRow(self.origin, self._next(), subject[:300], reason,
                                   kept_data(data)))

    # ---- log lines ---------------------------------------------------------------------

    def take_line(self, unit_id: str, record: logging.LogRecord) -> None:
        formatter = self._formatters.get(unit_id)
        if formatter is None:
            formatter = self._formatters[unit_id] = ActionLogFormatter(unit_id,
                                                                       clock=self.clock)
        line = formatter.format(record)
        try:
            row: Row = line_row(unit_id, line, self.origin, self._next(), self.clock())
        except Refused as exc:
            self._reject(log_subject(unit_id), str(exc), line.encode("utf-8", "replace"))
            return
        self.pending.add(row)

    # ---- deal versions -----------------------------------------------------------------

    def _home(self, unit_id: str) -> tuple[str | None, str | None]:
        return self.homes.get(unit_id, (None, None))

    async def _watch_deals(self) -> None:
        kv = await self.bus.kv(DEALS_BUCKET)
        async for change in kv.watch():
            entry = change.entry
            if entry is None:
                continue  # removed: not recorded (see the module doc)
            subject = DEALS_PREFIX + change.key
            try:
                if not DEAL_ID.fullmatch(change.key):
                    raise Refused(f"dealId = {change.key[:80]!r} (1-128 of A-Z a-z 0-9 _ = - .)")
                row: Row = deal_version_row(change.key, entry.revision, entry.value,
                                            self.clock(), self._home)
            except Refused as exc:
                self._reject(subject, str(exc), _json_bytes(entry.value))
                continue
            self.pending.add(row)

    # ---- unit data ---------------------------------------------------------------------

    async def _sampled(self, unit_id: str, sampled_at: float, data: dict[str, Any]) -> bool:
        try:
            row: Row = unit_data_fields(unit_id, sampled_at, data)
        except Refused as exc:
            self._reject(unit_data_subject(unit_id), str(exc), _json_bytes(data))
            return False
        return self.pending.add(row)

    # ---- derived figures ---------------------------------------------------------------

    async def _figure_passes(self) -> None:
        """Passes until caught up with the cluster's clock (a pass covers at most a day)."""
        assert self.figures is not None
        loop = asyncio.get_running_loop()
        while True:
            result = await loop.run_in_executor(self._executor, compute_pass, self.store,
                                                self.clock(), self.figures)
            if result.caught_up:
                return

    async def _run_figures(self) -> None:
        assert self.figures is not None
        while True:
            await asyncio.sleep(self.figures.every_s)
            try:
                await self._figure_passes()
            except StoreError as exc:
                log.error("records: figures not computed this time: %s", exc)
            except Exception:  # a fault of ours: the records go on all the same
                log.exception("records: figures not computed this time")

    # ---- life --------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def recording(self) -> AsyncIterator[InProcessRecorder]:
        """Record for the body's duration (start it before the cluster runs, to have its
        first lines); at the end, commit what waits and close the store."""
        apis_logger = logging.getLogger("apis")
        old_level = apis_logger.level
        self.handler.setLevel(self.level)
        apis_logger.addHandler(self.handler)
        if apis_logger.getEffectiveLevel() > self.level:
            apis_logger.setLevel(self.level)  # records below a logger's level are never made
        self.handler.loop = asyncio.get_running_loop()
        tasks = [
            asyncio.create_task(self.pending.run(), name="records: commit"),
            asyncio.create_task(self._watch_deals(), name="records: deal versions"),
            asyncio.create_task(self.sampler.run(), name="records: sampler"),
        ]
        if self.figures is not None:
            tasks.append(asyncio.create_task(self._run_figures(), name="records: figures"))
        for task in tasks:
            task.add_done_callback(_say_failure)
        try:
            yield self
        finally:
            apis_logger.removeHandler(self.handler)
            apis_logger.setLevel(old_level)
            # a commit cancelled while the store thread writes it is written again by the
            # flush (after it, on the same thread): rows are insert-or-ignore by their keys
            await cancel_and_wait(tasks)
            await self.pending.flush()
            if self.figures is not None:  # of everything committed
                try:
                    await self._figure_passes()
                except Exception as exc:
                    log.error("records: figures at the end not computed: %r", exc)
            with contextlib.suppress(BusError):
                await self.bus.close()
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, self._executor.shutdown, True)
            self.store.close()


def _say_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("records: %s failed (no more of its records are kept): %r",
                  task.get_name(), task.exception())


class _UnitLines(logging.Handler):
    """Takes each line of a unit's code; on the recorder's loop (a line logged in another
    thread that carries a unit's label is handed over to it)."""

    def __init__(self, recorder: InProcessRecorder) -> None:
        super().__init__()
        self.recorder = recorder
        self.loop: asyncio.AbstractEventLoop | None = None
        self._taking = False  # the recorder's own complaint about a line is not taken

    def emit(self, record: logging.LogRecord) -> None:
        unit_id = CURRENT_UNIT.get()
        if unit_id is None or self._taking or self.loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not self.loop:
            try:
                self.loop.call_soon_threadsafe(self._take, unit_id, record)
            except RuntimeError:  # the loop has closed
                pass
            return
        self._take(unit_id, record)

    def _take(self, unit_id: str, record: logging.LogRecord) -> None:
        self._taking = True
        try:
            self.recorder.take_line(unit_id, record)
        except Exception:
            self.handleError(record)
        finally:
            self._taking = False


def _json_bytes(value: Any) -> bytes:
    try:
        return json.dumps(value, separators=(",", ":")).encode()
    except (TypeError, ValueError):
        return repr(value).encode("utf-8", "replace")
