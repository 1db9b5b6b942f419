"""The floor under `apis sim`: a cluster whose units do nothing but keep their periods.

Run: .venv/bin/python benchmarks/cluster_floor.py [--units 4,20,100] [--hours 2]

Every unit of the real cluster, even at night with no deal, does this every 5 s (the
default periods of the original): its acquisition tick, its helo (published, heard by its
own subscription), its file-refresh tick, and it answers the Grid Master's collection (a
message to every unit, one reply each, gathered by the Grid Master within a timeout); the
Grid Master also renews its lease every second. Here each of those is an empty stand-in
on the same in-memory bus and virtual-time loop as the simulation: no driver read, no
safety check, no JSON built (the reply is a prepared dict of the size of a unit's data, so
the bus copies as much as it does in the simulation), no file looked at.

What it prints is therefore an upper bound on the speed of a simulation that keeps those
periods: simulated seconds per CPU second of the skeleton alone, beside the real simulation
at night (`apis.sim.run`, sharing on, 01:00 onwards, same length). The difference is the
units' own work.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from apis import clock
from apis.bus.base import Message
from apis.bus.memory import MemoryHub

PERIOD_S = 5.0
LEASE_RENEW_S = 1.0
COLLECTION_TIMEOUT_S = 1.0


def unit_data_like() -> dict[str, Any]:
    """A dict shaped like one unit's data (nested, about 80 values)."""
    meter = {k: 1.5 for k in ("ig", "iin", "vg", "vin", "wg", "wb", "ib", "tmp")}
    return {
        "apis": {"version": "x", "remaining_capacity_wh": 1200.0, "deal_id_list": [],
                 "operation_mode": {k: "autonomous" for k in ("global", "local", "effective")},
                 "is_grid_master": False},
        "oesunit": {k: "E001" for k in ("communityId", "clusterId", "id", "display", "sn",
                                        "budo", "ip", "ipv6_ll", "ipv6_g", "mac")},
        "battery": {"rsoc": 55.0, "battery_operation_status": 3, "rsoc_raw": 55.0},
        "time": "2020/01/01-00:00:00",
        "dcdc": {"status": {"status": "0x0000", "alarm": "0", "stateAlarm": "0",
                            "statusName": "Waiting", "runningState": "off",
                            "operationMode": "Waiting"},
                 "meter": meter,
                 "vdis": {"dvg": 350.0, "drg": 0.0},
                 "param": {"dig": 2.0, "ogv": 400.0, "ugv": 300.0, "cib": 20.0, "obv": 60.0,
                           "ubv": 40.0, "wg": 0.0, "wb": 0.0}},
        "emu": {k: 10.0 for k in ("charge_discharge_power", "pvc_charge_power",
                                   "ups_input_voltage", "ups_output_power", "rsoc")},
    }


async def every(period: float, chore: Callable[[], Awaitable[None]]) -> None:
    while True:
        await asyncio.sleep(period)
        await chore()


async def nothing() -> None:
    return None


async def skeleton(n_units: int, seconds: float) -> None:
    hub = MemoryHub()
    buses = [hub.connect(f"E{k:03d}") for k in range(1, n_units + 1)]
    data = unit_data_like()

    async def unit(k: int) -> None:
        bus = buses[k]
        uid = f"E{k + 1:03d}"

        async def on_data_all(msg: Message) -> None:
            reply = msg.headers.get("replyAddress")
            if reply is not None:
                await bus.publish(reply, data, {"unitId": uid})

        async def on_helo(msg: Message) -> None:
            return None

        await bus.subscribe("apis.Controller.data.all", on_data_all)
        await bus.subscribe(f"apis.{uid}.helo", on_helo)

        async def helo() -> None:
            await bus.publish(f"apis.{uid}.helo", {"unitId": uid})

        async with asyncio.TaskGroup() as tg:
            tg.create_task(every(PERIOD_S, nothing))  # acquisition tick
            tg.create_task(every(PERIOD_S, helo))
            tg.create_task(every(PERIOD_S, nothing))  # file-refresh tick

    async def grid_master() -> None:
        bus = buses[0]
        passes = 0

        async def collect() -> None:
            nonlocal passes
            passes += 1
            reply = f"apis.GridMaster.collection.1.{passes}"
            gathered: dict[str, Any] = {}
            complete = asyncio.Event()

            async def receive(msg: Message) -> None:
                gathered[msg.headers["unitId"]] = msg.payload
                if len(gathered) == n_units:
                    complete.set()

            sub = await bus.subscribe(reply, receive)
            try:
                await bus.publish("apis.Controller.data.all", None, {"replyAddress": reply})
                try:
                    async with asyncio.timeout(COLLECTION_TIMEOUT_S):
                        await complete.wait()
                except TimeoutError:
                    pass
            finally:
                await sub.unsubscribe()

        async with asyncio.TaskGroup() as tg:
            tg.create_task(every(LEASE_RENEW_S, nothing))  # lease renewal (a KV write)
            tg.create_task(every(PERIOD_S, collect))

    tasks = [asyncio.create_task(unit(k)) for k in range(n_units)]
    tasks.append(asyncio.create_task(grid_master()))
    await asyncio.sleep(seconds)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def skeleton_rate(n_units: int, seconds: float) -> float:
    cpu = time.process_time()
    clock.run(lambda: skeleton(n_units, seconds), "virtual")
    return seconds / (time.process_time() - cpu)


def simulation_rate(n_units: int, seconds: float) -> float:
    from apis.sim.community import SimSettings
    from apis.sim.run import run

    settings = SimSettings(
        units=n_units, days=seconds / 86400, seed=0, start=datetime(2020, 1, 1, 1)
    )
    cpu = time.process_time()
    result = run(settings)
    return result.simulated_s / (time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", default="4,20,100")
    parser.add_argument("--hours", type=float, default=2.0)
    args = parser.parse_args()
    seconds = args.hours * 3600
    print(f"{'units':>5} {'skeleton sim/CPU':>17} {'simulation sim/CPU':>19} {'of floor':>9}")
    for n in (int(u) for u in args.units.split(",")):
        floor = skeleton_rate(n, seconds)
        real = simulation_rate(n, seconds)
        print(f"{n:5d} {floor:17.0f} {real:19.0f} {real / floor:9.0%}", flush=True)


if __name__ == "__main__":
    main()
