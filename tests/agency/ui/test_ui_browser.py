"""``faice ui`` in a real browser: Debian's Chromium, headless, through Selenium and Debian's
chromium-driver. Pages load, the best batch is marked, charts render, a running run updates
without a reload, and no page or asset loads anything from another host."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from ui_helpers import WINNER, finish_batches, make_run, start_ui, synthetic_run, winner_id


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "runs"
    expected = make_run(root / "lr-sweep")
    synthetic_run(root / "live", 12, running=3)
    server = start_ui(tmp_path / "ui.log", str(root))
    yield server, root, expected
    server.stop()


def requested_urls(browser) -> list[str]:
    """Every URL the browser asked for since the last call (Chromium's network log)."""
    urls = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def severe_console_messages(browser) -> list[str]:
    return [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def test_pages_load_mark_the_best_and_draw_charts(browser, served, tmp_path):
    server, _, expected = served
    browser.get_log("performance")
    browser.get(server.url)
    links = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "table.runs tbody th a")]
    assert sorted(links) == ["live", "lr-sweep"]
    browser.find_element(By.LINK_TEXT, "lr-sweep").click()
    WebDriverWait(browser, 10).until(lambda b: b.find_elements(By.CSS_SELECTOR, "tr.best"))
    best = browser.find_element(By.CSS_SELECTOR, "tr.best")
    assert best.get_attribute("data-batch") == winner_id(expected)
    assert "★ best" in best.text
    winner = browser.find_element(By.ID, "winner").text
    assert f"learning_rate={WINNER['learning_rate']}" in winner and f"batch_size={WINNER['batch_size']}" in winner
    charts = browser.find_elements(By.CSS_SELECTOR, "svg.chart")
    assert len(charts) == 3 and charts[0].size["width"] > 300 and charts[0].size["height"] > 150
    assert browser.find_elements(By.CSS_SELECTOR, "svg.chart path.curve.best")
    headers = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "table.results thead th")]
    assert "learning_rate" in headers and "batch_size" in headers
    # keyboard: the sort links are reachable and work without a mouse
    browser.find_element(By.LINK_TEXT, "learning_rate").send_keys("\n")
    WebDriverWait(browser, 10).until(lambda b: "sort=param.learning_rate" in b.current_url)
    assert browser.find_element(By.CSS_SELECTOR, "th[aria-sort=ascending]").text.startswith("learning_rate")
    browser.find_element(By.LINK_TEXT, winner_id(expected)).click()
    WebDriverWait(browser, 10).until(lambda b: b.find_elements(By.CSS_SELECTOR, "pre.log"))
    assert "done learning_rate_used=0.1" in browser.find_element(By.CSS_SELECTOR, "pre.log").text
    assert browser.find_elements(By.CSS_SELECTOR, "svg.chart")
    screenshot = tmp_path / "batch.png"
    browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000
    if os.environ.get("FAICE_UI_SCREENSHOTS"):  # for a person to look at
        shutil.copy(screenshot, os.environ["FAICE_UI_SCREENSHOTS"])
    urls = requested_urls(browser)
    assert urls and all(u.startswith(server.origin + "/") for u in urls), urls
    assert severe_console_messages(browser) == []  # no CSP violation, no failed load


def test_a_running_run_updates_without_a_reload(browser, served):
    server, root, _ = served
    browser.get(server.origin + "/runs/live/")
    state = browser.find_element(By.CSS_SELECTOR, "[data-run-state]")
    assert state.text == "running"
    browser.execute_script("window.faiceNotReloaded = true;")
    row_state = browser.find_element(By.CSS_SELECTOR, 'tr[data-batch="s-00000011"] td[data-col=state]')
    assert row_state.text == "running"
    finish_batches(root / "live", ["s-00000009", "s-00000010", "s-00000011"], value=0.5)
    WebDriverWait(browser, 20).until(lambda b: b.find_element(By.CSS_SELECTOR, "[data-run-state]").text == "succeeded")
    assert browser.execute_script("return window.faiceNotReloaded === true;")  # the same page: no reload
    assert browser.find_element(By.CSS_SELECTOR, 'tr[data-batch="s-00000011"] td[data-col=state]').text == "succeeded"
    assert "12 succeeded" in browser.find_element(By.CSS_SELECTOR, "[data-run-counts]").text
    browser.refresh()
    assert browser.find_element(By.CSS_SELECTOR, "[data-run-state]").text == "succeeded"
    assert not browser.execute_script("return window.faiceNotReloaded === true;")
    assert severe_console_messages(browser) == []


def test_a_new_best_batch_is_announced(browser, served):
    server, root, _ = served
    browser.get(server.origin + "/runs/live/")
    assert not browser.find_element(By.ID, "stale").is_displayed()
    finish_batches(root / "live", ["s-00000010"], value=5.0)
    WebDriverWait(browser, 20).until(lambda b: b.find_element(By.ID, "stale").is_displayed())
    browser.find_element(By.CSS_SELECTOR, "#stale a").click()
    WebDriverWait(browser, 10).until(
        lambda b: b.find_element(By.CSS_SELECTOR, "tr.best").get_attribute("data-batch") == "s-00000010")
