"""The cluster on NATS for hours: JetStream consumers, subscriptions and bus errors over time.

    .venv/bin/python benchmarks/nats_soak.py [--hours 6] [--every 60] [--fast]

Starts a local cluster (3 nats-servers with JetStream, the emulator server, 4 `apis unit`
processes on 127.0.0.1) with the default policy of `apis config init` (5 s periods; `--fast`:
the 1 s periods of tests/cluster), then every `--every` seconds prints the servers'
consumer count (``/jsz``, summed over the servers), the largest subscription count of a
server (``/subsz``), the deals E001 has logged and completed and the energy they moved (a deal of
the default policy, 350 Wh at about 330 W, takes an hour), and the unit log lines that tell
of the bus failing (``maximum consumers``, ``deals unreadable``, ...). At the end: the largest
counts of the first and the second half, and the verdict; exits 1 if the counts grew or a
unit logged bus trouble. tests/cluster/test_soak_nats.py is the short version, with asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apis.process.cluster import LocalCluster
from tests.cluster.conftest import FAST_POLICY, IDLE, RSOC, deal_files
from tests.cluster.test_soak_nats import (
    CONSUMER_SLACK,
    SUBSCRIPTION_SLACK,
    BusLoad,
    bus_load,
    bus_trouble,
    completed_deals,
    growth,
)


async def run(directory: Path, hours: float, every: float, fast: bool, units: int) -> int:
    options: dict[str, Any] = {}
    if fast:
        options = {"policy": FAST_POLICY, "rsoc": RSOC, "houses": False, "idle_units": IDLE}
    cluster = LocalCluster(directory, units, **options)
    await cluster.start()
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        samples: list[BusLoad] = []
        print("elapsed    consumers  subscriptions  deals-logged  deals-completed  deal-Wh  "
              "bus-trouble-lines", flush=True)
        async with httpx.AsyncClient(timeout=10.0) as client:
            while True:
                sample = await bus_load(cluster.nats, client, loop.time() - start)
                samples.append(sample)
                trouble = sum(len(lines) for lines in bus_trouble(cluster).values())
                deals = deal_files(cluster, "E001")
                wh = sum(float(deal.get("cumulateAmountWh") or 0) for deal in deals.values())
                print(f"{sample.at / 60:6.1f} min {sample.consumers:10d} "
                      f"{sample.subscriptions:14d} {len(deals):13d} "
                      f"{len(completed_deals(cluster)):16d} {wh:8.1f} {trouble:18d}", flush=True)
                if sample.at >= hours * 3600 or cluster.exited():
                    break
                await asyncio.sleep(every)
        trouble_lines = bus_trouble(cluster)
        for name, lines in trouble_lines.items():
            print(f"{name}: {len(lines)} bus trouble lines, first: {lines[0]}")
        if cluster.exited():
            print(f"exited early: {cluster.exited()}")
        ok = not trouble_lines and not cluster.exited()
        if len(samples) >= 4:
            warm = samples[1:]  # the first sample may be before every watcher is up
            for field, slack in (("consumers", CONSUMER_SLACK),
                                 ("subscriptions", SUBSCRIPTION_SLACK)):
                first, second = growth(warm, field)
                grew = second > first + slack
                ok = ok and not grew
                print(f"{field}: max first half {first}, max second half {second}"
                      f"{'  GREW' if grew else ''}")
        print(f"deals completed: {len(completed_deals(cluster))}; "
              f"{'OK' if ok else 'FAILED'} after {samples[-1].at / 3600:.2f} h")
        return 0 if ok else 1
    finally:
        await cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=6.0)
    parser.add_argument("--every", type=float, default=60.0, help="seconds between samples")
    parser.add_argument("--units", type=int, default=4)
    parser.add_argument("--fast", action="store_true", help="1 s periods (tests/cluster)")
    parser.add_argument("--dir", type=Path, help="keep the cluster's files here")
    args = parser.parse_args()
    if args.dir is not None:
        sys.exit(asyncio.run(run(args.dir, args.hours, args.every, args.fast, args.units)))
    with tempfile.TemporaryDirectory(prefix="apis-nats-soak-") as tmp:
        sys.exit(asyncio.run(run(Path(tmp), args.hours, args.every, args.fast, args.units)))


if __name__ == "__main__":
    main()
