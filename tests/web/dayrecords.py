"""The records of one simulated day, for the history page's browser test.

The real unit code of a small generated community runs on the in-memory bus with the
emulated world and a virtual clock, as `apis sim` runs it (a day takes about half a minute
of CPU). Beside the units, a recorder does what `apis records` does on NATS, through the
same decoders: every write of the deal registry (its key-value watch, each revision) goes
through `inbound.deal_row`, and every `period_s` the Grid Master's `data.all` through
`inbound.unit_data_fields`, into a records store. Times are the simulated calendar's,
taken as UTC. At the end the derived figures are computed over the whole day.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from apis import clock
from apis.bus.base import Bus, BusError
from apis.bus.memory import MemoryHub
from apis.records.figures import FigureSettings, compute_pass
from apis.records.inbound import Delivery, deal_row, unit_data_fields
from apis.records.store import DealRow, Row, UnitDataRow, open_store
from apis.sim.community import SimSettings, community
from apis.sim.driver import WorldStepper, sim_drivers
from apis.sim.run import build_world
from apis.unit import subjects
from apis.unit.cluster import InProcessCluster
from apis.unit.ids import seeded_ids
from apis.unit.registry import DEALS_BUCKET

START = datetime(2026, 1, 1)


@dataclass
class DayRecords:
    unit_ids: list[str]
    samples: int
    versions: int
    deals: int
    start: float  # epoch of the simulated day's start
    end: float


async def _record_deals(bus: Bus, rows: list[Row], epoch: Any) -> None:
    kv = await bus.kv(DEALS_BUCKET)
    seq = 0
    last_revision: dict[str, int] = {}
    async for change in kv.watch():
        seq += 1
        at = epoch()
        if change.entry is None:  # removed: recorded as the registry's DEL would be
            revision = last_revision.get(change.key, 0) + 1
            headers = {"Nats-Stream-Source": f"KV_apis_deals {revision}", "KV-Operation": "DEL"}
            data = b""
        else:
            revision = change.entry.revision
            last_revision[change.key] = revision
            headers = {"Nats-Stream-Source": f"KV_apis_deals {revision}"}
            data = json.dumps(change.entry.value).encode()
        delivery = Delivery(f"$KV.apis_deals.{change.key}", data, headers, seq, at)
        rows.append(deal_row(delivery, lambda _unit: ("apis_community", "apis_cluster")))


async def _sample(bus: Bus, rows: list[Row], epoch: Any, period_s: float) -> None:
    while True:
        now = epoch()
        next_at = (now // period_s + 1) * period_s
        await asyncio.sleep(next_at - now)
        with contextlib.suppress(BusError):
            answer = await bus.request(subjects.GRID_MASTER_DATA_ALL, timeout=5.0)
            if isinstance(answer, dict):
                for unit_id, data in sorted(answer.items()):
                    if isinstance(data, dict):
                        rows.append(unit_data_fields(unit_id, round(next_at, 3), data))


def record_simulated_day(store_url: str, *, units: int = 4, days: float = 1.0, seed: int = 0,
                         period_s: float = 60.0) -> DayRecords:
    settings = SimSettings(units=units, days=days, seed=seed, start=START)
    epoch0 = START.replace(tzinfo=UTC).timestamp()
    rows: list[Row] = []
    with community(settings) as cluster:
        world = build_world(settings, cluster)
        stepper = WorldStepper(world, quiet_step_s=settings.quiet_step_s)

        async def main() -> None:
            stepper.attach()
            loop = asyncio.get_running_loop()
            origin = loop.time()

            def epoch() -> float:
                return epoch0 + loop.time() - origin

            hub = MemoryHub()
            members = InProcessCluster(cluster, sim_drivers(stepper), hub=hub, seed=seed,
                                       ids=seeded_ids, deal_logging=False)
            recorder = hub.connect("records")
            async with members.running():
                tasks = [asyncio.create_task(_record_deals(recorder, rows, epoch)),
                         asyncio.create_task(_sample(recorder, rows, epoch, period_s))]
                await asyncio.sleep(settings.duration_s - (loop.time() - origin))
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            await recorder.close()

        clock.run(main, "virtual")
        unit_ids = list(cluster.unit_ids)
    samples = [r for r in rows if isinstance(r, UnitDataRow)]
    versions = [r for r in rows if isinstance(r, DealRow)]
    batches: dict[float, list[Row]] = {}  # committed a minute at a time, as they came
    for row in [*samples, *versions]:
        at = row.sampled_at if isinstance(row, UnitDataRow) else row.reported_at
        batches.setdefault(at // 60 * 60 + 61.0, []).append(row)
    store = open_store(store_url)
    try:
        for stored_at, batch in sorted(batches.items()):
            store.write(batch, stored_at)
        end = epoch0 + settings.duration_s
        figures = FigureSettings(period_s=period_s, span_s=2 * 86_400)
        # the horizon just before the day's end: no hour of the next day is expected yet
        compute_pass(store, end - 30 + figures.grace_s, figures)
        deals = store.query("SELECT COUNT(*) FROM deal_summaries")[0][0]
    finally:
        store.close()
    return DayRecords(unit_ids, len(samples), len(versions), int(deals), epoch0, end)
