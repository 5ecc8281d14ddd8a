"""Store records -> response bodies."""

from __future__ import annotations

from serving.schemas import AuditOut, CorrectionOut, PredictionOut, ScoredLabel
from serving.store import AuditRecord, CorrectionRecord, PredictionRecord


def prediction_out(p: PredictionRecord) -> PredictionOut:
    return PredictionOut(
        id=p.id,
        model_version=p.model_version,
        category=p.label,
        confidence=p.confidence,
        threshold=p.threshold,
        top_k=[ScoredLabel(category=c, confidence=s) for c, s in p.top_k],
        decision=p.decision,
        reasons=p.reasons,
        priority=p.priority,
        requested_by=p.requested_by,
        created_at=p.created_at,
    )


def audit_out(a: AuditRecord) -> AuditOut:
    return AuditOut(
        id=a.id,
        item_id=a.item_id,
        prediction_id=a.prediction_id,
        kind=a.kind,
        actor=a.actor,
        action=a.action,
        before=a.before,
        after=a.after,
        model_version=a.model_version,
        details=a.details,
        created_at=a.created_at,
    )


def correction_out(c: CorrectionRecord) -> CorrectionOut:
    return CorrectionOut(
        action=c.action,
        source=c.source,
        annotation_id=c.annotation_id,
        task_id=c.task_id,
        label=c.label,
        reviewer_id=c.reviewer_id,
        updated_at=c.updated_at,
        received_at=c.received_at,
    )
