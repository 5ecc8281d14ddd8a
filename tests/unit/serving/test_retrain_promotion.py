"""`serving.retrain.promotion.rescore_open_escalations`: what a new champion does to the open queue,
with the real app, store and (small) model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from learner.encoder import HFEncoder
from learner.loop import AUDIT_PRIORITY
from learner.settings import AuditSettings, LearnerSettings
from serving.model import LoadedModel, record_version
from serving.outbox import OutboxEntry
from serving.retrain.promotion import rescore_open_escalations
from serving.routing import AUDIT_REASONS
from serving.store import OpenEscalation, Store
from tests.unit.serving.support import catalog_items, served_app, served_settings

pytestmark = pytest.mark.slow
LENIENT = "v-lenient"


def _with_threshold(model: LoadedModel, version: str, threshold: float) -> LoadedModel:
    """`model` as another version whose certified threshold is `threshold` for every class (``inf``:
    nothing certified, everything escalated; 0: every confidence accepted)."""
    certified = np.full_like(model.bundle.thresholds.thresholds, threshold)
    thresholds = replace(model.bundle.thresholds, thresholds=certified)
    return replace(model, version=version, bundle=replace(model.bundle, thresholds=thresholds))


def _audited(o: OpenEscalation) -> bool:
    return bool(AUDIT_REASONS.intersection(o.prediction.reasons))


def _queue_then_rescore(
    small_bundle_dir: Path, embedding_dir: Path, encoder: HFEncoder, store: Store, *, auto_resolve: bool
) -> tuple[list[OpenEscalation], tuple[int, int]]:
    settings = served_settings(small_bundle_dir, embedding_dir).model_copy(
        # Many audits among few items (the rate is a setting like any other).
        update={"learner": LearnerSettings(audit=AuditSettings(rate=0.3))}
    )
    with served_app(settings, store, encoder) as (client, holder):
        assert holder.current is not None
        served = holder.current
        # The queue is made by a champion that certified nothing: every item is escalated.
        holder.swap(_with_threshold(served, "v-strict", np.inf))
        items = catalog_items(60, seed=21)
        items[0] |= {"price": 5000.0}  # a rule escalates it whatever the model says
        assert client.post("/v1/predict", json={"items": items}).status_code == 200
        opens = store.open_escalations(limit=1000)
        champion = _with_threshold(served, LENIENT, 0.0)
        record_version(store, champion)  # as the swap does before the queue is re-scored
        counts = rescore_open_escalations(store, champion, settings, auto_resolve=auto_resolve)
    return opens, counts


def test_a_new_champion_resolves_what_it_accepts_and_keeps_audits_in_review(
    small_bundle_dir: Path, embedding_dir: Path, minilm_encoder: HFEncoder, store: Store
) -> None:
    opens, (resolved, reprioritized) = _queue_then_rescore(
        small_bundle_dir, embedding_dir, minilm_encoder, store, auto_resolve=True
    )
    audits = [o for o in opens if _audited(o)]
    ruled = [o for o in opens if not _audited(o) and "high_value" in o.prediction.reasons]
    plain = [o for o in opens if not _audited(o) and o not in ruled]
    assert audits, "the queue must hold audits"
    assert plain, "the queue must hold items escalated by confidence alone"
    assert (resolved, reprioritized) == (len(plain), len(audits) + len(ruled))

    for o in opens:
        history = store.item_history(o.prediction.item_id)
        assert history is not None
        newest = history.predictions[-1]
        assert newest.model_version == LENIENT
        actions = [a.action for a in history.audit if a.model_version == LENIENT]
        if o in plain:  # the new champion accepts it: out of the queue, the task closed
            assert (newest.decision, actions) == ("auto_accepted", ["auto_resolved"])
        else:
            assert (newest.decision, actions) == ("escalated", ["reprioritized"])
        if o in audits:  # an audit stays an audit: its reasons, its place at the front of the queue
            assert newest.reasons == o.prediction.reasons
            assert newest.priority == AUDIT_PRIORITY
            assert newest.audit_probability == o.prediction.audit_probability
    still_open = {o.prediction.item_id for o in store.open_escalations(limit=1000)}
    assert still_open == {o.prediction.item_id for o in audits + ruled}

    with store.session() as session:
        entries = session.scalars(select(OutboxEntry).where(OutboxEntry.model_version == LENIENT)).all()
        pushed = {e.item_id: e.payload["action"] for e in entries}
    assert pushed == {o.prediction.item_id: "close" if o in plain else "push" for o in opens}


def test_without_auto_resolve_everything_stays_in_review_reprioritised(
    small_bundle_dir: Path, embedding_dir: Path, minilm_encoder: HFEncoder, store: Store
) -> None:
    opens, (resolved, reprioritized) = _queue_then_rescore(
        small_bundle_dir, embedding_dir, minilm_encoder, store, auto_resolve=False
    )
    assert (resolved, reprioritized) == (0, len(opens))
    assert {o.prediction.item_id for o in store.open_escalations(limit=1000)} == {
        o.prediction.item_id for o in opens
    }


def test_a_promotion_that_could_not_rescore_does_it_once_the_holder_serves_the_champion(
    small_bundle_dir: Path, embedding_dir: Path, minilm_encoder: HFEncoder, store: Store
) -> None:
    from serving.retrain.promotion import Promoter

    settings = served_settings(small_bundle_dir, embedding_dir)
    with served_app(settings, store, minilm_encoder) as (client, holder):
        assert holder.current is not None
        served = holder.current
        holder.swap(_with_threshold(served, "v-strict", np.inf))
        assert client.post("/v1/predict", json={"items": catalog_items(20, seed=5)}).status_code == 200
        opens = store.open_escalations(limit=1000)
        promoter = Promoter(settings, store, holder)
        promoter.pending_rescore = LENIENT  # promoted while its model could not be loaded
        champion = _with_threshold(served, LENIENT, 0.0)
        record_version(store, champion)
        holder.swap(champion)  # a later refresh loaded it
        resolved, reprioritized = promoter.retry_rescore() or (-1, -1)
        assert resolved + reprioritized == len(opens) > 0
        assert promoter.pending_rescore is None
        assert promoter.retry_rescore() is None  # done once
