"""Reviewer tiers (issue #14) against a real Label Studio and the real serving app.

The merchandiser `reviewer@hitl.local` is not in `labelstudio.senior_reviewers` (default: the admin): on
a high-value task their annotation is a proposal, the serving app's outbox worker holds the task open in
Label Studio, and the admin's annotation is the label that releases it. The audit trail shows both.
"""

from __future__ import annotations

import httpx
import pytest

from hitl.settings import Settings
from labeling.client import LabelStudioClient, ReviewerAccount
from labeling.push import Escalation, push_escalations
from serving.store import HELD, RELEASED, TASK_EVENT, AuditRecord, Store
from tests.integration.conftest import TAXONOMY, Receiver, eventually

pytestmark = pytest.mark.integration


def _escalation(item_id: str, reasons: list[str], price: float) -> Escalation:
    return Escalation(
        item_id=item_id,
        title=f"Espresso machine {item_id}",
        brand="Acme",
        price=price,
        predicted_label="Home & Kitchen > Decor",
        confidence=0.55,
        priority=0.5,
        reasons=reasons,
        model_version="v-tiers",
        review_price=1000.0,
    )


def _push(ls_client: LabelStudioClient, store: Store, project_id: int, esc: Escalation) -> int:
    report = push_escalations(ls_client, store, project_id, TAXONOMY, [esc], senior_review=True)
    return report.task_ids[esc.item_id]


def _task_marks(store: Store, item_id: str) -> list[AuditRecord]:
    return [a for a in store.audit_trail(item_id=item_id, kind=TASK_EVENT) if a.action in (HELD, RELEASED)]


def test_a_juniors_annotation_on_a_high_value_task_is_a_proposal_and_a_seniors_is_the_label(
    ls_client: LabelStudioClient,
    reviewer_client: LabelStudioClient,
    reviewer: ReviewerAccount,
    store: Store,
    project_id: int,
    receiver: Receiver,
    settings: Settings,
) -> None:
    assert settings.labelstudio.senior_reviewers == [settings.labelstudio.username]
    admin_id = int(ls_client.whoami()["id"])
    task_id = _push(ls_client, store, project_id, _escalation("tier-high", ["high_value"], 1250.0))
    task = ls_client.get_task(task_id)
    assert task["meta"]["needs_senior"] is True
    assert task["data"]["reason"] == "price 1,250 >= review limit 1,000; needs a senior reviewer"

    # The junior's choice: stored as a proposal, not a label.
    junior = reviewer_client.create_annotation(task_id, TAXONOMY.result_for("Home & Kitchen > Cookware"))
    (state,) = eventually(lambda: store.history(junior["id"]), lambda rows: len(rows) >= 1)
    assert (state.action, state.label, state.raw_label) == ("proposed", None, "Home & Kitchen > Cookware")
    assert state.reviewer_id == reviewer.user_id
    assert "tier-high" not in store.current_labels()

    # The outbox worker holds the task open for a senior: one more annotator, not finished.
    marks = eventually(lambda: _task_marks(store, "tier-high"), lambda found: len(found) >= 1)
    assert [m.action for m in marks] == [HELD]
    held = ls_client.get_task(task_id)
    assert (held["overlap"], held["is_labeled"]) == (2, False)

    # The senior's annotation is the label, and releases the task.
    senior = ls_client.create_annotation(task_id, TAXONOMY.result_for("Sports > Cycling"))
    (label_state,) = eventually(lambda: store.history(senior["id"]), lambda rows: len(rows) >= 1)
    assert (label_state.action, label_state.label) == ("created", "Sports > Cycling")
    assert store.current_labels()["tier-high"].label == "Sports > Cycling"
    marks = eventually(lambda: _task_marks(store, "tier-high"), lambda found: len(found) >= 2)
    assert [m.action for m in marks] == [HELD, RELEASED]
    done = ls_client.get_task(task_id)
    assert (done["overlap"], done["is_labeled"]) == (2, True)

    # The audit trail shows who proposed what, and who decided.
    reviews = [(a.actor, a.action, a.after) for a in store.audit_trail(item_id="tier-high", kind="review")]
    assert reviews == [
        (f"reviewer:{reviewer.user_id}", "proposed", "Home & Kitchen > Cookware"),
        (f"reviewer:{admin_id}", "corrected", "Sports > Cycling"),
    ]


def test_a_junior_naming_a_senior_as_completed_by_is_still_the_author(
    ls_client: LabelStudioClient,
    reviewer: ReviewerAccount,
    store: Store,
    project_id: int,
    receiver: Receiver,
    settings: Settings,
) -> None:
    # `completed_by` is a field any client may set when it creates an annotation; Label Studio records
    # the account that wrote it as `updated_by`, which is what decides.
    admin_id = int(ls_client.whoami()["id"])
    task_id = _push(ls_client, store, project_id, _escalation("tier-forged", ["high_value"], 1400.0))
    answer = httpx.post(
        f"{settings.labelstudio.base_url}/api/tasks/{task_id}/annotations/",
        headers={"Authorization": f"Token {reviewer.token}"},
        json={"result": TAXONOMY.result_for("Sports > Cycling"), "completed_by": admin_id},
        timeout=30,
    )
    assert answer.status_code == 201, answer.text
    forged = answer.json()
    assert forged["completed_by"] == admin_id  # Label Studio took the forged field as it came
    (state,) = eventually(lambda: store.history(forged["id"]), lambda rows: len(rows) >= 1)
    assert (state.action, state.label, state.reviewer_id) == ("proposed", None, reviewer.user_id)
    assert "tier-forged" not in store.current_labels()


def test_a_senior_editing_a_juniors_proposal_makes_it_the_label(
    ls_client: LabelStudioClient,
    reviewer_client: LabelStudioClient,
    store: Store,
    project_id: int,
    receiver: Receiver,
) -> None:
    task_id = _push(ls_client, store, project_id, _escalation("tier-brand", ["always_review_brand"], 20.0))
    junior = reviewer_client.create_annotation(task_id, TAXONOMY.result_for("Home & Kitchen > Cookware"))
    eventually(lambda: store.history(junior["id"]), lambda rows: len(rows) >= 1)
    # The senior accepts it by editing it in place (Label Studio records them as `updated_by`).
    ls_client.update_annotation(junior["id"], TAXONOMY.result_for("Home & Kitchen > Cookware"))
    rows = eventually(lambda: store.history(junior["id"]), lambda found: len(found) >= 2)
    assert [r.action for r in rows] == ["proposed", "updated"]
    assert store.current_labels()["tier-brand"].label == "Home & Kitchen > Cookware"


def test_a_juniors_annotation_on_an_ordinary_task_is_the_label(
    ls_client: LabelStudioClient,
    reviewer_client: LabelStudioClient,
    store: Store,
    project_id: int,
    receiver: Receiver,
) -> None:
    task_id = _push(ls_client, store, project_id, _escalation("tier-low", ["below_threshold"], 20.0))
    assert ls_client.get_task(task_id)["meta"]["needs_senior"] is False
    junior = reviewer_client.create_annotation(task_id, TAXONOMY.result_for("Sports > Running"))
    (state,) = eventually(lambda: store.history(junior["id"]), lambda rows: len(rows) >= 1)
    assert (state.action, state.label) == ("created", "Sports > Running")
