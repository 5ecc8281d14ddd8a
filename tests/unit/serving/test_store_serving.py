"""Predictions, audit trail (append-only), open escalations, review audit rows."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DatabaseError

from labeling.webhooks import CorrectionEvent
from serving.store import AppendOnlyError, AuditEvent, Item, Prediction, Store
from tests.unit.serving.support import new

pytestmark = pytest.mark.every_database  # each test runs on SQLite and on PostgreSQL


@pytest.fixture
def store(store: Store) -> Store:
    """The serving conftest's store (SQLite or PostgreSQL) with model version v1 registered."""
    store.register_model_version("v1", source="test", encoder_id="e", n_labels=2, details={})
    return store


def correction(item_id: str, label: str, annotation_id: int = 1) -> CorrectionEvent:
    t = datetime.now(UTC)
    return CorrectionEvent(
        action="created", annotation_id=annotation_id, task_id=1, project_id=1, item_id=item_id,
        label=label, raw_label=label, reviewer_id=9, created_at=t, updated_at=t, lead_time=1.0,
        was_cancelled=False, predicted_label=None, model_version="v1", model_score=0.5, source="webhook",
    )  # fmt: skip


def test_predictions_audit_and_hook_share_one_transaction(store: Store) -> None:
    def failing_hook(*_: object) -> None:
        raise RuntimeError("outbox down")

    with pytest.raises(RuntimeError):
        store.record_predictions("v1", [new("a"), new("b")], on_escalated=failing_hook)
    assert store.count(Item) == store.count(Prediction) == store.count(AuditEvent) == 0
    seen: list[list[str]] = []
    ids = store.record_predictions(
        "v1",
        [new("a"), new("b", "auto_accepted")],
        on_escalated=lambda _s, e, _v: seen.append([x.item_id for x in e]),
    )
    assert len(ids) == 2
    assert seen == [["a"]]
    assert [a.action for a in store.audit_trail()] == ["escalated", "auto_accepted"]


def test_audit_rows_cannot_change(store: Store) -> None:
    store.record_predictions("v1", [new("a")])

    def tamper() -> None:
        with store.session() as session:
            row = session.get(AuditEvent, 1)
            assert row is not None
            row.action = "auto_accepted"

    with pytest.raises(AppendOnlyError):
        tamper()
    with pytest.raises(DatabaseError, match="append-only"), store.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_events"))
    with pytest.raises(DatabaseError, match="append-only"), store.engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET action = 'x'"))
    assert store.count(AuditEvent) == 1


def test_review_audit_and_open_queue(store: Store) -> None:
    store.record_predictions("v1", [new("a"), new("b"), new("c", "auto_accepted")])
    assert [e.prediction.item_id for e in store.open_escalations()] == ["a", "b"]
    assert store.record_correction(correction("a", "A > B", 1))  # kept the model's label
    assert store.record_correction(correction("b", "A > C", 2))  # changed it
    assert store.open_escalations() == []
    reviews = [a for a in store.audit_trail() if a.kind == "review"]
    assert [(a.item_id, a.action, a.before, a.after, a.actor) for a in reviews] == [
        ("a", "approved", "A > B", "A > B", "reviewer:9"),
        ("b", "corrected", "A > B", "A > C", "reviewer:9"),
    ]
    history = store.item_history("b")
    assert history is not None
    assert len(history.audit) == 2
    assert len(history.corrections) == 1
    # a new escalation of the same item after the review reopens it
    store.record_predictions("v1", [new("b")])
    assert [e.prediction.item_id for e in store.open_escalations()] == ["b"]


def test_the_open_queue_pages_in_priority_order_with_and_without_a_reason(store: Store) -> None:
    items = [
        replace(new(f"i{k}"), priority=k / 10, reasons=["audit"] if k % 3 == 0 else ["below_threshold"])
        for k in range(10)
    ]
    store.record_predictions("v1", items)
    everything = [e.prediction.item_id for e in store.open_escalations(limit=100)]
    assert everything == [f"i{k}" for k in range(9, -1, -1)]  # highest priority first
    pages = [store.open_escalations(limit=3, offset=o) for o in (0, 3, 6, 9, 12)]
    assert [e.prediction.item_id for page in pages for e in page] == everything
    assert store.open_escalations(limit=0) == []
    audits = [e.prediction.item_id for e in store.open_escalations(reason="audit")]
    assert audits == ["i9", "i6", "i3", "i0"]
    assert [e.prediction.item_id for e in store.open_escalations(reason="audit", limit=2, offset=1)] == [
        "i6",
        "i3",
    ]
