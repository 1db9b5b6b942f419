"""A soak of the real cluster on NATS: 4 `apis unit` processes, 3 nats-servers, the emulator,
1 s periods, for $APIS_SOAK_SECONDS (default 120 s; CI sets 1800).

Every few seconds the servers' monitoring endpoints are read: JetStream consumers
(``/jsz?consumers=true``, summed over the servers) and subscriptions (``/subsz``, the largest
count of a server). Both must stay bounded: after the warm-up the largest count of the second
half is at most the first half's plus a little, and the consumers stay under a few per unit.
No unit may log the bus failing (the symptom once was ``maximum consumers limit reached``
after 3 minutes, then `deals unreadable` and a failing Grid Master every second), and deals
must still complete at the end.
"""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass

import httpx
import pytest

from apis.bus.natsserver import NatsCluster
from apis.process.cluster import LocalCluster
from tests.cluster.conftest import ClusterFactory, Observer, completed, deal_files, wait_for

SOAK_S = float(os.environ.get("APIS_SOAK_SECONDS", "120"))
WARM_UP_S = 20.0
SAMPLE_EVERY_S = 3.0
CONSUMERS_PER_UNIT = 10  # each unit keeps 2 or 3 watchers; listings must leave none behind
CONSUMER_SLACK = 3  # a watcher being replaced (its old consumer not yet gone)
SUBSCRIPTION_SLACK = 20  # requests and listings in flight at the instant of a sample

pytestmark = pytest.mark.timeout(SOAK_S + WARM_UP_S + 360)

# What a unit logs when the bus fails it (not the bus's own reconnect notices).
BUS_TROUBLE = re.compile(
    r"maximum consumers|err_code=10026|deals unreadable|Grid Master failed|: nats: |"
    r"watch failed|pass failed|Traceback"
)
# By design: on the secured bus a unit's subscription to the operations user's request is
# denied (the web writes the mode key itself), which the server reports once per unit.
EXPECTED = re.compile(r'permissions violation for subscription to "apis\.operationMode"', re.I)


@dataclass(frozen=True, slots=True)
class BusLoad:
    at: float  # seconds since sampling began
    consumers: int  # JetStream consumers, summed over the servers (each hosts its own)
    subscriptions: int  # the most any one server holds (each knows the cluster's interest)


async def bus_load(nats: NatsCluster, client: httpx.AsyncClient, at: float) -> BusLoad:
    consumers = subscriptions = 0
    for index, server in enumerate(nats.servers):
        if not nats.running(index):
            continue
        base = f"http://127.0.0.1:{server.monitor_port}"
        jsz = (await client.get(f"{base}/jsz", params={"consumers": "true"})).json()
        subsz = (await client.get(f"{base}/subsz")).json()
        consumers += int(jsz.get("consumers", 0))
        subscriptions = max(subscriptions, int(subsz.get("num_subscriptions", 0)))
    return BusLoad(at, consumers, subscriptions)


def bus_trouble(cluster: LocalCluster) -> dict[str, list[str]]:
    """The lines of each unit's log that tell of the bus failing it."""
    out = {}
    for name, child in cluster.units.items():
        lines = [
            line for line in child.log_text().splitlines()
            if BUS_TROUBLE.search(line) and not EXPECTED.search(line)
        ]
        if lines:
            out[name] = lines
    return out


def completed_deals(cluster: LocalCluster) -> set[str]:
    """Deals recorded as completed by E001 (it discharges in every deal)."""
    return {deal_id for deal_id, deal in deal_files(cluster, "E001").items() if completed(deal)}


def growth(samples: list[BusLoad], field: str) -> tuple[int, int]:
    """The largest value of the first half of the samples and of the second half."""
    half = len(samples) // 2
    values = [getattr(s, field) for s in samples]
    return max(values[:half]), max(values[half:])


def table(samples: list[BusLoad]) -> str:
    return "\n".join(
        f"{s.at:7.0f} s  consumers {s.consumers:5d}  subscriptions {s.subscriptions:5d}"
        for s in samples
    )


async def soak(
    cluster: LocalCluster, seconds: float, every: float, echo: bool = False
) -> list[BusLoad]:
    """Sample the servers every `every` s for `seconds`."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    samples: list[BusLoad] = []
    async with httpx.AsyncClient(timeout=10.0) as client:
        while True:
            sample = await bus_load(cluster.nats, client, loop.time() - start)
            samples.append(sample)
            if echo:
                print(table([sample]), flush=True)
            if sample.at >= seconds:
                return samples
            await asyncio.sleep(every)


async def test_soak_keeps_consumers_and_subscriptions_bounded(
    make_cluster: ClusterFactory,
) -> None:
    cluster = await make_cluster()
    observer = await Observer.connect(cluster)
    try:
        await observer.wait_lock(lambda lock: lock is not None, 60)
        await asyncio.sleep(WARM_UP_S)
        samples = await soak(cluster, SOAK_S, SAMPLE_EVERY_S)
        print(table(samples))
        assert len(samples) >= 4, samples
        report = f"{table(samples)}\n{observer.logs()}"

        assert bus_trouble(cluster) == {}, report
        first, second = growth(samples, "consumers")
        assert second <= first + CONSUMER_SLACK, f"consumers grow\n{report}"
        assert max(s.consumers for s in samples) <= CONSUMERS_PER_UNIT * len(cluster.units), (
            f"too many consumers\n{report}"
        )
        first, second = growth(samples, "subscriptions")
        assert second <= first + SUBSCRIPTION_SLACK, f"subscriptions grow\n{report}"

        # Still at work: a deal completes after the soak.
        before = completed_deals(cluster)

        async def a_new_deal_completed() -> bool:
            return bool(completed_deals(cluster) - before)

        await wait_for(a_new_deal_completed, 180, f"a deal completed after the soak\n{report}")
        assert bus_trouble(cluster) == {}, observer.logs()
        assert cluster.exited() == [], observer.logs()
    finally:
        await observer.close()
