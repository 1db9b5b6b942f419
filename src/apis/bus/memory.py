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
  (A recursive copy: on the units' payloads it is faster than a JSON round trip, even one
  serialisation per publish.) A payload published with ``handover=True`` (the sender built
  it and lets go of it) goes to a subject's only subscriber uncopied and unchecked; to
  several, each gets a copy. Key-value values are copied once on the way in, into read-only
  dicts and lists (`ReadOnlyDict`, `ReadOnlyList`: subclasses of dict and list whose mutators
  raise TypeError), which every `get` and watcher then shares: an entry's value is a snapshot
  to read, never to edit (copy it first). On NATS every reader decodes its own copy; here a
  mutation fails loudly instead of corrupting the store of every endpoint. (Every unit reads
  the deals each few seconds: copying them on each read was a tenth of a simulation's work at
  midday.)
- Faults: ``bus.disconnect()`` cuts one endpoint off (its messages are dropped, its requests
  and key-value operations time out, its watchers miss changes and catch up on
  ``bus.reconnect()``); ``hub.partition(["E001", "E002"], ...)`` splits the network into
  islands (named groups; everybody else stays on the main island, which keeps the key-value
  store); ``hub.heal()`` rejoins them; ``await bus.close()`` is a process kill (subscriptions
  go, handler tasks are cancelled).
- Key-value revisions are one counter per bucket (like a JetStream stream sequence); a delete
  or expiry takes a revision too. `watch` yields the current entries first, then changes;
  ``watch(gone_only=True)`` only deletes and expiry, and puts do not wake it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from apis.bus.base import (
    JSON,
    SENDER_MARK,
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
    SenderRefused,
    signer_of,
)

log = logging.getLogger(__name__)

INBOX_PREFIX = "_INBOX."
_KEY_RE = re.compile(r"[-/_=.a-zA-Z0-9]+")
_BUCKET_RE = re.compile(r"[a-zA-Z0-9_-]+")
_SCALAR_TYPES = frozenset((str, int, float, bool, type(None)))  # immutable: shared
_valid_keys: set[str] = set()  # keys that passed check_key
_MIN_PRUNE_AT = 64  # handler tasks kept before ended ones are first dropped

# `Message` is a frozen dataclass, whose __init__ sets each field through
# object.__setattr__; setting the slots directly builds the same object in half the time.
_new_object = object.__new__
_set_subject = Message.__dict__["subject"].__set__
_set_payload = Message.__dict__["payload"].__set__
_set_headers = Message.__dict__["headers"].__set__
_set_reply = Message.__dict__["reply"].__set__
_set_sender = Message.__dict__["sender"].__set__


def _message(
    subject: str, payload: JSON, headers: Mapping[str, str], reply: str | None, sender: str
) -> Message:
    """``Message(subject, payload, headers, reply, sender)``, faster."""
    message: Message = _new_object(Message)
    _set_subject(message, subject)
    _set_payload(message, payload)
    _set_headers(message, headers)
    _set_reply(message, reply)
    _set_sender(message, sender)
    return message


def copy_json(value: JSON) -> JSON:
    """A deep copy of a JSON value; TypeError if it is not one (as JSON encoding would).

    Tuples become lists, dict keys that are not plain strings become strings (as on the
    wire). Dicts and lists are copied in C (``dict.copy``, ``list``) and only their
    containers are then replaced by copies, which is about twice as fast as building them
    item by item, and (measured, see benchmarks/bus_overhead.py) faster on the units'
    payloads than a JSON, marshal or pickle round trip.
    """
    kind = type(value)
    if kind is dict or kind is ReadOnlyDict:
        copied = value.copy()  # a plain dict, from a ReadOnlyDict too
        for key, item in value.items():
            if type(key) is not str:
                return _copy_via_json(value)
            if type(item) not in _SCALAR_TYPES:
                copied[key] = copy_json(item)
        return copied
    if kind is list or kind is tuple or kind is ReadOnlyList:
        items = list(value)
        for i, item in enumerate(items):
            if type(item) not in _SCALAR_TYPES:
                items[i] = copy_json(item)
        return items
    if kind in _SCALAR_TYPES:
        return value
    return _copy_via_json(value)


def _copy_via_json(value: JSON) -> JSON:
    # Subclasses (str enums, ...) and non-string dict keys: exactly what the wire would carry.
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"payload {value!r:.200} is not a JSON value: {exc}") from None


def _read_only(self: object, *args: object, **kwargs: object) -> Any:
    raise TypeError("a key-value entry's value is read-only (shared by its readers): copy it")


class ReadOnlyDict(dict[str, Any]):
    """A dict of a stored key-value entry: shared by its readers, so not to be changed."""

    __slots__ = ()
    __setitem__ = __delitem__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only


class ReadOnlyList(list[Any]):
    """A list of a stored key-value entry: shared by its readers, so not to be changed."""

    __slots__ = ()
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _read_only
    append = extend = insert = pop = remove = clear = sort = reverse = _read_only


def read_only_json(value: JSON) -> JSON:
    """A deep copy of a JSON value made of `ReadOnlyDict` and `ReadOnlyList` (what a stored
    key-value entry holds); TypeError if it is not a JSON value (as `copy_json`)."""
    kind = type(value)
    if kind is dict or kind is ReadOnlyDict:
        items = []
        for key, item in value.items():
            if type(key) is not str:
                return read_only_json(_copy_via_json(value))
            items.append((key, item if type(item) in _SCALAR_TYPES else read_only_json(item)))
        return ReadOnlyDict(items)
    if kind is list or kind is tuple or kind is ReadOnlyList:
        return ReadOnlyList(
            item if type(item) in _SCALAR_TYPES else read_only_json(item)
            for item in value
        )
    if kind in _SCALAR_TYPES:
        return value
    return read_only_json(_copy_via_json(value))


def check_subject(subject: str) -> None:
    if not subject or " " in subject or ".." in subject or subject[0] == "." or subject[-1] == ".":
        raise ValueError(f"subject {subject!r} (must be dot-separated non-empty tokens)")


_SIGNED_INFIX = f".{SENDER_MARK}."


def check_signer(subject: str, name: str) -> None:
    """A `signed` subject may be published on only by the endpoint it names (what the NATS
    server's permissions enforce there)."""
    signer = signer_of(subject)
    if signer is not None and signer != name:
        raise SenderRefused(f"{name} may not publish on {subject} (signed by {signer})")


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
    value: JSON  # the stored read-only copy (`read_only_json`); None when deleted
    revision: int
    live: bool
    timer: asyncio.TimerHandle | None = None


_END = object()


@dataclass(eq=False, slots=True)
class _Watcher:
    """One `watch` iterator: the changes waiting for it and the future it sleeps on.

    (Lighter than an asyncio.Queue: one put is an append and, when the iterator sleeps, one
    `set_result`.)
    """

    bus: MemoryBus
    prefix: str
    gone_only: bool = False  # only deletes and expiry; not woken by puts
    last_revision: int = 0
    pending: deque[Any] = field(default_factory=deque)
    waiter: asyncio.Future[None] | None = None

    def push(self, item: Any) -> None:
        self.pending.append(item)
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)


class _Bucket:
    """One bucket's state, shared by all endpoints of a hub."""

    def __init__(self, name: str, ttl: float | None) -> None:
        self.name = name
        self.ttl = ttl
        self.revision = 0
        self.slots: dict[str, _Slot] = {}
        self.watchers: list[_Watcher] = []
        self.value_watchers: list[_Watcher] = []  # the watchers that also want puts

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
        if value is None:
            watchers = self.watchers
            if not watchers:
                return
            shared: Change | None = Change(key, None)
        else:
            watchers = self.value_watchers  # gone_only watchers are not even looked at
            if not watchers:
                return
            # Frozen Change and Entry around a read-only value: one for all watchers.
            shared = Change(key, Entry(key, value, revision))
        for watcher in watchers:
            if watcher.bus.kv_reachable and key.startswith(watcher.prefix):
                watcher.last_revision = revision
                watcher.push(shared)

    def add_watcher(self, watcher: _Watcher) -> None:
        self.watchers.append(watcher)
        if not watcher.gone_only:
            self.value_watchers.append(watcher)
        self.catch_up(watcher, initial=True)

    def remove_watcher(self, watcher: _Watcher) -> None:
        if watcher in self.watchers:
            self.watchers.remove(watcher)
        if watcher in self.value_watchers:
            self.value_watchers.remove(watcher)

    def catch_up(self, watcher: _Watcher, initial: bool = False) -> None:
        """Queue what `watcher` missed: the latest state of each key changed since it last saw.

        A `gone_only` watcher gets only the keys whose latest state is deleted (a key
        deleted and written again meanwhile is not gone), and nothing initially.
        """
        if not watcher.bus.kv_reachable:
            return
        if not (initial and watcher.gone_only):
            last, prefix, gone_only = watcher.last_revision, watcher.prefix, watcher.gone_only
            missed = sorted(
                (slot.revision, key)
                for key, slot in self.slots.items()
                if slot.revision > last and key.startswith(prefix) and not (gone_only and slot.live)
            )
            for revision, key in missed:
                slot = self.slots[key]
                if slot.live:
                    watcher.push(Change(key, Entry(key, slot.value, revision)))
                elif not initial:
                    watcher.push(Change(key, None))
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
        handover: bool = False,
    ) -> int:
        """Deliver to every reachable plain subscriber and one member per queue group.

        Returns how many got it, or -1 when nobody subscribes at all (a subscriber cut off
        from the sender still counts as interest, as a NATS server would see it). A payload
        handed over goes uncopied to a subject's only subscriber.
        """
        if _SIGNED_INFIX in subject:
            check_signer(subject, sender.name)
        subs = self._match(subject)
        if not subs:
            return -1
        if not sender._connected:
            return 0
        owned = handover and len(subs) == 1
        zone = sender._zone
        groups: dict[str, list[_Subscription]] | None = None
        delivered = 0
        for sub in subs:
            receiver = sub.bus
            if not receiver._connected or receiver._zone != zone:
                continue
            if sub.queue is None:
                receiver._deliver(sub, subject, payload, headers, reply, sender.name, owned)
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
                sub.bus._deliver(sub, subject, payload, headers, reply, sender.name, owned)
                delivered += 1
        self.delivered += delivered
        return delivered

    def _answer(
        self,
        responder: MemoryBus,
        inbox: str,
        payload: JSON,
        failure: str | None,
        handover: bool = False,
    ) -> None:
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
            pending.future.set_result(
                payload if handover or type(payload) in _SCALAR_TYPES else copy_json(payload)
            )

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
        self._tasks: list[asyncio.Task[None]] = []  # handler tasks, some perhaps ended
        self._prune_at = _MIN_PRUNE_AT
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
        self,
        subject: str,
        payload: JSON = None,
        headers: Mapping[str, str] | None = None,
        *,
        handover: bool = False,
    ) -> None:
        if self._closed:
            self._check_open()
        if subject.startswith(INBOX_PREFIX):
            self.hub._answer(self, subject, payload, None, handover)  # a reply sent by hand
            return
        self.hub._route(self, subject, payload, headers, None, handover)

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
        sender: str,
        owned: bool = False,
    ) -> None:
        if not owned and type(payload) not in _SCALAR_TYPES:
            payload = copy_json(payload)
        message = _message(subject, payload, dict(headers) if headers else {}, reply, sender)
        task = asyncio.get_running_loop().create_task(self._handle(sub, message))
        # No done callback (it would be one more loop event per message): ended tasks are
        # dropped when the list has doubled since the last pruning.
        tasks = self._tasks
        tasks.append(task)
        if len(tasks) > self._prune_at:
            self._prune_tasks()

    def _prune_tasks(self) -> None:
        self._tasks = live = [task for task in self._tasks if not task.done()]
        self._prune_at = max(_MIN_PRUNE_AT, 2 * len(live))

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
        if self._closed:
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
            bucket.remove_watcher(watcher)
            watcher.push(_END)
        self._watchers.clear()
        for inbox, pending in list(self.hub._inboxes.items()):
            if pending.bus is self and not pending.future.done():
                pending.future.set_exception(BusError(f"bus {self.name} closed ({inbox})"))
        current = asyncio.current_task()
        tasks, self._tasks = self._tasks, []
        await cancel_and_wait(task for task in tasks if task is not current and not task.done())
        if self in self.hub.endpoints:
            self.hub.endpoints.remove(self)


class MemoryKeyValue:
    """A bucket seen from one endpoint; implements the `KeyValue` protocol."""

    def __init__(self, bus: MemoryBus, bucket: _Bucket) -> None:
        self._bus = bus
        self._bucket = bucket

    def _reachable(self, key: str | None) -> bool:
        """Check the bus is open and `key` valid; whether the store is reachable.

        (Synchronous: an operation awaits only when it cannot reach the store.)
        """
        bus = self._bus
        if bus._closed:
            bus._check_open()
        if key is not None and key not in _valid_keys:
            check_key(key)
            if len(_valid_keys) >= 10_000:
                _valid_keys.clear()
            _valid_keys.add(key)
        return bus.kv_reachable

    async def get(self, key: str) -> Entry | None:
        if not self._reachable(key):
            await self._bus._unreachable(self._bucket.name)
        slot = self._bucket.live(key)
        if slot is None:
            return None
        return Entry(key, slot.value, slot.revision)

    async def create(self, key: str, value: JSON) -> int:
        if not self._reachable(key):
            await self._bus._unreachable(self._bucket.name)
        if value is None:
            raise ValueError(f"value for {key!r} is None (None marks a deleted key)")
        if self._bucket.live(key) is not None:
            raise KeyExists(f"key {key!r} exists in bucket {self._bucket.name}")
        return self._bucket.write(key, read_only_json(value))

    async def update(self, key: str, value: JSON, revision: int) -> int:
        if not self._reachable(key):
            await self._bus._unreachable(self._bucket.name)
        if value is None:
            raise ValueError(f"value for {key!r} is None (None marks a deleted key)")
        slot = self._bucket.live(key)
        if slot is None or slot.revision != revision:
            latest = None if slot is None else slot.revision
            raise RevisionMismatch(
                f"key {key!r} in bucket {self._bucket.name}: revision {revision} given, "
                f"latest is {latest}"
            )
        return self._bucket.write(key, read_only_json(value))

    async def put(self, key: str, value: JSON) -> int:
        if not self._reachable(key):
            await self._bus._unreachable(self._bucket.name)
        if value is None:
            raise ValueError(f"value for {key!r} is None (None marks a deleted key)")
        return self._bucket.write(key, read_only_json(value))

    async def delete(self, key: str, revision: int | None = None) -> None:
        if not self._reachable(key):
            await self._bus._unreachable(self._bucket.name)
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
        if not self._reachable(None):
            await self._bus._unreachable(self._bucket.name)
        return sorted(
            key for key, slot in self._bucket.slots.items() if slot.live and key.startswith(prefix)
        )

    async def revisions(self, prefix: str = "") -> dict[str, int]:
        if not self._reachable(None):
            await self._bus._unreachable(self._bucket.name)
        return dict(sorted(
            (key, slot.revision)
            for key, slot in self._bucket.slots.items()
            if slot.live and key.startswith(prefix)
        ))

    def watch(self, prefix: str = "", *, gone_only: bool = False) -> AsyncIterator[Change]:
        """Current entries under `prefix` (oldest revision first), then every change.

        With `gone_only`: only deletes and expiry (changes with entry None), nothing for the
        current entries, and puts do not wake the iterator at all.
        The watch starts when `watch` is called, not at the first iteration. It ends when the
        bus closes; leaving the loop early (break) also ends it.
        """
        self._bus._check_open()
        watcher = _Watcher(self._bus, prefix, gone_only)
        self._bus._watchers.append((self._bucket, watcher))
        self._bucket.add_watcher(watcher)
        return self._changes(watcher)

    async def _changes(self, watcher: _Watcher) -> AsyncIterator[Change]:
        pending = watcher.pending
        try:
            while True:
                if not pending:
                    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                    watcher.waiter = waiter
                    await waiter
                    continue
                change = pending.popleft()
                if change is _END:
                    return
                yield change
        finally:
            watcher.waiter = None
            self._bucket.remove_watcher(watcher)
            if (self._bucket, watcher) in self._bus._watchers:
                self._bus._watchers.remove((self._bucket, watcher))
            self._bucket.prune()
