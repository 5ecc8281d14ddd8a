"""The escalation outbox against the real Label Studio: nothing lost while it is down, nothing duplicated."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from hitl.settings import Settings
from labeling.client import LabelStudioClient
from labeling.push import Escalation
from labeling.server import free_port
from serving.outbox import OutboxEntry, OutboxWorker, enqueue_escalations
from serving.store import Store
from tests.integration.conftest import bootstrap_recorded, deliver_now

pytestmark = pytest.mark.integration

VERSION = "v-outbox-it"
PREFIX = "outbox-it"


def _later() -> datetime:
    # Past any backoff: every pending entry is due.
    return datetime.now(UTC).replace(tzinfo=None) + timedelta(hours=1)


def _entries(store: Store) -> list[OutboxEntry]:
    with store.session() as session:
        return list(session.scalars(select(OutboxEntry).where(OutboxEntry.model_version == VERSION)).all())


def _our_tasks(ls_client: LabelStudioClient, project_id: int) -> list[dict[str, Any]]:
    return [
        t for t in ls_client.iter_tasks(project_id) if str(t["data"].get("item_id", "")).startswith(PREFIX)
    ]


@pytest.fixture
def own_settings(settings: Settings) -> Settings:
    """A project of its own: project 1 is shared with apps whose workers may still be writing to it."""
    return settings.model_copy(
        update={"labelstudio": settings.labelstudio.model_copy(update={"project_title": "Outbox delivery"})}
    )


@pytest.fixture
def outbox_store(tmp_path: Path) -> Iterator[Store]:
    """A database of its own: the session's serving app (when started) runs an outbox worker on `store`."""
    db = Store(f"sqlite:///{tmp_path / 'outbox.db'}")
    db.create_all()
    yield db
    db.close()


@pytest.fixture
def project_id(ls_client: LabelStudioClient, own_settings: Settings, outbox_store: Store) -> int:
    return bootstrap_recorded(ls_client, own_settings, outbox_store)


@pytest.fixture
def escalations() -> list[Escalation]:
    return [
        Escalation(
            item_id=f"{PREFIX}-{i}",
            title=f"Outbox item {i}",
            brand="Acme",
            price=5.0 + i,
            predicted_label="Home & Kitchen > Cookware" if i % 2 else "Sports > Cycling",
            confidence=0.5,
            priority=(i + 1) / 21,
            reasons=["low_confidence"],
            model_version=VERSION,
        )
        for i in range(20)
    ]


def test_outbox_survives_label_studio_down_and_delivers_once(
    own_settings: Settings,
    outbox_store: Store,
    project_id: int,
    ls_client: LabelStudioClient,
    escalations: list[Escalation],
) -> None:
    store = outbox_store
    with store.session() as session:
        assert enqueue_escalations(session, escalations, VERSION) == 20
    settings = own_settings
    token = settings.labelstudio.token.get_secret_value()
    dead_port = free_port()  # nothing listens there: "Label Studio is down"
    down = OutboxWorker(
        store, settings, lambda: LabelStudioClient(f"http://127.0.0.1:{dead_port}", token, timeout=2.0)
    )
    report = down.run_once()
    assert (report.attempted, report.failed, report.delivered) == (20, 20, 0)
    rows = _entries(store)
    assert len(rows) == 20
    assert all(r.status == "pending" and r.attempts == 1 for r in rows)
    assert all(token not in (r.last_error or "") for r in rows)
    assert _our_tasks(ls_client, project_id) == []

    up = OutboxWorker(store, settings, clock=_later, rng=random.Random(0))  # the real Label Studio
    report = up.run_once()
    assert (report.delivered, report.failed, report.dead) == (20, 0, 0)
    rows = _entries(store)
    assert all(r.status == "delivered" and r.attempts == 2 and r.task_id for r in rows)

    tasks = _our_tasks(ls_client, project_id)
    assert len(tasks) == 20
    assert {t["id"] for t in tasks} == {r.task_id for r in rows}
    for task in tasks:
        predictions = ls_client.predictions_of_task(task["id"])
        assert [p["model_version"] for p in predictions] == [VERSION], task
        assert predictions[0]["result"]

    # A crash after the import but before "delivered" was written, and its claim expired: the ledger stops
    # a second import.
    with store.session() as session:
        session.execute(
            update(OutboxEntry)
            .where(OutboxEntry.model_version == VERSION)
            .values(status="pending", next_attempt_at=datetime(2000, 1, 1))
        )
    again = up.run_once()
    assert again.delivered == 20
    assert len(_our_tasks(ls_client, project_id)) == 20
    assert up.run_once().attempted == 0


def test_one_task_per_item_across_versions_and_auto_resolved_tasks_leave_the_queue(
    ls_client: LabelStudioClient, project_id: int, outbox_store: Store, own_settings: Settings
) -> None:
    """A newer champion's escalation updates the item's task (no second task); its auto-accept deletes
    the task with the reason in the audit trail; the project's model_version can then be set (Label
    Studio 1.23 accepts only a version some task has predictions of)."""
    base = {"title": "Versioned item", "brand": "Acme", "price": 9.0, "confidence": 0.4, "priority": 0.5}
    item = "versioned-it"
    other = "versioned-it-resolved"

    def deliver(escalations: list[Escalation], version: str) -> None:
        report = deliver_now(outbox_store, own_settings, escalations, version)
        assert report.failed == 0, report.errors

    v1 = [
        Escalation(
            item_id=i,
            predicted_label="Sports > Cycling",
            reasons=["low_confidence"],
            model_version="v-it-1",
            **base,
        )
        for i in (item, other)
    ]
    deliver(v1, "v-it-1")
    tasks = {
        t["data"]["item_id"]: t
        for t in ls_client.iter_tasks(project_id)
        if t["data"]["item_id"] in (item, other)
    }
    assert set(tasks) == {item, other}

    v2 = [
        Escalation(
            item_id=item,
            predicted_label="Home & Kitchen > Cookware",
            reasons=["below_threshold"],
            model_version="v-it-2",
            **base,
        ),
        Escalation(
            item_id=other,
            predicted_label="Sports > Cycling",
            reasons=["auto_accepted"],
            model_version="v-it-2",
            action="close",
            **{**base, "confidence": 0.98},
        ),
    ]
    deliver(v2, "v-it-2")
    mine = [t for t in ls_client.iter_tasks(project_id) if t["data"]["item_id"] in (item, other)]
    assert [t["data"]["item_id"] for t in mine] == [item]  # one task left, the same one
    assert mine[0]["id"] == tasks[item]["id"]
    predictions = ls_client.predictions_of_task(mine[0]["id"])
    # The newer version's prediction is on the task (Label Studio may keep or drop the older one).
    assert "v-it-2" in {p["model_version"] for p in predictions}
    assert mine[0]["meta"]["model_version"] == "v-it-2"
    assert mine[0]["data"]["reason"] == "confidence 0.40; no certified threshold for this category yet"
    closed = outbox_store.audit_trail(item_id=other, kind="labelstudio_task")
    assert [e.action for e in closed] == ["task_closed"]
    assert "auto-accepted by model v-it-2" in closed[0].details["reason"]

    ls_client.set_model_version(project_id, "v-it-2")  # refused (400) without predictions of it
    assert ls_client.get_project(project_id)["model_version"] == "v-it-2"
