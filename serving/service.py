"""Scoring and recording predictions: what `POST /v1/predict` (and the ML backend) run.

`score_items` is side-effect free (embed, calibrated probabilities, routing);
`predict_and_record` also stores items, predictions, audit rows and outbox entries in one
transaction, committed before it returns.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from labeling.push import Escalation
from learner.data import Product, item_text
from learner.loop import AuditPolicy
from learner.settings import LearnerSettings
from serving.model import LoadedModel, ModelHolder
from serving.outbox import enqueue_escalations
from serving.predictor import ItemText, LabelGuess
from serving.routing import AuditRouting, Routed, RouteInput, centroid_similarity, route
from serving.schemas import ItemIn
from serving.settings import RoutingSettings
from serving.store import EscalationHook, NewPrediction, Store

logger = logging.getLogger(__name__)


# Requests of at most this many items, all embedded already, are scored on the event loop.
INLINE_MAX_ITEMS = 4


@dataclass(frozen=True)
class LoopPolicy:
    """What routing takes from the learner's loop: the audit draw and the review strategy."""

    audit: AuditPolicy
    strategy: str
    draw_audits: bool = True  # False when re-scoring: an item's audit draw happens once, when routed

    @classmethod
    def of(cls, learner: LearnerSettings) -> LoopPolicy:
        return cls(AuditPolicy.of(learner.audit), learner.strategy)


@dataclass(frozen=True)
class Scored:
    item: ItemIn
    routed: Routed


def model_text(item: ItemIn) -> str:
    """The exact text the model was trained on (`learner.data.item_text`): cache keys match training."""
    product = Product(id=item.id, title=item.title, description=item.description, brand=item.brand)
    return item_text(product)


def score_items(
    model: LoadedModel, items: Sequence[ItemIn], policy: RoutingSettings, loop: LoopPolicy
) -> list[Scored]:
    embeddings, inputs = model.features([model_text(i) for i in items])
    proba = model.predict_proba(inputs)
    similarity = None if model.centroids is None else centroid_similarity(embeddings, model.centroids)
    routed = route(
        proba,
        model.labels,
        model.bundle.thresholds.thresholds,
        [RouteInput(i.id, i.price, i.brand, i.category_hint) for i in items],
        policy,
        score=model.bundle.thresholds.score,
        similarity=similarity,
        audit=(
            AuditRouting(loop.audit, float(model.bundle.metadata.get("audit_band_low", 0.0)))
            if loop.draw_audits
            else None
        ),
        strategy=loop.strategy,
    )
    return [Scored(i, r) for i, r in zip(items, routed, strict=True)]


def outbox_hook(review_price: float | None = None) -> EscalationHook:
    """Escalations go to the outbox in the transaction that stores them (delivered by `OutboxWorker`),
    with the high-value review limit in force, which the task's reasons quote."""
    if review_price is None:
        return enqueue_escalations

    def hook(session: Session, escalations: Sequence[Escalation], model_version: str) -> int:
        priced = [e.model_copy(update={"review_price": review_price}) for e in escalations]
        return enqueue_escalations(session, priced, model_version)

    return hook


def new_predictions(scored: Sequence[Scored]) -> list[NewPrediction]:
    """The rows `Store.record_predictions` stores for scored items."""
    return [
        NewPrediction(
            item_id=s.item.id,
            title=s.item.title,
            description=s.item.description,
            brand=s.item.brand,
            price=s.item.price,
            category_hint=s.item.category_hint,
            label=s.routed.label,
            confidence=s.routed.confidence,
            threshold=s.routed.threshold,
            top_k=s.routed.top_k,
            decision=s.routed.decision.value,
            reasons=[r.value for r in s.routed.reasons],
            priority=s.routed.priority,
            audit_probability=s.routed.audit_probability,
        )
        for s in scored
    ]


async def predict_and_record(
    model: LoadedModel,
    store: Store,
    items: Sequence[ItemIn],
    policy: RoutingSettings,
    loop: LoopPolicy,
    *,
    requested_by: str | None,
    on_escalated: EscalationHook | None,
) -> tuple[list[Scored], list[int]]:
    """Score `items` and record them, for the event loop: scoring (CPU, numpy/torch) runs in the
    threadpool, and the write is awaited on the store's writer thread, so no thread is parked while
    rows commit. Returns (the scored items, their prediction ids) only after the rows are committed.

    A few items whose embeddings are in memory are scored inline: that is ~1 ms of GIL-bound Python,
    which a worker thread could not run in parallel anyway, and the two thread handoffs it saves cost
    more than that under load. Anything that may touch the encoder or the cache file goes to a thread.
    """
    if len(items) <= INLINE_MAX_ITEMS and model.embeddings_in_memory([model_text(i) for i in items]):
        scored = score_items(model, items, policy, loop)
    else:
        scored = await run_in_threadpool(score_items, model, items, policy, loop)
    future = store.submit_predictions(
        model.version, new_predictions(scored), requested_by=requested_by, on_escalated=on_escalated
    )
    # Shielded: a client that disconnects must not cancel a write that may already be under way.
    return scored, await asyncio.shield(asyncio.wrap_future(future))


class _BackendPredictor:
    """One `LoadedModel` as the ML-backend router's `Predictor` (label + calibrated confidence)."""

    def __init__(self, model: LoadedModel) -> None:
        self._model = model

    @property
    def model_version(self) -> str:
        return self._model.version

    def predict_items(self, items: Sequence[ItemText]) -> list[LabelGuess]:
        if not items:
            return []
        # The router sends only items with a usable title (`ItemText.has_title`); Product rejects others.
        texts = [
            item_text(Product(id="ls", title=i.title, description=i.description, brand=i.brand or None))
            for i in items
        ]
        labels, confidence, _ = self._model.bundle.predict(self._model.features(texts)[1])
        return [
            LabelGuess(label=label, confidence=float(c)) for label, c in zip(labels, confidence, strict=True)
        ]


class BackendHolder:
    """`app.state.model_holder` for the ML-backend router: the current model, or None."""

    def __init__(self, holder: ModelHolder) -> None:
        self._holder = holder

    def current(self) -> _BackendPredictor | None:
        model = self._holder.current
        return None if model is None else _BackendPredictor(model)
