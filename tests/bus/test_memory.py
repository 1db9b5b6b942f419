"""What only the in-process bus promises: loop time, faults on demand, determinism."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import time
from typing import Any

import pytest

from apis import clock
from apis.bus.base import (
    BusError,
    Change,
    KeyExists,
    Message,
    NoHandlers,
    RemoteFailure,
    RequestTimeout,
    SenderRefused,
)
from apis.bus.memory import (
    MemoryBus,
    MemoryHub,
    ReadOnlyDict,
    ReadOnlyList,
    _message,
    copy_json,
)

HOUR = 3600.0


def run_virtual(main: Any) -> Any:
    """Run `main` on a virtual-time loop; also check it took little wall time."""
    started = time.perf_counter()
    result = clock.run(main, "virtual")
    assert time.perf_counter() - started < 10.0
    return result


def test_ttl_of_hours_passes_instantly_in_virtual_time() -> None:
    async def main() -> list[tuple[float, Change]]:
        hub = MemoryHub()
        bus = hub.connect("E001")
        loop = asyncio.get_running_loop()
        kv = await bus.kv("needToStop", ttl=0.5 * HOUR)
        start = loop.time()
        await kv.put("d1", ["reason"])
        await kv.put("d2", ["reason"])
        seen: list[tuple[float, Change]] = []
        changes = kv.watch()

        async def record() -> None:
            async for change in changes:
                seen.append((loop.time() - start, change))

        recorder = asyncio.create_task(record())
        await asyncio.sleep(0.4 * HOUR)
        await kv.put("d2", ["reason", "again"])  # rewritten: lives 30 minutes more
        await asyncio.sleep(0.2 * HOUR)
        assert await kv.keys() == ["d2"]
        await asyncio.sleep(5 * HOUR)
        assert await kv.keys() == []
        await bus.close()
        await recorder
        return seen

    seen = run_virtual(main)
    deletes = [(round(t), c.key) for t, c in seen if c.entry is None]
    assert deletes == [(1800, "d1"), (round(0.9 * HOUR), "d2")]


def test_request_timeout_in_virtual_time() -> None:
    async def main() -> float:
        hub = MemoryHub()
        a, b = hub.connect("E001"), hub.connect("E002")

        async def never(message: Message) -> Any:
            await asyncio.sleep(10 * HOUR)

        await b.subscribe("apis.E002.slow", never)
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(RequestTimeout):
            await a.request("apis.E002.slow", timeout=30.0)
        elapsed = loop.time() - start
        await a.close()
        await b.close()  # cancels the sleeping handler
        return elapsed

    assert run_virtual(main) == pytest.approx(30.0)


def test_disconnected_unit_is_cut_off_and_catches_up() -> None:
    async def main() -> None:
        hub = MemoryHub(kv_timeout=2.0)
        e1, e2 = hub.connect("E001"), hub.connect("E002")
        got: list[Any] = []

        async def record(message: Message) -> Any:
            got.append((message.subject, message.payload))
            return "E002"

        await e2.subscribe("apis.E002.helo", record)
        kv1 = await e1.kv("interlock")
        kv2 = await e2.kv("interlock")
        watched: list[Change] = []

        async def watch() -> None:
            async for change in kv2.watch():
                watched.append(change)

        watcher = asyncio.create_task(watch())
        assert await e1.request("apis.E002.helo", 1) == "E002"

        e2.disconnect()
        await e1.publish("apis.E002.helo", 2)  # dropped
        with pytest.raises(RequestTimeout):
            await e1.request("apis.E002.helo", 3, timeout=1.0)
        with pytest.raises(RequestTimeout):
            await e2.request("apis.E002.helo", 4, timeout=1.0)  # even its own subjects
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(RequestTimeout):
            await kv2.get("gridMasterUnitId")
        assert loop.time() - start == pytest.approx(2.0)
        first = await kv1.create("gridMasterUnitId", "E001")
        await kv1.put("x", 1)
        await kv1.delete("x")
        await asyncio.sleep(1)
        assert watched == []

        e2.reconnect()
        await asyncio.sleep(0)
        assert [(c.key, c.entry and c.entry.revision) for c in watched] == [
            ("gridMasterUnitId", first),
            ("x", None),
        ]
        assert await e1.request("apis.E002.helo", 5) == "E002"
        assert got == [("apis.E002.helo", 1), ("apis.E002.helo", 5)]
        await e1.close()
        await e2.close()
        await watcher

    run_virtual(main)


def test_partition_splits_messages_and_keeps_store_on_main_island() -> None:
    async def main() -> None:
        hub = MemoryHub(kv_timeout=1.0)
        units = {name: hub.connect(name) for name in ["E001", "E002", "E003", "E004"]}
        answered: list[str] = []
        for name, bus in units.items():

            async def helo(message: Message, name: str = name) -> Any:
                answered.append(name)
                return name

            await bus.subscribe("apis.GridMaster.helo", helo, queue="gm")
        await units["E003"].subscribe("apis.E003.only", helo)

        hub.partition(["E003", "E004"])
        for _ in range(4):
            assert await units["E001"].request("apis.GridMaster.helo") in ("E001", "E002")
            assert await units["E004"].request("apis.GridMaster.helo") in ("E003", "E004")
        assert sorted(answered) == ["E001", "E001", "E002", "E002", "E003", "E003", "E004", "E004"]
        with pytest.raises(RequestTimeout):  # the interest is there but out of reach
            await units["E001"].request("apis.E003.only", timeout=1.0)
        assert await (await units["E001"].kv("interlock")).create("gm", "E001") > 0
        with pytest.raises(RequestTimeout):
            await units["E003"].kv("interlock")
        with pytest.raises(NoHandlers):
            await units["E003"].request("apis.nobody.here")

        hub.heal()
        kv3 = await units["E003"].kv("interlock")
        with pytest.raises(KeyExists):
            await kv3.create("gm", "E003")
        for bus in units.values():
            await bus.close()

    run_virtual(main)


async def test_close_cancels_running_handlers_like_a_kill() -> None:
    hub = MemoryHub()
    a, b = hub.connect("E001"), hub.connect("E002")
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def busy(message: Message) -> Any:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    await b.subscribe("apis.E002.Controller.control.device", busy)
    request = asyncio.create_task(
        a.request("apis.E002.Controller.control.device", {"command": "WAIT"}, timeout=1.0)
    )
    await started.wait()
    await b.close()
    assert cancelled.is_set()
    with pytest.raises(RequestTimeout):
        await request
    with pytest.raises(BusError):
        await b.publish("apis.x")
    assert b not in hub.endpoints
    # the unit comes back under the same name
    b2 = hub.connect("E002")

    async def ok(message: Message) -> Any:
        return "ok"

    await b2.subscribe("apis.E002.Controller.control.device", ok)
    assert await a.request("apis.E002.Controller.control.device") == "ok"
    await a.close()
    await b2.close()


async def test_a_handler_may_close_its_own_bus() -> None:
    hub = MemoryHub()
    a, b = hub.connect("E001"), hub.connect("E002")
    closed = asyncio.Event()

    async def shutdown(message: Message) -> Any:
        await b.close()
        closed.set()
        return None

    await b.subscribe("apis.shutdown.all", shutdown)
    await a.publish("apis.shutdown.all")
    await asyncio.wait_for(closed.wait(), 5)
    await a.close()


def trace_run() -> list[Any]:
    """A small scripted run with queue groups and fan-out; returns who got what in order."""

    async def main() -> list[Any]:
        hub = MemoryHub()
        buses = [hub.connect(f"E00{i}") for i in range(1, 5)]
        trace: list[Any] = []
        for bus in buses:

            async def handler(message: Message, name: str = bus.name) -> Any:
                await asyncio.sleep(0.001 * len(str(message.payload)))
                trace.append((name, message.subject, message.payload))
                return name

            await bus.subscribe("apis.Controller.data.all", handler)
            await bus.subscribe("apis.Mediator.deal.create", handler, queue="mediator")
            await bus.subscribe(f"apis.{bus.name}.>", handler)
        for i in range(20):
            await buses[i % 4].publish("apis.Controller.data.all", {"i": i})
            trace.append(await buses[0].request("apis.Mediator.deal.create", {"deal": i}))
            await buses[3].publish(f"apis.E00{1 + i % 4}.Controller.data", i)
        await asyncio.sleep(1)
        for bus in buses:
            await bus.close()
        return trace

    result: list[Any] = clock.run(main, "virtual")
    return result


def test_delivery_is_deterministic() -> None:
    first = trace_run()
    assert first == trace_run()
    # round-robin over the queue group: E001, E002, E003, E004, E001, ...
    replies = [item for item in first if isinstance(item, str)]
    assert replies[:8] == ["E001", "E002", "E003", "E004"] * 2


async def test_wildcard_subscriptions() -> None:
    bus = MemoryBus()
    got: list[tuple[str, str]] = []

    def recorder(tag: str) -> Any:
        async def record(message: Message) -> Any:
            got.append((tag, message.subject))

        return record

    await bus.subscribe("apis.*.Controller.data", recorder("star"))
    await bus.subscribe("apis.E001.>", recorder("tail"))
    await bus.subscribe("apis.E001", recorder("exact"))
    for subject in ["apis.E001.Controller.data", "apis.E002.Controller.data", "apis.E001"]:
        await bus.publish(subject)
    await asyncio.sleep(0)
    assert got == [
        ("star", "apis.E001.Controller.data"),
        ("tail", "apis.E001.Controller.data"),
        ("star", "apis.E002.Controller.data"),
        ("exact", "apis.E001"),
    ]
    with pytest.raises(ValueError):
        await bus.subscribe("apis.>.x", recorder("bad"))
    await bus.close()


async def test_reply_by_hand_to_reply_subject() -> None:
    bus = MemoryBus()

    async def forward(message: Message) -> Any:
        assert message.reply is not None
        await bus.publish(message.reply, "by hand")
        return "ignored, the first reply won"

    await bus.subscribe("apis.forward", forward)
    assert await bus.request("apis.forward") == "by hand"
    await bus.close()


async def test_handed_over_payload_reaches_the_only_subscriber_uncopied() -> None:
    hub = MemoryHub()
    a, b = hub.connect("E001"), hub.connect("E002")
    got: list[Any] = []

    async def keep(message: Message) -> Any:
        got.append(message.payload)
        return None

    await b.subscribe("apis.GridMaster.collection.1", keep)
    payload = {"oesunit": {"id": "E001"}, "deal_id_list": []}
    await a.publish("apis.GridMaster.collection.1", payload, handover=True)
    await a.publish("apis.GridMaster.collection.1", payload)  # not handed over: a copy
    await asyncio.sleep(0)
    assert got[0] is payload
    assert got[1] == payload and got[1] is not payload

    async def forward(message: Message) -> Any:
        assert message.reply is not None
        await b.publish(message.reply, payload, handover=True)  # a reply sent by hand
        return None

    await b.subscribe("apis.forward", forward)
    assert await a.request("apis.forward") is payload
    await a.close()
    await b.close()


async def test_payload_must_be_json() -> None:
    bus = MemoryBus()

    async def noop(message: Message) -> Any:
        return None

    await bus.subscribe("apis.x", noop)
    with pytest.raises(TypeError, match="not a JSON value"):
        await bus.publish("apis.x", {"when": object()})
    kv = await bus.kv("b")
    with pytest.raises(ValueError, match="key 'bad key'"):
        await kv.put("bad key", 1)
    with pytest.raises(ValueError, match="bucket"):
        await bus.kv("bad.bucket")
    await bus.close()


def test_copy_json() -> None:
    value = {"a": [1, 2.5, {"b": None, "c": True}], "d": "s", "t": (1, 2), "k": {1: "x"}}
    copied = copy_json(value)
    assert copied == {"a": [1, 2.5, {"b": None, "c": True}], "d": "s", "t": [1, 2], "k": {"1": "x"}}
    assert copied["a"] is not value["a"]
    assert copied["a"][2] is not value["a"][2]


async def test_remote_failure_without_message_names_the_exception() -> None:
    bus = MemoryBus()

    async def fail(message: Message) -> Any:
        raise KeyError

    await bus.subscribe("apis.fail", fail)
    with pytest.raises(RemoteFailure, match="KeyError"):
        await bus.request("apis.fail")
    await bus.close()


def test_throughput_figure(capsys: pytest.CaptureFixture[str]) -> None:
    """Not a benchmark gate: prints messages/s so the figure is at hand (-s to see it)."""
    count = 20_000

    async def main() -> tuple[float, float]:
        hub = MemoryHub()
        a, b = hub.connect("E001"), hub.connect("E002")
        received = 0
        all_received = asyncio.Event()

        async def handler(message: Message) -> Any:
            nonlocal received
            received += 1
            if received == count:
                all_received.set()
            return message.payload

        await b.subscribe("apis.E002.Controller.data", handler)
        payload = {"dcdc": {"meter": {"wg": 12.5, "vg": 350.0, "ig": 0.04}}, "rsoc": 55.0}
        started = time.perf_counter()
        for _ in range(count):
            await a.publish("apis.E002.Controller.data", payload)
        await all_received.wait()
        published = count / (time.perf_counter() - started)
        started = time.perf_counter()
        for _ in range(count // 4):
            await a.request("apis.E002.Controller.data", payload)
        requested = (count // 4) / (time.perf_counter() - started)
        await a.close()
        await b.close()
        return published, requested

    published, requested = clock.run(main, "virtual")
    with capsys.disabled():
        print(f"\nmemory bus: {published:,.0f} published msg/s, {requested:,.0f} requests/s")
    assert published > 1000


def test_gone_only_watcher_is_not_woken_by_puts() -> None:
    async def main() -> None:
        hub = MemoryHub()
        writer, reader = hub.connect("E001"), hub.connect("E002")
        kv = await writer.kv("apis_grid_master", ttl=10.0)
        revision = await kv.create("gridMasterUnitId", "E001")
        changes = (await reader.kv("apis_grid_master", ttl=10.0)).watch(
            "gridMasterUnitId", gone_only=True
        )
        resumed = 0
        seen: list[Change] = []

        async def drain() -> None:
            nonlocal resumed
            async for change in changes:
                resumed += 1
                seen.append(change)

        task = asyncio.create_task(drain())
        await asyncio.sleep(0)
        bucket = hub._buckets["apis_grid_master"]
        (watcher,) = bucket.watchers
        assert bucket.value_watchers == []  # puts do not even look at it
        waiter = watcher.waiter
        assert waiter is not None
        for _ in range(100):
            revision = await kv.update("gridMasterUnitId", "E001", revision)
            await asyncio.sleep(1)
        assert (resumed, len(watcher.pending), watcher.waiter) == (0, 0, waiter)
        assert not waiter.done()
        await asyncio.sleep(10)  # the lease is no longer renewed: it expires
        assert seen == [Change("gridMasterUnitId", None)]
        await writer.close()
        await reader.close()
        await task

    run_virtual(main)


def test_gone_only_watcher_catches_up_on_missed_deletes() -> None:
    async def main() -> None:
        hub = MemoryHub(kv_timeout=1.0)
        e1, e2 = hub.connect("E001"), hub.connect("E002")
        kv1 = await e1.kv("deals")
        for key in ["gone", "back", "kept"]:
            await kv1.put(key, {"key": key})
        seen: list[Change] = []

        async def watch() -> None:
            async for change in (await e2.kv("deals")).watch(gone_only=True):
                seen.append(change)

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(0)
        e2.disconnect()
        await kv1.delete("gone")
        await kv1.delete("back")
        await kv1.put("back", {"key": "back", "again": True})  # not gone when e2 returns
        await kv1.put("kept", {"key": "kept", "n": 2})
        await kv1.put("new", 1)
        await asyncio.sleep(1)
        assert seen == []
        e2.reconnect()
        await asyncio.sleep(0)
        assert seen == [Change("gone", None)]
        await kv1.delete("kept")
        await asyncio.sleep(0)
        assert seen == [Change("gone", None), Change("kept", None)]
        await e1.close()
        await e2.close()
        await watcher

    run_virtual(main)


def test_ended_handler_tasks_are_dropped_and_close_cancels_the_rest() -> None:
    async def main() -> None:
        hub = MemoryHub()
        a, b = hub.connect("E001"), hub.connect("E002")
        cancelled = 0

        async def handler(message: Message) -> Any:
            nonlocal cancelled
            if message.payload % 100 == 0:  # one in a hundred never ends
                try:
                    await asyncio.sleep(HOUR)
                except asyncio.CancelledError:
                    cancelled += 1
                    raise

        await b.subscribe("apis.E002.x", handler)
        for i in range(5000):
            await a.publish("apis.E002.x", i)
            if i % 10 == 9:
                await asyncio.sleep(0)
        await asyncio.sleep(0)
        live = [task for task in b._tasks if not task.done()]
        assert len(live) == 50
        assert len(b._tasks) <= 2 * 50 + 64 + 10  # ended ones pruned as the list grows
        await b.close()
        assert cancelled == 50
        assert all(task.done() for task in live)
        assert b._tasks == []
        await a.close()

    run_virtual(main)


def test_message_is_built_as_the_dataclass_would() -> None:
    headers = {"a": "b"}
    built = _message("apis.x", {"n": 1}, headers, "_INBOX.1.1", "E001")
    expected = Message("apis.x", {"n": 1}, headers, "_INBOX.1.1", "E001")
    assert built == expected and repr(built) == repr(expected)
    for field in dataclasses.fields(Message):  # every field is set (one added later, too)
        assert getattr(built, field.name) == getattr(expected, field.name)
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.subject = "apis.y"  # type: ignore[misc]


def test_copy_json_semantics() -> None:
    class Mode(enum.StrEnum):
        AUTO = "autonomous"

    value: dict[str, Any] = {
        "l": [[1, {"x": [2]}], (3, (4,))],
        "mode": Mode.AUTO,
        "f": -0.0,
        "n": None,
    }
    copied = copy_json(value)
    assert copied == {"l": [[1, {"x": [2]}], [3, [4]]], "mode": "autonomous", "f": -0.0, "n": None}
    assert type(copied["mode"]) is str
    assert (
        copied["l"][0] is not value["l"][0] and copied["l"][0][1]["x"] is not value["l"][0][1]["x"]
    )
    assert copy_json({Mode.AUTO: 1}) == {"autonomous": 1}
    assert type(next(iter(copy_json({Mode.AUTO: 1})))) is str
    for bad in [{"when": object()}, [1, {2, 3}], {"a": [b"bytes"]}]:
        with pytest.raises(TypeError, match="is not a JSON value"):
            copy_json(bad)
    with pytest.raises(TypeError, match=r"payload <object object at .*> is not a JSON value"):
        copy_json({"a": {"b": object()}})  # names the value, not the whole payload


async def test_kv_values_must_be_json_and_are_copied() -> None:
    bus = MemoryBus()
    kv = await bus.kv("b")
    with pytest.raises(TypeError, match="is not a JSON value"):
        await kv.put("k", {"when": object()})
    assert await kv.get("k") is None
    value: dict[str, Any] = {"units": ["E001"], "pair": (1, 2)}
    await kv.put("k", value)
    value["units"].append("E002")
    entry = await kv.get("k")
    assert entry is not None and entry.value == {"units": ["E001"], "pair": [1, 2]}
    await bus.close()


async def test_kv_values_are_read_only_and_shared_by_their_readers() -> None:
    hub = MemoryHub()
    a, b = hub.connect("E001"), hub.connect("E002")
    kv_a, kv_b = await a.kv("deals"), await b.kv("deals")
    changes = kv_b.watch()
    await kv_a.put("d1", {"dealId": "d1", "units": ["E001", "E002"], "reset": [{"x": 1}]})
    first, second = await kv_a.get("d1"), await kv_b.get("d1")
    assert first is not None and second is not None
    assert first.value is second.value  # one stored copy, no copy per read
    value = first.value
    assert isinstance(value, ReadOnlyDict) and isinstance(value["units"], ReadOnlyList)
    assert isinstance(value, dict) and isinstance(value["units"], list)  # as JSON readers expect
    for mutate in (
        lambda: value.__setitem__("dealId", "x"),
        lambda: value.update(x=1),
        lambda: value.pop("dealId"),
        lambda: value.setdefault("y", 2),
        lambda: value["units"].append("E003"),
        lambda: value["units"].sort(),
        lambda: value["reset"][0].clear(),
    ):
        with pytest.raises(TypeError, match="read-only"):
            mutate()
    watched = await anext(changes)
    assert watched.entry is not None and watched.entry.value is value
    # A copy is a plain, mutable one; sending a stored value copies it the same way.
    plain = copy_json(value)
    assert type(plain) is dict and type(plain["units"]) is list and plain == value
    plain["units"].append("E003")
    got: list[Any] = []

    async def on_message(msg: Any) -> None:
        got.append(msg.payload)

    await b.subscribe("apis.x", on_message)
    await a.publish("apis.x", {"deal": value})
    await asyncio.sleep(0)
    assert type(got[0]["deal"]) is dict and type(got[0]["deal"]["units"]) is list
    # Writing a read-only value back (an edited copy or the same) stores a new copy.
    await kv_a.put("d2", value)
    d2 = await kv_a.get("d2")
    assert d2 is not None and d2.value == value and d2.value is not value
    await changes.aclose()
    await a.close()
    await b.close()


async def test_an_endpoint_cannot_publish_as_another() -> None:
    """The in-memory bus enforces what the NATS permissions do: a signed subject only from
    the endpoint it names; a plain subject's message names its endpoint."""
    hub = MemoryHub()
    a, rogue = hub.connect("E001"), hub.connect("rogue")
    got: list[Message] = []

    async def record(message: Message) -> str:
        got.append(message)
        return "ok"

    await a.subscribe("apis.E001.Controller.control.device.from.*", record)
    await a.subscribe("apis.plain", record)
    with pytest.raises(SenderRefused, match="rogue may not publish"):
        await rogue.request("apis.E001.Controller.control.device.from.E002", {"command": "WAIT"})
    with pytest.raises(SenderRefused):
        await rogue.publish("apis.E001.Controller.control.device.from.E002")
    assert got == []
    assert await rogue.request("apis.E001.Controller.control.device.from.rogue") == "ok"
    await rogue.publish("apis.plain")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert [m.sender for m in got] == ["rogue", "rogue"]
    await a.close()
    await rogue.close()
