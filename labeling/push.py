"""Pushing escalated items to Label Studio as tasks with the model's prediction as pre-annotation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from labeling.client import LabelStudioClient, LiveTask
from labeling.config import Taxonomy, suggestions_data
from labeling.reviewers import NEEDS_SENIOR, high_stakes


class Escalation(BaseModel):
    """An item the model was not trusted to label alone."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    item_id: str = Field(min_length=1)
    title: str
    description: str = ""
    brand: str = ""
    price: float | None = None
    predicted_label: str  # " > "-joined category path
    confidence: float = Field(
        ge=0, le=1, description="the confidence the certified threshold applies to (learner.acceptance_score)"
    )
    priority: float = Field(ge=0, le=1, description="active-learning usefulness; higher is shown first")
    reasons: list[str] = Field(default_factory=list)
    model_version: str = Field(min_length=1)
    # "push": show the item for review (a new task, or the newest prediction on its open task);
    # "close": the model of `model_version` auto-accepted it, so its open task leaves the queue.
    action: Literal["push", "close"] = "push"
    threshold: float | None = Field(None, description="the predicted category's certified threshold")
    candidates: list[tuple[str, float]] = Field(
        default_factory=list, description="the model's best categories with their probabilities, best first"
    )
    review_price: float | None = Field(None, description="the high-value review limit in force")
    similar: list[tuple[str, str]] = Field(
        default_factory=list, description="(title, human label) of the most similar labelled items"
    )


# What each routing reason (`serving.routing.Reason`) means to a merchandiser; numbers filled in below.
_REASON_WORDS = {
    "always_review_category": "this category is always reviewed",
    "always_review_brand": "this brand is always reviewed",
    "unknown_category_hint": "the seller's category is not one of ours",
    "out_of_distribution": "unlike anything the model was trained on",
    "spot_check": "random spot check of an auto-accepted item",
    "audit": "random audit (measures the model's accuracy)",
}


def reason_text(escalation: Escalation) -> str:
    """Why the item is in review, in plain words with its numbers, e.g. "confidence 0.38 below this
    category's certified 0.91; price 1,250 >= review limit 1,000"."""
    parts: list[str] = []
    for reason in escalation.reasons:
        if reason == "below_threshold":
            threshold = escalation.threshold
            if threshold is None or not 0.0 <= threshold <= 1.0:
                parts.append(
                    f"confidence {escalation.confidence:.2f}; no certified threshold for this category yet"
                )
            else:
                parts.append(
                    f"confidence {escalation.confidence:.2f} below this category's certified {threshold:.2f}"
                )
        elif reason == "high_value":
            price = "unknown" if escalation.price is None else f"{escalation.price:,.0f}"
            limit = (
                "" if escalation.review_price is None else f" >= review limit {escalation.review_price:,.0f}"
            )
            parts.append(f"price {price}{limit}")
        else:
            parts.append(_REASON_WORDS.get(reason, reason.replace("_", " ")))
    return "; ".join(parts) or "uncertain prediction"


def top_candidates(escalation: Escalation, taxonomy: Taxonomy, limit: int = 3) -> list[tuple[str, float]]:
    """The model's best categories of the project's taxonomy with their probabilities, its prediction
    first (what the one-click suggestions offer, the first pre-selected). The prediction shows its
    probability among the candidates: its acceptance confidence may be another score (pairwise)."""
    probability = dict(escalation.candidates).get(escalation.predicted_label, escalation.confidence)
    ranked = [(escalation.predicted_label, probability)]
    ranked += [(label, p) for label, p in escalation.candidates if label != escalation.predicted_label]
    return [(label, p) for label, p in ranked if label in taxonomy][:limit]


def similar_text(escalation: Escalation) -> str:
    """The labelled items most like this one: "“Steel pan 24 cm” → Home & Kitchen > Cookware · ..."."""
    if not escalation.similar:
        return "none labelled yet"
    return " · ".join(f"“{title}” → {label}" for title, label in escalation.similar)


# Why the ledger closes a task that someone deleted in Label Studio (its item then gets a new task).
TASK_GONE = "deleted in Label Studio"
AUTO_ACCEPTED = "auto-accepted by model"
KEPT = "its task is kept: a reviewer annotated it"


def closed_by_deleting(reason: str | None) -> bool:
    """Whether a ledger close with this reason deleted the task from Label Studio (`_close`)."""
    return reason is not None and reason.startswith(AUTO_ACCEPTED) and KEPT not in reason


class PushLedger(Protocol):
    """Remembers what was pushed: one task per item, and what each model version added to it."""

    def pushed_item_ids(self, model_version: str, item_ids: Sequence[str]) -> set[str]:
        """Items whose task last got this version's decision (pushing it again would change nothing)."""
        ...

    def open_task_ids(self, project_id: int, item_ids: Sequence[str]) -> dict[str, int]:
        """The task of each item that still has one in the project (not closed)."""
        ...

    def record_pushed(
        self, project_id: int, model_version: str, rows: Sequence[tuple[str, int, float]]
    ) -> None:
        """rows: (item_id, task_id, priority)."""
        ...

    def record_closed(
        self, project_id: int, model_version: str, rows: Sequence[tuple[str, int, str]]
    ) -> None:
        """rows: (item_id, task_id, reason): the task left Label Studio's queue."""
        ...


@dataclass
class PushReport:
    pushed: int = 0  # new tasks
    updated: int = 0  # open tasks that got a newer model version's prediction
    closed: int = 0  # open tasks removed because a newer model auto-accepted their item
    kept: int = 0  # auto-accepted items whose task a reviewer annotated: closed in the ledger only
    stopped: bool = False  # `should_stop` ended the push early: only `task_ids` were delivered
    adopted: int = 0  # tasks an earlier import made though its answer was lost (`adopt_existing`)
    reimported: int = 0  # items whose task someone deleted in Label Studio: imported again
    skipped: int = 0
    task_ids: dict[str, int] = field(default_factory=dict)


def sampling_score(escalation: Escalation) -> float:
    """The prediction `score` Label Studio sorts by (ascending, under uncertainty sampling): 1 - priority.

    For least-confidence priority this is exactly the model's confidence; for margin it is the margin:
    in every case, the model's certainty as the active-learning strategy measures it. The raw top-class
    probability travels separately (task data `model_confidence`, meta `confidence`).
    """
    return round(1.0 - escalation.priority, 6)


def task_payload(
    escalation: Escalation, taxonomy: Taxonomy, *, senior_review: bool = False
) -> dict[str, Any]:
    """One Label Studio task: what the config shows, the pre-annotation, and our meta.

    With `senior_review` (reviewer tiers on), a high-stakes item's task needs a senior reviewer: its meta
    says so (`labeling.reviewers.NEEDS_SENIOR`) and so does its reason.
    """
    price = "" if escalation.price is None else f"{escalation.price:.2f}"
    needs_senior = senior_review and high_stakes(escalation.reasons)
    reason = reason_text(escalation) + ("; needs a senior reviewer" if needs_senior else "")
    return {
        "data": {
            "item_id": escalation.item_id,
            "title": escalation.title,
            "description": escalation.description,
            "brand": escalation.brand,
            "price": price,
            "reason": reason,
            "suggestions": suggestions_data(top_candidates(escalation, taxonomy)),
            "similar": similar_text(escalation),
            "model_confidence": f"{escalation.confidence:.2f}",
        },
        "predictions": [prediction_payload(escalation, taxonomy)],
        "meta": {
            "item_id": escalation.item_id,
            "reasons": list(escalation.reasons),
            "priority": escalation.priority,
            "confidence": escalation.confidence,
            "predicted_label": escalation.predicted_label,
            "model_version": escalation.model_version,
            "model_score": escalation.confidence,
            NEEDS_SENIOR: needs_senior,
        },
    }


def prediction_payload(escalation: Escalation, taxonomy: Taxonomy) -> dict[str, Any]:
    """The pre-annotation of `escalation` (what the task shows pre-filled, and what it is sorted by)."""
    return {
        "model_version": escalation.model_version,
        "score": sampling_score(escalation),
        "result": taxonomy.result_for(escalation.predicted_label, suggested=True),
    }


def push_escalations(
    client: LabelStudioClient,
    ledger: PushLedger,
    project_id: int,
    taxonomy: Taxonomy,
    escalations: Sequence[Escalation],
    *,
    batch_size: int = 200,
    progress: Callable[[int, int], None] | None = None,
    senior_review: bool = False,
    adopt_existing: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> PushReport:
    """Deliver escalations, most useful first: one task per item across model versions.

    - ``close``: the item's open task is deleted from the project (its item is auto-accepted now),
      unless a reviewer annotated it: deleting it would delete the annotation, so only the ledger
      closes it (``kept``);
    - ``push`` of an item with an open task: the task gets the newer version's prediction, data and
      meta (so the queue order and the reasons follow the champion); no second task;
    - ``push`` of any other item: a new task, imported in batches.

    An (item, model version) already pushed is skipped. With `adopt_existing` (a retry after an
    attempt whose outcome is unknown, such as a timeout), items the project already holds a task for
    are not imported again: the task an earlier import made is recorded as theirs.

    `should_stop` (a shutdown) is asked before each Label Studio change; once it answers True the push
    returns at once with ``stopped`` set, and only the items in ``task_ids`` were delivered.
    """
    report = PushReport()

    def stopping() -> bool:
        report.stopped = report.stopped or (should_stop is not None and should_stop())
        return report.stopped

    closes = {e.item_id: e for e in escalations if e.action == "close"}
    pushes = [e for e in escalations if e.action == "push" and e.item_id not in closes]
    report.skipped = len(escalations) - len(closes) - len(pushes)
    _close(client, ledger, project_id, list(closes.values()), report, stopping)
    if report.stopped:
        return report

    unique: dict[tuple[str, str], Escalation] = {}
    for esc in pushes:
        key = (esc.item_id, esc.model_version)
        if key not in unique or esc.priority > unique[key].priority:
            unique[key] = esc
    report.skipped += len(pushes) - len(unique)
    by_version: dict[str, list[Escalation]] = {}
    for esc in unique.values():
        by_version.setdefault(esc.model_version, []).append(esc)
    fresh: list[Escalation] = []
    for version, group in by_version.items():
        done = ledger.pushed_item_ids(version, [e.item_id for e in group])
        report.skipped += sum(1 for e in group if e.item_id in done)
        fresh.extend(e for e in group if e.item_id not in done)
    fresh.sort(key=lambda e: (-e.priority, e.item_id))
    # Validate every label before sending anything.
    payloads = {
        (e.item_id, e.model_version): task_payload(e, taxonomy, senior_review=senior_review) for e in fresh
    }
    open_tasks = ledger.open_task_ids(project_id, [e.item_id for e in fresh])
    updates = [e for e in fresh if e.item_id in open_tasks]
    # A task someone deleted in Label Studio is gone from the project, and Label Studio (on SQLite)
    # may give its id to the next task it imports, another item's: before updating, check that each
    # open task still holds its item. One filtered listing per 50 items.
    live = client.task_ids_of_items(project_id, [e.item_id for e in updates]) if updates else {}
    for esc in updates:
        if stopping():
            return report
        task_id = open_tasks[esc.item_id]
        if task_id not in live.get(esc.item_id, []):  # gone: the item gets a new task below
            ledger.record_closed(project_id, esc.model_version, [(esc.item_id, task_id, TASK_GONE)])
            del open_tasks[esc.item_id]
            report.reimported += 1
            continue
        payload = payloads[(esc.item_id, esc.model_version)]
        client.create_prediction(task_id, payload["predictions"][0])
        client.update_task(task_id, data=payload["data"], meta=payload["meta"])
        ledger.record_pushed(project_id, esc.model_version, [(esc.item_id, task_id, esc.priority)])
        report.task_ids[esc.item_id] = task_id
        report.updated += 1
    new = [e for e in fresh if e.item_id not in open_tasks]
    if adopt_existing and new:
        existing = client.tasks_of_items(project_id, [e.item_id for e in new])
        for esc in [e for e in new if e.item_id in existing]:
            task_id = existing[esc.item_id]
            ledger.record_pushed(project_id, esc.model_version, [(esc.item_id, task_id, esc.priority)])
            report.task_ids[esc.item_id] = task_id
            report.adopted += 1
        new = [e for e in new if e.item_id not in existing]
    for start in range(0, len(new), batch_size):
        if stopping():
            return report
        batch = new[start : start + batch_size]
        ids = client.import_tasks(project_id, [payloads[(e.item_id, e.model_version)] for e in batch])
        for version in {e.model_version for e in batch}:
            rows = [
                (e.item_id, tid, e.priority)
                for e, tid in zip(batch, ids, strict=True)
                if e.model_version == version
            ]
            ledger.record_pushed(project_id, version, rows)
        report.task_ids.update({e.item_id: tid for e, tid in zip(batch, ids, strict=True)})
        report.pushed += len(batch)
        if progress is not None:
            progress(report.pushed, len(new))
    return report


def _close(
    client: LabelStudioClient,
    ledger: PushLedger,
    project_id: int,
    closes: list[Escalation],
    report: PushReport,
    stopping: Callable[[], bool],
) -> None:
    open_tasks = ledger.open_task_ids(project_id, [e.item_id for e in closes])
    # As for updates: a task deleted by hand may have given its id to another item's task (Label
    # Studio on SQLite), which must not be deleted in its place.
    items = [e.item_id for e in closes if e.item_id in open_tasks]
    live = client.live_tasks_of_items(project_id, items) if items else {}
    for esc in closes:
        if stopping():
            return
        task_id = open_tasks.get(esc.item_id)
        if task_id is None:
            report.skipped += 1  # never pushed, or closed already
            continue
        task = next((t for t in live.get(esc.item_id, []) if t.id == task_id), None)
        if task is None:
            ledger.record_closed(project_id, esc.model_version, [(esc.item_id, task_id, TASK_GONE)])
            report.skipped += 1
            continue
        reason = f"{AUTO_ACCEPTED} {esc.model_version} at confidence {esc.confidence:.2f}"
        # Asked again right before deleting: a reviewer may have annotated it since the listing.
        if task.annotated or LiveTask.of(client.get_task(task_id)).annotated:
            # Deleting the task would delete its annotations with it (Label Studio cascades), and
            # the next sync would record the reviewer's label as deleted: a person's work outranks
            # the model's auto-accept, so the task stays and only the ledger closes.
            ledger.record_closed(project_id, esc.model_version, [(esc.item_id, task_id, f"{reason}; {KEPT}")])
            report.kept += 1
            continue
        client.delete_task(task_id)
        ledger.record_closed(project_id, esc.model_version, [(esc.item_id, task_id, reason)])
        report.task_ids[esc.item_id] = task_id
        report.closed += 1
