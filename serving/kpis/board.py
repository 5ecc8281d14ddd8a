"""The whole dashboard: every figure, and the empty states that explain missing ones."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select

from serving.kpis.common import item_views, now_utc
from serving.kpis.cost import cost
from serving.kpis.escalation import escalation
from serving.kpis.queue import queue
from serving.kpis.reviews import reviews, throughput
from serving.kpis.schemas import DashboardKpis, EmptyState, EscalationKpis, ReviewKpis
from serving.kpis.segments import segments
from serving.kpis.spot_checks import spot_checks
from serving.kpis.timeline import timeline
from serving.settings import AppSettings
from serving.store import ModelVersion, Store


def empty_states(store: Store, escalation_kpis: EscalationKpis, review_kpis: ReviewKpis) -> list[EmptyState]:
    out: list[EmptyState] = []
    with store.session() as session:
        has_model = session.scalar(select(func.count()).select_from(ModelVersion)) or 0
    if not has_model and not escalation_kpis.predicted:
        out.append(
            EmptyState(
                key="no_model",
                message="No model has served a prediction yet: train one (`hitl learner train`, or "
                "`make up`) and send items to POST /v1/predict; escalation rates appear from the first "
                "prediction.",
            )
        )
    elif not escalation_kpis.predicted:
        out.append(
            EmptyState(
                key="no_predictions",
                message="A model is loaded but no item has been predicted yet: "
                "send items to POST /v1/predict.",
            )
        )
    if not review_kpis.reviews:
        out.append(
            EmptyState(
                key="no_corrections",
                message="No reviews yet: corrections, handling times and spot-check accuracy appear once "
                "reviewers submit escalated items in Label Studio.",
            )
        )
    return out


def dashboard(store: Store, settings: AppSettings, now: datetime | None = None) -> DashboardKpis:
    at = now_utc(now)
    escalation_kpis = escalation(store, settings.dashboard)
    review_kpis = reviews(store)
    reviews_now = store.current_labels()
    items = item_views(store, reviews_now)
    return DashboardKpis(
        generated_at=at,
        empty=empty_states(store, escalation_kpis, review_kpis),
        escalation=escalation_kpis,
        spot_checks=spot_checks(store, settings.learner, reviews_now),
        queue=queue(store, at, reviews_now),
        reviews=review_kpis,
        throughput=throughput(store, settings.dashboard, at),
        cost=cost(store, settings.dashboard, escalation_kpis.rate),
        segments=segments(store, settings.dashboard, items),
        timeline=timeline(store, settings),
    )
