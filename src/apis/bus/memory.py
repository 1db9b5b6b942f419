"""The in-process bus: tests, the demo and fast simulation.

A `MemoryHub` is the "network"; each unit gets its own endpoint with ``hub.connect(name)``,
a `MemoryBus` that implements the `Bus` protocol. ``MemoryBus()`` alone makes a private hub.

Time is the running loop's time only (timeouts, TTL expiry), so the bus runs unchanged on the
real loop, `ScaledTimeLoop` and `VirtualTimeLoop`.

Semantics, chosen to match the NATS implementation:

- Subjects are dot-separated; subscriptions may use the NATS wildcards ``*`` (one token) and
  ``>`` (one or more trailing tokens).
- Every plain subscriber gets a message; of each queue group exactly one member does (chosen
  round-robin, deterministically).
- Each delivered message is handled in its own task owned by the receiving endpoint, so a
  slow handler does not hold up the next message. Tasks start in delivery order, which follows
  subscription order, so a run is reproducible for a given sequence of calls.
- A request goes where a published message would go; the first reply wins (as in NATS). With
  nobody subscribed: `NoHandlers`. A handler that raises gives the requester `RemoteFailure`.
- Payloads are copied on delivery (a receiver may mutate what it gets) and must be JSON values.
- Faults: ``bus.disconnect()`` cuts one endpoint off (its messages are dropped, its requests
  and key-value operations time out, its watchers miss changes and catch up on
  ``bus.reconnect()``); ``hub.partition(["E001", "E002"], ...)`` splits the network into
  islands (named groups; everybody else stays on the main island, which keeps the key-value
  store); ``hub.heal()`` rejoins them; ``await bus.close()`` is a process kill (subscriptions
  go, handler tasks are cancelled).
- Key-value revisions are one counter per bucket (like a JetStream stream sequence); a delete
  or expiry takes a revision too. `watch` yields the current entries first, then changes.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from apis.bus.base import (
    JSON,
    BusError,
    Change,
    Entry,
    Handler,
    KeyExists,
    Message,
    NoHandlers,
    RemoteFailure,
    RequestTimeout,
    RevisionMismatch,
)

log = logging.getLogger(__name__)

INBOX_PREFIX = "_INBOX."
_KEY_RE = re.compile(r"[-/_=.a-zA-Z0-9]+")
_BUCKET_RE = re.compile(r"[a-zA-Z0-9_-]+")
_SCALARS = (str, int, float, bool, type(None))
_EMPTY_HEADERS: Mapping[str, str] = {}


def copy_json(value: JSON) -> JSON:
    """A deep copy of a JSON value; TypeError if it is not one (as JSON encoding would)."""
    kind = type(value)
    if kind is dict:
        copied: dict[str, JSON] = {}
        for key, item in value.items():
            if type(key) is not str:
                return _copy_via_json(value)
            item_kind = type(item)
            if item_kind is dict or item_kind is list:
                copied[key] = copy_json(item)
            elif item_kind in _SCALARS:
                copied[key] = item
            else:
                copied[key] = copy_json(item)
        return copied
    if kind is list or kind is tuple:
        return [item if type(item) in _SCALARS else copy_json(item) for item in value]
    if kind in _SCALARS:
        return value
    return _copy_via_json(value)


def _copy_via_json(value: JSON) -> JSON:
    # Subclasses (str enums, ...) and non-string dict keys: exactly what the wire would carry.
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"payload {value!r:.200} is not a JSON value: {exc}") from None


def check_subject(subject: str) -> None:
    if not subject or " " in subject or ".." in subject or subject[0] == "." or subject[-1] == ".":
        raise ValueError(f"subject {subject!r} (must be dot-separated non-empty tokens)")


def check_key(key: str) -> None:
    if not _KEY_RE.fullmatch(key) or key[0] == "." or key[-1] == ".":
        raise ValueError(
            f"key {key!r} (must be letters, digits and -/_=. and not start or end with a dot)"
        )


def check_bucket(bucket: str) -> None:
    if not _BUCKET_RE.fullmatch(bucket):
        raise ValueError(f"bucket {bucket!r} (must be letters, digits, - and _)")


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel `tasks` and wait until all have ended.

    Cancels again while any is left: on Python 3.11 ``asyncio.wait_for`` (used inside
    nats-py) can swallow a cancellation that races with its result.
    """
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _done, pending = await asyncio.wait(pending, timeout=1.0)


def _subject_matches(pattern: tuple[str, ...], subject: list[str]) -> bool:
    for i, token in enumerate(pattern):
        if token == ">":
            return len(subject) > i
        if i >= len(subject) or (token != "*" and token != subject[i]):
            return False
    return len(pattern) == len(subject)


def _time_out(future: asyncio.Future[JSON], subject: str, timeout: float) -> None:
    if not future.done():
        future.set_exception(RequestTimeout(f"no reply on {subject} within {timeout} s"))


def _failure_text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


@dataclass(eq=False, slots=True)
class _Subscription:
    seq: int
    subject: str
    pattern: tuple[str, ...] | None  # tokens when the subject has wildcards
    queue: str | None
    handler: Handler
    bus: MemoryBus
    active: bool = True

    async def unsubscribe(self) -> None:
        if self.active:
            self.active = False
            self.bus._forget(self)


@dataclass(eq=False, slots=True)
class _Inbox:
    bus: MemoryBus
    future: asyncio.Future[JSON]


@dataclass(slots=True)
class _Slot:
    value: JSON  # the stored copy; None when deleted
    revision: int
    live: bool
    timer: asyncio.TimerHandle | None = None


_END = object()


@dataclass(eq=False, slots=True)
class _Watcher:
    bus: MemoryBus
    prefix: str
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    last_revision: int = 0


class _Bucket:
    """One bucket's state, shared by all endpoints of a hub."""

    def __init__(self, name: str, ttl: float | None) -> None:
        self.name = name
        self.ttl = ttl
        self.revision = 0
        self.slots: dict[str, _Slot] = {}
        self.watchers: list[_Watcher] = []

    def live(self, key: str) -> _Slot | None:
        slot = self.slots.get(key)
        return slot if slot is not None and slot.live else None

    def write(self, key: str, value: JSON) -> int:
        self.revision += 1
        revision = self.revision
        slot = self.slots.get(key)
        if slot is not None and slot.timer is not None:
            slot.timer.cancel()
        timer = None
        if self.ttl is not None:
            loop = asyncio.get_running_loop()
            timer = loop.call_at(loop.time() + self.ttl, self._expire, key, revision)
        self.slots[key] = _Slot(value, revision, True, timer)
        self._notify(key, revision, value)
        return revision

    def remove(self, key: str) -> None:
        slot = self.slots.get(key)
        if slot is None or not slot.live:
            return
        if slot.timer is not None:
            slot.timer.cancel()
        self.revision += 1
        if any(not w.bus.kv_reachable for w in self.watchers):
            # Kept so that a cut-off watcher learns of the delete when it catches up.
            self.slots[key] = _Slot(None, self.revision, False)
        else:
            del self.slots[key]
        self._notify(key, self.revision, None)

    def _expire(self, key: str, revision: int) -> None:
        slot = self.slots.get(key)
        if slot is not None and slot.live and slot.revision == revision:
            slot.timer = None
            self.remove(key)

    def _notify(self, key: str, revision: int, value: JSON) -> None:
        for watcher in self.watchers:
            if watcher.bus.kv_reachable and key.startswith(watcher.prefix):
                watcher.last_revision = revision
                entry = None if value is None else Entry(key, copy_json(value), revision)
                watcher.queue.put_nowait(Change(key, entry))

    def add_watcher(self, watcher: _Watcher) -> None:
        self.watchers.append(watcher)
        self.catch_up(watcher, initial=True)

    def catch_up(self, watcher: _Watcher, initial: bool = False) -> None:
        """Queue what `watcher` missed: the latest state of each key changed since it last saw."""
        if not watcher.bus.kv_reachable:
            return
        missed = sorted(
            (slot.revision, key)
            for key, slot in self.slots.items()
            if slot.revision > watcher.last_revision and key.startswith(watcher.prefix)
        )
        for revision, key in missed:
            slot = self.slots[key]
            entry = Entry(key, copy_json(slot.value), revision) if slot.live else None
            if entry is not None or not initial:
                watcher.queue.put_nowait(Change(key, entry))
        watcher.last_revision = self.revision
        self.prune()

    def prune(self) -> None:
        if all(w.bus.kv_reachable for w in self.watchers):
            for key in [key for key, slot in self.slots.items() if not slot.live]:
                del self.slots[key]


class MemoryHub:
    """The shared network of in-process bus endpoints and the key-value store they reach.

    `kv_timeout` is how long (loop seconds) a key-value operation from a cut-off endpoint
    waits before it fails with `RequestTimeout`, like a client that cannot reach the servers.
    """

    def __init__(self, kv_timeout: float = 5.0) -> None:
        self.kv_timeout = kv_timeout
        self.endpoints: list[MemoryBus] = []
        self.delivered = 0  # messages handed to handlers, for benchmarks
        self._seq = itertools.count(1)
        self._exact: dict[str, list[_Subscription]] = {}
        self._wildcard: list[_Subscription] = []
        self._match_cache: dict[str, tuple[_Subscription, ...]] = {}
        self._round_robin: dict[tuple[str, str, int], int] = {}
        self._inboxes: dict[str, _Inbox] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._islands = itertools.count(1)

    def connect(self, name: str) -> MemoryBus:
        """A new endpoint labelled `name` (normally the unit ID; duplicates are allowed)."""
        return MemoryBus(self, name)

    # -- faults ---------------------------------------------------------------------------

    def partition(self, *groups: Iterable[str]) -> None:
        """Split the network: each group of endpoint names becomes an island.

        Endpoints not named stay on the main island, which alone reaches the key-value store.
        Messages flow only within an island. Replaces any earlier partition.
        """
        zones: dict[str, int] = {}
        for group in groups:
            island = next(self._islands)
            for name in group:
                zones[name] = island
        for bus in self.endpoints:
            bus._set_zone(zones.get(bus.name, 0))

    def heal(self) -> None:
        """Undo `partition` and every `disconnect`."""
        for bus in self.endpoints:
            bus._connected = True
            bus._set_zone(0)

    # -- routing --------------------------------------------------------------------------

    def _add(self, sub: _Subscription) -> None:
        if sub.pattern is None:
            self._exact.setdefault(sub.subject, []).append(sub)
        else:
            self._wildcard.append(sub)
        self._match_cache.clear()

    def _remove(self, sub: _Subscription) -> None:
        if sub.pattern is None:
            subs = self._exact.get(sub.subject)
            if subs is not None:
                subs.remove(sub)
                if not subs:
                    del self._exact[sub.subject]
        else:
            self._wildcard.remove(sub)
        self._match_cache.clear()

    def _match(self, subject: str) -> tuple[_Subscription, ...]:
        subs = self._match_cache.get(subject)
        if subs is None:
            exact = self._exact.get(subject, ())
            if self._wildcard:
                tokens = subject.split(".")
                found = [*exact]
                found.extend(s for s in self._wildcard if _subject_matches(s.pattern or (), tokens))
                found.sort(key=lambda s: s.seq)
                subs = tuple(found)
            else:
                subs = tuple(exact)
            if len(self._match_cache) > 10_000:
                self._match_cache.clear()
            self._match_cache[subject] = subs
        return subs

    def _route(
        self,
        sender: MemoryBus,
        subject: str,
        payload: JSON,
        headers: Mapping[str, str] | None,
        reply: str | None,
    ) -> int:
        """Deliver to every reachable plain subscriber and one member per queue group.

        Returns how many got it, or -1 when nobody subscribes at all (a subscriber cut off
        from the sender still counts as interest, as a NATS server would see it).
        """
        subs = self._match(subject)
        if not subs:
            return -1
        if not sender._connected:
            return 0
        zone = sender._zone
        groups: dict[str, list[_Subscription]] | None = None
        delivered = 0
        for sub in subs:
            receiver = sub.bus
            if not receiver._connected or receiver._zone != zone:
                continue
            if sub.queue is None:
                receiver._deliver(sub, subject, payload, headers, reply)
                delivered += 1
            else:
                if groups is None:
                    groups = {}
                groups.setdefault(sub.queue, []).append(sub)
        if groups is not None:
            for queue, members in groups.items():
                turn = self._round_robin.get((subject, queue, zone), 0)
                self._round_robin[(subject, queue, zone)] = turn + 1
                sub = members[turn % len(members)]
                sub.bus._deliver(sub, subject, payload, headers, reply)
                delivered += 1
        self.delivered += delivered
        return delivered

    def _answer(self, responder: MemoryBus, inbox: str, payload: JSON, failure: str | None) -> None:
        pending = self._inboxes.get(inbox)
        if pending is None or pending.future.done():
            return  # timed out, answered already or the requester is gone
        requester = pending.bus
        if not (responder._connected and requester._connected):
            return
        if responder._zone != requester._zone:
            return
        if failure is not None:
            pending.future.set_exception(RemoteFailure(failure))
        else:
            pending.future.set_result(copy_json(payload))

    def _bucket(self, name: str, ttl: float | None) -> _Bucket:
        bucket = self._buckets.get(name)
        if bucket is None:
            bucket = self._buckets[name] = _Bucket(name, ttl)
        elif bucket.ttl != ttl:
            raise BusError(f"bucket {name!r} exists with ttl = {bucket.ttl} (asked for {ttl})")
        return bucket


class MemoryBus:
    """One endpoint of a `MemoryHub`; implements the `Bus` protocol."""

    def __init__(self, hub: MemoryHub | None = None, name: str = "bus") -> None:
        self.hub = hub if hub is not None else MemoryHub()
        self.name = name
        self._connected = True
        self._zone = 0
        self._closed = False
        self._subs: list[_Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._watchers: list[tuple[_Bucket, _Watcher]] = []
        self._inbox_ids = itertools.count(1)
        self._inbox_prefix = f"{INBOX_PREFIX}{next(self.hub._seq)}."
        self.hub.endpoints.append(self)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "up" if self.kv_reachable else "cut off"
        return f"<MemoryBus {self.name} {state}>"

    # -- faults ---------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def kv_reachable(self) -> bool:
        return self._connected and self._zone == 0 and not self._closed

    def disconnect(self) -> None:
        """Cut this endpoint off the network (it keeps running, like a pulled cable)."""
        self._connected = False

    def reconnect(self) -> None:
        self._connected = True
        self._catch_up()

    def _set_zone(self, zone: int) -> None:
        self._zone = zone
        self._catch_up()

    def _catch_up(self) -> None:
        for bucket, watcher in self._watchers:
            bucket.catch_up(watcher)

    # -- messages -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise BusError(f"bus {self.name} is closed")

    async def publish(
        self, subject: str, payload: JSON = None, headers: Mapping[str, str] | None = None
    ) -> None:
        self._check_open()
        if subject.startswith(INBOX_PREFIX):
            self.hub._answer(self, subject, payload, None)  # a reply sent by hand
            return
        self.hub._route(self, subject, payload, headers, None)

    async def subscribe(
        self, subject: str, handler: Handler, queue: str | None = None
    ) -> _Subscription:
        self._check_open()
        check_subject(subject)
        tokens = tuple(subject.split("."))
        wild = "*" in tokens or ">" in tokens
        if wild and ">" in tokens[:-1]:
            raise ValueError(f"subject {subject!r} ('>' must be the last token)")
        sub = _Subscription(
            next(self.hub._seq), subject, tokens if wild else None, queue, handler, self
        )
        self._subs.append(sub)
        self.hub._add(sub)
        return sub

    def _forget(self, sub: _Subscription) -> None:
        self._subs.remove(sub)
        self.hub._remove(sub)

    def _deliver(
        self,
        sub: _Subscription,
        subject: str,
        payload: JSON,
        headers: Mapping[str, str] | None,
        reply: str | None,
    ) -> None:
        kind = type(payload)
        if kind is not str and payload is not None:
            payload = copy_json(payload)
        message = Message(subject, payload, dict(headers) if headers else {}, reply)
        task = asyncio.get_running_loop().create_task(self._handle(sub, message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, sub: _Subscription, message: Message) -> None:
        try:
            result = await sub.handler(message)
        except Exception as exc:
            if message.reply is not None:
                log.debug("%s: handler of %s failed: %r", self.name, message.subject, exc)
                self.hub._answer(self, message.reply, None, _failure_text(exc))
            else:
                log.exception("%s: handler of %s failed", self.name, message.subject)
            return
        if message.reply is not None:
            self.hub._answer(self, message.reply, result, None)

    async def request(
        self,
        subject: str,
        payload: JSON = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
    ) -> JSON:
        self._check_open()
        hub = self.hub
        inbox = f"{self._inbox_prefix}{next(self._inbox_ids)}"
        loop = asyncio.get_running_loop()
        future: asyncio.Future[JSON] = loop.create_future()
        hub._inboxes[inbox] = _Inbox(self, future)
        # One timer that fails the future (cheaper than an asyncio.timeout scope per request).
        timer = loop.call_at(loop.time() + timeout, _time_out, future, subject, timeout)
        try:
            if self._connected and hub._route(self, subject, payload, headers, inbox) < 0:
                raise NoHandlers(f"no handlers for {subject}")
            return await future
        finally:
            timer.cancel()
            del hub._inboxes[inbox]

    # -- key-value ------------------------------------------------------------------------

    async def _unreachable(self, bucket: str) -> None:
        await asyncio.sleep(self.hub.kv_timeout)
        raise RequestTimeout(f"key-value bucket {bucket} unreachable from {self.name}")

    async def kv(self, bucket: str, ttl: float | None = None) -> MemoryKeyValue:
        self._check_open()
        check_bucket(bucket)
        if ttl is not None and ttl <= 0:
            raise ValueError(f"ttl = {ttl} for bucket {bucket!r} (must be > 0 or None)")
        if not self.kv_reachable:
            await self._unreachable(bucket)
        return MemoryKeyValue(self, self.hub._bucket(bucket, ttl))

    async def close(self) -> None:
        """Go away like a killed process: subscriptions, watchers and handler tasks end."""
        if self._closed:
            return
        self._closed = True
        for sub in list(self._subs):
            await sub.unsubscribe()
        for bucket, watcher in self._watchers:
            bucket.watchers.remove(watcher)
            watcher.queue.put_nowait(_END)
        self._watchers.clear()
        for inbox, pending in list(self.hub._inboxes.items()):
            if pending.bus is self and not pending.future.done():
                pending.future.set_exception(BusError(f"bus {self.name} closed ({inbox})"))
        current = asyncio.current_task()
        await cancel_and_wait(task for task in self._tasks if task is not current)
        if self in self.hub.endpoints:
            self.hub.endpoints.remove(self)


class MemoryKeyValue:
    """A bucket seen from one endpoint; implements the `KeyValue` protocol."""

    def __init__(self, bus: MemoryBus, bucket: _Bucket) -> None:
        self._bus = bus
        self._bucket = bucket

    async def _reach(self, key: str | None) -> None:
        self._bus._check_open()
        if key is not None:
            check_key(key)
        if not self._bus.kv_reachable:
            await self._bus._unreachable(self._bucket.name)

    async def get(self, key: str) -> Entry | None:
        await self._reach(key)
        slot = self._bucket.live(key)
        if slot is None:
            return None
        return Entry(key, copy_json(slot.value), slot.revision)

    async def create(self, key: str, value: JSON) -> int:
        await self._reach(key)
        if value is None:
            raise ValueError(f"value for {key!r} is None (None marks a deleted key)")
        if self._bucket.live(key) is not None:
            raise KeyExists(f"key {key!r} exists in bucket {self._bucket.name}")
        return self._bucket.write(key, copy_json(value))

    async def update(self, key: str, value: JSON, revision: int) -> int:
        await self._reach(key)
        if value is None:
            raise ValueError(f"value for {key!r} is None (None marks a deleted key)")
        slot = self._bucket.live(key)
        if slot is None or slot.revision != revision:
            latest = None if slot is None else slot.revision
            raise RevisionMismatch(
                f"key {key!r} in bucket {self._bucket.name}: revision {revision} given, "
                f"latest is {latest}"
            )
        return self._bucket.write(key, copy_json(value))

    async def put(self, key: str, value: JSON) -> int:
        await self._reach(key)
        if value is None:
            raise ValueError(f"value for {key!r} is None (None marks a deleted key)")
        return self._bucket.write(key, copy_json(value))

    async def delete(self, key: str, revision: int | None = None) -> None:
        await self._reach(key)
        if revision is not None:
            slot = self._bucket.live(key)
            if slot is None or slot.revision != revision:
                latest = None if slot is None else slot.revision
                raise RevisionMismatch(
                    f"delete {key!r} in bucket {self._bucket.name}: revision {revision} "
                    f"given, latest is {latest}"
                )
        self._bucket.remove(key)

    async def keys(self, prefix: str = "") -> list[str]:
        await self._reach(None)
        return sorted(
            key for key, slot in self._bucket.slots.items() if slot.live and key.startswith(prefix)
        )

    def watch(self, prefix: str = "") -> AsyncIterator[Change]:
        """Current entries under `prefix` (oldest revision first), then every change.

        The watch starts when `watch` is called, not at the first iteration. It ends when the
        bus closes; leaving the loop early (break) also ends it.
        """
        self._bus._check_open()
        watcher = _Watcher(self._bus, prefix)
        self._bus._watchers.append((self._bucket, watcher))
        self._bucket.add_watcher(watcher)
        return self._changes(watcher)

    async def _changes(self, watcher: _Watcher) -> AsyncIterator[Change]:
        try:
            while True:
                change = await watcher.queue.get()
                if change is _END:
                    return
                yield change
        finally:
            if watcher in self._bucket.watchers:
                self._bucket.watchers.remove(watcher)
            if (self._bucket, watcher) in self._bus._watchers:
                self._bus._watchers.remove((self._bucket, watcher))
            self._bucket.prune()
