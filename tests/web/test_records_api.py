"""The operations API's records routes (`/api/records/...`) over a real records store
(SQLite, and a real PostgreSQL server), filled with hand-made records and their figures:
filters, ranges, paging, CSV, and the refusals of bad parameters."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from apis.bus.memory import MemoryHub
from apis.records.figures import FigureSettings, compute_pass
from apis.records.store import LogRow, RecordStore, StoreError, open_store
from apis.web.app import create_app
from apis.web.records import RecordsReader
from tests.bus.conftest import run_apart
from tests.pgserver import PostgresServer, unavailable
from tests.records.test_figures import NOW, PERIOD, T0, fresh, records, write_all

pytestmark = pytest.mark.timeout(300)
H = 3600.0
LEVELS = ("INFO", "FINE", "WARNING", "SEVERE", "INFO", "CONFIG")


def log_lines() -> list[LogRow]:
    """30 lines, 00:00..00:29, alternating E001 / E002, levels cycling through LEVELS."""
    out = []
    for k in range(30):
        unit = "E001" if k % 2 == 0 else "E002"
        level = LEVELS[k % len(LEVELS)]
        message = f"line {k} of {unit}" if k != 7 else "=HYPERLINK(\"x\") deal d1 aborted"
        line = (f"[[[apis-main:{unit}]]] [main] 2026-01-01T00:{k:02d}:00.000Z {level} "
                f"[apis.test]  {message}")
        out.append(LogRow("APIS_RECORDS_LOG@1", k + 1, unit, T0 + 60 * k, level, "apis.test",
                          "main", message, line))
    return out


def fill(store: RecordStore) -> None:
    write_all(store, [*records(), *log_lines()])
    compute_pass(store, NOW, FigureSettings(period_s=PERIOD, time_zone="Asia/Tokyo"))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One filled store per kind for the module (the routes only read it)."""
    if request.param == "sqlite":
        url = str(tmp_path_factory.mktemp("records") / "records.sqlite")
        store = open_store(url)
        fill(store)
        store.close()
        yield url
        return
    if unavailable() is not None:
        pytest.skip(str(unavailable()))
    server = PostgresServer()
    try:
        run_apart(server.start)
        store = fresh(server.url)
        fill(store)
        store.close()
        yield server.url
    finally:
        run_apart(server.stop)


async def client_for(reader: RecordsReader | None) -> AsyncIterator[httpx.AsyncClient]:
    hub = MemoryHub()
    app = create_app(hub.connect("web"), token="t", records=reader)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        yield client
    if reader is not None:
        reader.close()


@pytest.fixture
async def client(store_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async for c in client_for(RecordsReader(store_url)):
        yield c


async def get(client: httpx.AsyncClient, path: str, **params: Any) -> Any:
    r = await client.get(f"/api/records/{path}", params=params)
    assert r.status_code == 200, r.text
    return r.json()


async def test_log_lines_by_unit_level_text_and_range_paged(client: httpx.AsyncClient) -> None:
    everything = await get(client, "logs", limit=1000)
    assert len(everything["rows"]) == 30 and not everything["more"]
    assert everything["rows"][0]["at"] == T0 + 29 * 60  # newest first
    e1 = await get(client, "logs", unit="E001", limit=1000, order="oldest")
    assert [r["seq"] for r in e1["rows"]] == list(range(1, 31, 2))
    assert {r["unitId"] for r in e1["rows"]} == {"E001"}
    # WARNING and above: the lines whose level is WARNING or SEVERE
    warned = await get(client, "logs", level="WARNING", limit=1000, order="oldest")
    assert [r["seq"] - 1 for r in warned["rows"]] == [k for k in range(30) if LEVELS[k % 6] in
                                                     ("WARNING", "SEVERE")]
    python_name = await get(client, "logs", level="error", limit=1000)  # = SEVERE
    assert {r["level"] for r in python_name["rows"]} == {"SEVERE"}
    both = await get(client, "logs", unit="E002", level="SEVERE", limit=1000)
    assert [r["seq"] for r in both["rows"]] == [28, 22, 16, 10, 4]  # k = 3, 9, ...: SEVERE
    found = await get(client, "logs", text="DEAL D1")  # any case, anywhere in the line
    assert [r["seq"] for r in found["rows"]] == [8]
    assert (await get(client, "logs", text="100%"))["rows"] == []  # % is not a wildcard
    # from 00:10 to 00:20 (exclusive): three forms of time
    for start, end in ((T0 + 600, T0 + 1200), ("2026-01-01T00:10:00Z", "2026-01-01T00:20:00Z"),
                       ("2026-01-01T09:10", "2026-01-01T09:20")):  # no offset: Asia/Tokyo
        ranged = await get(client, "logs", **{"from": start, "to": end, "limit": 100})
        assert [r["seq"] for r in ranged["rows"]] == list(range(20, 10, -1)), (start, end)
    day = await get(client, "logs", **{"from": "2026-01-02", "limit": 5})
    assert day["rows"] == []  # Tokyo's 2 January begins at 15:00 UTC
    # pages of 12: 12, 12, 6
    seen = []
    offset: int | None = 0
    while offset is not None:
        page = await get(client, "logs", limit=12, offset=offset)
        seen += [r["seq"] for r in page["rows"]]
        offset = page["nextOffset"]
        assert page["more"] == (offset is not None)
    assert seen == list(range(30, 0, -1))


async def test_csv_export_of_log_lines_deals_and_energy(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/records/logs", params={"format": "csv", "order": "oldest",
                                                      "limit": 10})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert 'filename="logs.csv"' in r.headers["content-disposition"]
    assert r.headers["x-more"] == "true"
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == 10
    assert rows[0]["at"] == "2026-01-01T00:00:00.000+00:00" and rows[0]["unitId"] == "E001"
    assert rows[7]["message"] == "'=HYPERLINK(\"x\") deal d1 aborted"  # not a formula
    deals = list(csv.DictReader(io.StringIO((await client.get(
        "/api/records/deals", params={"format": "csv"})).text)))
    assert [(d["dealId"], d["chargedWh"], d["abortReason"]) for d in deals] == [
        ("d2", "30.0", "test abort"), ("d1", "190.0", "")]
    days = list(csv.DictReader(io.StringIO((await client.get(
        "/api/records/energy", params={"format": "csv", "resolution": "day"})).text)))
    assert [(d["day"], d["unitId"], d["dischargedWh"], d["pvWh"]) for d in days] == [
        ("2026-01-01", "E001", "200.0", "1680.0"), ("2026-01-01", "E002", "30.0", "")]


async def test_deals_their_versions_unit_data_energy_and_availability(
    client: httpx.AsyncClient,
) -> None:
    deals = await get(client, "deals")
    assert [d["dealId"] for d in deals["rows"]] == ["d2", "d1"]
    d1 = deals["rows"][1]
    assert (d1["dischargeUnitId"], d1["chargeUnitId"], d1["completedAt"], d1["chargedWh"],
            d1["dischargedWh"]) == ("E001", "E002", T0 + 4800, 190.0, 200.0)
    assert [d["dealId"] for d in (await get(client, "deals", outcome="aborted"))["rows"]] == [
        "d2"]
    assert [d["dealId"] for d in (await get(client, "deals", outcome="completed"))["rows"]] == [
        "d1"]
    assert (await get(client, "deals", outcome="open"))["rows"] == []
    assert [d["dealId"] for d in (await get(client, "deals", text="ABORT"))["rows"]] == ["d2"]
    # d1 lived 00:50..01:20, d2 02:10..02:46: only d1 overlaps 01:00..02:00
    overlapping = await get(client, "deals", **{"from": T0 + H, "to": T0 + 2 * H})
    assert [d["dealId"] for d in overlapping["rows"]] == ["d1"]
    versions = await get(client, "deals/d1/versions")
    assert [v["operation"] for v in versions["rows"]] == ["PUT"] * 5 + ["DEL"]
    assert versions["rows"][2]["deal"]["chargeUnitCumulateAmountWh"] == 95.0
    missing = await client.get("/api/records/deals/nope/versions")
    assert missing.status_code == 404 and "no versions stored" in missing.text
    series = await get(client, "unit-data", unit="E002", limit=5)
    assert [s["sampledAt"] for s in series["rows"]] == [T0 + 60 * k for k in range(90, 95)]
    assert series["more"] and series["rows"][0]["rsoc"] == 50.0
    hours = await get(client, "energy", resolution="hour", unit="E001")
    assert [(h["hourStart"] - T0, h["dischargedWh"], h["availability"])
            for h in hours["rows"]] == [(0.0, 50.0, 1.0), (H, 150.0, 50 / 60),
                                        (2 * H, 0.0, 1.0), (3 * H, 0.0, 0.0)]
    tokyo_day = await get(client, "energy", resolution="day", **{"from": "2026-01-01",
                                                                 "to": "2026-01-02"})
    assert [(d["unitId"], d["dayStart"]) for d in tokyo_day["rows"]] == [
        ("E001", T0 - 9 * H), ("E002", T0 - 9 * H)]
    available = await get(client, "availability", **{"from": T0, "to": T0 + 2 * H})
    assert available["units"] == [
        {"unitId": "E001", "samples": 110, "expectedSamples": 120,
         "availability": 110 / 120, "downtimes": [
             {"startAt": T0 + 4200, "endAt": T0 + 4800, "missingSamples": 10}]},
        {"unitId": "E002", "samples": 30, "expectedSamples": 30, "availability": 1.0,
         "downtimes": []},
    ]
    status = await get(client, "status")
    assert status["units"] == ["E001", "E002"] and status["timeZone"] == "Asia/Tokyo"
    assert status["figuresStoredThrough"] == NOW
    assert status["logLines"] == {"first": T0, "last": T0 + 29 * 60}


@pytest.mark.parametrize(("path", "params", "needle"), [
    ("logs", {"limit": "0"}, "limit = '0' (must be within 1..10000)"),
    ("logs", {"limit": "10001"}, "limit = '10001' (must be within 1..10000)"),
    ("logs", {"limit": "many"}, "limit = 'many' (must be an integer within 1..10000)"),
    ("logs", {"offset": "-1"}, "offset = '-1' (must be within 0..1000000)"),
    ("logs", {"from": "yesterday"}, "from = 'yesterday' (must be seconds since the epoch"),
    ("logs", {"to": "1e300"}, "to = '1e300' (must lie within 1970-01-01..9999-12-31)"),
    ("logs", {"from": "2026-01-02", "to": "2026-01-01"}, "from = '2026-01-02' is after to"),
    ("logs", {"level": "LOUD"}, "level = 'LOUD' (must be one of SEVERE, WARNING, INFO"),
    ("logs", {"unit": "E 1"}, "unit = 'E 1' (must be a unit id"),
    ("logs", {"text": "x" * 201}, "is 201 characters long; at most 200"),
    ("logs", {"format": "xml"}, "format = 'xml' (must be one of json, csv)"),
    ("logs", {"order": "up"}, "order = 'up' (must be one of newest, oldest)"),
    ("logs", {"untis": "E001"}, "query parameter 'untis' is not one of this route's"),
    ("deals", {"outcome": "won"}, "outcome = 'won' (must be one of completed, aborted, open)"),
    ("energy", {"resolution": "week"}, "resolution = 'week' (must be one of hour, day)"),
    ("energy", {"level": "INFO"}, "query parameter 'level' is not one of this route's"),
    ("deals/a%20b/versions", {}, "dealId = 'a b' (1-128 of"),
])
async def test_bad_parameters_are_422_naming_parameter_value_and_limit(
    client: httpx.AsyncClient, path: str, params: dict[str, str], needle: str
) -> None:
    r = await client.get(f"/api/records/{path}", params=params)
    assert r.status_code == 422 and needle in r.json()["detail"], r.text


async def test_the_same_guard_as_every_route_and_a_store_that_is_not_there(
    tmp_path: Path,
) -> None:
    async for c in client_for(None):
        r = await c.get("/api/records/logs")
        assert r.status_code == 503 and "--records STORE_URL" in r.text
        r = await c.get("/api/records/logs", headers={"Host": "evil.example"})
        assert r.status_code == 403  # the request guard, before any route
    url = str(tmp_path / "later.sqlite")
    async for c in client_for(RecordsReader(url)):
        r = await c.get("/api/records/logs")
        assert r.status_code == 503 and "no such file" in r.text, r.text
        store = open_store(url)  # the receiver makes it; the next request finds it
        try:
            store.write(log_lines()[:3], T0)
        finally:
            store.close()
        assert len((await c.get("/api/records/logs")).json()["rows"]) == 3
    secret = RecordsReader("postgresql://apis:s3cret@127.0.0.1:5/records")
    assert secret.description == "PostgreSQL postgresql://apis@127.0.0.1:5/records"
    secret.close()
    reader = open_store(url, read_only=True)
    try:
        with pytest.raises(StoreError, match=r"readonly|read-only|read only"):
            reader.write(log_lines()[3:4], T0)
    finally:
        reader.close()
