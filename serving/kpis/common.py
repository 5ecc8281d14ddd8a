"""What several figures share: time helpers, price bands, each item's newest prediction and review."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select

from serving.escalation import first_pass
from serving.kpis.schemas import Interval, TargetStatus
from serving.settings import AppSettings
from serving.store import CorrectionRecord, Item, Prediction, Store

SPOT_CHECK = "spot_check"
NO_BRAND = "(no brand)"
NO_PRICE = "(no price)"


def aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def now_utc(now: datetime | None) -> datetime:
    return aware(now) if now is not None else datetime.now(UTC)


def from_epoch(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def price_band(price: float | None, bounds: Sequence[float]) -> str:
    """`<10`, `10-50`, ..., `>=1000` for bounds [10, 50, ..., 1000]; `(no price)` when unknown."""
    if price is None or math.isnan(price):
        return NO_PRICE
    if not bounds or price < bounds[0]:
        return f"<{bounds[0]:g}" if bounds else "all"
    for low, high in itertools.pairwise(bounds):
        if low <= price < high:
            return f"{low:g}-{high:g}"
    return f">={bounds[-1]:g}"


def mlflow_ui_url(settings: AppSettings) -> str:
    configured = settings.dashboard.mlflow_ui_url
    url = configured or f"http://{settings.mlflow.server_host}:{settings.mlflow.server_port}"
    return url.rstrip("/")


@dataclass(frozen=True)
class ItemView:
    """One item: its newest first-pass prediction, its content, and its current review (if any)."""

    item_id: str
    model_version: str
    label: str
    decision: str
    reasons: list[str]
    brand: str | None
    price: float | None
    review: CorrectionRecord | None

    @property
    def corrected(self) -> bool:
        return self.review is not None and self.review.label != self.label


def item_views(store: Store, reviews: dict[str, CorrectionRecord] | None = None) -> list[ItemView]:
    newest = (
        select(func.max(Prediction.id).label("last_id"))
        .where(first_pass())
        .group_by(Prediction.item_id)
        .subquery()
    )
    query = (
        select(
            Prediction.item_id,
            Prediction.model_version,
            Prediction.label,
            Prediction.decision,
            Prediction.reasons,
            Item.brand,
            Item.price,
        )
        .join(newest, Prediction.id == newest.c.last_id)
        .join(Item, Item.id == Prediction.item_id)
        .order_by(Prediction.item_id)
    )
    if reviews is None:
        reviews = store.current_labels()
    with store.session() as session:
        rows = session.execute(query).all()
    return [
        ItemView(item_id, version, label, decision, list(reasons or []), brand, price, reviews.get(item_id))
        for item_id, version, label, decision, reasons, brand, price in rows
    ]


def target_status(interval: Interval | None, target: float) -> TargetStatus:
    if interval is None:
        return "no_data"
    if interval.low >= target:
        return "meets_target"
    if interval.high < target:
        return "below_target"
    return "inconclusive"
