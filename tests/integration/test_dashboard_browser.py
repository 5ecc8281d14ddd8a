"""The dashboard in a real headless Chromium (issue #7).

The real app runs under uvicorn on loopback, over a SQLite store seeded through the store's own API
(`tests.unit.serving.dashboard_seed`). A product owner signs in through the form, the page draws its
charts, and every chart's data (its `data-series` attribute) is compared with figures computed here,
independently, with plain SQL on the same database file (not with `serving.kpis`). A merchandiser key is
refused; a fresh store shows its empty states. A screenshot is saved under the test's tmp dir.

Chromium comes from the session's `browser` fixture (`tests.integration.browser`).
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from scipy import stats

from hitl.settings import DashboardSettings, LabelStudioSettings, RetrainSettings, ServingSettings, Settings
from labeling.server import free_port
from serving.app import create_app
from serving.keys import Role, create_key
from serving.store import Store
from tests.integration.browser import click_to_new_page
from tests.unit.serving.dashboard_seed import BIASED_BRAND, seed

pytestmark = pytest.mark.integration

FIRST_PASS = "(requested_by IS NULL OR requested_by != 'retrain:rescore')"


@dataclass
class Served:
    url: str
    db_path: Path
    store: Store
    keys: dict[Role, str]


@contextmanager
def serve(tmp: Path, *, seeded: bool) -> Iterator[Served]:
    """The real app under uvicorn on a free loopback port, over a (seeded or empty) SQLite store."""
    db_path = tmp / "hitl.db"
    settings = Settings(
        state_dir=tmp,
        labelstudio=LabelStudioSettings(sync_interval_s=0),
        serving=ServingSettings(
            port=free_port(),
            database_url=f"sqlite:///{db_path}",
            model_source="none",
            outbox_enabled=False,
            model_poll_interval_s=0,
        ),
        retrain=RetrainSettings(enabled=False),
    )
    store = Store(settings.database_url)
    store.create_all()
    if seeded:
        seed(store)
    keys = {role: create_key(store, f"browser-{role.value}", role)[1] for role in Role}
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, store=store),
            host="127.0.0.1",
            port=settings.serving.port,
            log_level="warning",
            lifespan="on",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield Served(f"http://127.0.0.1:{settings.serving.port}", db_path, store, keys)
    finally:
        server.should_exit = True
        thread.join(10)
        store.close()


def login(driver: Any, base: str, key: str) -> None:
    from selenium.webdriver.common.by import By

    driver.delete_all_cookies()
    driver.get(f"{base}/dashboard")
    assert driver.current_url == f"{base}/login", "no session: the dashboard must send us to the login page"
    driver.find_element(By.ID, "api_key").send_keys(key)
    click_to_new_page(driver, "login-submit")


def wait_ready(driver: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = driver.execute_script("return document.body && document.body.dataset.state")
        if state == "ready":
            return
        if state == "error":
            raise AssertionError(driver.find_element("id", "status").text)
        time.sleep(0.1)
    raise AssertionError(f"the dashboard did not render in {timeout} s: {driver.page_source[:2000]}")


def series(driver: Any, chart: str) -> Any:
    raw = driver.execute_script(f"return document.getElementById('{chart}').getAttribute('data-series')")
    return json.loads(raw)


# ------------------------------------------------------------------ figures from the store, in plain SQL
def query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def latest_items(db: Path) -> list[tuple[str, str, list[str], str | None, str | None]]:
    """(item, predicted label, reasons, brand, current reviewer label) per item."""
    rows = query(
        db,
        f"""
        WITH p AS (
            SELECT item_id, label, reasons, ROW_NUMBER() OVER (PARTITION BY item_id ORDER BY id DESC) AS n
            FROM predictions WHERE {FIRST_PASS}),
        s AS (  -- the newest state of each annotation
            SELECT item_id, action, label, updated_at, annotation_id,
                   ROW_NUMBER() OVER (PARTITION BY annotation_id ORDER BY id DESC) AS n
            FROM corrections),
        c AS (  -- an item's newest usable annotation
            SELECT item_id, label,
                   ROW_NUMBER() OVER (PARTITION BY item_id ORDER BY updated_at DESC, annotation_id DESC) AS n
            FROM s WHERE n = 1 AND action IN ('created', 'updated') AND label IS NOT NULL)
        SELECT p.item_id, p.label, p.reasons, i.brand, c.label
        FROM p JOIN items i ON i.id = p.item_id LEFT JOIN c ON c.item_id = p.item_id AND c.n = 1
        WHERE p.n = 1
        """,
    )
    return [(item, label, json.loads(reasons), brand, review) for item, label, reasons, brand, review in rows]


def test_product_owner_sees_the_figures_of_the_store(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    with serve(tmp_path, seeded=True) as app:
        login(browser, app.url, app.keys[Role.PRODUCT_OWNER])
        assert browser.current_url == f"{app.url}/dashboard"
        wait_ready(browser)
        db = app.db_path

        # Headline: escalation rate per model version, and by reason.
        by_version = series(browser, "chart-escalation-version")
        expected = query(
            db,
            "SELECT model_version, COUNT(*), SUM(decision = 'escalated') FROM predictions "
            f"WHERE {FIRST_PASS} GROUP BY model_version ORDER BY MIN(created_at)",
        )
        assert list(
            zip(by_version["model_version"], by_version["predicted"], by_version["escalated"], strict=True)
        ) == [tuple(r) for r in expected]
        assert by_version["rate"] == pytest.approx([e / n for _, n, e in expected])
        reasons = Counter(
            reason
            for (raw,) in query(
                db, f"SELECT reasons FROM predictions WHERE decision = 'escalated' AND {FIRST_PASS}"
            )
            for reason in json.loads(raw)
        )
        assert {r: sum(v) for r, v in by_version["by_reason"].items()} == dict(reasons)

        # Escalation rate over time (buckets of dashboard.window_s, UTC).
        over_time = series(browser, "chart-escalation-time")
        buckets = query(
            db,
            f"SELECT CAST(strftime('%s', created_at) AS INTEGER) / {DashboardSettings().window_s}, COUNT(*), "
            f"SUM(decision = 'escalated') FROM predictions WHERE {FIRST_PASS} GROUP BY 1 ORDER BY 1",
        )
        assert over_time["predicted"] == [n for _, n, _ in buckets]
        assert over_time["escalated"] == [e for _, _, e in buckets]
        assert over_time["rate"]["all"] == pytest.approx([e / n for _, n, e in buckets])

        # Realised accuracy of auto-accepts from spot checks, with its exact interval, against the target.
        items = latest_items(db)
        checked = [
            (label, review) for _, label, reasons, _, review in items if reasons == ["spot_check"] and review
        ]
        correct = sum(label == review for label, review in checked)
        spot = series(browser, "chart-spot-checks")
        assert (spot["group"][0], spot["reviewed"][0], spot["correct"][0]) == ("all", len(checked), correct)
        assert spot["accuracy"][0] == pytest.approx(correct / len(checked))
        assert spot["low"][0] == pytest.approx(stats.beta.ppf(0.025, correct, len(checked) - correct + 1))
        assert spot["high"][0] == pytest.approx(stats.beta.ppf(0.975, correct + 1, len(checked) - correct))
        assert spot["target"] == 0.95

        # Reviews per day; the median Label Studio lead time.
        days = query(
            db,
            "SELECT date(updated_at), SUM(label = predicted_label), SUM(label != predicted_label) "
            "FROM corrections WHERE action IN ('created', 'updated') GROUP BY 1 ORDER BY 1",
        )
        reviews = series(browser, "chart-reviews")
        assert list(zip(reviews["day"], reviews["approved"], reviews["corrected"], strict=True)) == [
            tuple(d) for d in days
        ]
        leads = [
            lead
            for (lead,) in query(
                db, "SELECT lead_time FROM corrections WHERE action IN ('created', 'updated')"
            )
        ]
        figures = browser.execute_script("return window.hitlDashboard")
        assert figures["reviews"]["median_lead_time_s"] == pytest.approx(statistics.median(leads))

        # The open review queue: the newest prediction escalated and not reviewed since.
        (open_count,) = query(
            db,
            """
            SELECT COUNT(*) FROM predictions p
            WHERE p.id IN (SELECT MAX(id) FROM predictions GROUP BY item_id) AND p.decision = 'escalated'
              AND NOT EXISTS (SELECT 1 FROM corrections c WHERE c.item_id = p.item_id
                              AND c.action IN ('created', 'updated') AND c.received_at >= p.created_at)
            """,
        )[0]
        assert open_count > 0
        assert sum(series(browser, "chart-queue")["open"]) == open_count
        assert browser.find_element(By.CSS_SELECTOR, "#tile-queue .value").text == str(open_count)

        # Bias monitoring: the biased brand is flagged, and only it.
        segments = series(browser, "chart-segments")
        assert segments["flagged"] == [f"brand: {BIASED_BRAND}"]
        reviewed_brand = [
            (label, review) for _, label, _, brand, review in items if brand == BIASED_BRAND and review
        ]
        index = segments["segment"].index(f"brand: {BIASED_BRAND}")
        assert segments["reviewed"][index] == len(reviewed_brand)
        assert segments["correction_rate"][index] == pytest.approx(
            sum(label != review for label, review in reviewed_brand) / len(reviewed_brand)
        )
        flagged_rows = browser.find_elements(By.CSS_SELECTOR, "#table-segments tr.flagged")
        assert [r.find_elements(By.TAG_NAME, "td")[1].text for r in flagged_rows] == [BIASED_BRAND]

        # Model versions timeline: the rejected run with its reason and a link to its MLflow run.
        timeline = browser.find_element(By.ID, "table-timeline").text
        assert "rolled back" in timeline
        assert "accuracy 0.91 < champion 0.95 - 0.01" in timeline
        assert browser.find_elements(By.CSS_SELECTOR, "#table-timeline a[href*='/#/runs/']")
        assert browser.find_elements(By.CSS_SELECTOR, "#empty-states .empty") == []

        shot = tmp_path / "dashboard.png"
        browser.execute_script("window.scrollTo(0, 0)")
        assert browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        print(f"\ndashboard screenshot: {shot}")

        # A merchandiser key is refused at the login form, with the reason, and gets no session.
        login(browser, app.url, app.keys[Role.MERCHANDISER])
        assert "may not view the dashboard" in browser.find_element(By.ID, "login-message").text
        assert browser.get_cookie("hitl_session") is None
        browser.get(f"{app.url}/dashboard")
        assert browser.current_url == f"{app.url}/login"


def test_a_fresh_store_shows_its_empty_states(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    with serve(tmp_path, seeded=False) as app:
        login(browser, app.url, app.keys[Role.PRODUCT_OWNER])
        wait_ready(browser)
        keys = [
            e.get_attribute("data-key")
            for e in browser.find_elements(By.CSS_SELECTOR, "#empty-states .empty")
        ]
        assert keys == ["no_model", "no_corrections"]
        assert "No model has served a prediction yet" in browser.find_element(By.ID, "empty-states").text
        assert series(browser, "chart-escalation-time") is None
        assert "No predictions yet" in browser.find_element(By.ID, "chart-escalation-time").text
        assert "No corrections yet" in browser.find_element(By.ID, "chart-reviews").text
        shot = tmp_path / "dashboard-empty.png"
        assert browser.save_screenshot(str(shot))
        print(f"\nempty dashboard screenshot: {shot}")
        # Sign out: the session is gone.
        click_to_new_page(browser, "logout")
        assert browser.current_url == f"{app.url}/login"
        browser.get(f"{app.url}/dashboard")
        assert browser.current_url == f"{app.url}/login"
