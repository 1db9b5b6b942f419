"""Microseconds of CPU per in-memory bus operation, on the virtual-time loop of `apis sim`.

Run: .venv/bin/python benchmarks/bus_overhead.py [--repeat 5] [--compare OTHER/memory.py]

Each figure is the best of `--repeat` rounds (CPU time of the process, so a shared machine
disturbs it less than wall time), end to end: a publish counts until its handler has run,
a request until the requester has the reply, a KV update until every watcher has seen it.
With `--compare`, another version of ``apis/bus/memory.py`` (say the previous commit's,
from ``git show HEAD~1:src/apis/bus/memory.py > /tmp/old_memory.py``) runs in the same
process, its rounds alternating with this one's, and is shown in a second column.

- publish: one subscriber, payload a unit-data dict (~50 nested keys), a deal dict (~30
  keys) or a short string; with a header, as the units publish their data.
- request: one responder that replies with a small dict; payload None or a deal dict.
- KV get: a deal dict and a short string.
- KV update: a short string (the Grid Master lease) with 0, 20 or 100 watchers of the key,
  and with 20 watchers that asked only for deletes (``gone_only``, when the bus has it).

Then the ways to isolate a payload, per payload (best of 7 x 2000): the recursive
``copy_json``; a JSON round trip (``json.loads(json.dumps(v))``, one per receiver); only the
``json.loads`` (the per-receiver cost if a publish serialised once, or a KV store kept JSON
text); a pickle and a marshal round trip (neither checks that the value is JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib.util
import inspect
import json
import marshal
import pickle
import sys
import time
import timeit
from collections.abc import Callable, Coroutine
from types import ModuleType
from typing import Any

import apis.bus.memory
from apis import clock
from apis.bus.base import Message


def unit_data(i: int) -> dict[str, Any]:
    return {
        "apis": {
            "version": "3.0.0",
            "remaining_capacity_wh": 2876 + i,
            "deal_interlock_capacity": 2,
            "operation_mode": {"global": "autonomous", "local": None, "effective": "autonomous"},
        },
        "oesunit": {
            "communityId": "apis_community",
            "clusterId": "apis_cluster",
            "id": "E001",
            "display": "House 1",
            "sn": "1",
            "budo": "1",
            "ip": "NA",
            "ipv6_ll": "NA",
            "ipv6_g": "NA",
            "mac": "NA",
        },
        "battery": {"rsoc": 66.84918222369515, "battery_operation_status": 3},
        "dcdc": {
            "status": {
                "status": "0x0000",
                "alarmState": "No alarm",
                "statusName": "Waiting",
                "alarm": "0000 0000 0000",
                "runningState": "off",
                "operationMode": "Waiting",
            },
            "meter": {
                "wg": 0.0,
                "tmp": 25.0,
                "vb": 47.485686837713004,
                "wb": -4.5,
                "vg": 0.0,
                "ib": -0.0947653977372001,
                "ig": 0.0,
            },
            "vdis": {"dvg": 350.0, "drg": 0.039},
            "param": {
                "dig": 0.0,
                "ogv": 390.0,
                "ugv": 300.0,
                "cib": 50.0,
                "obv": 58.4,
                "ubv": 32.0,
            },
        },
        "time": "2020/01/01-00:00:00",
        "timestamp": 1577836800.0 + i,
    }


def deal(i: int) -> dict[str, Any]:
    return {
        "dealId": f"2020-01-01T00:00:{i % 60:02d}.000-E001-E002",
        "createDateTime": "2020/01/01-00:00:10",
        "type": "discharge",
        "requestUnitId": "E001",
        "acceptUnitId": "E002",
        "dischargeUnitId": "E001",
        "chargeUnitId": "E002",
        "requestAmountWh": 192,
        "acceptAmountWh": 192,
        "dealAmountWh": 192,
        "requestPointPerWh": 11.0,
        "acceptPointPerWh": 10.0,
        "pointPerWh": 10.5,
        "efficientGridVoltageV": 292.12005357558877,
        "requestEfficientBatteryGridVoltageV": 292.1,
        "acceptEfficientBatteryGridVoltageV": 295.3,
        "dealGridCurrentA": 1.0,
        "dischargeUnitEfficientGridVoltageV": 292.1,
        "chargeUnitEfficientGridVoltageV": 295.3,
        "activateDateTime": "2020/01/01-00:00:12",
        "rampUpDateTime": "2020/01/01-00:00:15",
        "warmUpDateTime": None,
        "startDateTime": "2020/01/01-00:00:20",
        "cumulateDateTime": "2020/01/01-00:01:20",
        "cumulateAmountWh": 12.5 + i,
        "stopDateTime": None,
        "deactivateDateTime": None,
        "abortReason": None,
        "reset": False,
        "masterSide": "dischargeUnit",
        "isMasterDeal": True,
        "testFeature": {"dcdc": {"failBeforeActivate": False}},
    }


Case = Callable[[Any, int], Coroutine[Any, Any, None]]  # (MemoryHub class, operations)


async def publish_case(hub_class: Any, payload_of: Callable[[int], Any], n: int) -> None:
    hub = hub_class()
    a, b = hub.connect("E001"), hub.connect("E002")
    done = asyncio.Event()
    seen = 0

    async def handler(message: Message) -> Any:
        nonlocal seen
        seen += 1
        if seen == n:
            done.set()

    await b.subscribe("apis.GridMaster.collection.1.1", handler)
    headers = {"from": "E001"}
    payloads = [payload_of(i) for i in range(64)]
    for i in range(n):
        await a.publish("apis.GridMaster.collection.1.1", payloads[i & 63], headers)
        if i & 63 == 63:
            await asyncio.sleep(0)  # let handlers run, as the units do between publishes
    await done.wait()
    await a.close()
    await b.close()


async def request_case(hub_class: Any, payload_of: Callable[[int], Any], n: int) -> None:
    hub = hub_class()
    a, b = hub.connect("E001"), hub.connect("E002")

    async def helo(message: Message) -> Any:
        return {"unitId": "E002", "ok": True}

    await b.subscribe("apis.E002.helo", helo)
    payloads = [payload_of(i) for i in range(64)]
    for i in range(n):
        await a.request("apis.E002.helo", payloads[i & 63], timeout=5.0)
    await a.close()
    await b.close()


async def get_case(hub_class: Any, value: Any, n: int) -> None:
    bus = hub_class().connect("E001")
    kv = await bus.kv("deals")
    await kv.put("d1", value)
    for _ in range(n):
        await kv.get("d1")
    await bus.close()


def gone_only_supported(module: ModuleType) -> bool:
    return "gone_only" in inspect.signature(module.MemoryKeyValue.watch).parameters


async def update_case(hub_class: Any, watchers: int, gone_only: bool, n: int) -> None:
    hub = hub_class()
    writer = hub.connect("E001")
    kv = await writer.kv("apis_grid_master")
    revision = await kv.create("gridMasterUnitId", "E001")
    seen = 0
    tasks = []
    for w in range(watchers):
        watcher_kv = await hub.connect(f"E{w + 2:03d}").kv("apis_grid_master")
        if gone_only:
            changes = watcher_kv.watch("gridMasterUnitId", gone_only=True)
        else:
            changes = watcher_kv.watch("gridMasterUnitId")

        async def drain(changes: Any = changes) -> None:
            nonlocal seen
            async for _change in changes:
                seen += 1

        tasks.append(asyncio.create_task(drain()))
    await asyncio.sleep(0)
    for _ in range(n):
        revision = await kv.update("gridMasterUnitId", "E001", revision)
        await asyncio.sleep(0)  # the watchers run
    for bus in list(hub.endpoints):
        await bus.close()
    await asyncio.gather(*tasks)


def copy_alternatives(modules: list[ModuleType]) -> None:
    payloads = {"unit data": unit_data(0), "deal": deal(0), "short string": "E001"}
    ways: list[tuple[str, Callable[[Any], Any]]] = [
        ("copy_json", apis.bus.memory.copy_json),
        ("json.loads(json.dumps(v))", lambda v: json.loads(json.dumps(v))),
        ("json.loads(text) only", json.loads),
        ("pickle round trip", lambda v: pickle.loads(pickle.dumps(v, 5))),
        ("marshal round trip", lambda v: marshal.loads(marshal.dumps(v))),
    ]
    if len(modules) > 1:
        ways.insert(1, ("copy_json (compared)", modules[1].copy_json))
    print(f"\n{'us per copy':30s}" + "".join(f"{name:>14s}" for name in payloads))
    for label, way in ways:
        line = f"{label:30s}"
        for value in payloads.values():
            argument = json.dumps(value) if label.startswith("json.loads(text)") else value
            call = functools.partial(way, argument)
            seconds = min(timeit.repeat(call, number=2000, repeat=7))
            line += f"{seconds / 2000 * 1e6:14.2f}"
        print(line, flush=True)


def load(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("compared_memory_bus", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def cpu_seconds(case: Case, hub_class: Any, n: int) -> float:
    started = time.process_time()
    clock.run(lambda: case(hub_class, n), "virtual")
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--n", type=int, default=20_000, help="operations per round")
    parser.add_argument("--compare", help="another memory.py, shown in a second column")
    args = parser.parse_args()
    modules = [apis.bus.memory]
    if args.compare:
        modules.append(load(args.compare))
    cases: list[tuple[str, Case, int]] = [  # label, case, divisor of --n
        ("publish, unit data, 1 subscriber", lambda h, k: publish_case(h, unit_data, k), 1),
        ("publish, deal, 1 subscriber", lambda h, k: publish_case(h, deal, k), 1),
        (
            "publish, short string, 1 subscriber",
            lambda h, k: publish_case(h, lambda i: "E001", k),
            1,
        ),
        ("request/reply, payload None", lambda h, k: request_case(h, lambda i: None, k), 1),
        ("request/reply, deal payload", lambda h, k: request_case(h, deal, k), 1),
        ("KV get, deal", lambda h, k: get_case(h, deal(0), k), 1),
        ("KV get, short string", lambda h, k: get_case(h, "E001", k), 1),
        ("KV update, 0 watchers", lambda h, k: update_case(h, 0, False, k), 1),
        ("KV update, 20 watchers", lambda h, k: update_case(h, 20, False, k), 4),
        ("KV update, 100 watchers", lambda h, k: update_case(h, 100, False, k), 20),
        ("KV update, 20 gone_only watchers", lambda h, k: update_case(h, 20, True, k), 1),
    ]
    header = f"{'us of CPU per operation':38s} {'this':>8s}"
    if args.compare:
        header += f" {'compared':>9s} {'ratio':>6s}"
    print(header)
    for label, case, divisor in cases:
        ops = args.n // divisor
        best = [float("inf")] * len(modules)
        for _ in range(args.repeat):
            for i, module in enumerate(modules):
                if "gone_only" in label and not gone_only_supported(module):
                    continue
                best[i] = min(best[i], cpu_seconds(case, module.MemoryHub, ops) / ops * 1e6)
        line = f"{label:38s} {best[0]:8.2f}"
        if args.compare:
            other = f"{best[1]:9.2f} {best[0] / best[1]:6.2f}" if best[1] < float("inf") else ""
            line += f" {other}"
        print(line, flush=True)
    copy_alternatives(modules)


if __name__ == "__main__":
    main()
