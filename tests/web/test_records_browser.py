"""The log viewer and the history page in headless Chromium (Debian's /usr/bin/chromium
driven by Python playwright), the app reading a real records store (SQLite).

The history page shows the records of a simulated day: the real unit code of a 4-unit
community on a virtual clock with a recorder beside it (tests/web/dayrecords.py), the
derived figures computed over the day. Screenshots go to test-artifacts/web/."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from apis.records.store import LogRow, open_store
from tests.web.dayrecords import DayRecords, record_simulated_day
from tests.web.harness import FakeClusterThread
from tests.web.test_browser import ARGS, CHROMIUM, screenshot, wait_until

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium"),
    pytest.mark.timeout(600),
]

sync_api = pytest.importorskip("playwright.sync_api")

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
LEVELS = ("INFO", "FINE", "WARNING", "SEVERE", "CONFIG")  # 5 and 3 units: every pair
UNITS = ("E001", "E002", "E003")


def line(seq: int, unit: str, level: str, at: float, message: str) -> LogRow:
    text = f"[[[apis-main:{unit}]]] [main] {at} {level} [apis.test]  {message}"
    return LogRow("APIS_RECORDS_LOG@1", seq, unit, at, level, "apis.test", "main", message, text)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page_of(browser: Any) -> Iterator[Any]:
    contexts: list[Any] = []
    errors: list[str] = []

    def open_page(url: str) -> Any:
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        return page

    try:
        yield open_page
    finally:
        for context in contexts:
            context.close()
    assert errors == [], errors


def shown(page: Any) -> list[tuple[str, str, str]]:
    result: list[tuple[str, str, str]] = page.eval_on_selector_all(
        "#lines tbody tr", "rows => rows.map(r => [r.dataset.unit, r.dataset.level, "
        "r.querySelector('.message').textContent])")
    return [tuple(r) for r in result]  # type: ignore[misc]


def test_log_viewer_filters_by_unit_and_level_and_tails_new_lines(
    page_of: Any, tmp_path: Path
) -> None:
    url = str(tmp_path / "records.sqlite")
    store = open_store(url)
    lines = [line(k + 1, UNITS[k % 3], LEVELS[k % 5], T0 + 60 * k, f"line {k}")
             for k in range(36)]
    store.write(lines, T0)
    thread = FakeClusterThread(units=3, deals=0, records=url).start()
    try:
        page = page_of(f"{thread.url}logs")
        wait_until(lambda: len(shown(page)) == 36, 60, "every line")
        assert shown(page)[0][2] == "line 35"  # newest first
        page.select_option("#unit", "E002")
        wait_until(lambda: {u for u, _, _ in shown(page)} == {"E002"}, 30, "only E002")
        assert [m for _, _, m in shown(page)] == [f"line {k}" for k in range(34, 0, -3)]
        page.select_option("#level", "WARNING")  # WARNING and SEVERE
        want = [(UNITS[k % 3], LEVELS[k % 5], f"line {k}") for k in range(35, -1, -1)
                if UNITS[k % 3] == "E002" and LEVELS[k % 5] in ("WARNING", "SEVERE")]
        wait_until(lambda: shown(page) == want, 30, f"E002 at WARNING or above: {want}")
        assert want and page.eval_on_selector_all(
            "#lines tbody tr.bad", "rows => rows.length") == sum(
                1 for _, level, _ in want if level == "SEVERE")
        page.fill("#text", "LINE 2")
        wait_until(lambda: [m for _, _, m in shown(page)] == [
            m for _, _, m in want if m.startswith("line 2")], 30, "text filter")
        page.fill("#text", "")
        wait_until(lambda: shown(page) == want, 30, "text filter cleared")
        # live tail: lines stored now appear at the top, the filters still apply
        store.write([line(100, "E002", "SEVERE", T0 + 3600, "pump failure on E002"),
                     line(101, "E001", "SEVERE", T0 + 3601, "not for this filter"),
                     line(102, "E002", "INFO", T0 + 3602, "below the level")], T0 + 3603)
        wait_until(lambda: shown(page)[:1] == [("E002", "SEVERE", "pump failure on E002")],
                   30, "the tailed line")
        assert len(shown(page)) == len(want) + 1
        screenshot(page, "log-viewer.png")
        csv_link = page.get_attribute("#csv", "href")
        assert "unit=E002" in csv_link and "level=WARNING" in csv_link
        r = page.request.get(f"{thread.url.rstrip('/')}{csv_link}")
        assert r.ok and r.text().splitlines()[1].split(",")[1] == "E002"
    finally:
        thread.stop()
        store.close()


@pytest.fixture(scope="module")
def simulated_day(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, DayRecords]:
    url = str(tmp_path_factory.mktemp("day") / "records.sqlite")
    # a thread of its own: playwright's loop runs in this one
    with ThreadPoolExecutor(1) as pool:
        return url, pool.submit(record_simulated_day, url, units=4, days=1.0).result()


def test_history_page_draws_the_daily_energy_of_a_simulated_day(
    page_of: Any, simulated_day: tuple[str, DayRecords]
) -> None:
    url, day = simulated_day
    print(f"simulated day: {day}")
    assert day.deals > 0 and day.samples >= 4 * 1400
    store = open_store(url)
    try:
        figures = {unit: (charged + discharged) / 1000 for unit, charged, discharged in
                   store.query("SELECT unit_id, charged_wh, discharged_wh FROM unit_days "
                               "WHERE day = '2026-01-01'")}
        made = store.query("SELECT COUNT(*) FROM deal_summaries")[0][0]
    finally:
        store.close()
    assert set(figures) == set(day.unit_ids) and sum(figures.values()) > 0
    thread = FakeClusterThread(units=3, deals=0, records=url).start()
    try:
        page = page_of(f"{thread.url}history")
        page.wait_for_selector("#chart-energy .uplot canvas", timeout=60_000)
        page.wait_for_selector("#chart-deals .uplot canvas", timeout=60_000)
        page.wait_for_function("window.apisHistory.draws >= 1", timeout=60_000)
        drawn = page.evaluate("window.apisHistory")
        assert drawn["error"] is None
        assert drawn["days"] == [day.start]  # one point: 1 January, midnight UTC
        assert {u: v[0] for u, v in drawn["energy"].items()} == pytest.approx(figures)
        assert drawn["deals"]["made"] == [made]  # each deal counted once for the cluster
        rows = page.eval_on_selector_all("#days tbody tr", "rows => rows.map(r => "
                                         "[r.dataset.day, r.dataset.unit])")
        assert rows == [["2026-01-01", u] for u in sorted(day.unit_ids)]
        assert page.eval_on_selector_all("#availability tbody tr", "r => r.length") == 4
        assert page.input_value("#from") <= "2026-01-01" <= page.input_value("#to")
        screenshot(page, "history-simulated-day.png")
        # one unit: the table and the deal counts become that unit's
        busiest = max(figures, key=lambda u: figures[u])
        page.select_option("#unit", busiest)
        page.wait_for_function("window.apisHistory.draws >= 2", timeout=30_000)
        rows = page.eval_on_selector_all("#days tbody tr", "rows => rows.map(r => "
                                         "r.dataset.unit)")
        assert rows == [busiest]
        drawn = page.evaluate("window.apisHistory")
        assert list(drawn["energy"]) == [busiest]
        # the PV of these units is not known (their data has no PV): no values, said so
        page.select_option("#quantity", "pvWh")
        page.wait_for_function("window.apisHistory.draws >= 3", timeout=30_000)
        assert "no values" in page.inner_text("#energy-note")
    finally:
        thread.stop()
