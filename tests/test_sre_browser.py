"""The status page in a real headless Chromium: it loads, its chart shows the backlog we created, its
dead-letter table lists the reason we caused, and it says plainly when Redis is gone.

Set HYB_UPDATE_SCREENSHOT=1 to refresh docs/status-page.png from this test."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from broker import keys
from broker.embedded import free_port
from broker.ledger import CostBreaker, Ledger
from broker.message import Sealer
from broker.metrics import QueueMetrics
from hybrid.exporter import Monitor, serve
from tests.sre_backlog import make_backlog

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = os.environ.get("HYB_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("HYB_CHROMEDRIVER", "/usr/bin/chromedriver")
DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("chromium and chromium-driver are not installed (.ci/run installs them)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1000,1300"):  # fmt: skip
        options.add_argument(arg)
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    except WebDriverException as exc:
        pytest.fail(f"chromium did not start: {exc.msg}")
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def wait_for(driver: object, fn, what: str, timeout: float = 20):  # type: ignore[no-untyped-def]
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(fn, message=f"page never showed {what}")


READ = """
const [zone, series] = arguments;
const q = sel => document.querySelector(sel);
const path = q(`#chart path.series[data-series="${series}"]`), dot = q(`#chart circle[data-series="${series}"]`);
const row = q(`#lanes tr[data-lane="batch"][data-zone="${zone}"]`), dlq = q('#dlq tr[data-reason="tampered"]');
const br = q('#breakers tr[data-scope="global"]'), legend = q(`#legend span[data-series="${series}"]`);
const d = path ? path.getAttribute("d") : "";
return {d: d, points: d ? d.split("L").length : 0, last: path && path.dataset.last,
  dot_y: dot && dot.getAttribute("cy"),
  max: q("#chart").dataset.max, legend: legend ? legend.textContent : "", row_backlog: row && row.dataset.backlog,
  reason: dlq && dlq.dataset.count, reason_text: dlq ? dlq.textContent : "", breaker: br && br.dataset.state,
  breaker_text: br ? br.textContent : ""};
"""


def read_page(driver, zone: str, series: str) -> dict:  # type: ignore[no-untyped-def]
    """Everything the test checks, read in one script run (the page re-renders between two reads)."""
    return driver.execute_script(READ, zone, series)


def test_page_shows_backlog_chart_and_dead_letter_reason(
    browser, r: redis.Redis, sealer: Sealer, zone: str, redis_server, tmp_path: Path
) -> None:
    backlog = make_backlog(r, sealer, zone, batch=40, interactive=6)
    ledger = Ledger(r, zone)
    ledger.set_budget("global", "hour", 5.0)
    CostBreaker(ledger).force("global", None)
    monitor = Monitor(QueueMetrics(redis_server.url, [zone]), interval_s=0.3, history_s=60).start()
    server = serve(monitor, "127.0.0.1", 0)
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/"
        browser.get(base)
        wait_for(browser, lambda d: d.find_element(By.ID, "redis").get_attribute("data-up") == "1", "Redis up")
        batch = f"{zone}/batch"
        state = wait_for(
            browser, lambda d: (st := read_page(d, zone, batch))["points"] >= 3 and st["reason"] and st, "3 samples"
        )
        assert int(state["last"]) == backlog.batch == r.xlen(keys.jobs_stream(zone, "batch"))
        ys = {pt.split(",")[1] for pt in state["d"][1:].split(" L")}
        assert len(ys) == 1  # a flat line: the backlog did not change
        assert state["dot_y"] == ys.pop()
        assert int(state["max"]) >= backlog.batch
        assert state["legend"].endswith(f": {backlog.batch}")
        assert state["row_backlog"] == str(backlog.batch)
        assert state["reason"] == "1" and "tampered" in state["reason_text"]
        assert state["breaker"] == "closed" and "$5.00" in state["breaker_text"]
        shot = tmp_path / "status-page.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        if os.environ.get("HYB_UPDATE_SCREENSHOT"):
            shutil.copy(shot, DOCS / "status-page.png")
    finally:
        monitor.stop()
        server.shutdown()
        server.server_close()


def test_page_says_plainly_when_redis_is_down(browser) -> None:
    monitor = Monitor(QueueMetrics(f"redis://127.0.0.1:{free_port()}/0", ["z"]), interval_s=0.3, history_s=30)
    monitor.start()
    server = serve(monitor, "127.0.0.1", 0)
    try:
        browser.get(f"http://127.0.0.1:{server.server_address[1]}/")
        banner = wait_for(browser, lambda d: d.find_element(By.CSS_SELECTOR, '#redis[data-up="0"].down'), "Redis down")
        wait_for(browser, lambda d: "Redis is DOWN" in banner.text, "the reason")
        assert "not reachable" in banner.text and "retrying" in banner.text
    finally:
        monitor.stop()
        server.shutdown()
        server.server_close()
    # the exporter itself gone: the page says that too
    deadline = time.monotonic() + 10
    while "exporter is not answering" not in browser.find_element(By.ID, "redis").text:
        assert time.monotonic() < deadline, browser.find_element(By.ID, "redis").text
        time.sleep(0.1)


def test_page_warns_about_a_zone_with_nothing_in_this_redis(browser, zone: str, redis_server) -> None:
    monitor = Monitor(QueueMetrics(redis_server.url, [zone]), interval_s=0.3, history_s=30).start()
    server = serve(monitor, "127.0.0.1", 0)
    try:
        browser.get(f"http://127.0.0.1:{server.server_address[1]}/")
        note = wait_for(
            browser,
            lambda d: d.execute_script("const n = document.querySelector('#notes .note'); return n && n.textContent"),
            "the note",
        )
        assert f"zone '{zone}' has no job streams in this Redis" in note
    finally:
        monitor.stop()
        server.shutdown()
        server.server_close()
