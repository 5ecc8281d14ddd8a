"""Cost per item: human reviews and compute."""

from __future__ import annotations

from sqlalchemy import func, select

from serving.kpis.schemas import CostKpis
from serving.retrain.tables import USABLE_ACTIONS
from serving.settings import DashboardSettings
from serving.store import Correction, Prediction, Store


def cost(store: Store, config: DashboardSettings, escalation_rate: float | None) -> CostKpis:
    with store.session() as session:
        n_reviews = int(
            session.scalar(
                select(func.count()).select_from(Correction).where(Correction.action.in_(USABLE_ACTIONS))
            )
            or 0
        )
        n_predictions = int(session.scalar(select(func.count()).select_from(Prediction)) or 0)
        n_items = int(session.scalar(select(func.count(func.distinct(Prediction.item_id)))) or 0)
    total = n_reviews * config.human_cost_per_review + n_predictions * config.compute_cost_per_item
    return CostKpis(
        currency=config.currency,
        human_cost_per_review=config.human_cost_per_review,
        compute_cost_per_item=config.compute_cost_per_item,
        reviews=n_reviews,
        predictions=n_predictions,
        items=n_items,
        total_cost=total,
        cost_per_item=total / n_items if n_items else None,
        # What one more item costs at today's escalation rate (a review for each escalation).
        projected_cost_per_item=None
        if escalation_rate is None
        else escalation_rate * config.human_cost_per_review + config.compute_cost_per_item,
    )
