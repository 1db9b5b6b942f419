"""Derived figures from hand-made records in a real store (SQLite and PostgreSQL): every
figure is worked out by hand below, and computing them in many small passes as the records
arrive gives the same rows as one pass over all of them."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import nats
import pytest

from apis.bus.natsserver import NatsCluster
from apis.records.energy import (
    DealVersion,
    Sample,
    deal_figures,
    downtimes,
    instants,
    integrate,
    spread,
)
from apis.records.figures import FigureSettings, compute_pass, read_state
from apis.records.receiver import Settings
from apis.records.store import DealRow, LogRow, RecordStore, Row, UnitDataRow, open_store
from tests.pgserver import PostgresServer, unavailable
from tests.records.test_receiver import nats_server, nc, receiving  # noqa: F401 (fixtures)

pytestmark = pytest.mark.timeout(300)

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
H = 3600.0
PERIOD = 60.0
NOW = T0 + 3 * H + 600  # 03:10; the horizon is 03:08:55 (one period and 5 s before)
SETTINGS = FigureSettings(period_s=PERIOD)


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "r.sqlite")
        return
    if unavailable() is not None:
        pytest.skip(str(unavailable()))
    server = PostgresServer()
    try:
        await server.start()
        yield server.url
    finally:
        await server.stop()


def fresh(url: str) -> RecordStore:
    """An empty store at `url` (PostgreSQL's database is shared by the tests of a module)."""
    store = open_store(url)
    for table in ("log_lines", "deal_versions", "unit_data", "rejected", "deal_summaries",
                  "deal_hours", "unit_hours", "unit_days", "unit_downtimes", "unit_spans",
                  "figure_state"):
        store.apply([(f"DELETE FROM {table}", [()])])
    return store


def sample(unit: str, at: float, *, pv: float | None = None, load: float | None = None,
           p2: float | None = None) -> UnitDataRow:
    data: dict[str, Any] = {"oesunit": {"id": unit}, "battery": {"rsoc": 50.0}}
    if p2 is not None:
        data["dcdc"] = {"powermeter": {"p1": 500.0, "p2": p2}}
    return UnitDataRow(unit, at, "c", "k", 50.0, 3, 350.0, 0.0, 0.0, 52.0, 0.0, 0.0,
                       "0x0000", "autonomous", pv, load, at, json.dumps(data))


_revision = iter(range(1, 1_000_000))


def version(deal_id: str, at: float, discharge: str, charge: str, **fields: Any) -> DealRow:
    deal = {"dealId": deal_id, "chargeUnitId": charge, "dischargeUnitId": discharge,
            "dealAmountWh": 200.0, "createDateTime": "2026/01/01-00:50:00", **fields}
    state = next((n for k, n in (("deactivateDateTime", "deactivated"),
                                 ("stopDateTime", "stopped"), ("startDateTime", "started"),
                                 ("activateDateTime", "activated")) if k in deal),
                 "notActivated")
    return DealRow(deal_id, next(_revision), "PUT", at, "c", "k", charge, discharge, state,
                   deal.get("cumulateAmountWh"), json.dumps(deal))


def removal(deal_id: str, at: float) -> DealRow:
    return DealRow(deal_id, next(_revision), "DEL", at, None, None, None, None, None, None,
                   None)


def records() -> list[Row]:
    """Two units sampled every minute and two deals between them, 00:00..03:00 UTC.

    E001: samples 00:00..02:59 except 01:10..01:19 (ten missed); PV 600 W throughout; the AC
    meter draws 360 W in hour 0 (00:00..00:59 only); load 1000 W in hour 2 only.
    E002: samples 01:30..02:59, nothing but the battery.
    d1: E001 -> E002, created 00:50, started 00:55, counts at 01:05 and 01:15, deactivated
    01:20, removed 01:21. d2 (the original's form, one count): E002 -> E001, 02:10..02:47,
    aborted at 02:45."""
    rows: list[Row] = []
    for k in range(180):
        at = T0 + k * PERIOD
        if 70 <= k < 80:
            continue
        rows.append(sample("E001", at, pv=600.0, load=1000.0 if k >= 120 else None,
                           p2=360.0 if k < 60 else None))
    rows += [sample("E002", T0 + k * PERIOD) for k in range(90, 180)]
    start = {"activateDateTime": "a", "rampUpDateTime": "r", "startDateTime": "s"}
    rows += [
        version("d1", T0 + 3000, "E001", "E002"),
        version("d1", T0 + 3300, "E001", "E002", **start, cumulateAmountWh=0.0,
                chargeUnitCumulateAmountWh=0.0, dischargeUnitCumulateAmountWh=0.0),
        version("d1", T0 + 3900, "E001", "E002", **start, cumulateAmountWh=95.0,
                chargeUnitCumulateAmountWh=95.0, dischargeUnitCumulateAmountWh=100.0),
        version("d1", T0 + 4500, "E001", "E002", **start, cumulateAmountWh=190.0,
                chargeUnitCumulateAmountWh=190.0, dischargeUnitCumulateAmountWh=200.0),
        version("d1", T0 + 4800, "E001", "E002", **start, cumulateAmountWh=190.0,
                chargeUnitCumulateAmountWh=190.0, dischargeUnitCumulateAmountWh=200.0,
                stopDateTime="t", deactivateDateTime="d"),
        removal("d1", T0 + 4860),
        version("d2", T0 + 7800, "E002", "E001"),
        version("d2", T0 + 8400, "E002", "E001", **start, cumulateAmountWh=0.0),
        version("d2", T0 + 9600, "E002", "E001", **start, cumulateAmountWh=30.0),
        version("d2", T0 + 9900, "E002", "E001", **start, cumulateAmountWh=30.0,
                stopDateTime="t", abortDateTime="x", abortReason="test abort"),
        version("d2", T0 + 9960, "E002", "E001", **start, cumulateAmountWh=30.0,
                stopDateTime="t", abortDateTime="x", abortReason="test abort",
                deactivateDateTime="d"),
        removal("d2", T0 + 10020),
    ]
    return rows


def time_of(row: Row) -> float:
    if isinstance(row, UnitDataRow):
        return row.sampled_at
    if isinstance(row, LogRow):
        return row.at
    assert isinstance(row, DealRow)
    return row.reported_at


HOUR_COLUMNS = ("charged_wh", "discharged_wh", "bought_wh", "sold_wh", "pv_wh", "load_wh",
                "deals_made", "deals_completed", "deals_aborted", "samples",
                "expected_samples")


def hours(store: RecordStore, unit: str) -> dict[float, dict[str, Any]]:
    return {row[0] - T0: dict(zip(HOUR_COLUMNS, row[1:], strict=True)) for row in store.query(
        f"SELECT hour_start, {', '.join(HOUR_COLUMNS)} FROM unit_hours WHERE unit_id = ? "
        "ORDER BY hour_start", [unit])}


def days(store: RecordStore) -> dict[tuple[str, str], dict[str, Any]]:
    return {(row[0], row[1]): {"day_start": row[2], **dict(zip(HOUR_COLUMNS, row[3:],
                                                               strict=True))}
            for row in store.query(f"SELECT unit_id, day, day_start, {', '.join(HOUR_COLUMNS)} "
                                   "FROM unit_days ORDER BY unit_id, day")}


def figure(charged: float = 0.0, discharged: float = 0.0, bought: float | None = None,
           sold: float | None = None, pv: float | None = None, load: float | None = None,
           made: int = 0, completed: int = 0, aborted: int = 0, samples: int = 0,
           expected: int | None = None) -> dict[str, Any]:
    return dict(zip(HOUR_COLUMNS, (charged, discharged, bought, sold, pv, load, made,
                                   completed, aborted, samples, expected), strict=True))


def same(got: dict[Any, dict[str, Any]], want: dict[Any, dict[str, Any]]) -> None:
    assert got.keys() == want.keys()
    for key in want:
        for name, value in want[key].items():
            if isinstance(value, float):
                assert got[key][name] == pytest.approx(value, rel=1e-12, abs=1e-9), (key, name)
            else:
                assert got[key][name] == value, (key, name, got[key][name])


def dump(store: RecordStore) -> dict[str, list[tuple[Any, ...]]]:
    """Every figure table, floats rounded (sums may add in another order)."""
    def norm(value: Any) -> Any:
        return round(float(value), 6) if isinstance(value, float) else value

    out = {}
    for table, key in (("deal_summaries", "deal_id"), ("deal_hours", "deal_id, unit_id, "
                       "hour_start"), ("unit_hours", "unit_id, hour_start"),
                       ("unit_days", "unit_id, day"), ("unit_downtimes", "unit_id, start_at"),
                       ("unit_spans", "unit_id")):
        out[table] = [tuple(norm(v) for v in row)
                      for row in store.query(f"SELECT * FROM {table} ORDER BY {key}")]
    return out


def write_all(store: RecordStore, rows: Iterable[Row]) -> None:
    rows = list(rows)
    store.write(rows, max(time_of(r) for r in rows) + 1.0)


# ---- the figures, worked out by hand ------------------------------------------------------


async def test_figures_of_hand_made_records_are_exactly_as_worked_out(store_url: str) -> None:
    store = fresh(store_url)
    try:
        write_all(store, records())
        result = compute_pass(store, NOW, SETTINGS)
        assert result.caught_up and result.deals == 2
        assert result.horizon == NOW - PERIOD - 5.0
        # E001 discharges d1: 100 Wh counted over 00:55..01:05 (half in each hour), 100 Wh
        # over 01:05..01:15; it charges d2's 30 Wh in hour 2. PV 600 W: 60 minutes of pairs
        # in hour 0; in hour 1 nine minutes, the gap 01:09..01:20 (not integrated), then 40
        # minutes; hour 2 has 59 minutes (no sample at 03:00). The meter's 360 W: 59 minutes
        # (00:59..01:00 has no p2 at 01:00). Load 1000 W over the 59 minutes of hour 2.
        same(hours(store, "E001"), {
            0: figure(discharged=50.0, bought=354.0, sold=0.0, pv=600.0, made=1, samples=60,
                      expected=60),
            H: figure(discharged=150.0, pv=490.0, completed=1, samples=50, expected=60),
            2 * H: figure(charged=30.0, pv=590.0, load=59 * 60 * 1000.0 / 3600, made=1,
                          aborted=1, samples=60, expected=60),
            3 * H: figure(samples=0, expected=9),  # 03:00..03:08 expected, none came
        })
        # E002 charges d1 (its own count: 95 + 95 Wh) and discharges d2; sampled from 01:30.
        same(hours(store, "E002"), {
            0: figure(charged=47.5, made=1, expected=0),
            H: figure(charged=142.5, completed=1, samples=30, expected=30),
            2 * H: figure(discharged=30.0, made=1, aborted=1, samples=60, expected=60),
            3 * H: figure(expected=9),
        })
        same(days(store), {
            ("E001", "2026-01-01"): {"day_start": T0, **figure(
                charged=30.0, discharged=200.0, bought=354.0, sold=0.0, pv=1680.0,
                load=59 * 60 * 1000.0 / 3600, made=2, completed=1, aborted=1, samples=170,
                expected=189)},
            ("E002", "2026-01-01"): {"day_start": T0, **figure(
                charged=190.0, discharged=30.0, made=2, completed=1, aborted=1, samples=90,
                expected=99)},
        })
        assert store.query("SELECT unit_id, start_at, end_at, missing_samples FROM "
                           "unit_downtimes ORDER BY unit_id, start_at") == [
            ("E001", T0 + 4200, T0 + 4800, 10),  # 01:10 .. the sample at 01:20
            ("E001", T0 + 10800, None, 9),  # from 03:00, not back at the horizon
            ("E002", T0 + 10800, None, 9),
        ]
        summaries = store.query(
            "SELECT deal_id, charge_unit_id, discharge_unit_id, created_at, started_at, "
            "ended_at, completed_at, aborted_at, abort_reason, state, removed, charged_wh, "
            "discharged_wh, versions, community_id FROM deal_summaries ORDER BY deal_id")
        assert summaries == [
            ("d1", "E002", "E001", T0 + 3000, T0 + 3300, T0 + 4800, T0 + 4800, None, None,
             "deactivated", 1, 190.0, 200.0, 6, "c"),
            ("d2", "E001", "E002", T0 + 7800, T0 + 8400, T0 + 9960, None, T0 + 9900,
             "test abort", "deactivated", 1, 30.0, 30.0, 6, "c"),
        ]
        assert store.query("SELECT unit_id, first_sampled_at, last_sampled_at FROM unit_spans "
                           "ORDER BY unit_id") == [("E001", T0, T0 + 179 * PERIOD),
                                                   ("E002", T0 + 90 * PERIOD,
                                                    T0 + 179 * PERIOD)]
        state = read_state(store)
        assert state["stored_through"][0] == NOW and state["time_zone"][1] == "UTC"
        # the same pass again changes nothing
        before = dump(store)
        compute_pass(store, NOW, SETTINGS)
        assert dump(store) == before
    finally:
        store.close()


async def test_many_small_passes_as_records_arrive_equal_one_pass_over_all(
    store_url: str, tmp_path: Path
) -> None:
    """Records stored a second after their time, a pass every 7 minutes (and one at the
    end): the same rows as one pass over everything, however the passes cut the records."""
    rows = sorted(records(), key=time_of)
    once = open_store(str(tmp_path / "once.sqlite"))
    store = fresh(store_url)
    try:
        write_all(once, rows)
        compute_pass(once, NOW, SETTINGS)
        now = T0 - 300
        pending = list(rows)
        while now < NOW:
            now = min(now + 420, NOW)
            due = [r for r in pending if time_of(r) + 1.0 <= now]
            pending = [r for r in pending if time_of(r) + 1.0 > now]
            for at in sorted({time_of(r) for r in due}):  # each its own commit
                store.write([r for r in due if time_of(r) == at], at + 1.0)
            compute_pass(store, now, SETTINGS)
        assert not pending
        incremental, whole = dump(store), dump(once)
        assert incremental == whole
        assert len(whole["unit_hours"]) == 8 and len(whole["unit_downtimes"]) == 3
    finally:
        store.close()
        once.close()


async def test_a_time_zone_splits_days_at_its_midnight_and_a_new_zone_redoes_them(
    store_url: str,
) -> None:
    """A deal from 14:30 to 15:30 UTC: one UTC day; in Tokyo (UTC+9) midnight falls at
    15:00 UTC, so half of it is on 1 January and half on 2 January."""
    store = fresh(store_url)
    start = {"activateDateTime": "a", "startDateTime": "s"}
    rows: list[Row] = [
        version("d9", T0 + 14.5 * H, "E003", "E004", **start, cumulateAmountWh=0.0),
        version("d9", T0 + 15.5 * H, "E003", "E004", **start, cumulateAmountWh=80.0,
                deactivateDateTime="d"),
    ]
    try:
        write_all(store, rows)
        now = T0 + 16 * H
        compute_pass(store, now, FigureSettings(period_s=PERIOD, time_zone="Asia/Tokyo"))
        got = {key: (v["day_start"], v["charged_wh"], v["deals_made"], v["deals_completed"])
               for key, v in days(store).items()}
        assert got == {
            ("E003", "2026-01-01"): (T0 - 9 * H, 0.0, 1, 0),
            ("E003", "2026-01-02"): (T0 + 15 * H, 0.0, 0, 1),
            ("E004", "2026-01-01"): (T0 - 9 * H, 40.0, 1, 0),
            ("E004", "2026-01-02"): (T0 + 15 * H, 40.0, 0, 1),
        }
        compute_pass(store, now + 60, FigureSettings(period_s=PERIOD, time_zone="UTC"))
        got = {key: (v["day_start"], v["charged_wh"], v["discharged_wh"])
               for key, v in days(store).items()}
        assert got == {("E003", "2026-01-01"): (T0, 0.0, 80.0),
                       ("E004", "2026-01-01"): (T0, 80.0, 0.0)}
        with pytest.raises(ValueError, match="time zone = 'Mars/Olympus'"):
            FigureSettings(time_zone="Mars/Olympus")
    finally:
        store.close()


async def test_a_pass_covers_a_bounded_span_and_catches_up_in_several(store_url: str) -> None:
    store = fresh(store_url)
    try:
        for row in records():  # stored as they happened
            store.write([row], time_of(row) + 1.0)
        settings = FigureSettings(period_s=PERIOD, span_s=H)
        passes = []
        while True:
            result = compute_pass(store, NOW, settings)
            passes.append(result.stored_through)
            if result.caught_up:
                break
        assert passes == [T0 + 1.0 + H, T0 + 1.0 + 2 * H, T0 + 1.0 + 3 * H, NOW]
        assert hours(store, "E001")[H]["pv_wh"] == pytest.approx(490.0)
        assert hours(store, "E001")[3 * H]["expected_samples"] == 9
    finally:
        store.close()


async def test_the_receiver_computes_the_figures_of_what_it_commits(
    nats_server: NatsCluster, nc: nats.NATS, tmp_path: Path  # noqa: F811
) -> None:
    """The receiver's own figures task, on its own connection: samples and deal versions
    published on a real nats-server become hours, a day and a deal summary."""
    path = str(tmp_path / "r.sqlite")
    settings = Settings(nats_server.urls, path, unit_data_period_s=60.0, figures_every_s=0.3)
    base = (time.time() // 60 - 10) * 60  # four samples a minute apart, minutes ago
    async with receiving(settings, nc) as task:
        js = nc.jetstream()
        for k in range(4):
            payload = {"unitId": "E001", "sampledAt": base + 60 * k, "data": {
                "oesunit": {"id": "E001"}, "emu": {"pvc_charge_power": 360.0}}}
            await js.publish("apis.records.unitData.E001", json.dumps(payload).encode())
        kv = await js.key_value("apis_deals")
        deal = {"dealId": "d1", "chargeUnitId": "E002", "dischargeUnitId": "E001",
                "startDateTime": "s", "cumulateAmountWh": 0.0}
        await kv.put("d1", json.dumps(deal).encode())
        await asyncio.sleep(0.5)
        await kv.put("d1", json.dumps({**deal, "cumulateAmountWh": 12.5,
                                       "deactivateDateTime": "d"}).encode())
        store = open_store(path)
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            while True:
                summary = store.query("SELECT charged_wh, discharged_wh, completed_at "
                                      "FROM deal_summaries")
                sampled = store.query("SELECT SUM(samples), SUM(pv_wh) FROM unit_hours "
                                      "WHERE unit_id = 'E001'")
                if summary and summary[0][2] is not None and sampled[0][0] == 4:
                    break
                assert loop.time() < deadline, (summary, sampled)
                assert not task.done()
                await asyncio.sleep(0.2)
            day = store.query("SELECT SUM(discharged_wh), SUM(deals_made) FROM unit_days "
                              "WHERE unit_id = 'E001'")
        finally:
            store.close()
        assert not task.done()
    assert summary[0][:2] == (12.5, 12.5)
    assert sampled[0][1] == pytest.approx(3 * 60 * 360 / 3600)  # three minutes of 360 W
    assert day == [(12.5, 1)]


# ---- the arithmetic -----------------------------------------------------------------------


def test_spread_and_instants() -> None:
    assert list(spread(T0 + 1800, T0 + 5400, 10.0)) == [(T0, 5.0), (T0 + H, 5.0)]
    assert list(spread(T0 + 7000, T0 + 7000, 3.0)) == [(T0 + H, 3.0)]
    assert instants(T0, T0 + H, PERIOD) == 60
    assert instants(T0 + 0.5, T0 + 60.5, PERIOD) == 1
    assert instants(T0 + 60, T0 + 60, PERIOD) == 0


def test_a_reset_deal_counts_again_from_zero_and_its_first_stored_count_is_kept() -> None:
    def put(revision: int, at: float, count: float | None) -> DealVersion:
        deal = {"chargeUnitId": "B", "dischargeUnitId": "A", "cumulateAmountWh": count}
        return DealVersion(revision, "PUT", at, deal)

    figures = deal_figures("d", [put(2, T0 + 10, 5.0), put(3, T0 + 20, 9.0),
                                 put(4, T0 + 30, 0.0), put(5, T0 + 40, 6.0)])
    assert figures is not None
    # 5 (stored before: put at its time) + 4 + 0 (started over) + 6
    assert figures.charged_wh == figures.discharged_wh == 15.0
    assert figures.hours == {("B", T0): [15.0, 0.0], ("A", T0): [0.0, 15.0]}
    assert deal_figures("d", [DealVersion(7, "DEL", T0, None)]) is None


def test_integration_is_exact_for_linear_power_and_skips_gaps_and_unknowns() -> None:
    # 0 W at 00:59, 120 W at 01:01: 1 minute each side of the hour, mean 30 W then 90 W
    got = integrate([Sample(T0 + 3540, pv_w=0.0), Sample(T0 + 3660, pv_w=120.0)], PERIOD)
    assert got[T0]["pv_wh"] == pytest.approx(30 * 60 / 3600)
    assert got[T0 + H]["pv_wh"] == pytest.approx(90 * 60 / 3600)
    assert integrate([Sample(T0, pv_w=1.0), Sample(T0 + 121, pv_w=1.0)], PERIOD) == {}
    assert integrate([Sample(T0, pv_w=1.0), Sample(T0 + 60)], PERIOD) == {}
    fed = integrate([Sample(T0, ac_w=-360.0), Sample(T0 + 60, ac_w=-360.0)], PERIOD)
    assert fed[T0] == {"bought_wh": 0.0, "sold_wh": 6.0}
    gaps = downtimes([T0, T0 + 60, T0 + 180, T0 + 360], PERIOD, T0 + 370)
    assert [(g.start_at - T0, g.end_at and g.end_at - T0, g.missing) for g in gaps] == [
        (240.0, 360.0, 2)]
    assert math.isclose(downtimes([T0], PERIOD, T0 + 200)[0].start_at, T0 + 60)
