"""The in-process recorder (`apis demo`'s records): an in-memory cluster on emulated hardware
and virtual time, its log lines (each its unit's), deal versions and unit data in a SQLite
store, through the receiver's checks, on the cluster's clock."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

from apis import clock
from apis.bus.base import JSON, Message
from apis.bus.memory import MemoryHub, cancel_and_wait
from apis.emulator import World
from apis.emulator.driver import EmulatedDriver
from apis.records import queries
from apis.records.inprocess import InProcessRecorder
from apis.records.sampler import Sampler
from apis.records.store import open_store
from apis.unit import lifecycle, subjects
from apis.unit.cluster import CURRENT_UNIT, InProcessCluster
from apis.unit.errors import ErrorRecord
from apis.unit.ids import seeded_ids
from tests.unit.harness import write_config

UNITS = ["E001", "E002", "E003", "E004"]
START = datetime(2026, 5, 4, 10, 0)
PERIOD_S = 30.0


def test_lines_deals_and_unit_data_of_an_in_process_cluster(tmp_path: Path) -> None:
    config = write_config(tmp_path, UNITS, policy={"operationMode": "heteronomous"})
    world = World([(u.unit_id, u.hw_config) for u in config.units], config.grid, seed=1,
                  start=START, initial_rsoc=[70.0, 50.0, 70.0, 50.0])
    for unit_id in UNITS:
        world.set_house_override(unit_id, pv_w=0.0, load_w=0.0)
    cluster = InProcessCluster(config, {u: EmulatedDriver(world, u) for u in UNITS}, seed=1,
                               ids=seeded_ids, label_handlers=True)
    store_path = tmp_path / "records.sqlite"
    recorder = InProcessRecorder(cluster, open_store(str(store_path)),
                                 clock=lambda: world.now().timestamp(),
                                 unit_data_period_s=PERIOD_S, figures_every_s=600.0,
                                 time_zone="Asia/Tokyo")

    async def main() -> tuple[str, float]:
        async with recorder.recording(), cluster.running():
            assert await cluster.wait_for(lambda: cluster.grid_master_unit() is not None, 120)
            deal = await cluster.inject_deal({
                "unitId": "E002", "negotiationId": "injected", "requestUnitId": "E002",
                "acceptUnitId": "E001", "type": "charge", "chargeUnitId": "E002",
                "dischargeUnitId": "E001", "dealGridCurrentA": 1.0, "dealAmountWh": 50,
            })
            # a LOCAL error for E003: taken by E003's handler of apis.error (a message
            # handler: its line is E003's, not the sender's)
            probe = cluster.hub.connect("probe")
            await probe.publish(subjects.ERROR, ErrorRecord(
                "E003", "HARDWARE", "LOCAL", "ERROR", "recorder test").to_json())
            assert await cluster.wait_for(
                lambda: any(f.deal.deal_id == deal.deal_id for f in cluster.finished), 1800)
            await asyncio.sleep(2 * PERIOD_S)
            await probe.close()
            return deal.deal_id, world.now().timestamp()

    deal_id, end = clock.run(main, "virtual")
    assert recorder.pending.dropped == 0 and len(recorder.pending) == 0
    store = open_store(str(store_path))
    try:
        lines = store.query("SELECT unit_id, at, level, logger, message, line FROM log_lines "
                            "ORDER BY seq")
        versions = store.query("SELECT revision, state, charge_unit_id, discharge_unit_id, "
                               "community_id, cumulate_amount_wh FROM deal_versions WHERE "
                               "deal_id = ? ORDER BY revision", (deal_id,))
        samples = store.query("SELECT unit_id, sampled_at, rsoc, converter_mode FROM unit_data")
        rejected = store.query("SELECT reason FROM rejected")
        summary = store.query("SELECT charge_unit_id, discharge_unit_id, completed_at, "
                              "charged_wh, discharged_wh FROM deal_summaries "
                              "WHERE deal_id = ?", (deal_id,))
        hours = store.query("SELECT unit_id, SUM(charged_wh), SUM(discharged_wh), "
                            "SUM(samples) FROM unit_hours GROUP BY unit_id ORDER BY unit_id")
        zone = queries.time_zone(store)
    finally:
        store.close()
    assert rejected == []
    # every line is its unit's action log line, at the cluster's (simulated) time
    assert lines and all(line.startswith(f"[[[apis-main:{unit}]]] ")
                         for unit, _, _, _, _, line in lines)
    assert {unit for unit, *_ in lines} <= set(UNITS)
    assert all(START.timestamp() <= at <= end + 1 for _, at, *_ in lines)
    # the Grid Master's deal lines come from the unit that was Grid Master then
    gm: str | None = None
    events = []
    for unit, _, _, logger, message, _ in lines:
        if logger != lifecycle.LOGGER_NAME:
            continue
        name, groups = next((n, m.groupdict()) for n, p in lifecycle.PATTERNS.items()
                            if (m := p.fullmatch(message)) is not None)
        if name == "grid master activated":
            assert groups["unitId"] == unit
            gm = unit
        elif name == "grid master deactivated":
            assert groups["unitId"] == unit == gm
            gm = None
        elif groups.get("dealId") == deal_id:
            events.append(name)
            if name != "deal created":  # the Mediator of the unit that took deal.create
                assert unit == gm, (name, unit, gm)
        elif name == "error received":
            assert (unit, groups["message"]) == ("E003", "recorder test")
            events.append(name)
    assert [e for e in events if e.startswith("deal")] == [
        "deal created", "deal activated", "deal ramped up", "deal started", "deal stopped",
        "deal deactivated", "deal disposed",
    ]
    assert "error received" in events
    assert any(level == "SEVERE" for _, _, level, *_ in lines)  # java.util.logging names
    # every version of the deal, in order, to its last (removal is not recorded here)
    assert [v[0] for v in versions] == sorted(v[0] for v in versions) and len(versions) >= 5
    states = [v[1] for v in versions]
    assert states[0] == "notActivated" and states[-1] == "deactivated"
    assert {"activated", "started", "stopped"} <= set(states)
    assert all(v[2:4] == ("E002", "E001") and v[4] is not None for v in versions)
    assert abs(versions[-1][5] - 50) <= 0.25
    # unit data of every unit, at instants aligned to the period of the cluster's clock
    assert {unit for unit, *_ in samples} == set(UNITS)
    assert all(at % PERIOD_S == 0 and START.timestamp() <= at <= end for _, at, _, _ in samples)
    assert all(rsoc is not None and mode for _, _, rsoc, mode in samples)
    # the derived figures, computed on the cluster's clock up to the end
    assert len(summary) == 1 and summary[0][:2] == ("E002", "E001"), summary
    assert summary[0][2] is not None and abs(summary[0][3] - 50) <= 0.25, summary
    assert [u for u, *_ in hours] == UNITS
    by_unit = {u: (charged, discharged, n) for u, charged, discharged, n in hours}
    # into E002's battery the deal's amount; out of E001's that and the converters' losses
    assert abs(by_unit["E002"][0] - summary[0][3]) < 0.01
    assert abs(by_unit["E001"][1] - summary[0][4]) < 0.01 and 50 < summary[0][4] < 65
    assert by_unit["E003"][:2] == by_unit["E004"][:2] == (0, 0)
    # every sample counted, but those within a period of the end (past the figures' horizon)
    horizon = end - PERIOD_S - 5
    assert all(n == sum(1 for u, at, *_ in samples if u == unit and at <= horizon)
               for unit, (_, _, n) in by_unit.items()), (by_unit, len(samples))
    assert zone == "Asia/Tokyo", zone


def test_lines_of_no_unit_are_not_kept_and_the_level_is_restored(tmp_path: Path) -> None:
    config = write_config(tmp_path, ["E001"])
    world = World([(u.unit_id, u.hw_config) for u in config.units], config.grid, start=START)
    cluster = InProcessCluster(config, {"E001": EmulatedDriver(world, "E001")},
                               label_handlers=True)
    store_path = tmp_path / "records.sqlite"
    recorder = InProcessRecorder(cluster, open_store(str(store_path)),
                                 clock=lambda: world.now().timestamp())
    apis_logger = logging.getLogger("apis")
    before = apis_logger.level

    async def main() -> None:
        web = cluster.connect("web")  # no unit's: its handlers' lines are nobody's

        async def on_web(message: Message) -> None:
            logging.getLogger("apis.web").warning("a line of the web's handler")

        await web.subscribe("apis.test.web", on_web)

        async def as_e001() -> None:  # E001's code: a message to the web, a line in a thread
            CURRENT_UNIT.set("E001")
            await cluster.hub.connect("E001").publish("apis.test.web", {})
            await asyncio.to_thread(
                logging.getLogger("apis.unit.test").warning, "a line of E001's thread")

        async with recorder.recording():
            logging.getLogger("apis.demo").warning("not a unit's line")
            await asyncio.create_task(as_e001())
            await asyncio.sleep(1)
        await web.close()

    clock.run(main, "virtual")
    assert apis_logger.level == before
    store = open_store(str(store_path))
    try:
        assert store.query("SELECT unit_id, logger, message FROM log_lines") == [
            ("E001", "apis.unit.test", "a line of E001's thread")]
    finally:
        store.close()


def test_a_clock_that_moves_in_steps_gives_each_instant_once() -> None:
    # An emulated world's time moves in steps behind the loop's: the sampler may wake before
    # its clock shows the instant it slept for, and must then go on to the next one.
    samples: list[tuple[str, float]] = []

    async def main() -> None:
        hub = MemoryHub()
        unit = hub.connect("E001")

        async def data(message: Message) -> JSON:
            return {"battery": {"rsoc": 50.0}}

        await unit.subscribe(subjects.controller_data("E001"), data)
        loop = asyncio.get_running_loop()
        origin = loop.time()

        def stepped() -> float:  # 7 s steps
            return START.timestamp() + (loop.time() - origin) // 7 * 7

        async def deliver(unit_id: str, sampled_at: float, payload: dict[str, Any]) -> bool:
            samples.append((unit_id, sampled_at))
            return True

        sampler = Sampler(hub.connect("records"), None, 10.0, lambda: ["E001"],
                          deliver=deliver, clock=stepped)
        task = asyncio.create_task(sampler.run())
        await asyncio.sleep(200)
        await cancel_and_wait([task])
        await unit.close()

    clock.run(main, "virtual")
    instants = [at for _, at in samples]
    assert len(instants) >= 15 and instants == sorted(set(instants)), instants
    assert all(at % 10 == 0 for at in instants)
    assert {u for u, _ in samples} == {"E001"}
