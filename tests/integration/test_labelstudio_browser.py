"""A merchandiser in the real Label Studio UI, in headless Chromium (issue #14).

The reviewer logs in through Label Studio's own form and clicks **Label All Tasks**. The first task they
are served is the open audit (the outbox pushed it as the serving app does, most useful first). It shows
the item, the reasons in plain words and the model's top-3 categories as one-click choices with its guess
pre-selected. The reviewer clicks the second choice and submits; the webhook stores that category as the
label. After a promotion the project shows the new version, the open task carries the new champion's
guess, and the item it auto-accepted is gone from the queue. Screenshots are saved in the test's tmp dir.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hitl.settings import Settings
from labeling.client import LabelStudioClient
from labeling.push import Escalation
from serving.store import Store
from tests.integration.conftest import (
    REVIEWER_PASSWORD,
    Receiver,
    bootstrap_recorded,
    deliver_now,
    eventually,
)

pytestmark = pytest.mark.integration

VERSION = "v-browser"
MERCHANDISER = "merchandiser@hitl.local"


def _escalation(item_id: str, reasons: list[str], priority: float, **changes: Any) -> Escalation:
    return Escalation(
        item_id=item_id,
        title=f"Cast iron skillet {item_id}",
        description="Pre-seasoned, 26 cm",
        brand="Acme",
        price=49.0,
        predicted_label="Home & Kitchen > Decor",
        confidence=0.44,
        threshold=0.86,
        candidates=[
            ("Home & Kitchen > Decor", 0.44),
            ("Home & Kitchen > Cookware", 0.39),
            ("Sports > Running", 0.06),
        ],
        priority=priority,
        reasons=reasons,
        model_version=VERSION,
    ).model_copy(update=changes)


def _deliver(store: Store, settings: Settings, escalations: list[Escalation], version: str) -> None:
    report = deliver_now(store, settings, escalations, version)
    assert report.failed == 0, report.errors


@pytest.fixture
def own_project(
    ls_client: LabelStudioClient, settings: Settings, store: Store, receiver: Receiver
) -> tuple[int, Settings]:
    """A project of this test's own (webhook to the session's app): Label Studio's queue order is the
    point here, and the session's shared project holds other tests' open tasks."""
    own = settings.model_copy(
        update={"labelstudio": settings.labelstudio.model_copy(update={"project_title": "Merchandiser view"})}
    )
    return bootstrap_recorded(ls_client, own, store), own


def test_a_merchandiser_picks_a_suggested_category_with_one_click(
    browser: Any,
    ls_client: LabelStudioClient,
    store: Store,
    own_project: tuple[int, Settings],
    tmp_path: Path,
) -> None:
    from selenium.webdriver.common.by import By

    project_id, settings = own_project

    audit = _escalation("browser-audit", ["audit"], priority=1.0)  # routing gives audits 1.0
    ordinary = _escalation("browser-low", ["below_threshold"], priority=0.9)
    resolved = _escalation("browser-resolved", ["below_threshold"], priority=0.5)
    # A merchandiser of their own: Label Studio serves a user their own locked or drafted task first,
    # so the session's shared reviewer (whom other tests use through the API) would see another task.
    reviewer = ls_client.ensure_reviewer(MERCHANDISER, REVIEWER_PASSWORD)
    _deliver(store, settings, [audit, ordinary, resolved], VERSION)
    ls_client.set_model_version(project_id, VERSION)  # as a promotion does: the queue follows it

    try:
        base = settings.labelstudio.base_url
        browser.delete_all_cookies()
        browser.get(f"{base}/user/login/")
        browser.find_element(By.ID, "email").send_keys(reviewer.email)
        browser.find_element(By.ID, "password").send_keys(REVIEWER_PASSWORD)
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        eventually(lambda: "/user/login" not in browser.current_url, what="the login to finish", timeout=30)
        browser.get(f"{base}/projects/{project_id}/data?labeling=1")  # what "Label All Tasks" opens

        title = eventually(
            lambda: browser.find_element(By.XPATH, "//*[contains(text(), 'Cast iron skillet browser-')]"),
            what="the first task",
            timeout=30,
        )
        browser.save_screenshot(str(tmp_path / "01-first-task.png"))
        print(f"\nscreenshots in {tmp_path}")
        assert "browser-audit" in title.text, "the open audit is served first"
        page = browser.find_element(By.TAG_NAME, "body").text
        assert "Why it is here: random audit (measures the model's accuracy)" in page
        top3 = ("Home & Kitchen > Decor · 44%", "Home & Kitchen > Cookware · 39%", "Sports > Running · 6%")
        for shown in top3:
            assert shown in page, shown
        assert page.count("Cast iron skillet browser-audit") == 1, "the title once"

        def choice(text: str) -> Any:
            return browser.find_element(By.XPATH, f"//label[.//*[contains(text(), '{text}')]]")

        preselected = choice("Home & Kitchen > Decor · 44%").find_element(By.TAG_NAME, "input")
        assert preselected.is_selected(), "the champion's guess is pre-selected"
        choice("Home & Kitchen > Cookware · 39%").click()
        browser.save_screenshot(str(tmp_path / "02-picked.png"))
        browser.find_element(By.XPATH, "//button[normalize-space()='Submit']").click()

        def stored() -> Any:
            current = store.current_labels().get("browser-audit")
            return current if current is not None and current.source == "webhook" else None

        label = eventually(stored, what="the webhook's correction in the store", timeout=30)
        browser.save_screenshot(str(tmp_path / "03-submitted.png"))
        assert label.label == "Home & Kitchen > Cookware"
        assert label.reviewer_id == reviewer.user_id
        assert label.predicted_label == "Home & Kitchen > Decor"

        # A promotion: the new champion re-scores the open items (what `serving.retrain.promotion` enqueues):
        # one stays in review with the new guess, one is auto-accepted now and leaves the queue.
        v2 = f"{VERSION}-2"
        rescored = _escalation(
            "browser-low",
            ["below_threshold"],
            0.8,
            model_version=v2,
            predicted_label="Home & Kitchen > Cookware",
            confidence=0.71,
            candidates=[("Home & Kitchen > Cookware", 0.71), ("Home & Kitchen > Decor", 0.2)],
        )
        accepted = _escalation("browser-resolved", ["auto_accepted"], 0.1, model_version=v2, action="close")
        _deliver(store, settings, [rescored, accepted], v2)
        ls_client.set_model_version(project_id, v2)
        assert ls_client.get_project(project_id)["model_version"] == v2
        browser.get(f"{base}/projects/{project_id}/data?labeling=1")
        eventually(
            lambda: browser.find_element(By.XPATH, "//*[contains(text(), 'Cast iron skillet browser-low')]"),
            what="the re-scored task, served next",
            timeout=30,
        )
        browser.save_screenshot(str(tmp_path / "04-after-promotion.png"))
        newer = choice("Home & Kitchen > Cookware · 71%").find_element(By.TAG_NAME, "input")
        assert newer.is_selected(), "the new champion's guess is pre-selected"
        open_items = {t["meta"].get("item_id") for t in ls_client.iter_tasks(project_id)}
        assert "browser-low" in open_items
        assert "browser-resolved" not in open_items, "the auto-accepted item left the queue"
    finally:  # a rerun starts from an empty queue
        items = ["browser-audit", "browser-low", "browser-resolved"]
        for item_id, task_id in store.open_task_ids(project_id, items).items():
            ls_client.delete_task(task_id)
            store.record_closed(project_id, "test", [(item_id, task_id, "test cleanup")])
