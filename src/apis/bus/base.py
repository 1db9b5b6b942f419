"""The Bus protocol (see DESIGN.md section 3).

Payloads are JSON values (dict, list, str, int, float, bool, None); headers are strings.
Subjects are dot-separated strings like ``apis.E001.Controller.data``.

A message says who sent it (`Message.sender`) only as far as the bus can vouch for it: a
subject made with `signed` ends in ``from.<sender>``, and publishing on it as anybody else
is refused (the in-memory bus checks the endpoint's name, NATS the user's publish
permissions, see `apis.bus.security`), so a receiver learns an authenticated identity
instead of a claim in the headers or the payload.

The key-value store holds the cluster's shared state: the Grid Master lock (whose revision is
the fencing token), the deal registry, the global operation mode, the cluster policy.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

JSON = Any


class BusError(Exception):
    """Base of bus failures."""


class NoHandlers(BusError):
    """Nobody listens on the subject."""


class RequestTimeout(BusError):
    """No reply within the timeout."""


class RemoteFailure(BusError):
    """The handler replied with a failure (it raised); the message says why."""


class KeyExists(BusError):
    """`create` found the key already present."""


class RevisionMismatch(BusError):
    """`update` or `delete` named a revision that is no longer the key's latest."""


SENDER_MARK = "from"


def signed(subject: str, sender: str) -> str:
    """`subject` with the sender's identity as its last token (``<subject>.from.<sender>``);
    ``sender="*"`` makes the pattern a receiver subscribes to."""
    return f"{subject}.{SENDER_MARK}.{sender}"


def signer_of(subject: str) -> str | None:
    """The identity a `signed` subject names, else None."""
    head, _, sender = subject.rpartition(".")
    if not sender or not head.endswith("." + SENDER_MARK) or sender in ("*", ">"):
        return None
    return sender


class PermissionDenied(BusError):
    """The bus refused to carry a message: this client may not publish on the subject."""


class SenderRefused(PermissionDenied):
    """Publishing on a `signed` subject that names somebody else."""


@dataclass(frozen=True, slots=True)
class Message:
    subject: str
    payload: JSON
    headers: Mapping[str, str] = field(default_factory=dict)
    reply: str | None = None  # set when the sender waits for a reply
    # Who published it, as the bus vouches for it (not what the message says): on a `signed`
    # subject, always that subject's identity; elsewhere the endpoint's name on the
    # in-memory bus and None over NATS.
    sender: str | None = None


# A handler returns the reply payload (ignored for published messages). Raising an exception
# sends a RemoteFailure to a requester.
Handler = Callable[[Message], Awaitable[JSON]]


class Subscription(Protocol):
    async def unsubscribe(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Entry:
    """A key-value entry. Its value is a snapshot to read, not to edit: the in-memory bus
    shares one read-only copy among all readers (copy it to change it)."""

    key: str
    value: JSON
    revision: int


@dataclass(frozen=True, slots=True)
class Change:
    """A watch event: `entry` is None when the key was deleted or expired."""

    key: str
    entry: Entry | None


class KeyValue(Protocol):
    async def get(self, key: str) -> Entry | None: ...

    async def create(self, key: str, value: JSON) -> int:
        """Store only if absent (or deleted/expired); return the revision, else KeyExists."""
        ...

    async def update(self, key: str, value: JSON, revision: int) -> int:
        """Compare-and-set: store only if `revision` is the key's latest, else RevisionMismatch."""
        ...

    async def put(self, key: str, value: JSON) -> int: ...

    async def delete(self, key: str, revision: int | None = None) -> None: ...

    async def keys(self, prefix: str = "") -> list[str]: ...

    async def revisions(self, prefix: str = "") -> dict[str, int]:
        """The latest revision of every live key under `prefix`, by key in sorted order
        (what `keys` lists, with revisions: a reader can then `get` only what changed)."""
        ...

    def watch(self, prefix: str = "", *, gone_only: bool = False) -> AsyncIterator[Change]:
        """The entries under `prefix` now (oldest revision first), then every change.

        Deletes and TTL expiry arrive as a Change with entry None. Ends when the bus closes.

        With `gone_only`, only those: no current entries and no puts, just a Change with entry
        None for each key under `prefix` that is deleted or expires (for a watcher that only
        needs to learn that a lease is gone; an implementation may then skip the work puts
        would cost it). A watcher that was cut off learns, when it is back, of the keys whose
        latest state is deleted; a key deleted and written again meanwhile is not gone.
        """
        ...


class Bus(Protocol):
    async def publish(
        self,
        subject: str,
        payload: JSON = None,
        headers: Mapping[str, str] | None = None,
        *,
        handover: bool = False,
    ) -> None:
        """Send to every subscriber (none is fine).

        With `handover` the caller gives the payload away: a JSON value it built itself (plain
        dicts with string keys, lists, str, int, float, bool, None, no tuples and nothing
        shared with anything it keeps) that it will never read or change again. A bus may
        then hand it to a receiver as it is, without a copy (the in-memory bus does when the
        subject has a single subscriber; over NATS it is encoded as always).
        """
        ...

    async def subscribe(
        self, subject: str, handler: Handler, queue: str | None = None
    ) -> Subscription:
        """Every subscriber gets published messages; within a `queue` group only one does."""
        ...

    async def request(
        self,
        subject: str,
        payload: JSON = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
    ) -> JSON:
        """Send to one handler and await its reply (NoHandlers, RequestTimeout, RemoteFailure)."""
        ...

    async def kv(self, bucket: str, ttl: float | None = None) -> KeyValue:
        """The key-value bucket `bucket`; with `ttl`, entries not rewritten within it expire."""
        ...

    async def close(self) -> None: ...
