from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.exc import IntegrityError

from labeling.config import Taxonomy
from labeling.push import AUTO_ACCEPTED, KEPT
from labeling.webhooks import CorrectionEvent, DeletionEvent
from serving.store import Store

pytestmark = pytest.mark.every_database  # each test runs on SQLite and on PostgreSQL

T0 = datetime(2025, 1, 1, 10, 0, 0, 123456, tzinfo=UTC)


def correction(annotation_id: int = 1, label: str | None = "Shoes", **kw: object) -> CorrectionEvent:
    base = CorrectionEvent(
        action="created",
        annotation_id=annotation_id,
        task_id=10,
        project_id=1,
        item_id=f"sku-{annotation_id}",
        label=label,
        raw_label=label,
        reviewer_id=2,
        created_at=T0,
        updated_at=T0,
        lead_time=1.5,
        was_cancelled=False,
        predicted_label="Hats",
        model_version="v1",
        model_score=0.4,
        source="webhook",
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def test_idempotent_by_annotation_updated_at_and_action(store: Store) -> None:
    assert store.record_correction(correction()) is True
    assert store.record_correction(correction(source="sync")) is False
    later = T0 + timedelta(seconds=5)
    assert store.record_correction(correction(action="updated", label="Hats", updated_at=later)) is True
    history = store.history(1)
    assert [(r.action, r.label) for r in history] == [("created", "Shoes"), ("updated", "Hats")]
    assert history[0].updated_at == T0
    assert history[0].predicted_label == "Hats"
    assert store.current_labels()["sku-1"].label == "Hats"
    assert store.annotation_versions(1) == {1: later}


def test_deletion_recorded_once_and_hides_the_label(store: Store) -> None:
    store.record_correction(correction())
    event = DeletionEvent((1, 42), 1, "webhook")
    assert store.record_deletion(event) == 2
    assert store.record_deletion(event) == 0
    assert [r.action for r in store.history(1)] == ["created", "deleted"]
    assert store.history(1)[-1].item_id == "sku-1"
    assert store.current_labels() == {}
    assert store.annotation_versions(1) == {}


def test_an_annotation_gone_with_a_task_our_close_deleted_keeps_its_label(store: Store) -> None:
    # The outbox deleted the task of an auto-accepted item the moment after a reviewer annotated it;
    # Label Studio deleted the annotation with it, and the sync then finds it gone (404).
    store.record_pushed(1, "v1", [("sku-1", 10, 0.5), ("sku-2", 11, 0.5), ("sku-3", 12, 0.5)])
    for n in (1, 2, 3):
        store.record_correction(correction(n, task_id=9 + n))
    store.record_closed(1, "v2", [("sku-1", 10, f"{AUTO_ACCEPTED} v2 at confidence 0.97")])
    store.record_closed(1, "v2", [("sku-2", 11, f"{AUTO_ACCEPTED} v2 at confidence 0.97; {KEPT}")])
    assert store.record_deletion(DeletionEvent((1, 2), 1, "sync")) == 1
    assert [r.action for r in store.history(1)] == ["created"]
    assert [r.action for r in store.history(2)] == ["created", "deleted"]  # its task was kept: someone else
    # Label Studio reporting a deletion itself (a reviewer's) is always recorded.
    assert store.record_deletion(DeletionEvent((1,), 1, "webhook")) == 1
    assert store.record_deletion(DeletionEvent((3,), 1, "sync")) == 1  # never closed by us
    assert set(store.current_labels()) == set()


def test_cancelled_and_rejected_are_recorded_but_never_labels(store: Store) -> None:
    store.record_correction(correction(1, action="cancelled", label=None, was_cancelled=True))
    store.record_correction(
        correction(2, action="rejected", label=None, raw_label="Nope", error="not in taxonomy")
    )
    assert len(store.corrections()) == 2
    assert store.current_labels() == {}


def test_pushed_tasks_unique_per_item_and_version(store: Store) -> None:
    store.record_pushed(1, "v1", [("a", 100, 0.9), ("b", 101, 0.2)])
    assert store.pushed_item_ids("v1", ["a", "c"]) == {"a"}
    assert store.pushed_item_ids("v2", ["a"]) == set()
    with pytest.raises(IntegrityError, match=r"(?i)unique"):  # SQLite and PostgreSQL word it differently
        store.record_pushed(1, "v1", [("a", 102, 0.9)])


@pytest.mark.every_database
def test_a_rollback_pushes_the_older_version_to_an_item_again(store: Store) -> None:
    store.record_pushed(1, "v1", [("a", 100, 0.9)])
    store.record_pushed(1, "v2", [("a", 100, 0.8)])  # the next champion's decision on the same task
    assert store.pushed_item_ids("v1", ["a"]) == set()  # rolled back to v1: its decision must go again
    assert store.pushed_item_ids("v2", ["a"]) == {"a"}
    store.record_closed(1, "v2", [("a", 100, "auto-accepted")])
    store.record_pushed(1, "v1", [("a", 105, 0.7)])  # a new task for it
    assert store.pushed_item_ids("v1", ["a"]) == {"a"}
    assert store.pushed_item_ids("v2", ["a"]) == set()
    assert store.open_task_ids(1, ["a"]) == {"a": 105}
    with pytest.raises(IntegrityError, match=r"(?i)unique"):  # v1 is the newest again: a repeat is refused
        store.record_pushed(1, "v1", [("a", 106, 0.7)])


def test_project_taxonomy_round_trip(store: Store) -> None:
    tax = Taxonomy.from_paths(["A > x", "B > y"])
    store.save_project(5, "Products", 9, tax)
    store.save_project(5, "Products", 10, tax)
    assert store.taxonomy(5) == tax
    assert store.taxonomy(6) is None
    assert store.project_by_title("Products") == 5
    # The project was deleted in Label Studio and bootstrapped again under the same title: the store
    # follows the new one (before, it went on with the first row, and every push went to the deleted one).
    store.save_project(3, "Products", 11, tax)
    assert store.project_by_title("Products") == 3
    store.save_project(5, "Products", None, tax)  # and back, when a bootstrap records 5 again
    assert store.project_by_title("Products") == 5


def test_a_bootstrap_widens_the_taxonomy_until_label_studio_has_the_new_one(store: Store) -> None:
    old, new = Taxonomy.from_paths(["Shoes", "Hats"]), Taxonomy.from_paths(["Shoes", "Caps"])
    store.save_project(5, "Products", 9, old)
    store.widen_taxonomy(5, "Products", new)  # before the label config changes in Label Studio
    widened = store.taxonomy(5)
    assert widened is not None
    assert widened.labels == ("Caps", "Hats", "Shoes")  # "Hats" still offered; "Caps" offered soon
    store.save_project(5, "Products", None, new)  # the bootstrap finished
    assert store.taxonomy(5) == new
    assert store.project_by_title("Products") == 5
    store.widen_taxonomy(5, "Products", Taxonomy.from_paths(["Shoes > Trail"]))  # cannot be one
    assert store.taxonomy(5) == Taxonomy.from_paths(["Shoes > Trail"])
    store.widen_taxonomy(6, "Other", new)  # a new project: its first taxonomy
    assert store.taxonomy(6) == new


def test_champion_moves_are_audited_and_filterable_by_kind(store: Store) -> None:
    store.record_model_event(
        action="rollback",
        version="m:v1",
        actor="ml_engineer:alice",
        reason="v2 misroutes toys",
        previous="m:v2",
    )
    store.record_model_event(action="manual_promote", version="m:v3", actor="ml_engineer:bob", reason=None)
    moves = store.model_events()
    assert [(m.action, m.before, m.after, m.actor) for m in moves] == [
        ("rollback", "m:v2", "m:v1", "ml_engineer:alice"),
        ("manual_promote", None, "m:v3", "ml_engineer:bob"),
    ]
    assert moves[0].details["reason"] == "v2 misroutes toys"
    assert [a.kind for a in store.audit_trail(kind="model_event")] == ["model_event", "model_event"]
    assert store.audit_trail(kind="review") == []


def test_the_current_label_is_the_latest_by_label_studios_clock_not_by_arrival(store: Store) -> None:
    # Issue #12.1: created as A, updated to B while serving was down; UPDATED(B) then arrives first.
    later = T0 + timedelta(seconds=30)
    assert store.record_correction(correction(action="updated", label="Hats", updated_at=later))
    assert store.record_correction(correction(label="Shoes"))
    assert store.current_labels()["sku-1"].label == "Hats"
    assert [(r.action, r.label) for r in store.history(1)] == [("created", "Shoes"), ("updated", "Hats")]
    assert store.annotation_versions(1) == {1: later}  # sync sees the latest state: nothing stale to keep
    # A deletion keyed to the latest state outranks it, whatever arrives afterwards.
    assert store.record_deletion(DeletionEvent((1,), 1, "webhook")) == 1
    assert store.record_correction(correction(label="Shoes", source="sync", updated_at=T0 - timedelta(1)))
    assert store.current_labels() == {}


def test_states_at_the_same_instant_are_ordered_deterministically(store: Store) -> None:
    store.record_correction(correction(action="updated", label="Hats"))
    store.record_correction(correction(label="Shoes"))  # same updated_at, arrives later
    assert store.current_labels()["sku-1"].label == "Hats"


def test_one_open_task_per_item_until_it_is_closed_with_a_reason_in_the_audit_trail(store: Store) -> None:
    store.record_pushed(7, "v1", [("a", 101, 0.5), ("b", 102, 0.4)])
    store.record_pushed(7, "v2", [("a", 101, 0.6)])  # a newer prediction on the same task
    assert store.open_task_ids(7, ["a", "b", "c"]) == {"a": 101, "b": 102}
    assert store.open_task_ids(8, ["a"]) == {}  # another project
    store.record_closed(7, "v2", [("a", 101, "auto-accepted by model v2 at confidence 0.97")])
    assert store.open_task_ids(7, ["a", "b"]) == {"b": 102}
    # The ledger says which version's decision the task got last (v1's was replaced by v2's).
    assert (store.pushed_item_ids("v1", ["a"]), store.pushed_item_ids("v2", ["a"])) == (set(), {"a"})
    events = store.audit_trail(item_id="a", kind="labelstudio_task")
    assert [(e.action, e.before, e.actor) for e in events] == [("task_closed", "101", "model:v2")]
    assert events[0].details["reason"].startswith("auto-accepted by model v2")
    store.record_pushed(7, "v3", [("a", 205, 0.8)])  # escalated again later: a fresh task
    assert store.open_task_ids(7, ["a"]) == {"a": 205}


def test_a_task_with_only_proposals_is_held_for_a_senior_until_a_label_releases_it(store: Store) -> None:
    from serving.store import HELD, RELEASED

    proposal = correction(1, label=None, raw_label="Shoes", action="proposed", task_id=40, item_id="sku-x")
    store.record_correction(proposal)
    (hold,) = store.senior_holds(1)
    assert (hold.task_id, hold.item_id, hold.hold) == (40, "sku-x", True)
    store.record_hold(1, hold, overlap=2)
    assert store.senior_holds(1) == []  # recorded: nothing to change until the next state

    # A second junior took the place held for a senior (overlap 2, two annotators: Label Studio counts
    # the task done): held again, for one more.
    store.record_correction(replace(proposal, annotation_id=2, reviewer_id=3))
    (again,) = store.senior_holds(1)
    assert (again.task_id, again.hold) == (40, True)
    store.record_hold(1, again, overlap=3)
    assert store.senior_holds(1) == []
    assert store.held_for_senior(1) == [40]  # what `hitl labelstudio status` lists for the seniors
    label = correction(3, label="Boots", task_id=40, item_id="sku-x", updated_at=T0 + timedelta(minutes=1))
    store.record_correction(label)
    (release,) = store.senior_holds(1)
    assert (release.task_id, release.hold) == (40, False)
    store.record_hold(1, release, overlap=3)
    assert store.senior_holds(1) == []
    assert store.held_for_senior(1) == []
    assert store.current_labels()["sku-x"].label == "Boots"
    trail = store.audit_trail(item_id="sku-x")
    assert [(a.kind, a.action, a.after) for a in trail] == [
        ("review", "proposed", "Shoes"),
        ("labelstudio_task", HELD, None),
        ("review", "proposed", "Shoes"),
        ("labelstudio_task", HELD, None),
        ("review", "corrected", "Boots"),
        ("labelstudio_task", RELEASED, None),
    ]
    # Ordinary tasks never show up.
    store.record_correction(correction(9, task_id=41))
    assert store.senior_holds(1) == []


def test_a_reused_task_id_does_not_mix_an_earlier_tasks_label_into_the_hold(store: Store) -> None:
    # Label Studio 1.23 on SQLite was seen handing out a deleted task's id again.
    store.record_correction(correction(1, label="Boots", task_id=50, item_id="old-item"))
    store.record_correction(correction(3, label="Boots", task_id=50, item_id="other", project_id=2))
    proposal = correction(
        2, label=None, raw_label="Shoes", action="proposed", task_id=50, item_id="new-item",
        updated_at=T0 + timedelta(minutes=5),
    )  # fmt: skip
    store.record_correction(proposal)
    (hold,) = store.senior_holds(1)
    assert (hold.task_id, hold.item_id, hold.hold) == (50, "new-item", True)
