"""The records receiver: from the records streams into the store, each record exactly once.

One task per stream fetches a batch from the stream's durable consumer, turns each message
into a row (or a rejected row: see records.inbound), commits the batch in one transaction
and only then acknowledges its messages. A batch that cannot be committed (store read-only
or full, PostgreSQL gone) is kept and tried again with backoff, its messages held (the
server is told they are in progress) and nothing acknowledged; the receiver keeps running.
If the receiver dies between commit and acknowledgement, the stream delivers the batch
again and the store's insert-or-ignore on each record's key adds nothing.

Beside them: the sampler (records.sampler), the retention task, which deletes rows older
than each table's retention at start and then every `retention_check_s`, and the derived
figures (records.figures), computed at start and then every `figures_every_s`.

With a multicast source, action log lines arriving as UDP datagrams (the original apis-main's,
records.datagrams) go into the same store, through the same store thread; with no bus given
that is all it receives (a replacement of the original apis-log).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from apis.bus.base import BusError
from apis.bus.nats import NatsBus
from apis.config.unitconfig import BusConfig
from apis.records.datagrams import DatagramReceiver, MulticastSource
from apis.records.figures import FigureSettings, run_figures
from apis.records.inbound import (
    Delivery,
    Refused,
    deal_row,
    log_row,
    registry_revision,
    reject,
    unit_data_row,
)
from apis.records.sampler import Sampler
from apis.records.store import (
    TABLES,
    DealRow,
    LogRow,
    RecordStore,
    Row,
    StoreError,
    open_store,
)
from apis.records.streams import (
    ACK_WAIT_S,
    CONSUMER,
    DEALS_STREAM,
    LOG_STREAM,
    REGISTRY_STREAM,
    UNIT_DATA_STREAM,
    RecordStream,
    ensure_streams,
)
from apis.unit import subjects
from apis.unit.registry import DEALS_BUCKET

log = logging.getLogger(__name__)

T = TypeVar("T")
DAY_S = 86_400.0
FETCH_WAIT_S = 1.0
RETRY_MAX_S = 30.0
HOME_LOOKUP_TIMEOUT_S = 2.0
HOME_RETRY_S = 60.0  # a unit that did not say where it belongs is asked again after this


@dataclass
class Settings:
    servers: list[str]
    store: str
    # a secured bus: the `bus` key of a config (servers, TLS with the records certificate),
    # relative paths from `bus_base`; then `servers` is unused
    bus: BusConfig | None = None
    bus_base: Path = Path(".")
    unit_data_period_s: float = 60.0
    retention_days: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TABLES, 365.0))
    retention_check_s: float = 3600.0
    batch: int = 500
    stream_max_bytes: int = 256 * 1024 * 1024
    # action log lines as UDP multicast datagrams (the original apis-main's), too or only
    multicast: MulticastSource | None = None
    figures_every_s: float = 300.0
    time_zone: str = "UTC"  # where the figures' days begin

    @property
    def uses_bus(self) -> bool:
        return bool(self.servers) or self.bus is not None

    def figures(self) -> FigureSettings:
        return FigureSettings(period_s=self.unit_data_period_s, time_zone=self.time_zone,
                              every_s=self.figures_every_s)

    def __post_init__(self) -> None:
        if not self.uses_bus and self.multicast is None:
            raise ValueError("nothing to receive: give the bus's servers, or a multicast group")
        self.figures()  # ValueError naming a bad time zone or period
        if self.unit_data_period_s <= 0:
            raise ValueError(f"unit data period = {self.unit_data_period_s} s (must be > 0)")
        for table, days in self.retention_days.items():
            if table not in TABLES:
                raise ValueError(f"retention table = {table!r} (one of {', '.join(TABLES)})")
            if not days > 0:
                raise ValueError(f"retention of {table} = {days} days (must be > 0)")
        if self.stream_max_bytes < 1024 * 1024:
            raise ValueError(f"stream size = {self.stream_max_bytes} bytes (at least 1 MB)")
        if not 1 <= self.batch <= 10_000:
            raise ValueError(f"batch = {self.batch} (must be within 1..10000)")


class Receiver:
    """`bus` and `js` None: only the multicast source (settings.multicast) is received."""

    def __init__(self, bus: NatsBus | None, js: JetStreamContext | None, store: RecordStore,
                 settings: Settings) -> None:
        self.bus = bus
        self.js = js
        self.store = store
        self.settings = settings
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="records-store")
        self.homes: dict[str, tuple[str | None, str | None]] = {}
        self._asked: dict[str, float] = {}  # unit id -> when its home was last asked for
        self.units: set[str] = set()  # every unit heard of: the sampler asks them
        self.listed: set[str] = set()  # units whose data was sampled (the cluster's)
        self._unlisted: set[str] = set()  # units said to be unknown once already
        self.committed: dict[str, int] = {}
        self._last_revision: int | None = None
        self.datagrams = (
            DatagramReceiver(settings.multicast, self._write_now, batch=settings.batch)
            if settings.multicast is not None else None
        )

    async def _write_now(self, rows: Sequence[Row]) -> int:
        return await self._in_store(self.store.write, rows, time.time())

    async def _in_store(self, call: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, call, *args)

    # ---- startup -----------------------------------------------------------------------

    async def _load_state(self) -> None:
        rows = await self._in_store(
            self.store.query,
            "SELECT u.unit_id, u.community_id, u.cluster_id FROM unit_data u JOIN "
            "(SELECT unit_id, MAX(sampled_at) AS last FROM unit_data GROUP BY unit_id) l "
            "ON u.unit_id = l.unit_id AND u.sampled_at = l.last",
        )
        for unit_id, community, cluster in rows:
            self.homes[str(unit_id)] = (community, cluster)
        self.units.update(self.homes)
        self.listed.update(self.homes)
        last = await self._in_store(self.store.query, "SELECT MAX(revision) FROM deal_versions")
        self._last_revision = int(last[0][0]) if last and last[0][0] is not None else None

    async def run(self, stop: asyncio.Event) -> None:
        tasks = []
        if self.datagrams is not None:
            tasks.append(asyncio.create_task(self.datagrams.run(),
                                             name="records: multicast datagrams"))
        if self.js is not None:
            tasks.extend(await self._start_streams())
        else:
            log.info("records: receiving into %s (multicast only)", self.store.description)
        tasks.append(asyncio.create_task(self._retention(), name="records: retention"))
        tasks.append(asyncio.create_task(run_figures(self.settings.store,
                                                     self.settings.figures()),
                                         name="records: figures"))
        stopping = asyncio.create_task(stop.wait(), name="records: stop")
        try:
            done, _ = await asyncio.wait([*tasks, stopping], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopping:
                    task.result()  # a task that ended by itself failed: say why
        finally:
            for task in [*tasks, stopping]:
                task.cancel()
            for task in [*tasks, stopping]:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _start_streams(self) -> list[asyncio.Task[None]]:
        assert self.bus is not None and self.js is not None
        await self._load_state()
        replicas = (await self.js.stream_info(REGISTRY_STREAM)).config.num_replicas or 1
        longest = max(self.settings.retention_days.values()) * DAY_S
        streams = await ensure_streams(self.js, longest, self.settings.stream_max_bytes,
                                       replicas)
        sampler = Sampler(self.bus, self.js, self.settings.unit_data_period_s,
                          lambda: self.units, self._on_sample)
        log.info("records: receiving into %s (unit data every %g s)", self.store.description,
                 self.settings.unit_data_period_s)
        return [
            asyncio.create_task(self._consume(streams[LOG_STREAM], self._log_rows),
                                name="records: log lines"),
            asyncio.create_task(self._consume(streams[DEALS_STREAM], self._deal_rows),
                                name="records: deal versions"),
            asyncio.create_task(self._consume(streams[UNIT_DATA_STREAM], self._unit_data_rows),
                                name="records: unit data"),
            asyncio.create_task(sampler.run(), name="records: sampler"),
        ]

    async def close(self) -> None:
        if self.datagrams is not None:  # lines received and not yet committed
            await self.datagrams.flush()
        # a commit still running in the store thread finishes first (its batch is not
        # acknowledged, so it comes again next time and adds nothing)
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)
        self.store.close()

    # ---- consuming ---------------------------------------------------------------------

    async def _consume(
        self,
        stream: RecordStream,
        rows_of: Callable[[RecordStream, list[Delivery]], Awaitable[list[Row]]],
    ) -> None:
        assert self.js is not None
        sub = await self.js.pull_subscribe_bind(durable=CONSUMER, stream=stream.name)
        try:
            while True:
                try:
                    msgs = await sub.fetch(self.settings.batch, timeout=FETCH_WAIT_S)
                except TimeoutError:
                    continue
                except nats.errors.Error as exc:
                    log.warning("records: fetch from %s: %r", stream.name, exc)
                    await asyncio.sleep(1.0)
                    continue
                deliveries = [_delivery(msg) for msg in msgs]
                rows = await rows_of(stream, deliveries)
                added = await self._commit(stream, rows, msgs)
                self.committed[stream.name] = self.committed.get(stream.name, 0) + added
                for msg in msgs:
                    try:
                        await msg.ack()
                    except nats.errors.Error as exc:  # redelivered later, then ignored
                        log.warning("records: ack on %s: %r", stream.name, exc)
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _commit(self, stream: RecordStream, rows: Sequence[Row], msgs: list[Msg]) -> int:
        delay = 0.5
        attempt = 0
        loop = asyncio.get_running_loop()
        while True:
            try:
                added = await self._in_store(self.store.write, rows, time.time())
                if attempt:
                    log.info("records: %d records from %s committed after %d failed attempts",
                             len(rows), stream.name, attempt)
                return added
            except StoreError as exc:
                failure = str(exc)
            except Exception as exc:  # a fault of ours: kept and retried all the same
                log.exception("records: commit of %d rows from %s failed", len(rows), stream.name)
                failure = repr(exc)
            attempt += 1
            log.error("records: %d records from %s not committed (attempt %d; again in %.1f s; "
                      "nothing acknowledged): %s", len(rows), stream.name, attempt, delay, failure)
            until = loop.time() + delay
            while (left := until - loop.time()) > 0:
                await asyncio.sleep(min(left, ACK_WAIT_S / 3))
                for msg in msgs:  # ours still: no redelivery while we wait
                    with contextlib.suppress(nats.errors.Error):
                        await msg.in_progress()
            delay = min(delay * 2, RETRY_MAX_S)

    def _row(self, stream: RecordStream, delivery: Delivery,
             decode: Callable[[Delivery], Row]) -> Row:
        try:
            return decode(delivery)
        except Refused as exc:
            log.error("records: %s #%d on %s refused: %s", stream.name, delivery.seq,
                      delivery.subject[:120], exc)
            return reject(delivery, stream.origin, str(exc))
        except Exception as exc:  # a fault of ours: the message is kept all the same
            log.exception("records: %s #%d on %s not understood", stream.name, delivery.seq,
                          delivery.subject[:120])
            return reject(delivery, stream.origin, f"receiver fault: {exc!r}"[:500])

    async def _log_rows(self, stream: RecordStream, deliveries: list[Delivery]) -> list[Row]:
        rows = [self._row(stream, d, lambda d: log_row(d, stream.origin)) for d in deliveries]
        for row in rows:
            if isinstance(row, LogRow):
                self.units.add(row.unit_id)
                if self.listed and row.unit_id not in self.listed | self._unlisted:
                    self._unlisted.add(row.unit_id)
                    log.warning("records: lines from %s, a unit whose data was never sampled "
                                "(not among %s): kept", row.unit_id, ", ".join(
                                    sorted(self.listed)[:20]))
        return rows

    async def _unit_data_rows(self, stream: RecordStream,
                              deliveries: list[Delivery]) -> list[Row]:
        return [self._row(stream, d, unit_data_row) for d in deliveries]

    async def _deal_rows(self, stream: RecordStream, deliveries: list[Delivery]) -> list[Row]:
        def decode(delivery: Delivery) -> Row:
            return deal_row(delivery, self._home)

        rows = [self._row(stream, d, decode) for d in deliveries]
        homeless = {
            unit
            for row in rows
            if isinstance(row, DealRow) and row.operation == "PUT" and row.community_id is None
            for unit in (row.charge_unit_id, row.discharge_unit_id)
            if unit is not None
        }
        if homeless and await self._ask_homes(homeless):
            rows = [
                self._row(stream, d, decode)
                if isinstance(row, DealRow) and row.community_id is None else row
                for d, row in zip(deliveries, rows, strict=True)
            ]
        self._check_sequence(deliveries)
        return rows

    def _check_sequence(self, deliveries: list[Delivery]) -> None:
        """Warn about registry writes that never reached the deals stream (see streams)."""
        revisions = []
        for delivery in deliveries:
            with contextlib.suppress(Refused):
                revisions.append(registry_revision(delivery))
        for revision in sorted(revisions):
            last = self._last_revision
            if last is not None and revision <= last:
                continue  # delivered again, or older than what is stored
            if last is not None and revision > last + 1:
                log.warning("records: deal registry writes %d..%d were not copied into %s "
                            "(rewritten before the server copied them)", last + 1,
                            revision - 1, DEALS_STREAM)
            self._last_revision = revision

    # ---- where units belong ------------------------------------------------------------

    def _home(self, unit_id: str) -> tuple[str | None, str | None]:
        return self.homes.get(unit_id, (None, None))

    def _on_sample(self, unit_id: str, data: Mapping[str, Any]) -> None:
        self.units.add(unit_id)
        self.listed.add(unit_id)
        oesunit = data.get("oesunit")
        if isinstance(oesunit, dict):
            community, cluster = oesunit.get("communityId"), oesunit.get("clusterId")
            if isinstance(community, str) and isinstance(cluster, str):
                self.homes[unit_id] = (community, cluster)

    async def _ask_homes(self, units: set[str]) -> bool:
        """Ask units not sampled yet for their data, to learn community and cluster."""
        now = time.monotonic()
        ask = [u for u in units if now - self._asked.get(u, -HOME_RETRY_S) >= HOME_RETRY_S]
        for unit in ask:
            self._asked[unit] = now

        bus = self.bus
        assert bus is not None

        async def one(unit_id: str) -> None:
            try:
                data = await bus.request(subjects.controller_data(unit_id),
                                              timeout=HOME_LOOKUP_TIMEOUT_S)
            except BusError as exc:
                log.info("records: %s did not say its community and cluster: %s", unit_id, exc)
                return
            if isinstance(data, dict):
                self._on_sample(unit_id, data)

        await asyncio.gather(*(one(unit) for unit in ask))
        return any(unit in self.homes for unit in ask)

    # ---- retention ---------------------------------------------------------------------

    async def _retention(self) -> None:
        while True:
            now = time.time()
            cutoffs = {t: now - days * DAY_S for t, days in self.settings.retention_days.items()}
            try:
                deleted = await self._in_store(self.store.purge, cutoffs)
            except StoreError as exc:
                log.error("records: retention not enforced this time: %s", exc)
            else:
                if any(deleted.values()):
                    log.info("records: retention deleted %s", ", ".join(
                        f"{n} from {t}" for t, n in deleted.items() if n))
            await asyncio.sleep(self.settings.retention_check_s)


def _delivery(msg: Msg) -> Delivery:
    meta = msg.metadata
    return Delivery(msg.subject, msg.data or b"", dict(msg.headers or {}),
                    meta.sequence.stream, meta.timestamp.timestamp())


async def open_store_retrying(url: str, stop: asyncio.Event) -> RecordStore | None:
    """Open the store; a PostgreSQL server that does not answer yet is waited for (None if
    stopped meanwhile). A SQLite file that cannot be opened is an error (StoreError)."""
    delay = 1.0
    loop = asyncio.get_running_loop()
    while True:
        try:
            return await loop.run_in_executor(None, open_store, url)
        except StoreError as exc:
            if not url.startswith(("postgresql://", "postgres://")):
                raise
            log.error("records: store not open yet (again in %.0f s): %s", delay, exc)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await stop.wait()
        if stop.is_set():
            return None
        delay = min(delay * 2, RETRY_MAX_S)


async def _connect(settings: Settings) -> NatsBus:
    if settings.bus is None:
        return await NatsBus.connect(settings.servers, name="apis-records")
    from apis.process.unit import UnitRefused, connect_bus

    try:
        return await connect_bus(settings.bus, settings.bus_base, "apis-records")
    except UnitRefused as e:
        raise BusError(str(e)) from None


async def run_receiver(settings: Settings, stop: asyncio.Event) -> None:
    """Run until `stop` is set. BusError: NATS not reachable; StoreError: store unusable."""
    store = await open_store_retrying(settings.store, stop)
    if store is None:
        return
    bus: NatsBus | None = None
    receiver = None
    try:
        js = None
        if settings.uses_bus:
            bus = await _connect(settings)
            await bus.kv(DEALS_BUCKET)  # the registry's bucket, as the units make it
            js = bus.client.jetstream(timeout=5.0)
        receiver = Receiver(bus, js, store, settings)
        await receiver.run(stop)
    except nats.errors.Error as exc:
        raise BusError(f"JetStream: {exc!r}") from exc
    finally:
        if receiver is not None:
            await receiver.close()
        else:
            store.close()
        if bus is not None:
            await bus.close()
