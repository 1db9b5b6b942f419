"""The page in headless Chromium (Debian's /usr/bin/chromium driven by Python playwright)
against a demo-like cluster: emulated units, in-memory bus, scaled time, the web app on
127.0.0.1. Screenshots go to test-artifacts/web/ (git-ignored)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.web.harness import ClusterThread, FakeClusterThread

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium"),
    pytest.mark.timeout(600),
]

sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ClusterThread]:
    thread = ClusterThread(tmp_path, speed=30.0).start()
    try:
        yield thread
    finally:
        thread.stop()


@pytest.fixture
def page(browser: Any, cluster: ClusterThread) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(cluster.login_url())
    try:
        yield page
    finally:
        context.close()
    assert errors == [], errors


def wait_until(check: Callable[[], bool], real_timeout: float, what: str) -> None:
    deadline = time.monotonic() + real_timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.25)


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def unit_modes(page: Any) -> dict[str, str]:
    result: dict[str, str] = page.evaluate(
        "Object.fromEntries([...document.querySelectorAll('#units .unit')]"
        ".map(b => [b.dataset.unit, b.dataset.mode]))"
    )
    return result


def choose_global_mode(page: Any, label: str) -> None:
    page.click(f"#modes .mode-btn:text-is('{label}')")
    page.wait_for_selector("#confirm[open]")
    assert label in page.inner_text("#confirm-text")
    page.click("#confirm-ok")


async def _changes(cluster: ClusterThread) -> list[dict[str, Any]]:
    assert cluster.web is not None
    return [c.to_json() for c in cluster.web.ops.store.mode_changes(limit=10, scope="global")]


def test_every_unit_shown_and_a_deal_flows(page: Any, cluster: ClusterThread) -> None:
    page.wait_for_function(
        "document.querySelectorAll('#units .unit').length === 4", timeout=60_000)
    assert set(unit_modes(page)) == {"E001", "E002", "E003", "E004"}
    page.wait_for_selector("#units .unit.grid-master", timeout=60_000)
    start = cluster.sim_time()
    page.wait_for_selector("#flows .flow", timeout=180_000)
    elapsed = cluster.sim_time() - start
    print(f"first deal flow after {elapsed:.0f} simulated s")
    assert elapsed < 600, "a deal should appear within a few simulated minutes"
    flow = page.eval_on_selector(
        "#flows .flow", "g => [g.dataset.from, g.dataset.to, g.textContent]")
    source, sink, label = flow
    modes = unit_modes(page)
    assert source != sink and {source, sink} <= set(modes)
    assert " A" in label and "%" in label
    # the CV unit carries its mark, the charts and the deal table are filled
    wait_until(lambda: page.eval_on_selector_all(
        "#units .unit .vr-mark:not([hidden])", "els => els.length") == 1, 60, "CV mark")
    page.wait_for_selector("#deals tbody tr", timeout=60_000)
    page.wait_for_selector("#chart-rsoc .uplot", timeout=60_000)
    page.wait_for_selector("#chart-vg .uplot", timeout=60_000)
    assert "not available" not in page.inner_text("#grid-note")
    assert page.inner_text("#token-state") == "controls enabled"  # from the login link
    assert "#login=" not in page.url and cluster.token not in page.url
    # A changed battery shows within seconds (spec 13 scenario 2 asks for 5 s).
    async def set_rsoc() -> None:
        assert cluster.world is not None
        cluster.world.set_rsoc("E003", 12.3)

    cluster.call(set_rsoc())
    changed = time.monotonic()
    page.wait_for_selector("#units .unit[data-unit='E003'] .rsoc:text-is('12%')",
                           timeout=60_000)
    print(f"RSOC change shown after {time.monotonic() - changed:.1f} s")
    # An error published on the bus appears in the errors panel.
    r = page.request.post(f"{cluster.url}api/errors", headers={
        "Authorization": f"Bearer {cluster.token}"}, data={
        "unitId": "E004", "category": "USER", "extent": "LOCAL", "level": "WARN",
        "message": "browser test warning"})
    assert r.ok, r.text()
    page.wait_for_selector("#errors li:has-text('browser test warning')", timeout=60_000)
    screenshot(page, "cluster-with-deal.png")
    # The API docs render from vendored files (this machine has no network: offline proof).
    page.goto(f"{cluster.url}docs")
    page.wait_for_selector(".swagger-ui .opblock", timeout=60_000)
    assert "APIS operations" in page.inner_text(".swagger-ui .title")


def test_mode_controls_confirm_and_set_the_global_mode(page: Any,
                                                       cluster: ClusterThread) -> None:
    page.wait_for_function(
        "document.querySelectorAll('#units .unit').length === 4", timeout=60_000)
    # Cancelling the confirmation changes nothing.
    page.click("#modes .mode-btn:text-is('Force Stop')")
    page.click("#confirm-cancel")
    assert cluster.call(cluster.web.ops.read_global_mode()) != "stop"
    choose_global_mode(page, "Force Stop")
    page.wait_for_selector("#global-mode[data-mode='stop']",
                           timeout=60_000)
    assert "changed by web 127.0.0.1" in page.inner_text("#global-changed")
    assert cluster.call(cluster.web.ops.read_global_mode()) == "stop"
    wait_until(lambda: all(  # every unit reports effective "stop"
        e == "stop" for e in page.eval_on_selector_all(
            "#units .unit", "els => els.map(b => b.dataset.effective)")), 120, "effective stop")
    # A unit's details: manual control is disabled outside Manual, enabled in Manual.
    page.click("#units .unit[data-unit='E002']")
    page.wait_for_selector("#detail:not([hidden])", timeout=10_000)
    assert page.is_disabled("#manual button[type=submit]")
    assert "must be Manual" in page.inner_text("#manual-note")
    choose_global_mode(page, "Manual")
    page.wait_for_selector("#global-mode[data-mode='manual']", timeout=60_000)
    page.wait_for_selector("#manual button[type=submit]:enabled", timeout=120_000)
    choose_global_mode(page, "Run")
    page.wait_for_selector("#global-mode[data-mode='autonomous']",
                           timeout=60_000)
    assert cluster.call(cluster.web.ops.read_global_mode()) == "autonomous"
    page.wait_for_selector("#manual button[type=submit]:disabled", timeout=120_000)
    history = cluster.call(_changes(cluster))
    assert [c["to"] for c in history][:3] == ["autonomous", "manual", "stop"]


def test_force_stop_leaves_every_converter_waiting_and_run_resumes(
    page: Any, cluster: ClusterThread
) -> None:
    page.wait_for_selector("#flows .flow", timeout=180_000)
    progress = page.eval_on_selector(
        "#flows .flow text", "t => parseInt(t.textContent.split('·')[1])")
    assert progress < 50, "the deal must be far from done, else it could simply finish"
    choose_global_mode(page, "Force Stop")
    page.wait_for_selector("#global-mode[data-mode='stop']",
                           timeout=60_000)
    stopped_at = cluster.sim_time()
    # Every converter in WAIT within 2 main-loop periods plus margin (simulated time).
    wait_until(lambda: set(unit_modes(page).values()) == {"0x0000"}
               or cluster.sim_time() - stopped_at > 120, 300, "WAIT or the bound")
    assert set(unit_modes(page).values()) == {"0x0000"}, unit_modes(page)
    assert page.eval_on_selector_all("#flows .flow", "els => els.length") == 0
    texts = page.eval_on_selector_all(
        "#units .unit .mode", "els => els.map(e => e.textContent)")
    assert set(texts) == {"WAIT"}
    screenshot(page, "force-stop.png")
    choose_global_mode(page, "Run")
    page.wait_for_selector("#flows .flow", timeout=180_000)


def test_fifty_units_render_quickly(browser: Any) -> None:
    # The browser's side alone: a 50-unit in-process demo cluster needs more CPU than a
    # loaded test machine has, and would measure the cluster, not the page.
    thread = FakeClusterThread(units=50, deals=10, refresh_real_s=0.5).start()
    context = browser.new_context(viewport={"width": 1600, "height": 1200})
    try:
        page = context.new_page()
        page.goto(thread.login_url())
        page.wait_for_function("document.querySelectorAll('#units .unit').length === 50",
                               timeout=60_000)
        page.wait_for_function("document.querySelectorAll('#flows .flow').length === 10",
                               timeout=60_000)
        # Let the page receive and draw a number of pushed views (charts included).
        page.wait_for_function("window.apisRender.count >= 20", timeout=120_000)
        stats = page.evaluate("window.apisRender")
        # A full redraw of the newest view, timed in the browser, a few times.
        forced = page.evaluate(
            "() => { const t = []; for (let i = 0; i < 10; i++) {"
            " const t0 = performance.now(); render(state.view); t.push(performance.now() - t0); }"
            " return t; }"
        )
        mean = stats["totalMs"] / stats["count"]
        print(f"50 units: {stats['count']} pushed views drawn, mean {mean:.1f} ms, "
              f"max {stats['maxMs']:.1f} ms (first draw builds the boxes and charts); "
              f"forced redraws: median {sorted(forced)[len(forced) // 2]:.1f} ms, "
              f"max {max(forced):.1f} ms")
        # Responsive: drawing a pushed view takes a small part of the time between views
        # (bounds generous for a loaded machine; the measured values are printed above).
        assert mean < 250
        assert sorted(forced)[len(forced) // 2] < 250
        # The page still reacts to input: a click opens a unit's details at once.
        page.click("#units .unit >> nth=49")
        page.wait_for_selector("#detail:not([hidden])", timeout=10_000)
        screenshot(page, "fifty-units.png")
    finally:
        context.close()
        thread.stop()


def test_a_login_link_enables_the_controls_once(browser: Any) -> None:
    """The printed link carries a one-time code, not the token: the page trades it, drops it
    from the address, and a second page with the same link stays read only until the
    token is entered."""
    thread = FakeClusterThread(units=3, deals=0).start()
    first = browser.new_context()
    second = browser.new_context()
    try:
        link = thread.login_url()
        assert thread.token not in link
        page = first.new_page()
        page.goto(link)
        page.wait_for_function(
            "document.querySelector('#token-state').textContent === 'controls enabled'",
            timeout=60_000)
        assert "#login=" not in page.url
        again = second.new_page()
        again.goto(link)
        again.wait_for_function(
            "document.querySelector('#token-state').textContent.includes('used or expired')",
            timeout=60_000)
        again.fill("#token", thread.token)
        again.press("#token", "Enter")
        again.dispatch_event("#token", "change")
        again.wait_for_function(
            "document.querySelector('#token-state').textContent === 'controls enabled'",
            timeout=60_000)
    finally:
        first.close()
        second.close()
        thread.stop()
