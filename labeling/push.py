"""Pushing escalated items to Label Studio as tasks with the model's prediction as pre-annotation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from labeling.client import LabelStudioClient
from labeling.config import Taxonomy


class Escalation(BaseModel):
    """An item the model was not trusted to label alone."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    item_id: str = Field(min_length=1)
    title: str
    description: str = ""
    brand: str = ""
    price: float | None = None
    predicted_label: str  # " > "-joined category path
    confidence: float = Field(ge=0, le=1, description="the model's probability of predicted_label")
    priority: float = Field(ge=0, le=1, description="active-learning usefulness; higher is shown first")
    reasons: list[str] = Field(default_factory=list)
    model_version: str = Field(min_length=1)


class PushLedger(Protocol):
    """Remembers what was pushed, so the same item is never pushed twice for the same model version."""

    def pushed_item_ids(self, model_version: str, item_ids: Sequence[str]) -> set[str]: ...

    def record_pushed(
        self, project_id: int, model_version: str, rows: Sequence[tuple[str, int, float]]
    ) -> None:
        """rows: (item_id, task_id, priority)."""
        ...


@dataclass
class PushReport:
    pushed: int = 0
    skipped: int = 0
    task_ids: dict[str, int] = field(default_factory=dict)


def sampling_score(escalation: Escalation) -> float:
    """The prediction `score` Label Studio sorts by (ascending, under uncertainty sampling): 1 - priority.

    For least-confidence priority this is exactly the model's confidence; for margin it is the margin:
    in every case, the model's certainty as the active-learning strategy measures it. The raw top-class
    probability travels separately (task data `model_confidence`, meta `confidence`).
    """
    return round(1.0 - escalation.priority, 6)


def task_payload(escalation: Escalation, taxonomy: Taxonomy) -> dict[str, Any]:
    """One Label Studio task: what the config shows, the pre-annotation, and our meta."""
    price = "" if escalation.price is None else f"{escalation.price:.2f}"
    reasons = ", ".join(escalation.reasons) or "uncertain prediction"
    return {
        "data": {
            "item_id": escalation.item_id,
            "title": escalation.title,
            "description": escalation.description,
            "brand": escalation.brand,
            "price": price,
            "reason": reasons,
            "model_confidence": f"{escalation.confidence:.2f}",
        },
        "predictions": [
            {
                "model_version": escalation.model_version,
                "score": sampling_score(escalation),
                "result": taxonomy.result_for(escalation.predicted_label),
            }
        ],
        "meta": {
            "item_id": escalation.item_id,
            "reasons": list(escalation.reasons),
            "priority": escalation.priority,
            "confidence": escalation.confidence,
            "predicted_label": escalation.predicted_label,
            "model_version": escalation.model_version,
            "model_score": escalation.confidence,
        },
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
) -> PushReport:
    """Import new escalations, most useful first, in batches; skip (item, model version) already pushed."""
    report = PushReport()
    unique: dict[tuple[str, str], Escalation] = {}
    for esc in escalations:
        key = (esc.item_id, esc.model_version)
        if key not in unique or esc.priority > unique[key].priority:
            unique[key] = esc
    report.skipped = len(escalations) - len(unique)
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
    payloads = [task_payload(e, taxonomy) for e in fresh]
    for start in range(0, len(fresh), batch_size):
        batch = fresh[start : start + batch_size]
        ids = client.import_tasks(project_id, payloads[start : start + batch_size])
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
            progress(report.pushed, len(fresh))
    return report
