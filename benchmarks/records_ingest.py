"""What the records receiver commits: records per second, and the lag from publish to commit.

Run: .venv/bin/python benchmarks/records_ingest.py [--seconds 60] [--units 20,100]
     [--line-period 1.0] [--data-period 5.0] [--backlog 20000] [--stores sqlite,postgresql]

On a real nats-server (one, on 127.0.0.1) with `apis records` as its own process, for each
store (a SQLite file; a PostgreSQL server started here on 127.0.0.1, fsync on) and each
number of simulated units:

- steady: every unit publishes an action log line (the apis-main format, on
  ``apis.<id>.log``) every `--line-period` s, and a simulated Grid Master answers
  ``apis.GridMaster.data.all`` with every unit's data, which the receiver samples every
  `--data-period` s. For `--seconds`, then until every record is stored. Lag = the row's
  ``stored_at`` (taken as the receiver's transaction begins) minus the line's own time
  (when it was published) or the sample's time; p50 / p95 / max.
- backlog: with the receiver stopped, `--backlog` lines are published (100 units); then the
  receiver starts and the commit rate is the backlog over the span of its ``stored_at``.

Prints a table; nothing is asserted (a shared machine: read the ratios).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import nats
import nats.js.errors

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/pgserver.py

from apis.bus.natsserver import NatsCluster  # noqa: E402
from apis.process.cluster import ChildProcess  # noqa: E402
from apis.records.store import RecordStore, open_store  # noqa: E402
from apis.records.streams import LOG_STREAM  # noqa: E402
from tests.pgserver import postgres_server, unavailable  # noqa: E402


def line(unit_id: str, n: int) -> str:
    when = datetime.now().astimezone().isoformat(timespec="milliseconds")
    return (f"[[[apis-main:{unit_id}]]] [MainThread/acquisition] {when} INFO "
            f"[apis.unit.controller]  benchmark line {n} of {unit_id}")


def unit_data(unit_id: str, n: int) -> dict[str, Any]:
    return {
        "apis": {"version": "3.0.0", "remaining_capacity_wh": 2876,
                 "deal_interlock_capacity": 2,
                 "operation_mode": {"global": "autonomous", "local": None,
                                    "effective": "autonomous"}},
        "oesunit": {"communityId": "bench", "clusterId": "bench", "id": unit_id,
                    "display": unit_id, "sn": "1", "budo": "1", "ip": "NA"},
        "battery": {"rsoc": 50.0 + n % 10, "battery_operation_status": 3},
        "dcdc": {"status": {"status": "0x0000", "alarmState": "No alarm",
                            "operationMode": "Waiting"},
                 "meter": {"wg": 0.0, "tmp": 25.0, "vb": 52.0, "wb": 10.0, "vg": 350.0,
                           "ib": 0.2, "ig": 0.0},
                 "vdis": {"dvg": 350.0, "drg": 0.0}, "param": {"dig": 3.0}},
        "emu": {"pvc_charge_power": 120.0, "ups_output_power": 300.0},
        "time": time.strftime("%Y/%m/%d-%H:%M:%S"),
        "timestamp": time.time(),
    }


def receiver(url: str, store: str, data_period: float, log_path: Path) -> ChildProcess:
    return ChildProcess(
        "records",
        [sys.executable, "-m", "apis", "records", "--bus", url, "--store", store,
         "--unit-data-period", str(data_period), "--log-level", "WARNING"],
        log_path,
    )


async def wait_streams(nc: nats.NATS, timeout: float = 60.0) -> None:
    js = nc.jetstream()
    deadline = time.monotonic() + timeout
    while True:
        try:
            await js.stream_info(LOG_STREAM)
            return
        except nats.js.errors.NotFoundError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def wait_count(store: RecordStore, table: str, count: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while store.query(f"SELECT COUNT(*) FROM {table}")[0][0] < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{table}: fewer than {count} rows after {timeout} s")
        await asyncio.sleep(0.2)


def percentiles(values: Sequence[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return (f"{statistics.median(ordered) * 1000:6.0f} {p95 * 1000:6.0f} "
            f"{ordered[-1] * 1000:6.0f}")


@contextlib.asynccontextmanager
async def store_url(kind: str, directory: Path) -> AsyncIterator[str]:
    if kind == "sqlite":
        yield str(directory / "records.sqlite")
        return
    async with postgres_server(fsync=True) as server:
        yield server.url


def clear(url: str) -> None:
    """An empty store for the next case."""
    if url.startswith("postgresql://"):
        import psycopg

        open_store(url).close()  # the schema
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("TRUNCATE log_lines, unit_data, deal_versions, rejected")
        return
    for suffix in ("", "-wal", "-shm"):
        Path(url + suffix).unlink(missing_ok=True)


async def steady(url: str, store: str, units: int, seconds: float, line_period: float,
                 data_period: float, directory: Path) -> dict[str, Any]:
    ids = [f"B{i:03d}" for i in range(1, units + 1)]
    connections = [await nats.connect(url, name=unit_id) for unit_id in ids]
    gm = connections[0]
    counter = [0]

    async def data_all(msg: Any) -> None:
        counter[0] += 1
        answer = {unit_id: unit_data(unit_id, counter[0]) for unit_id in ids}
        await gm.publish(msg.reply, json.dumps(answer).encode())

    sub = await gm.subscribe("apis.GridMaster.data.all", cb=data_all)
    child = receiver(url, store, data_period, directory / f"records-{units}.log")
    child.start()
    published = 0
    try:
        await wait_streams(gm)

        async def publisher(nc: nats.NATS, unit_id: str, offset: float) -> int:
            await asyncio.sleep(offset)
            n = 0
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                payload = {"unitId": unit_id, "line": line(unit_id, n)}
                await nc.publish(f"apis.{unit_id}.log", json.dumps(payload).encode())
                n += 1
                await asyncio.sleep(line_period)
            await nc.flush()
            return n

        started = time.time()
        counts = await asyncio.gather(*(
            publisher(nc, unit_id, line_period * i / units)
            for i, (nc, unit_id) in enumerate(zip(connections, ids, strict=True))
        ))
        published = sum(counts)
        rows = open_store(store)
        try:
            await wait_count(rows, "log_lines", published)
            lags = [r[0] for r in rows.query("SELECT stored_at - at FROM log_lines")]
            samples = rows.query("SELECT stored_at - sampled_at FROM unit_data")
            total = rows.query("SELECT COUNT(*) FROM log_lines")[0][0] + len(samples)
        finally:
            rows.close()
        span = time.time() - started
    finally:
        await sub.unsubscribe()
        await child.stop(grace=20)
        for nc in connections:
            await nc.close()
    return {"published": published, "samples": len(samples), "rate": total / span,
            "line_lag": lags, "data_lag": [s[0] for s in samples]}


async def backlog(url: str, store: str, count: int, directory: Path) -> dict[str, Any]:
    nc = await nats.connect(url)
    try:
        child = receiver(url, store, 3600.0, directory / "records-backlog.log")
        child.start()  # makes the streams, then is stopped: the lines wait in the stream
        await wait_streams(nc)
        await child.stop(grace=20)
        for n in range(count):
            unit_id = f"B{n % 100 + 1:03d}"
            payload = {"unitId": unit_id, "line": line(unit_id, n)}
            await nc.publish(f"apis.{unit_id}.log", json.dumps(payload).encode())
            if n % 1000 == 999:
                await nc.flush()
        await nc.flush()
        js = nc.jetstream()
        while (await js.stream_info(LOG_STREAM)).state.messages < count:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        started = time.time()
        child.start()
        rows = open_store(store)
        try:
            await wait_count(rows, "log_lines", count)
            first, last = rows.query("SELECT MIN(stored_at), MAX(stored_at) FROM log_lines")[0]
        finally:
            rows.close()
        wall = time.time() - started
        await child.stop(grace=20)
    finally:
        await nc.close()
    return {"count": count, "rate": count / max(last - first, 1e-6), "wall": wall}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--units", default="20,100")
    parser.add_argument("--line-period", type=float, default=1.0)
    parser.add_argument("--data-period", type=float, default=5.0)
    parser.add_argument("--backlog", type=int, default=20_000)
    parser.add_argument("--stores", default="sqlite,postgresql")
    args = parser.parse_args()
    unit_counts = [int(x) for x in args.units.split(",")]
    kinds = [k for k in args.stores.split(",") if k]
    if "postgresql" in kinds and unavailable() is not None:
        print(f"postgresql skipped: {unavailable()}")
        kinds.remove("postgresql")
    print(f"each unit: a log line every {args.line_period:g} s; unit data sampled every "
          f"{args.data_period:g} s; {args.seconds:g} s per case; lag in ms (p50 p95 max)")
    print(f"{'store':<11} {'units':>5} {'lines':>7} {'samples':>7} {'rec/s':>7}  "
          f"{'line lag p50 p95 max':>20}  {'data lag p50 p95 max':>20}")
    results = []
    with tempfile.TemporaryDirectory(prefix="apis-records-bench-") as temp:
        directory = Path(temp)
        for kind in kinds:
            async with store_url(kind, directory) as store:
                for units in unit_counts:
                    clear(store)
                    async with NatsCluster(1, directory=directory / f"nats-{kind}-{units}") as ns:
                        r = await steady(ns.urls[0], store, units, args.seconds,
                                         args.line_period, args.data_period, directory)
                    print(f"{kind:<11} {units:>5} {r['published']:>7} {r['samples']:>7} "
                          f"{r['rate']:>7.0f}  {percentiles(r['line_lag']):>20}  "
                          f"{percentiles(r['data_lag']):>20}", flush=True)
                if args.backlog:
                    clear(store)
                    async with NatsCluster(1, directory=directory / f"nats-{kind}-b") as ns:
                        b = await backlog(ns.urls[0], store, args.backlog, directory)
                    results.append((kind, b))
    for kind, b in results:
        print(f"backlog {kind:<11}: {b['count']} lines committed at {b['rate']:.0f} records/s "
              f"({b['wall']:.1f} s from the receiver's start)")


if __name__ == "__main__":
    asyncio.run(main())
