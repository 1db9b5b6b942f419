"""Milliseconds per Grid Master lease operation: through the lease service on the secured bus
(one nats-server with TLS and permissions, one `apis lease-service` process) against the
unit's own compare-and-set on a plain nats-server, both on 127.0.0.1.

    python benchmarks/lease_service.py [--renewals 200]

Prints the median and the 99th percentile of acquire+stamp, renew and release, and the
ratio of the two paths. The Grid Master renews every second and may wait 1 s for an answer
(`apis.unit.leaseclient.LEASE_REQUEST_TIMEOUT_S`): the figures say how far below that it is.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from apis.bus.nats import NatsBus
from apis.process.cluster import LocalCluster
from apis.unit.leaseclient import LeaseServiceClient
from apis.unit.registry import Registry


async def measure(registry: Registry, renewals: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"acquire": [], "renew": [], "release": []}
    for _ in range(max(1, renewals // 20)):
        began = time.perf_counter()
        lock = await registry.acquire_grid_master("E001")
        out["acquire"].append(time.perf_counter() - began)
        for _ in range(20):
            began = time.perf_counter()
            lock = await registry.renew_grid_master(lock)
            out["renew"].append(time.perf_counter() - began)
        began = time.perf_counter()
        assert await registry.release_grid_master("E001")
        out["release"].append(time.perf_counter() - began)
    return out


async def path(root: Path, secure: bool, renewals: int) -> dict[str, list[float]]:
    cluster = LocalCluster(root, units=2, servers=1, start_units=False, secure=secure)
    await cluster.start()
    try:
        tls = cluster.tls_context("E001") if secure else None
        bus = await NatsBus.connect(cluster.nats.urls, name="E001", tls=tls)
        try:
            client = LeaseServiceClient(bus, "E001") if secure else None
            registry = await Registry.open(bus, client)
            await measure(registry, 20)  # warm up
            return await measure(registry, renewals)
        finally:
            await bus.close()
    finally:
        await cluster.stop()


def ms(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return f"median {statistics.median(ordered) * 1000:6.2f} ms, p99 {p99 * 1000:6.2f} ms"


async def main(renewals: int) -> None:
    with tempfile.TemporaryDirectory(prefix="apis-lease-bench-") as temp:
        direct = await path(Path(temp) / "direct", False, renewals)
        service = await path(Path(temp) / "service", True, renewals)
    for op in ("acquire", "renew", "release"):
        ratio = statistics.median(service[op]) / statistics.median(direct[op])
        print(f"{op:8s} direct: {ms(direct[op])}   service: {ms(service[op])}   "
              f"ratio {ratio:.1f}x  ({len(service[op])} each)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--renewals", type=int, default=200)
    asyncio.run(main(parser.parse_args().renewals))
