"""Reviews: handling time, reviews per day, throughput."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from datetime import date, datetime, timedelta

from sqlalchemy import func, select

from serving.escalation import first_pass
from serving.kpis.common import aware, now_utc
from serving.kpis.schemas import DailyReviews, ReviewKpis, ThroughputKpis
from serving.kpis.statistics import quantile
from serving.retrain.tables import USABLE_ACTIONS
from serving.settings import DashboardSettings
from serving.store import Correction, Prediction, Store, review_action, store_time


def _review_rows(store: Store) -> list[tuple[str | None, str | None, datetime, float | None]]:
    query = (
        select(Correction.label, Correction.predicted_label, Correction.updated_at, Correction.lead_time)
        .where(Correction.action.in_(USABLE_ACTIONS))
        .order_by(Correction.id)
    )
    with store.session() as session:
        return [(label, predicted, aware(at), lead) for label, predicted, at, lead in session.execute(query)]


def reviews(store: Store) -> ReviewKpis:
    rows = _review_rows(store)
    days: dict[date, list[int]] = defaultdict(lambda: [0, 0, 0])
    approved = 0
    for label, predicted, at, _lead in rows:
        verdict = review_action("created", label, predicted)
        day = days[at.date()]
        day[0] += 1
        if verdict == "approved":
            approved += 1
            day[1] += 1
        else:
            day[2] += 1
    leads = [lead for *_, lead in rows if lead is not None and math.isfinite(lead)]
    return ReviewKpis(
        reviews=len(rows),
        approved=approved,
        corrected=len(rows) - approved,
        per_day=[
            DailyReviews(day=d, reviews=n, approved=a, corrected=c) for d, (n, a, c) in sorted(days.items())
        ],
        lead_times=len(leads),
        median_lead_time_s=float(statistics.median(leads)) if leads else None,
        p90_lead_time_s=quantile(leads, 0.9) if leads else None,
    )


def throughput(store: Store, dashboard: DashboardSettings, now: datetime | None = None) -> ThroughputKpis:
    window_s = dashboard.window_s
    since = store_time(now_utc(now) - timedelta(seconds=window_s))
    with store.session() as session:
        predictions = session.scalar(
            select(func.count()).select_from(Prediction).where(first_pass(), Prediction.created_at >= since)
        )
        reviewed = session.scalar(
            select(func.count())
            .select_from(Correction)
            .where(Correction.action.in_(USABLE_ACTIONS), Correction.updated_at >= since)
        )
    hours = window_s / 3600
    return ThroughputKpis(
        window_s=window_s,
        predictions=int(predictions or 0),
        reviews=int(reviewed or 0),
        predictions_per_hour=int(predictions or 0) / hours,
        reviews_per_hour=int(reviewed or 0) / hours,
    )
