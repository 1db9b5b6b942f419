"""One suite for every Bus implementation (memory and NATS): the protocol's promises."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from apis.bus.base import (
    Change,
    KeyExists,
    Message,
    NoHandlers,
    RemoteFailure,
    RequestTimeout,
    RevisionMismatch,
    signed,
    signer_of,
)
from tests.bus.conftest import Network, unique

WAIT = 10.0  # generous: a loaded machine may be slow to deliver over a real server


class Inbox:
    """A handler that records what it gets."""

    def __init__(self, reply: Any = None) -> None:
        self.messages: asyncio.Queue[Message] = asyncio.Queue()
        self.reply = reply

    async def __call__(self, message: Message) -> Any:
        self.messages.put_nowait(message)
        return self.reply

    async def next(self) -> Message:
        return await asyncio.wait_for(self.messages.get(), WAIT)

    async def nothing_more(self) -> None:
        await asyncio.sleep(0.3)
        assert self.messages.empty()


async def test_publish_reaches_every_subscriber(network: Network) -> None:
    a = await network.connect("E001")
    b = await network.connect("E002")
    subject = f"apis.{unique('E')}.Controller.data"
    on_a, on_b = Inbox(), Inbox()
    await a.subscribe(subject, on_a)
    await b.subscribe(subject, on_b)
    payload = {"dcdc": {"status": {"status": "0x0000"}}, "list": [1, 2.5, None, True]}
    await a.publish(subject, payload, {"urgent": "true"})
    for inbox in (on_a, on_b):
        message = await inbox.next()
        assert message.subject == subject
        assert message.payload == payload
        assert message.headers.get("urgent") == "true"
        assert message.reply is None


async def test_receiver_mutation_does_not_alias_sender(network: Network) -> None:
    a = await network.connect("E001")
    subject = unique("apis.alias")
    inbox = Inbox()
    await a.subscribe(subject, inbox)
    payload = {"deal": {"amount": 1}}
    await a.publish(subject, payload)
    message = await inbox.next()
    message.payload["deal"]["amount"] = 99
    assert payload == {"deal": {"amount": 1}}


async def test_unsubscribe_stops_delivery(network: Network) -> None:
    a = await network.connect("E001")
    subject = unique("apis.unsub")
    inbox = Inbox()
    subscription = await a.subscribe(subject, inbox)
    await a.publish(subject, 1)
    assert (await inbox.next()).payload == 1
    await subscription.unsubscribe()
    await a.publish(subject, 2)
    await inbox.nothing_more()


async def test_queue_group_gives_each_message_to_one_member(network: Network) -> None:
    a = await network.connect("E001")
    b = await network.connect("E002")
    c = await network.connect("E003")
    subject = unique("apis.Mediator.deal.create")
    members = [Inbox(), Inbox()]
    plain = Inbox()
    await a.subscribe(subject, members[0], queue="mediator")
    await b.subscribe(subject, members[1], queue="mediator")
    await c.subscribe(subject, plain)
    count = 20
    for i in range(count):
        await c.publish(subject, i)
    got = [(await plain.next()).payload for _ in range(count)]
    assert sorted(got) == list(range(count))
    received: list[int] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while len(received) < count and loop.time() < deadline:
        await asyncio.sleep(0.05)
        for member in members:
            while not member.messages.empty():
                received.append(member.messages.get_nowait().payload)
    await asyncio.gather(*(member.nothing_more() for member in members))
    assert sorted(received) == list(range(count))  # each exactly once


async def test_a_signed_subject_names_its_sender(network: Network) -> None:
    """What a receiver learns of the sender comes from the bus, not the message."""
    a = await network.connect("E001")
    b = await network.connect("E002")
    base = f"apis.{unique('E')}.Controller.control.device"
    assert signer_of(signed(base, "E001")) == "E001" and signer_of(base) is None
    on_b = Inbox(reply="done")
    await b.subscribe(signed(base, "*"), on_b)
    reply = await a.request(signed(base, "E001"), {"command": "WAIT"},
                            {"gridMasterUnitId": "E003"}, timeout=WAIT)
    assert reply == "done"
    message = await on_b.next()
    assert message.sender == "E001"  # whatever the headers claim
    assert message.headers["gridMasterUnitId"] == "E003"


async def test_request_reply(network: Network) -> None:
    a = await network.connect("E001")
    b = await network.connect("E002")
    subject = f"apis.{unique('E')}.helo"

    async def helo(message: Message) -> Any:
        assert message.reply is not None
        return {"unitId": "E002", "echo": message.payload, "cmd": message.headers.get("command")}

    await b.subscribe(subject, helo)
    reply = await a.request(subject, [1, "x"], {"command": "get"}, timeout=WAIT)
    assert reply == {"unitId": "E002", "echo": [1, "x"], "cmd": "get"}
    assert await a.request(subject, timeout=WAIT) == {"unitId": "E002", "echo": None, "cmd": None}


async def test_request_with_scalar_payloads(network: Network) -> None:
    a = await network.connect("E001")
    subject = unique("apis.scalar")

    async def double(message: Message) -> Any:
        return message.payload * 2

    await a.subscribe(subject, double)
    assert await a.request(subject, 21, timeout=WAIT) == 42
    assert await a.request(subject, "ab", timeout=WAIT) == "abab"
    assert await a.request(subject, 1.5, timeout=WAIT) == 3.0


async def test_request_without_handlers(network: Network) -> None:
    a = await network.connect("E001")
    with pytest.raises(NoHandlers):
        await a.request(unique("apis.GridMaster.error.test"), timeout=WAIT)


async def test_request_timeout(network: Network) -> None:
    a = await network.connect("E001")
    subject = unique("apis.slow")

    async def slow(message: Message) -> Any:
        await asyncio.sleep(30)
        return "late"

    await a.subscribe(subject, slow)
    with pytest.raises(RequestTimeout):
        await a.request(subject, timeout=0.5)


async def test_handler_failure_reaches_requester(network: Network) -> None:
    a = await network.connect("E001")
    b = await network.connect("E002")
    subject = unique("apis.Mediator.deal.create")

    async def refuse(message: Message) -> Any:
        raise ValueError("deal amount 0 Wh (must be > 0)")

    await b.subscribe(subject, refuse)
    with pytest.raises(RemoteFailure, match=r"deal amount 0 Wh \(must be > 0\)"):
        await a.request(subject, {"amount": 0}, timeout=WAIT)


async def test_handler_failure_on_publish_is_contained(network: Network) -> None:
    a = await network.connect("E001")
    subject = unique("apis.error")
    calls: list[Any] = []

    async def fragile(message: Message) -> Any:
        calls.append(message.payload)
        if message.payload == 1:
            raise RuntimeError("boom")
        return None

    inbox = Inbox()
    await a.subscribe(subject, fragile)
    await a.subscribe(subject, inbox)
    await a.publish(subject, 1)
    await a.publish(subject, 2)
    assert (await inbox.next()).payload == 1
    assert (await inbox.next()).payload == 2
    assert calls == [1, 2]


async def test_kv_create_if_absent(network: Network) -> None:
    a = await network.connect("E001")
    b = await network.connect("E002")
    bucket = unique("interlock")
    kv_a = await a.kv(bucket)
    kv_b = await b.kv(bucket)
    assert await kv_a.get("gridMasterUnitId") is None
    revision = await kv_a.create("gridMasterUnitId", "E001")
    with pytest.raises(KeyExists):
        await kv_b.create("gridMasterUnitId", "E002")
    entry = await kv_b.get("gridMasterUnitId")
    assert entry is not None
    assert (entry.key, entry.value, entry.revision) == ("gridMasterUnitId", "E001", revision)
    # after a delete, create succeeds again
    await kv_a.delete("gridMasterUnitId")
    assert await kv_b.get("gridMasterUnitId") is None
    again = await kv_b.create("gridMasterUnitId", "E002")
    assert again > revision


async def test_kv_compare_and_set(network: Network) -> None:
    a = await network.connect("E001")
    b = await network.connect("E002")
    bucket = unique("deals")
    kv_a = await a.kv(bucket)
    kv_b = await b.kv(bucket)
    deal = {"dealId": "d1", "state": "started", "cumulateAmountWh": 0.0}
    first = await kv_a.create("d1", deal)
    second = await kv_a.update("d1", {**deal, "cumulateAmountWh": 1.5}, first)
    assert second > first
    with pytest.raises(RevisionMismatch):
        await kv_b.update("d1", {**deal, "state": "stopped"}, first)
    entry = await kv_b.get("d1")
    assert entry is not None and entry.revision == second
    assert entry.value["cumulateAmountWh"] == 1.5
    with pytest.raises(RevisionMismatch):
        await kv_b.update("absent", {"x": 1}, first)
    # revisions are one counter per bucket
    other = await kv_b.put("d2", {"dealId": "d2"})
    assert other > second
    assert (await kv_a.update("d1", deal, second)) > other


async def test_kv_value_is_not_aliased(network: Network) -> None:
    a = await network.connect("E001")
    kv = await a.kv(unique("alias"))
    value = {"units": ["E001"]}
    await kv.put("k", value)
    value["units"].append("E002")
    entry = await kv.get("k")
    assert entry is not None and entry.value == {"units": ["E001"]}
    try:
        entry.value["units"].append("E003")  # NATS: the reader's own copy
    except TypeError:
        pass  # in memory: a read-only value shared by the readers
    again = await kv.get("k")
    assert again is not None and again.value == {"units": ["E001"]}


async def test_kv_delete_with_revision(network: Network) -> None:
    a = await network.connect("E001")
    kv = await a.kv(unique("interlock"))
    first = await kv.create("gridMasterUnitId", "E001")
    second = await kv.update("gridMasterUnitId", "E002", first)
    with pytest.raises(RevisionMismatch):
        await kv.delete("gridMasterUnitId", first)
    assert (await kv.get("gridMasterUnitId")) is not None
    await kv.delete("gridMasterUnitId", second)
    assert await kv.get("gridMasterUnitId") is None
    assert await kv.keys() == []


async def test_kv_keys_by_prefix(network: Network) -> None:
    a = await network.connect("E001")
    kv = await a.kv(unique("state"))
    assert await kv.keys() == []
    for key in ["deal.d2", "deal.d1", "needToStop.d1", "operationMode", "deal.d3"]:
        await kv.put(key, key)
    await kv.delete("deal.d3")
    assert await kv.keys("deal.") == ["deal.d1", "deal.d2"]
    assert await kv.keys("needToStop") == ["needToStop.d1"]
    assert await kv.keys("nothing") == []
    assert await kv.keys() == ["deal.d1", "deal.d2", "needToStop.d1", "operationMode"]


async def test_kv_revisions_are_the_latest_of_each_live_key(network: Network) -> None:
    a = await network.connect("E001")
    b = await network.connect("E002")
    bucket = unique("deals")
    kv_a = await a.kv(bucket)
    kv_b = await b.kv(bucket)
    assert await kv_b.revisions() == {}
    first = await kv_a.put("deal.d1", {"n": 1})
    second = await kv_a.put("deal.d2", {"n": 2})
    await kv_a.put("other", 0)
    gone = await kv_a.put("deal.d3", {"n": 3})
    await kv_a.delete("deal.d3")
    assert gone > 0
    assert await kv_b.revisions("deal.") == {"deal.d1": first, "deal.d2": second}
    updated = await kv_a.update("deal.d1", {"n": 10}, first)
    assert updated > second
    seen = await kv_b.revisions()
    assert list(seen) == ["deal.d1", "deal.d2", "other"]  # sorted by key
    assert seen["deal.d1"] == updated
    assert seen["deal.d1"] == (await kv_b.get("deal.d1")).revision  # type: ignore[union-attr]
    recreated = await kv_a.create("deal.d3", {"n": 30})  # a new revision, never an old one
    assert (await kv_b.revisions("deal.d3")) == {"deal.d3": recreated}
    assert recreated > updated


async def next_change(changes: Any) -> Change:
    change: Change = await asyncio.wait_for(anext(changes), WAIT)
    return change


async def test_kv_watch_sees_current_entries_then_puts_and_deletes(network: Network) -> None:
    a = await network.connect("E001")
    b = await network.connect("E002")
    bucket = unique("deals")
    kv_a = await a.kv(bucket)
    kv_b = await b.kv(bucket)
    old = await kv_a.put("deal.d0", {"n": 0})
    await kv_a.put("other", 1)
    changes = kv_b.watch("deal.")
    try:
        change = await next_change(changes)
        assert change.key == "deal.d0"
        assert change.entry is not None and change.entry.value == {"n": 0}
        assert change.entry.revision == old
        created = await kv_a.create("deal.d1", {"n": 1})
        await kv_a.put("other", 2)  # not under the prefix
        updated = await kv_a.update("deal.d1", {"n": 2}, created)
        await kv_a.delete("deal.d1")
        change = await next_change(changes)
        assert change.entry is not None
        assert (change.key, change.entry.value, change.entry.revision) == (
            "deal.d1",
            {"n": 1},
            created,
        )
        change = await next_change(changes)
        assert change.entry is not None and change.entry.revision == updated
        change = await next_change(changes)
        assert change == Change("deal.d1", None)
    finally:
        await changes.aclose()  # type: ignore[attr-defined]


async def test_watch_ends_when_bus_closes(network: Network) -> None:
    a = await network.connect("E001")
    kv = await a.kv(unique("closing"))
    changes = kv.watch()

    async def drain() -> list[Change]:
        return [change async for change in changes]

    task = asyncio.create_task(drain())
    await asyncio.sleep(0.2)
    await a.close()
    assert await asyncio.wait_for(task, WAIT) == []


async def test_close_ends_subscriptions(network: Network) -> None:
    a = await network.connect("E001")
    b = await network.connect("E002")
    subject = unique("apis.closing")
    inbox = Inbox()
    await b.subscribe(subject, inbox)
    await b.close()
    with pytest.raises((NoHandlers, RequestTimeout)):
        await a.request(subject, timeout=2.0)


async def test_kv_ttl_expiry(network: Network) -> None:
    a = await network.connect("E001")
    kv = await a.kv(unique("needToStop"), ttl=1.0)
    await kv.put("lapsing", "x")
    await kv.put("kept", "y")
    changes = kv.watch()
    try:
        assert {(await next_change(changes)).key for _ in range(2)} == {"lapsing", "kept"}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while True:  # rewriting "kept" keeps it alive; "lapsing" expires
            await asyncio.sleep(0.3)
            assert loop.time() < deadline, "no expiry seen"
            await kv.put("kept", "y")
            change = await next_change(changes)
            if change.key == "lapsing":
                assert change.entry is None
                break
        assert await kv.get("lapsing") is None
        assert await kv.get("kept") is not None
        assert await kv.keys() == ["kept"]
        assert await kv.create("lapsing", "again") > 0  # an expired key can be created again
    finally:
        await changes.aclose()  # type: ignore[attr-defined]


async def test_receivers_do_not_share_a_payload(network: Network) -> None:
    a = await network.connect("E001")
    b = await network.connect("E002")
    subject = unique("apis.alias.fanout")
    on_a, on_b = Inbox(), Inbox()
    await a.subscribe(subject, on_a)
    await b.subscribe(subject, on_b)
    payload = {"deal": {"amounts": [1, 2]}, "pair": (3, 4)}
    await a.publish(subject, payload)
    first, second = (await on_a.next()).payload, (await on_b.next()).payload
    first["deal"]["amounts"].append(99)
    assert second == {"deal": {"amounts": [1, 2]}, "pair": [3, 4]}  # a tuple travels as a list
    assert payload == {"deal": {"amounts": [1, 2]}, "pair": (3, 4)}


async def test_handed_over_payload_arrives_whole_and_fanout_is_not_shared(
    network: Network,
) -> None:
    a = await network.connect("E001")
    b = await network.connect("E002")
    alone, shared = unique("apis.handover.one"), unique("apis.handover.fanout")
    on_alone, on_a, on_b = Inbox(), Inbox(), Inbox()
    await b.subscribe(alone, on_alone)
    await a.subscribe(shared, on_a)
    await b.subscribe(shared, on_b)
    await a.publish(alone, {"unit": {"rsoc": 55.5, "ids": ["d1"]}}, handover=True)
    assert (await on_alone.next()).payload == {"unit": {"rsoc": 55.5, "ids": ["d1"]}}
    await a.publish(shared, {"deal": {"amounts": [1, 2]}}, {"k": "v"}, handover=True)
    first, second = await on_a.next(), await on_b.next()
    first.payload["deal"]["amounts"].append(99)
    assert second.payload == {"deal": {"amounts": [1, 2]}}
    assert second.headers.get("k") == "v"


async def gone_only_ready(kv: Any, changes: Any, key: str = "sync") -> list[Change]:
    """Create and delete `key` until `changes` reports a delete of it.

    A NATS watch starts with its first iteration, so this is how a test learns that it runs;
    returns what `changes` gave meanwhile (one delete of `key`).
    """
    seen: list[Change] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    pending = asyncio.ensure_future(anext(changes))
    try:
        while True:
            await kv.put(key, 1)
            await kv.delete(key)
            done, _ = await asyncio.wait([pending], timeout=0.2)
            if done:
                seen.append(pending.result())
                return seen
            assert loop.time() < deadline, "the gone_only watch never saw a delete"
    finally:
        if not pending.done():
            pending.cancel()
            await asyncio.wait([pending])


async def next_gone(changes: Any, sync: str = "sync") -> Change:
    """The next change other than a late delete of the key `gone_only_ready` used."""
    change = await next_change(changes)
    while change == Change(sync, None):
        change = await next_change(changes)
    return change


async def test_kv_watch_gone_only_sees_deletes_but_no_entries_or_puts(network: Network) -> None:
    a = await network.connect("E001")
    b = await network.connect("E002")
    bucket = unique("interlock")
    kv_a = await a.kv(bucket)
    kv_b = await b.kv(bucket)
    await kv_a.put("current", {"n": 0})
    await kv_a.put("old", 1)
    await kv_a.delete("old")  # deleted before the watch: not reported
    changes = kv_b.watch(gone_only=True)
    try:
        assert await gone_only_ready(kv_a, changes) == [Change("sync", None)]
        first = await kv_a.create("lease", "E001")
        second = await kv_a.update("lease", "E001", first)
        await kv_a.put("current", {"n": 1})
        await kv_a.delete("lease", second)
        assert await next_gone(changes) == Change("lease", None)
        await kv_a.delete("current")
        assert await next_gone(changes) == Change("current", None)
    finally:
        await changes.aclose()  # type: ignore[attr-defined]


async def test_kv_watch_gone_only_with_prefix_sees_expiry(network: Network) -> None:
    a = await network.connect("E001")
    kv = await a.kv(unique("lease"), ttl=1.0)
    changes = kv.watch("gm.", gone_only=True)
    pending: asyncio.Future[Change] | None = None
    try:
        assert await gone_only_ready(kv, changes, "gm.sync") == [Change("gm.sync", None)]
        await kv.put("gm.lapsing", "E001")
        await kv.put("gm.kept", "E002")
        await kv.put("other", "x")  # not under the prefix: its expiry is not reported
        pending = asyncio.ensure_future(next_gone(changes, "gm.sync"))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while not pending.done():  # rewriting "gm.kept" keeps it alive; "gm.lapsing" expires
            assert loop.time() < deadline, "no expiry seen"
            await kv.put("gm.kept", "E002")
            await asyncio.wait([pending], timeout=0.3)
        assert pending.result() == Change("gm.lapsing", None)
        assert await kv.get("gm.kept") is not None
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            await asyncio.wait([pending])
        await changes.aclose()  # type: ignore[attr-defined]
