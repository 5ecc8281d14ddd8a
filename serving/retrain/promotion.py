"""Moving the champion alias and everything a new champion implies; escalation-rate windows."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from sqlalchemy import select

from learner.pii import describe_error
from serving.escalation import RESCORE_ACTOR
from serving.model import LoadedModel, ModelHolder
from serving.retrain.tables import (
    _now,
)
from serving.settings import AppSettings
from serving.store import AuditEvent, Item, Prediction, Store

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromotionReport:
    version: str
    swapped: bool
    labelstudio_updated: bool
    auto_resolved: int
    reprioritized: int


class Promoter:
    """Moves the served alias and does everything a new champion implies."""

    def __init__(self, settings: AppSettings, store: Store, holder: ModelHolder | None) -> None:
        self.settings = settings
        self.store = store
        self.holder = holder
        # Label Studio refuses a model_version no task has predictions of yet (400): retried by the
        # worker until the outbox has pushed escalations of the new version.
        self.pending_labelstudio: str | None = None
        # A champion whose open escalations were not re-scored yet (it could not be loaded, or the
        # re-scoring failed): done by the worker once the holder serves it.
        self.pending_rescore: str | None = None

    def retry_labelstudio(self) -> bool:
        pending = self.pending_labelstudio
        return pending is not None and self._update_labelstudio(pending)

    def retry_rescore(self) -> tuple[int, int] | None:
        """Re-score open escalations for a promotion that could not, once the holder serves its model;
        None when there is nothing to do yet."""
        pending = self.pending_rescore
        current = self.holder.current if self.holder is not None else None
        if pending is None or current is None:
            return None
        if current.version != pending:  # another champion since, or not loaded yet (the poll loads it)
            self.pending_rescore = pending if self._champion_is(pending) else None
            return None
        self.pending_rescore = None
        return self._rescore(current)

    def _champion_is(self, label: str) -> bool:
        from serving import registry

        try:
            champion = registry.champion_version(self.settings)
        except Exception:  # unknown now: keep it pending
            return True
        return champion is not None and registry.version_label(self.settings, champion) == label

    def _rescore(self, model: LoadedModel) -> tuple[int, int]:
        try:
            return rescore_open_escalations(
                self.store, model, self.settings, auto_resolve=self.settings.retrain.auto_resolve_on_promotion
            )
        except Exception as exc:
            self.pending_rescore = model.version
            logger.error("re-scoring open escalations failed, retried later: %s", describe_error(exc))
            return 0, 0

    def promote(self, version: str, *, reason: str, actor: str, action: str = "promoted") -> PromotionReport:
        """Make `version` the champion. `action` names the move in the audit trail: `promoted` (the
        gate), `manual_promote` or `rollback` (an engineer)."""
        from serving import registry, tracking

        try:
            previous = registry.champion_version(self.settings)
        except Exception:  # no champion yet, or the registry hiccuped: the move itself decides
            previous = None
        registry.set_alias(self.settings, version)
        try:
            tracking.set_version_tags(
                self.settings,
                version,
                {
                    "hitl.promoted_at": datetime.now(UTC).isoformat(),
                    "hitl.promoted_by": actor,
                    "hitl.promotion_reason": reason,
                },
            )
        except Exception as exc:  # tags are informative only
            logger.warning("could not tag version %s: %s", version, type(exc).__name__)
        label = registry.version_label(self.settings, version)
        # The alias has moved: the promotion has happened, and nothing after this line may undo that
        # or report it as failed. What fails from here is logged (and retried where it can be).
        try:
            self.store.record_model_event(
                action=action,
                version=label,
                actor=actor,
                reason=reason,
                previous=None if previous is None else registry.version_label(self.settings, previous),
            )
        except Exception as exc:
            logger.error(
                "promoted %s, but the audit trail could not record it: %s", label, describe_error(exc)
            )
        swapped = False
        model: LoadedModel | None = None
        if self.holder is not None:
            try:
                swapped = self.holder.refresh()
            except Exception as exc:  # the move is recorded; serving picks the version up on a later refresh
                logger.error("the new champion %s could not be loaded yet: %s", label, describe_error(exc))
            current = self.holder.current
            model = current if current is not None and current.version == label else None
        ls_updated = self._update_labelstudio(label)
        resolved = reprioritized = 0
        if model is not None:
            self.pending_rescore = None
            resolved, reprioritized = self._rescore(model)
        elif self.holder is not None:
            self.pending_rescore = label
        logger.info(
            "promoted %s (%s): swapped=%s, Label Studio=%s, auto-resolved %d, re-prioritized %d",
            label,
            reason,
            swapped,
            ls_updated,
            resolved,
            reprioritized,
        )
        return PromotionReport(version, swapped, ls_updated, resolved, reprioritized)

    def _update_labelstudio(self, label: str) -> bool:
        from labeling.client import LabelStudioClient

        try:
            project_id = self.store.project_by_title(self.settings.labelstudio.project_title)
            if project_id is None:
                return False
            with LabelStudioClient.from_settings(self.settings.labelstudio) as client:
                client.set_model_version(project_id, label)
        except Exception as exc:  # Label Studio down, or no task of this version yet: retried later
            if self.pending_labelstudio != label:
                logger.warning("could not set Label Studio's model_version yet: %s", describe_error(exc, 300))
            self.pending_labelstudio = label
            return False
        self.pending_labelstudio = None
        return True


def rescore_open_escalations(
    store: Store, model: LoadedModel, settings: AppSettings, *, auto_resolve: bool
) -> tuple[int, int]:
    """Re-score every open escalation with `model`: auto-resolve those now auto-accepted (when
    `auto_resolve`), re-prioritise the rest. Recorded as new predictions + audit rows, and as outbox
    entries that move each item's Label Studio task along (the new prediction on it, or the task out
    of the queue when its item was auto-resolved); returns the counts."""
    from labeling.push import Escalation
    from learner.loop import AUDIT_PRIORITY
    from serving.outbox import enqueue_escalations
    from serving.routing import AUDIT_REASONS
    from serving.schemas import ItemIn
    from serving.service import LoopPolicy, score_items

    opens = store.open_escalations(limit=1_000_000)
    if not opens:
        return 0, 0
    ids = [o.prediction.item_id for o in opens]
    details: dict[str, Item] = {}
    with store.session() as session:
        for start in range(0, len(ids), 500):
            for item in session.scalars(select(Item).where(Item.id.in_(ids[start : start + 500]))).all():
                details[item.id] = item
    items = []
    previous = []
    for o in opens:
        found = details.get(o.prediction.item_id)
        if found is None:
            continue
        items.append(
            ItemIn(
                id=found.id,
                title=found.title,
                description=found.description or "",
                brand=found.brand,
                price=found.price,
                category_hint=found.category_hint,
            )
        )
        previous.append(o.prediction)
    resolved = reprioritized = 0
    now = _now()
    for start in range(0, len(items), 256):
        chunk = items[start : start + 256]
        loop_policy = replace(LoopPolicy.of(settings.learner), draw_audits=False)
        scored = score_items(model, chunk, settings.routing, loop_policy)
        to_labelstudio: list[Escalation] = []
        with store.session() as session:
            for s, old in zip(scored, previous[start : start + 256], strict=True):
                # An audited item stays in review whatever the new model says: auto-resolving it would
                # drop it from the audit sample because of its confidence, and bias what it measures.
                audited = bool(AUDIT_REASONS.intersection(old.reasons))
                accepted = s.routed.decision.value == "auto_accepted" and not audited
                resolve = accepted and auto_resolve
                reasons = (
                    [r.value for r in s.routed.reasons]
                    if (not accepted or resolve) and not audited
                    else list(old.reasons)
                )
                prediction = Prediction(
                    item_id=s.item.id,
                    model_version=model.version,
                    label=s.routed.label,
                    confidence=s.routed.confidence,
                    threshold=s.routed.threshold,
                    top_k=[[c, p] for c, p in s.routed.top_k],
                    decision="auto_accepted" if resolve else "escalated",
                    reasons=reasons,
                    priority=AUDIT_PRIORITY if audited else s.routed.priority,
                    audit_probability=old.audit_probability,
                    requested_by=RESCORE_ACTOR,
                    created_at=now,
                )
                session.add(prediction)
                session.flush()
                session.add(
                    AuditEvent(
                        item_id=s.item.id,
                        prediction_id=prediction.id,
                        kind="model_decision",
                        actor=f"model:{model.version}",
                        action="auto_resolved" if resolve else "reprioritized",
                        before=old.label,
                        after=s.routed.label,
                        model_version=model.version,
                        details={
                            "trigger": "rescored_after_promotion",
                            "previous_prediction_id": old.id,
                            "previous_model_version": old.model_version,
                            "previous_priority": old.priority,
                            "confidence": s.routed.confidence,
                            "threshold": s.routed.threshold,
                            "priority": s.routed.priority,
                        },
                        created_at=now,
                    )
                )
                if resolve:
                    resolved += 1
                else:
                    reprioritized += 1
                to_labelstudio.append(
                    Escalation(
                        item_id=s.item.id,
                        title=s.item.title,
                        description=s.item.description,
                        brand=s.item.brand or "",
                        price=s.item.price,
                        predicted_label=s.routed.label,
                        confidence=min(max(s.routed.confidence, 0.0), 1.0),
                        priority=prediction.priority,
                        reasons=reasons,
                        model_version=model.version,
                        action="close" if resolve else "push",
                        threshold=s.routed.threshold,
                        candidates=[(str(c), float(p)) for c, p in s.routed.top_k[:3]],
                        review_price=settings.routing.high_value_price,
                    )
                )
            # The item's task follows: the new prediction on it, or out of the queue (`labeling.push`).
            enqueue_escalations(session, to_labelstudio, model.version)
    return resolved, reprioritized
