from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import pytest

from labeling.client import LabelStudioClient, LiveTask
from labeling.config import Taxonomy
from labeling.push import Escalation, push_escalations, reason_text, sampling_score, top_candidates
from tests.unit.labeling.fakes import FakeLabelStudio

TAX = Taxonomy.from_paths(["Shoes", "Hats & Caps"])


class MemoryLedger:
    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], int] = {}
        self.closed: dict[int, str] = {}

    def pushed_item_ids(self, model_version: str, item_ids: Sequence[str]) -> set[str]:
        return {i for i in item_ids if (i, model_version) in self.rows}

    def open_task_ids(self, project_id: int, item_ids: Sequence[str]) -> dict[str, int]:
        return {i: t for (i, _), t in self.rows.items() if i in item_ids and t not in self.closed}

    def record_pushed(
        self, project_id: int, model_version: str, rows: Sequence[tuple[str, int, float]]
    ) -> None:
        for item, task, _ in rows:
            self.rows[(item, model_version)] = task

    def record_closed(
        self, project_id: int, model_version: str, rows: Sequence[tuple[str, int, str]]
    ) -> None:
        for _, task, reason in rows:
            self.closed[task] = reason


def esc(
    item: str, priority: float, version: str = "v1", label: str = "Shoes", action: str = "push"
) -> Escalation:
    return Escalation(
        action=action,
        item_id=item,
        title=f"t {item}",
        predicted_label=label,
        confidence=0.3,
        priority=priority,
        reasons=["low_confidence", "high_price"],
        model_version=version,
        price=12.5,
    )


def test_most_useful_first_in_batches_with_prediction_and_meta() -> None:
    fake, ledger = FakeLabelStudio(), MemoryLedger()
    items = [esc("a", 0.1), esc("b", 0.9), esc("c", 0.5)]
    report = push_escalations(cast(LabelStudioClient, fake), ledger, 1, TAX, items, batch_size=2)
    assert report.pushed == 3
    assert [len(b) for b in fake.imports] == [2, 1]
    assert [t["meta"]["item_id"] for t in fake.tasks] == ["b", "c", "a"]
    first: dict[str, Any] = fake.tasks[0]
    assert first["predictions"][0] == {
        "model_version": "v1",
        "score": pytest.approx(0.1),
        "result": [
            {
                "from_name": "suggestion",
                "to_name": "title",
                "type": "choices",
                "value": {"choices": ["Shoes"]},
            }
        ],
    }
    assert first["meta"]["reasons"] == ["low_confidence", "high_price"]
    assert first["data"]["price"] == "12.50"
    assert first["data"]["reason"] == "low confidence; high price"  # unknown reasons in words too
    assert ledger.rows[("b", "v1")] == report.task_ids["b"]


def test_same_item_never_pushed_twice_for_a_model_version() -> None:
    fake, ledger = FakeLabelStudio(), MemoryLedger()
    client = cast(LabelStudioClient, fake)
    push_escalations(client, ledger, 1, TAX, [esc("a", 0.5), esc("a", 0.7)])
    assert len(fake.tasks) == 1
    assert fake.tasks[0]["meta"]["priority"] == 0.7
    again = push_escalations(client, ledger, 1, TAX, [esc("a", 0.5), esc("b", 0.2)])
    assert (again.pushed, again.skipped) == (1, 1)
    newer = push_escalations(client, ledger, 1, TAX, [esc("a", 0.6, version="v2", label="Hats & Caps")])
    # One task per item: the newer version's prediction goes onto the open task, with its meta.
    assert (newer.pushed, newer.updated) == (0, 1)
    assert len(fake.tasks) == 2
    task = next(t for t in fake.tasks if t["meta"]["item_id"] == "a")
    assert [p["model_version"] for p in task["predictions"]] == ["v1", "v2"]
    assert task["predictions"][1]["result"][0]["value"] == {"choices": ["Hats & Caps"]}
    assert (task["meta"]["model_version"], task["meta"]["priority"]) == ("v2", 0.6)
    assert newer.task_ids["a"] == task["id"]


def test_a_close_removes_the_open_task_with_its_reason_and_a_later_escalation_gets_a_new_one() -> None:
    fake, ledger = FakeLabelStudio(), MemoryLedger()
    client = cast(LabelStudioClient, fake)
    first = push_escalations(client, ledger, 1, TAX, [esc("a", 0.5), esc("b", 0.4)])
    closed = push_escalations(client, ledger, 1, TAX, [esc("a", 0.1, version="v2", action="close")])
    assert closed.closed == 1
    assert [t["meta"]["item_id"] for t in fake.tasks] == ["b"]
    assert "auto-accepted by model v2" in ledger.closed[first.task_ids["a"]]
    # Closing again (a retried entry) or closing an item that never had a task changes nothing.
    again = push_escalations(
        client, ledger, 1, TAX, [esc("a", 0.1, version="v2", action="close"), esc("z", 0.1, action="close")]
    )
    assert (again.closed, again.skipped) == (0, 2)
    later = push_escalations(client, ledger, 1, TAX, [esc("a", 0.7, version="v3")])
    assert (later.pushed, later.updated) == (1, 0)
    assert later.task_ids["a"] != first.task_ids["a"]


def test_a_close_never_deletes_a_task_a_reviewer_annotated() -> None:
    # Deleting it would delete the annotation with it (Label Studio cascades), and the next sync would
    # record the reviewer's label as deleted; a skip carries no label, so its task may go.
    fake, ledger = FakeLabelStudio(), MemoryLedger()
    client = cast(LabelStudioClient, fake)
    first = push_escalations(client, ledger, 1, TAX, [esc("a", 0.5), esc("b", 0.4)])
    for task in fake.tasks:
        cancelled = task["meta"]["item_id"] == "b"
        task["annotations"].append({"id": 7 + cancelled, "was_cancelled": cancelled, "result": []})
    closes = [esc(i, 0.1, version="v2", action="close") for i in ("a", "b")]
    report = push_escalations(client, ledger, 1, TAX, closes)
    assert (report.kept, report.closed) == (1, 1)
    assert [t["meta"]["item_id"] for t in fake.tasks] == ["a"]
    assert fake.annotation_exists(7)
    assert "a reviewer annotated it" in ledger.closed[first.task_ids["a"]]
    assert "a reviewer annotated it" not in ledger.closed[first.task_ids["b"]]


def test_a_close_asks_again_right_before_deleting() -> None:
    # A reviewer annotates the task after the pass listed it as unannotated.
    class ListedBeforeTheReview(FakeLabelStudio):
        def live_tasks_of_items(self, project_id: int, item_ids: Sequence[str]) -> dict[str, list[LiveTask]]:
            listed = super().live_tasks_of_items(project_id, item_ids)
            for task in self.tasks:
                task["annotations"].append({"id": 70 + task["id"], "was_cancelled": False, "result": []})
            return listed

    fake, ledger = ListedBeforeTheReview(), MemoryLedger()
    client = cast(LabelStudioClient, fake)
    push_escalations(client, ledger, 1, TAX, [esc("a", 0.5)])
    report = push_escalations(client, ledger, 1, TAX, [esc("a", 0.1, version="v2", action="close")])
    assert (report.kept, report.closed) == (1, 0)
    assert len(fake.tasks) == 1


def test_a_retried_push_never_adopts_a_kept_annotated_task() -> None:
    # A later escalation of the item, retried after a lost answer: the annotated task an earlier
    # review left is not the import that was lost, and taking it would hide the escalation.
    fake, ledger = FakeLabelStudio(), MemoryLedger()
    client = cast(LabelStudioClient, fake)
    first = push_escalations(client, ledger, 1, TAX, [esc("a", 0.5)])
    fake.tasks[0]["annotations"].append({"id": 7, "was_cancelled": False, "result": []})
    assert push_escalations(client, ledger, 1, TAX, [esc("a", 0.1, version="v2", action="close")]).kept == 1
    again = push_escalations(client, ledger, 1, TAX, [esc("a", 0.6, version="v3")], adopt_existing=True)
    assert (again.adopted, again.pushed) == (0, 1)
    assert again.task_ids["a"] != first.task_ids["a"]
    assert [len(t["annotations"]) for t in fake.tasks] == [1, 0]


def test_a_label_outside_the_taxonomy_sends_nothing() -> None:
    fake = FakeLabelStudio()
    with pytest.raises(ValueError, match="not one of"):
        push_escalations(
            cast(LabelStudioClient, fake), MemoryLedger(), 1, TAX, [esc("a", 0.5), esc("b", 0.4, label="X")]
        )
    assert fake.imports == []


def test_sampling_score_orders_like_priority() -> None:
    scores = [sampling_score(esc("x", p)) for p in (0.9, 0.5, 0.1)]
    assert scores == sorted(scores)  # Label Studio serves the lowest score first


def test_the_task_says_why_in_plain_words_with_numbers_and_shows_the_best_candidates() -> None:
    item = esc("a", 0.5).model_copy(
        update={
            "reasons": ["below_threshold", "high_value", "audit"],
            "confidence": 0.38,
            "threshold": 0.91,
            "price": 1250.0,
            "review_price": 1000.0,
            "candidates": [("Shoes", 0.38), ("Hats & Caps", 0.21), ("Socks", 0.09)],
        }
    )
    data = push_escalations(
        cast(LabelStudioClient, fake := FakeLabelStudio()), MemoryLedger(), 1, TAX, [item]
    )
    task = fake.tasks[0]["data"]
    assert data.pushed == 1
    assert task["reason"] == (
        "confidence 0.38 below this category's certified 0.91; price 1,250 >= review limit 1,000; "
        "random audit (measures the model's accuracy)"
    )
    # One-click suggestions: the prediction first, only categories of the project ("Socks" is not).
    assert task["suggestions"] == [
        {"value": "Shoes", "html": "Shoes · 38%"},
        {"value": "Hats & Caps", "html": "Hats &amp; Caps · 21%"},
    ]
    assert task["similar"] == "none labelled yet"
    (prediction,) = fake.tasks[0]["predictions"]
    assert prediction["result"] == [
        {"from_name": "suggestion", "to_name": "title", "type": "choices", "value": {"choices": ["Shoes"]}}
    ]
    uncertified = item.model_copy(
        update={"threshold": None, "reasons": ["below_threshold"], "candidates": []}
    )
    assert reason_text(uncertified) == "confidence 0.38; no certified threshold for this category yet"
    assert top_candidates(uncertified, TAX) == [("Shoes", 0.38)]
    # A pairwise confidence is not a probability: the suggestion shows the prediction's probability.
    ranked = [("Shoes", 0.38), ("Hats & Caps", 0.21)]
    pairwise = item.model_copy(update={"confidence": 0.64, "candidates": ranked})
    assert top_candidates(pairwise, TAX) == ranked
    similar = item.model_copy(update={"similar": [("Trail shoe 42", "Shoes"), ("Cap", "Hats & Caps")]})
    push_escalations(cast(LabelStudioClient, fake2 := FakeLabelStudio()), MemoryLedger(), 1, TAX, [similar])
    assert fake2.tasks[0]["data"]["similar"] == "“Trail shoe 42” → Shoes · “Cap” → Hats & Caps"


def test_with_reviewer_tiers_a_high_stakes_task_says_it_needs_a_senior() -> None:
    fake = FakeLabelStudio()
    high = esc("a", 0.5).model_copy(update={"reasons": ["high_value"], "price": 1250.0, "review_price": 1e3})
    low = esc("b", 0.4).model_copy(update={"reasons": ["below_threshold"], "threshold": 0.9})
    push_escalations(cast(LabelStudioClient, fake), MemoryLedger(), 1, TAX, [high, low], senior_review=True)
    by_item = {t["meta"]["item_id"]: t for t in fake.tasks}
    assert by_item["a"]["meta"]["needs_senior"] is True
    assert by_item["a"]["data"]["reason"] == "price 1,250 >= review limit 1,000; needs a senior reviewer"
    assert by_item["b"]["meta"]["needs_senior"] is False
    assert "senior" not in by_item["b"]["data"]["reason"]
    # Tiers off: nobody is asked for.
    off = FakeLabelStudio()
    push_escalations(cast(LabelStudioClient, off), MemoryLedger(), 1, TAX, [high])
    assert off.tasks[0]["meta"]["needs_senior"] is False


def test_a_stop_ends_the_push_between_label_studio_changes_and_says_what_was_delivered() -> None:
    fake, ledger = FakeLabelStudio(), MemoryLedger()
    client = cast(LabelStudioClient, fake)
    push_escalations(client, ledger, 1, TAX, [esc(i, 0.5) for i in "abc"])
    asked: list[int] = []

    def after_one_update() -> bool:
        asked.append(len(asked))
        return len(asked) > 1

    newer = [esc(i, 0.5, version="v2") for i in "abc"] + [esc("d", 0.5, version="v2")]
    report = push_escalations(client, ledger, 1, TAX, newer, should_stop=after_one_update)
    assert report.stopped
    assert (report.updated, report.pushed) == (1, 0)
    assert list(report.task_ids) == ["a"]  # the one change made; b, c and d were left untouched
    updated = [t["meta"]["item_id"] for t in fake.tasks if len(t["predictions"]) == 2]
    assert updated == ["a"]
    assert len(fake.tasks) == 3
    rest = push_escalations(client, ledger, 1, TAX, newer)  # the next start finishes the job
    assert (rest.stopped, rest.updated, rest.pushed, rest.skipped) == (False, 2, 1, 1)
