"""The bus over NATS: core NATS for messages, JetStream key-value buckets for shared state.

    bus = await NatsBus.connect(["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"], name="E001")

Semantics match `apis.bus.memory` (see its module docstring): payloads travel as JSON; each
delivered message is handled in its own task owned by the bus; a handler that raises answers
a request with an empty reply carrying the ``APIS-Error`` header, which the requester turns
into `RemoteFailure`; "no responders" from the server becomes `NoHandlers`.

Key-value: a bucket is a JetStream KV bucket (history 1, `replicas` copies, ``max_age`` =
`ttl`, with server-placed delete markers so that watchers see expiry). The revision is the
stream sequence. Writes are compare-and-set through ``Nats-Expected-Last-Subject-Sequence``.

Listings (`keys`, `revisions`) make no JetStream consumer: they read the bucket's stream with
batched direct gets (one request, answered by any current replica, a page of messages each;
``allow_direct`` is set on every bucket opened). On a replicated bucket a follower may lag,
so the listing first asks the stream leader for its newest message and takes the answer only
from a replica that has it: what was written before the listing began is in it. Watchers
are ordered consumers; a stopped watcher's consumer is deleted at once, and one left behind
(a process killed, an ordered consumer replaced after a gap) is removed by the server after
`WATCH_INACTIVE_S` without interest. A unit therefore holds a few consumers (one per watch)
however long it runs; every listing used to leave one behind for five minutes, and four units
with 1 s periods reached the server's consumer limit after three minutes.

Failover: the client reconnects forever. A key-value operation that times out (or finds no
stream leader) during a server failover is retried a bounded number of times:

- reads (`get`, `keys`, opening a bucket) are simply repeated;
- writes are never blindly repeated, because a write whose acknowledgement was lost may have
  landed, and repeating it would then fail its own compare-and-set (a `create` would report
  `KeyExists` for its own value). Every write carries a unique ``Nats-Msg-Id``. After a
  timeout we re-read the key: if its latest message carries our id, the write landed and we
  return its revision. Otherwise we send the very same message again (same id, same expected
  revision): if the first one landed after all (and was overwritten since), JetStream's
  duplicate detection answers with the original revision instead of storing it twice;
  if it never landed, the expected revision decides as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as _NatsSub
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.kv import KeyValue as _NatsKV
from nats.nuid import NUID

from apis.bus.base import (
    JSON,
    BusError,
    Change,
    Entry,
    Handler,
    KeyExists,
    Message,
    NoHandlers,
    PermissionDenied,
    RemoteFailure,
    RequestTimeout,
    RevisionMismatch,
    signer_of,
)
from apis.bus.memory import cancel_and_wait, check_bucket, check_key

log = logging.getLogger(__name__)

T = TypeVar("T")

ERROR_HEADER = "APIS-Error"
DEFAULT_SERVER = "nats://127.0.0.1:4222"

_MSG_ID = "Nats-Msg-Id"
_EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"
_KV_OPERATION = "KV-Operation"
_MARKER_REASON = "Nats-Marker-Reason"  # a server-placed marker (expiry by max_age, ...)
_DELETE_OPERATIONS = ("DEL", "PURGE")
_VIOLATION = re.compile(r'permissions violation for publish to "([^"]+)"', re.IGNORECASE)
NO_RESPONDERS_PAUSE_S = 0.05  # before the one second try of a request nobody answered
_WRONG_LAST_SEQUENCE = (10071, 10164)  # JetStream error codes of a failed compare-and-set
WATCH_INACTIVE_S = 30.0  # a watcher's consumer without interest is removed by the server
CONSUMER_DELETE_TIMEOUT_S = 1.0  # deleting a stopped watcher's consumer (else it ages out)
LIST_PAGE = 1024  # messages per batched direct get of a listing
LIST_FRESH_ATTEMPTS = 6  # replicas asked for a listing that has the leader's last write
_DIRECT_GET = "$JS.API.DIRECT.GET."
_STATUS = "Status"
_SEQUENCE = "Nats-Sequence"
_SUBJECT = "Nats-Subject"
_NUM_PENDING = "Nats-Num-Pending"
_LAST_SEQUENCE = "Nats-Last-Sequence"

# Errors after which the outcome is unknown and the server may be failing over.
_TRANSIENT: tuple[type[BaseException], ...] = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    asyncio.TimeoutError,
)


def encode(payload: JSON) -> bytes:
    try:
        return json.dumps(payload, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise TypeError(f"payload {payload!r:.200} is not a JSON value: {exc}") from None


def decode(data: bytes) -> JSON:
    return json.loads(data) if data else None


def uses_tls(nc: Client) -> bool:
    """Whether the connection's socket speaks TLS now."""
    transport = getattr(nc, "_transport", None)
    writer = getattr(transport, "_io_writer", None)
    get_extra_info = getattr(writer, "get_extra_info", None)
    return get_extra_info is not None and get_extra_info("ssl_object") is not None


def _header_text(text: str) -> str:
    # Header values end at the line; keep the message on one line.
    return " ".join(text.split()) or "failure"


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, _TRANSIENT):
        return True
    # 503: JetStream (or the stream's leader) is not available right now.
    return isinstance(exc, nats.js.errors.APIError) and exc.code == 503


def _is_wrong_last_sequence(exc: BaseException) -> bool:
    return isinstance(exc, nats.js.errors.APIError) and exc.err_code in _WRONG_LAST_SEQUENCE


class _Conflict(Exception):
    """The expected revision was not the key's latest."""


class _NatsSubscription:
    def __init__(self, sub: _NatsSub) -> None:
        self._sub = sub

    async def unsubscribe(self) -> None:
        try:
            await self._sub.unsubscribe()
        except nats.errors.Error as exc:
            log.debug("unsubscribe %s: %r", self._sub.subject, exc)


class NatsBus:
    """The `Bus` protocol over a NATS connection; make one with `NatsBus.connect`."""

    def __init__(
        self,
        nc: Client,
        *,
        name: str,
        replicas: int | None,
        kv_timeout: float,
        kv_attempts: int,
        refused: dict[str, float] | None = None,
    ) -> None:
        self._nc = nc
        self.name = name
        self._js: JetStreamContext = nc.jetstream(timeout=kv_timeout)
        self._replicas = replicas
        self.kv_timeout = kv_timeout
        self.kv_attempts = kv_attempts
        self._tasks: set[asyncio.Task[None]] = set()
        self._watchers: set[_NatsKV.KeyWatcher] = set()
        self._closed = False
        self._nuid = NUID()
        # subject -> loop time the server last refused our publishing on it (filled by the
        # connection's error callback)
        self._refused: dict[str, float] = refused if refused is not None else {}
        # One inbox subscription for every multi-message reply (batched direct gets).
        self._gather_sub: _NatsSub | None = None
        self._gather_prefix = ""
        self._gather_lock = asyncio.Lock()
        self._gathering: dict[str, asyncio.Queue[Msg]] = {}

    @classmethod
    async def connect(
        cls,
        servers: str | Sequence[str] = DEFAULT_SERVER,
        *,
        name: str = "apis",
        tls: ssl.SSLContext | None = None,
        tls_hostname: str | None = None,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        creds: str | None = None,
        replicas: int | None = None,
        connect_timeout: float = 5.0,
        reconnect_wait: float = 1.0,
        ping_interval: float = 10.0,
        kv_timeout: float = 3.0,
        kv_attempts: int = 6,
        connect_attempts: int = 3,
    ) -> NatsBus:
        """Connect to a NATS server or cluster; reconnects forever once connected.

        With `tls` the connection must be TLS: nats-py speaks TLS only when the server
        asks for it, so a plain server (or an impostor) would get a plain connection. That
        is refused here (`BusError`), and a reconnect that lands on a plain connection is
        closed at once.

        `replicas`: copies of each new key-value bucket; default min(3, servers in the
        cluster as the server reports them). `kv_timeout` bounds one key-value operation,
        `kv_attempts` how often it is tried during a failover (a request in flight when a
        server dies is lost, so `kv_timeout` is most of the failover time; retries are safe,
        so a short timeout costs little). `creds` is a ``.creds`` file.
        The first connection gives up (`BusError`) after `connect_attempts` rounds.
        """
        urls = [servers] if isinstance(servers, str) else list(servers)

        refused: dict[str, float] = {}

        async def on_error(exc: Exception) -> None:
            log.warning("%s: nats: %r", name, exc)
            violation = _VIOLATION.search(str(exc))
            if violation is not None:  # the server names the subject (nats-py lowercases it)
                refused[violation.group(1).lower()] = asyncio.get_running_loop().time()

        async def on_disconnected() -> None:
            log.info("%s: nats disconnected", name)

        async def on_reconnected() -> None:
            log.info("%s: nats reconnected to %s", name, nc.connected_url)
            if tls is not None and not uses_tls(nc):
                log.error("%s: reconnected without TLS to %s: closing", name, nc.connected_url)
                await nc.close()

        options: dict[str, Any] = {}
        if tls is not None:
            options["tls"] = tls
        if tls_hostname is not None:
            options["tls_hostname"] = tls_hostname
        if user is not None:
            options["user"] = user
            options["password"] = password
        if token is not None:
            options["token"] = token
        if creds is not None:
            options["user_credentials"] = creds
        # nats-py can wait forever on a first connection whose TLS handshake failed (a
        # nats:// URL to a server that requires TLS): bound it by the rounds it may take.
        limit = connect_attempts * len(urls) * (connect_timeout + reconnect_wait) + connect_timeout
        connection: dict[str, Any] = {
            "name": name,
            "allow_reconnect": True,
            # A first connection that fails (wrong password, no server) is reported after a
            # few rounds over the servers; once connected, reconnect forever (below).
            "max_reconnect_attempts": connect_attempts,
            "reconnect_time_wait": reconnect_wait,
            "connect_timeout": connect_timeout,
            "ping_interval": ping_interval,
            "max_outstanding_pings": 3,
            "error_cb": on_error,
            "disconnected_cb": on_disconnected,
            "reconnected_cb": on_reconnected,
        }
        nc = Client()
        try:
            await asyncio.wait_for(nc.connect(urls, **{**connection, **options}), limit)
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            with contextlib.suppress(nats.errors.Error, OSError):
                await nc.close()
            raise BusError(f"{name}: cannot connect to NATS at {', '.join(urls)}: {exc!r}") from exc
        if tls is not None and not uses_tls(nc):
            url = nc.connected_url.geturl() if nc.connected_url else ", ".join(urls)
            await nc.close()
            raise BusError(
                f"{name}: plain connection to {url} refused: TLS is configured but the server "
                "did not use it"
            )
        nc.options["max_reconnect_attempts"] = -1  # a unit outlives server restarts
        return cls(nc, name=name, replicas=replicas, kv_timeout=kv_timeout,
                   kv_attempts=kv_attempts, refused=refused)

    def __repr__(self) -> str:
        return f"<NatsBus {self.name} {self._nc.connected_url}>"

    @property
    def client(self) -> Client:
        """The nats-py connection (for diagnostics)."""
        return self._nc

    def _check_open(self) -> None:
        if self._closed:
            raise BusError(f"bus {self.name} is closed")

    def _check_refused(self, subject: str, since: float) -> None:
        """PermissionDenied if the server refused a publish on `subject` since `since`
        (it says so asynchronously; a refused request or write would only time out)."""
        at = self._refused.get(subject.lower())
        if at is not None and at >= since:
            raise PermissionDenied(
                f"{self.name} may not publish on {subject} (refused by the server)"
            )

    # -- messages ---------------------------------------------------------------------------

    async def publish(
        self,
        subject: str,
        payload: JSON = None,
        headers: Mapping[str, str] | None = None,
        *,
        handover: bool = False,  # encoded anyway: nothing is shared over the wire
    ) -> None:
        self._check_open()
        data = encode(payload)
        try:
            await self._nc.publish(subject, data, headers=dict(headers) if headers else None)
        except nats.errors.Error as exc:
            raise BusError(f"publish on {subject}: {exc!r}") from exc

    async def subscribe(
        self, subject: str, handler: Handler, queue: str | None = None
    ) -> _NatsSubscription:
        self._check_open()

        async def deliver(msg: Msg) -> None:
            task = asyncio.get_running_loop().create_task(self._handle(handler, msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        try:
            sub = await self._nc.subscribe(subject, queue=queue or "", cb=deliver)
            await self._nc.flush(timeout=max(1, int(self.kv_timeout)))  # server knows it now
        except nats.errors.Error as exc:
            raise BusError(f"subscribe to {subject}: {exc!r}") from exc
        return _NatsSubscription(sub)

    async def _handle(self, handler: Handler, msg: Msg) -> None:
        reply = msg.reply or None
        try:
            # The server let only the identity a signed subject names publish on it.
            message = Message(
                msg.subject, decode(msg.data), dict(msg.headers or {}), reply,
                signer_of(msg.subject),
            )
            result = await handler(message)
            data = encode(result) if reply is not None else b""
        except Exception as exc:
            if reply is None:
                log.exception("%s: handler of %s failed", self.name, msg.subject)
                return
            log.debug("%s: handler of %s failed: %r", self.name, msg.subject, exc)
            failure = _header_text(str(exc) or type(exc).__name__)
            await self._reply(reply, b"", {ERROR_HEADER: failure})
            return
        if reply is not None:
            await self._reply(reply, data, None)

    async def _reply(self, reply: str, data: bytes, headers: dict[str, str] | None) -> None:
        try:
            await self._nc.publish(reply, data, headers=headers)
        except nats.errors.Error as exc:
            log.warning("%s: reply to %s lost: %r", self.name, reply, exc)

    async def request(
        self,
        subject: str,
        payload: JSON = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
    ) -> JSON:
        self._check_open()
        data = encode(payload)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            try:
                msg = await self._nc.request(
                    subject, data, timeout=timeout, headers=dict(headers) if headers else None
                )
            except nats.errors.NoRespondersError:
                # Nobody got it, so it can be sent again. A subscription made elsewhere can
                # reach this server a moment after its subscribe returned (interest travels
                # between the servers of a cluster; seen once on one loaded server): ask
                # once more before saying that nobody listens.
                left = deadline - loop.time() - NO_RESPONDERS_PAUSE_S
                if left <= 0:
                    raise
                await asyncio.sleep(NO_RESPONDERS_PAUSE_S)
                msg = await self._nc.request(
                    subject, data, timeout=left, headers=dict(headers) if headers else None
                )
        except nats.errors.NoRespondersError:
            raise NoHandlers(f"no handlers for {subject}") from None
        except nats.errors.TimeoutError:
            self._check_refused(subject, deadline - timeout)
            raise RequestTimeout(f"no reply on {subject} within {timeout} s") from None
        except nats.errors.Error as exc:
            raise BusError(f"request on {subject}: {exc!r}") from exc
        if msg.headers and ERROR_HEADER in msg.headers:
            raise RemoteFailure(msg.headers[ERROR_HEADER])
        return decode(msg.data)

    # -- key-value --------------------------------------------------------------------------

    async def _retry(self, what: str, operation: Callable[[], Awaitable[T]]) -> T:
        """Run an idempotent operation, repeating it after transient failures."""
        delay = 0.25
        for attempt in range(1, self.kv_attempts + 1):
            self._check_open()
            try:
                return await operation()
            except Exception as exc:
                if not _is_transient(exc):
                    raise
                if attempt == self.kv_attempts:
                    raise RequestTimeout(
                        f"{self.name}: {what} failed {attempt} times, last: {exc!r}"
                    ) from exc
                log.info("%s: %s: %r, attempt %d, retrying", self.name, what, exc, attempt)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")

    async def _gather(self, subject: str, request: bytes) -> list[Msg]:
        """Send `request` to `subject` and collect the replies up to the closing status
        message (a batched direct get answers with a message per entry, then one with a
        ``Status`` header); that one is last in the list."""
        async with self._gather_lock:
            if self._gather_sub is None:
                self._gather_prefix = self._nc.new_inbox() + "."

                async def deliver(msg: Msg) -> None:
                    queue = self._gathering.get(msg.subject[len(self._gather_prefix):])
                    if queue is not None:
                        queue.put_nowait(msg)

                self._gather_sub = await self._nc.subscribe(self._gather_prefix + "*", cb=deliver)
        token = self._nuid.next().decode()
        queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._gathering[token] = queue
        began = asyncio.get_running_loop().time()
        try:
            await self._nc.publish(subject, request, reply=self._gather_prefix + token)
            replies = []
            async with asyncio.timeout(self.kv_timeout):
                while True:
                    msg = await queue.get()
                    replies.append(msg)
                    headers = msg.headers or {}
                    if _STATUS in headers and _SEQUENCE not in headers:
                        return replies
        except TimeoutError:
            self._check_refused(subject, began)  # not ours to read: no retry
            raise
        finally:
            del self._gathering[token]

    def _cluster_size(self) -> int:
        info = self._nc._server_info  # the INFO the server sent: other servers' client URLs
        own = (
            f"{self._nc.connected_url.hostname}:{self._nc.connected_url.port}"
            if (self._nc.connected_url)
            else ""
        )
        urls = set(info.get("connect_urls") or []) | {own}
        return max(1, len(urls))

    async def kv(self, bucket: str, ttl: float | None = None) -> NatsKeyValue:
        self._check_open()
        check_bucket(bucket)
        if ttl is not None and ttl <= 0:
            raise ValueError(f"ttl = {ttl} for bucket {bucket!r} (must be > 0 or None)")
        stream = f"KV_{bucket}"
        replicas = self._replicas or min(3, self._cluster_size())

        async def open_bucket() -> tuple[_NatsKV, bool, int]:
            try:
                info = await self._js.stream_info(stream)
            except nats.js.errors.NotFoundError:
                try:
                    handle = await self._js.create_key_value(
                        bucket=bucket,
                        history=1,
                        ttl=ttl,
                        replicas=replicas,
                        direct=True,  # listings read it without a consumer
                        # the server marks expiry by max_age with a delete marker (kept
                        # this long), so watchers see it
                        limit_marker_ttl=max(1.0, ttl) if ttl is not None else None,
                    )
                    return handle, True, replicas
                except nats.js.errors.BadRequestError:
                    info = await self._js.stream_info(stream)  # created meanwhile, differently
            existing = info.config.max_age or None
            if (existing is None) != (ttl is None) or (
                existing is not None and ttl is not None and abs(existing - ttl) > 1e-6
            ):
                raise BusError(f"bucket {bucket!r} exists with ttl = {existing} (asked for {ttl})")
            direct = bool(info.config.allow_direct)
            if not direct:  # made by an older version or another tool
                info.config.allow_direct = True
                try:  # once: a refused publish (permissions) shows only as a timeout
                    await self._js.update_stream(info.config)
                    direct = True
                except (nats.errors.Error, TimeoutError) as exc:
                    log.warning(
                        "%s: bucket %s: cannot allow direct gets (%r); its listings use "
                        "consumers (deleted after each)", self.name, bucket, exc,
                    )
            return await self._js.key_value(bucket), direct, info.config.num_replicas or 1

        handle, direct, stream_replicas = await self._retry(f"open bucket {bucket}", open_bucket)
        return NatsKeyValue(self, handle, bucket, direct=direct, replicas=stream_replicas)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for watcher in list(self._watchers):
            await _stop(self._js, watcher)
        self._watchers.clear()
        if self._gather_sub is not None:
            try:
                await self._gather_sub.unsubscribe()
            except nats.errors.Error as exc:
                log.debug("%s: unsubscribing the gather inbox: %r", self.name, exc)
        current = asyncio.current_task()
        await cancel_and_wait(task for task in self._tasks if task is not current)
        try:
            await self._nc.close()
        except (nats.errors.Error, OSError) as exc:
            # The servers are gone: flushing what was pending fails (ConnectionResetError);
            # the connection is closed all the same, and a shutdown says so in one line.
            log.debug("%s: closing: %r", self.name, exc)


async def _stop(js: JetStreamContext, watcher: _NatsKV.KeyWatcher) -> None:
    """Unsubscribe, then delete the watcher's consumer (nats-py leaves it to the server,
    which would keep it until its inactivity threshold)."""
    sub = watcher._sub
    try:
        await watcher.stop()  # type: ignore[no-untyped-call]
    except (nats.errors.Error, AttributeError) as exc:  # AttributeError: never subscribed
        log.debug("stopping a watcher: %r", exc)
    stream = getattr(sub, "_stream", None)
    consumer = getattr(sub, "_consumer", None)  # the present one: an ordered reset renames it
    if not isinstance(stream, str) or not isinstance(consumer, str) or not js._nc.is_connected:
        return  # the server removes it after WATCH_INACTIVE_S
    try:
        await asyncio.wait_for(js.delete_consumer(stream, consumer), CONSUMER_DELETE_TIMEOUT_S)
    except (nats.errors.Error, TimeoutError) as exc:
        log.debug("deleting consumer %s of %s: %r", consumer, stream, exc)


def _deleted(msg: RawStreamMsg) -> bool:
    return _marks_deleted(msg.headers or {})


def _marks_deleted(headers: Mapping[str, str]) -> bool:
    return headers.get(_KV_OPERATION) in _DELETE_OPERATIONS or _MARKER_REASON in headers


def _subject_filter(prefix: str) -> str:
    """The server-side filter for keys under `prefix`: its whole tokens, then ``>``."""
    cut = prefix.rfind(".")
    return prefix[: cut + 1] + ">" if cut >= 0 else ">"


class NatsKeyValue:
    """A JetStream key-value bucket; implements the `KeyValue` protocol."""

    def __init__(
        self, bus: NatsBus, handle: _NatsKV, bucket: str, *, direct: bool, replicas: int
    ) -> None:
        self._bus = bus
        self._js = bus._js
        self._handle = handle
        self.bucket = bucket
        self._stream = f"KV_{bucket}"
        self._prefix = f"$KV.{bucket}."
        self._direct = direct  # listings by batched direct gets (else by a consumer)
        self._replicas = replicas  # > 1: a direct get may come from a lagging follower

    async def _latest(self, key: str) -> RawStreamMsg | None:
        """The key's last message (a value or a delete marker), read from the stream leader."""
        try:
            return await self._js.get_msg(self._stream, subject=self._prefix + key)
        except nats.js.errors.NotFoundError:
            return None

    async def _read(self, key: str) -> RawStreamMsg | None:
        return await self._bus._retry(f"get {self.bucket}/{key}", lambda: self._latest(key))

    async def get(self, key: str) -> Entry | None:
        self._bus._check_open()
        check_key(key)
        msg = await self._read(key)
        if msg is None or _deleted(msg) or msg.seq is None:
            return None
        return Entry(key, decode(msg.data or b""), msg.seq)

    async def _write(self, key: str, data: bytes, headers: dict[str, str]) -> int:
        """Publish one write; return its revision; `_Conflict` if the CAS header failed.

        On a timeout the outcome is unknown: see the module docstring for why re-reading and
        re-sending the same message (same ``Nats-Msg-Id``) is safe while a blind retry is not.
        """
        self._bus._check_open()
        msg_id = self._bus._nuid.next().decode()
        headers = {**headers, _MSG_ID: msg_id}
        subject = self._prefix + key
        delay = 0.25
        began = asyncio.get_running_loop().time()
        for attempt in range(1, self._bus.kv_attempts + 1):
            try:
                ack = await self._js.publish(subject, data, headers=dict(headers))
                return ack.seq
            except Exception as exc:
                if _is_wrong_last_sequence(exc):
                    raise _Conflict(str(exc)) from exc
                if not _is_transient(exc):
                    raise
                self._bus._check_refused(subject, began)  # not ours to write: no retry
                failure = exc
            log.info(
                "%s: write %s/%s: %r (attempt %d)",
                self._bus.name,
                self.bucket,
                key,
                failure,
                attempt,
            )
            try:
                latest = await self._latest(key)
            except Exception as exc:
                if not _is_transient(exc):
                    raise
                latest = None
            if latest is not None and (latest.headers or {}).get(_MSG_ID) == msg_id:
                assert latest.seq is not None
                return latest.seq  # it landed; only the acknowledgement was lost
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        raise RequestTimeout(
            f"{self._bus.name}: write of {self.bucket}/{key} unconfirmed after "
            f"{self._bus.kv_attempts} attempts (last: {failure!r})"
        )

    async def create(self, key: str, value: JSON) -> int:
        check_key(key)
        if value is None:
            raise ValueError(f"value for {key!r} is None (None marks a deleted key)")
        data = encode(value)
        expected = 0
        for _ in range(5):
            try:
                return await self._write(key, data, {_EXPECTED_LAST: str(expected)})
            except _Conflict:
                latest = await self._read(key)
                if latest is None:
                    expected = 0  # a delete marker aged out meanwhile
                elif _deleted(latest) and latest.seq is not None:
                    expected = latest.seq  # creating over a deleted or expired key
                else:
                    break
        raise KeyExists(f"key {key!r} exists in bucket {self.bucket}")

    async def update(self, key: str, value: JSON, revision: int) -> int:
        check_key(key)
        if value is None:
            raise ValueError(f"value for {key!r} is None (None marks a deleted key)")
        try:
            return await self._write(key, encode(value), {_EXPECTED_LAST: str(revision)})
        except _Conflict:
            raise RevisionMismatch(
                f"key {key!r} in bucket {self.bucket}: revision {revision} is not the latest"
            ) from None

    async def put(self, key: str, value: JSON) -> int:
        check_key(key)
        if value is None:
            raise ValueError(f"value for {key!r} is None (None marks a deleted key)")
        return await self._write(key, encode(value), {})

    async def delete(self, key: str, revision: int | None = None) -> None:
        check_key(key)
        headers = {_KV_OPERATION: "DEL"}
        if revision is not None:
            headers[_EXPECTED_LAST] = str(revision)
        try:
            await self._write(key, b"", headers)
        except _Conflict:
            raise RevisionMismatch(
                f"delete {key!r} in bucket {self.bucket}: revision {revision} is not the latest"
            ) from None

    async def keys(self, prefix: str = "") -> list[str]:
        return list(await self.revisions(prefix))

    async def revisions(self, prefix: str = "") -> dict[str, int]:
        self._bus._check_open()
        found = await self._bus._retry(f"list {self.bucket}", lambda: self._list(prefix))
        return {key: found[key] for key in sorted(found) if key.startswith(prefix)}

    async def _list(self, prefix: str) -> dict[str, int]:
        """The latest revision of every live key (some outside `prefix` too)."""
        if not self._direct:
            return await self._list_by_consumer(_subject_filter(prefix))
        if self._replicas <= 1:  # the only replica answers: the leader
            return (await self._scan())[0]
        try:  # the newest message, from the leader: a fresh replica has it too
            newest = await self._js.get_msg(self._stream, subject=self._prefix + ">")
        except nats.js.errors.NotFoundError:
            return {}  # nothing in the bucket
        wanted = newest.seq or 0
        delay = 0.01
        for _ in range(LIST_FRESH_ATTEMPTS):
            found, last = await self._scan()
            if last >= wanted:
                return found
            await asyncio.sleep(delay)  # a follower behind: it catches up, or another answers
            delay *= 2
        log.info("%s: listing %s: replicas behind the leader's %d; by a consumer",
                 self._bus.name, self.bucket, wanted)
        return await self._list_by_consumer(_subject_filter(prefix))

    async def _scan(self) -> tuple[dict[str, int], int]:
        """Every live key with its revision, and the highest sequence seen, read page by page
        with batched direct gets over the whole bucket (its last message, the write that
        made the highest sequence, is then in the answer of a replica that has it).

        The stream holds each key's latest message (history 1) in sequence order; a key
        rewritten meanwhile moves on to a later page, so none is missed. With more history
        the latest message of a key is the one with the highest sequence.
        """
        live: dict[str, int] = {}
        gone: dict[str, int] = {}
        start, last = 1, 0
        subject = _DIRECT_GET + self._stream
        while True:
            request = {"seq": start, "next_by_subj": self._prefix + ">", "batch": LIST_PAGE}
            *entries, end = await self._bus._gather(subject, json.dumps(request).encode())
            status = (end.headers or {}).get(_STATUS)
            if status == "404":  # nothing (more) from `start` on
                break
            if status == "503":
                raise nats.errors.NoRespondersError  # no current replica right now
            if status != "204":
                raise BusError(
                    f"{self._bus.name}: listing {self.bucket}: direct get answered {status} "
                    f"{(end.headers or {}).get('Description', '')}"
                )
            for msg in entries:
                headers = msg.headers or {}
                key = headers[_SUBJECT][len(self._prefix):]
                seq = int(headers[_SEQUENCE])
                last = max(last, seq)
                if seq < max(live.get(key, 0), gone.get(key, 0)):
                    continue
                if _marks_deleted(headers):
                    live.pop(key, None)
                    gone[key] = seq
                else:
                    gone.pop(key, None)
                    live[key] = seq
            end_headers = end.headers or {}
            if int(end_headers.get(_NUM_PENDING, "0")) == 0:
                break
            start = int(end_headers.get(_LAST_SEQUENCE, str(last))) + 1
        return live, last

    async def _list_by_consumer(self, subject_filter: str) -> dict[str, int]:
        """The listing through an ordered consumer (headers only), deleted afterwards.

        nats-py's end-of-initial-values marker (None) is not trusted: it races the consumer's
        info against the delivery (messages already sent but not yet handed to the callback
        count neither as pending nor as delivered), so it can come before every entry. The
        listing ends instead at the entry with nothing pending after it, or at once when the
        server says it has delivered nothing and has nothing pending.
        """
        watcher = await self._handle.watch(
            subject_filter, meta_only=True, inactive_threshold=WATCH_INACTIVE_S
        )
        found: dict[str, int] = {}
        try:
            sub = watcher._sub
            assert sub is not None  # subscribed by watch()
            info = await sub.consumer_info()
            if not info.num_pending and not (info.delivered and info.delivered.consumer_seq):
                return found  # nothing under the filter
            while True:
                update = await watcher.updates(  # type: ignore[no-untyped-call]
                    timeout=self._bus.kv_timeout
                )
                if update is None:  # the marker above, possibly early
                    continue
                if update.operation in _DELETE_OPERATIONS:
                    found.pop(update.key, None)
                else:
                    found[update.key] = update.revision or 0
                if update.delta == 0:  # every key's latest has been delivered
                    return found
        finally:
            await _stop(self._js, watcher)

    def watch(self, prefix: str = "", *, gone_only: bool = False) -> AsyncIterator[Change]:
        """Current entries under `prefix` (oldest revision first), then every change.

        With `gone_only`: only deletes and expiry (changes with entry None), nothing for the
        current entries. The server still sends every change (without its value); the
        others are dropped here.
        The watch starts at the first iteration (the subscription needs the server).
        """
        self._bus._check_open()
        return self._changes(prefix, gone_only)

    async def _changes(self, prefix: str, gone_only: bool) -> AsyncIterator[Change]:
        # Filter on the server by whole tokens, then by the exact prefix here.
        subject_filter = _subject_filter(prefix)
        watcher = await self._bus._retry(
            f"watch {self.bucket}",
            # gone_only needs no values: headers only (the operation is in a header)
            lambda: self._handle.watch(
                subject_filter, meta_only=gone_only, inactive_threshold=WATCH_INACTIVE_S
            ),
        )
        self._bus._watchers.add(watcher)
        initial = True
        try:
            async for update in watcher:
                if update is None:  # the current entries have all been delivered
                    initial = False
                    continue
                if not update.key.startswith(prefix):
                    continue
                if update.operation in _DELETE_OPERATIONS:
                    if not initial:
                        yield Change(update.key, None)
                elif not gone_only:
                    value = decode(update.value or b"")
                    yield Change(update.key, Entry(update.key, value, update.revision or 0))
        finally:
            if watcher in self._bus._watchers:
                self._bus._watchers.discard(watcher)
                await _stop(self._js, watcher)
