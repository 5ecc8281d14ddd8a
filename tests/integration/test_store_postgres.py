"""The store on a real PostgreSQL: same code as on SQLite, selected by `serving.database_url`.

The store's unit tests run on both databases already (marked `every_database`, see
tests/unit/serving/conftest.py). Here is what only a server database shows: the append-only trigger,
concurrent outbox enqueues, the real app end to end, migrations from the initial schema.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text
from sqlalchemy.exc import DatabaseError

from hitl.settings import LabelStudioSettings, RoutingSettings, ServingSettings, Settings
from labeling.push import Escalation
from learner.encoder import HFEncoder
from serving.app import create_app
from serving.keys import Role
from serving.model import ModelHolder
from serving.outbox import OutboxEntry, enqueue_escalations
from serving.store import AuditEvent, Item, Prediction, Store
from tests.unit.serving.db_checks import check_initial_to_head_keeps_every_row
from tests.unit.serving.support import auth, catalog_items, new

pytestmark = pytest.mark.integration


@pytest.fixture
def store(postgres_url: str) -> Iterator[Store]:
    db = Store(postgres_url)
    db.create_all()
    db.register_model_version("v1", source="test", encoder_id="e", n_labels=2, details={})
    yield db
    db.close()


def test_it_is_postgresql_with_the_append_only_trigger(store: Store) -> None:
    assert store.dialect == "postgresql"
    store.record_predictions("v1", [new("a"), new("b")])
    with store.engine.connect() as conn:
        triggers = conn.execute(
            text(
                "SELECT tgname FROM pg_trigger WHERE tgrelid = 'audit_events'::regclass AND NOT tgisinternal"
            )
        ).scalars()
        assert set(triggers) == {"audit_events_append_only"}
    for statement in ("UPDATE audit_events SET action = 'x' WHERE id = 2", "DELETE FROM audit_events"):
        with pytest.raises(DatabaseError, match="audit_events is append-only"), store.engine.begin() as conn:
            conn.execute(text(statement))
    assert [a.action for a in store.audit_trail()] == ["escalated", "escalated"]


def _esc(item: str, version: str = "v1", priority: float = 0.5) -> Escalation:
    return Escalation(
        item_id=item, title=f"Shoe {item}", predicted_label="Sports > Running", confidence=0.4,
        priority=priority, reasons=["low_confidence"], model_version=version,
    )  # fmt: skip


def _outbox(store: Store) -> list[tuple[str, str, float]]:
    with store.session() as session:
        rows = session.scalars(select(OutboxEntry).order_by(OutboxEntry.item_id, OutboxEntry.model_version))
        return [(r.item_id, r.model_version, r.priority) for r in rows]


def test_outbox_enqueue_is_idempotent(store: Store) -> None:
    with store.session() as session:
        assert enqueue_escalations(session, [_esc("a"), _esc("b"), _esc("a", priority=0.9)], "v1") == 2
    with store.session() as session:
        assert enqueue_escalations(session, [_esc("a"), _esc("b")], "v1") == 0
    with store.session() as session:
        assert enqueue_escalations(session, [_esc("a", "v2")], "v2") == 1
    assert _outbox(store) == [("a", "v1", 0.9), ("a", "v2", 0.5), ("b", "v1", 0.5)]


def test_concurrent_enqueues_of_the_same_item_both_commit_and_store_it_once(store: Store) -> None:
    """The second transaction waits on the first's uncommitted row, then ON CONFLICT DO NOTHING."""
    first_enqueued, errors = threading.Event(), []

    def second() -> None:
        try:
            first_enqueued.wait(10)
            with store.session() as session:  # blocks on the unique index until the first commits
                enqueue_escalations(session, [_esc("a"), _esc("c")], "v1")
        except Exception as exc:  # reported below, in the test's thread
            errors.append(exc)

    thread = threading.Thread(target=second)
    thread.start()
    with store.session() as session:
        assert enqueue_escalations(session, [_esc("a"), _esc("b")], "v1") == 2
        first_enqueued.set()
        thread.join(0.5)  # the second transaction is now waiting on "a"
    thread.join(30)
    assert not thread.is_alive()
    assert errors == []
    assert [item for item, _, _ in _outbox(store)] == ["a", "b", "c"]


# ------------------------------------------------------------------ the real app on PostgreSQL
def test_the_app_predicts_and_records_on_postgresql(
    postgres_url: str, small_bundle_dir: Path, minilm_encoder: HFEncoder, tmp_path: Path
) -> None:
    settings = Settings(
        state_dir=tmp_path,
        serving=ServingSettings(
            database_url=postgres_url, bundle_path=small_bundle_dir, model_poll_interval_s=0,
            outbox_enabled=False,
        ),
        routing=RoutingSettings(high_value_price=1000.0),
        labelstudio=LabelStudioSettings(sync_interval_s=0),
    )  # fmt: skip
    keys = Store(postgres_url)  # the app opens its own store from the URL; this one looks at the rows
    keys.create_all()
    holder = ModelHolder(settings, encoder_factory=lambda _ref: minilm_encoder)
    try:
        with TestClient(create_app(settings, model=holder), raise_server_exceptions=False) as client:
            assert client.get("/readyz").json()["database"] is True
            items = catalog_items(8, seed=31)
            items[0] |= {"price": 5000.0}
            answer = client.post("/v1/predict", json={"items": items}, headers=auth(keys, Role.SERVICE))
            assert answer.status_code == 200, answer.text
            predictions = answer.json()["predictions"]
            assert [p["id"] for p in predictions] == [i["id"] for i in items]
            assert "high_value" in predictions[0]["reasons"]
            assert client.get("/readyz").json()["status"] == "ready"
        assert keys.count(Item) == keys.count(Prediction) == keys.count(AuditEvent) == len(items)
        trail = keys.audit_trail()
        assert {a.kind for a in trail} == {"model_decision"}
        assert trail[0].details["requested_by"] == "test-service"
    finally:
        holder.close()
        keys.close()


def test_an_initial_database_with_data_upgrades_to_head_on_postgresql(postgres_url: str) -> None:
    # Issue #12.9: the same check as on SQLite (tests/unit/serving/test_db.py), on a server database.
    check_initial_to_head_keeps_every_row(postgres_url)
