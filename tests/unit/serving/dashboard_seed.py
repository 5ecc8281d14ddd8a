"""A realistic, seeded history for the dashboard tests, written through the store's own API.

Four model versions over six days (v1 -> v2 -> v3, then an engineer rolls back to v2), escalations
for several reasons, spot checks confirmed or corrected, corrections with Label Studio lead times, open
escalations left in the queue, retrain runs (promoted, rejected with the gate's reason, failed), and one
deliberately biased segment: brand `Bolt`, whose items reviewers correct far more often.

Only `created_at` of predictions is moved into the past afterwards (the store stamps "now"), so that
the charts over time have several buckets.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import update

from labeling.webhooks import CorrectionEvent
from serving.retrain import RetrainRun
from serving.store import NewPrediction, Prediction, Store

MODEL = "hitl-product-categories"
LABELS = ["Home & Kitchen > Cookware", "Sports > Running", "Toys > Games", "Electronics > Audio"]
BRANDS = ["Acme", "Zenith", "Orbit", "Bolt"]
BIASED_BRAND = "Bolt"
# (version, start in days before now, end in days before now, escalation probability)
PHASES = [
    (f"{MODEL}:v1", 6.0, 4.0, 0.55),
    (f"{MODEL}:v2", 4.0, 2.0, 0.4),
    (f"{MODEL}:v3", 2.0, 1.0, 0.3),
    (f"{MODEL}:v2", 1.0, 0.2, 0.4),  # rolled back to v2
]


@dataclass(frozen=True)
class Seeded:
    items: int
    predictions: int
    reviews: int
    now: datetime


def _other(label: str, rng: random.Random) -> str:
    return rng.choice([x for x in LABELS if x != label])


def seed(store: Store, *, n_items: int = 480, rng_seed: int = 3, now: datetime | None = None) -> Seeded:
    rng = random.Random(rng_seed)
    at = (now or datetime.now(UTC)).replace(microsecond=0)
    for version in dict.fromkeys(p[0] for p in PHASES):
        store.register_model_version(version, source="test", encoder_id="test", n_labels=4, details={})
    per_phase = n_items // len(PHASES)
    annotation = 0
    reviews = 0
    predictions = 0
    for phase, (version, start_d, end_d, p_escalate) in enumerate(PHASES):
        rows: list[NewPrediction] = []
        times: list[datetime] = []
        for i in range(per_phase):
            item_id = f"item-{phase}-{i:04d}"
            label = rng.choice(LABELS)
            brand = rng.choice(BRANDS) if rng.random() > 0.05 else None
            price = (
                None
                if rng.random() < 0.05
                else round(rng.choice([5, 25, 120, 600, 1500]) * rng.uniform(0.8, 1.2), 2)
            )
            reasons: list[str] = []
            if rng.random() < p_escalate:
                reasons.append("below_threshold")
            if price is not None and price >= 1000:
                reasons.append("high_value")
            if not reasons and rng.random() < 0.15:
                reasons.append("spot_check")
            decision = "escalated" if reasons else "auto_accepted"
            rows.append(
                NewPrediction(
                    item_id=item_id,
                    title=f"{label.split(' > ')[1]} thing {i}",
                    description="",
                    brand=brand,
                    price=price,
                    category_hint=None,
                    label=label,
                    confidence=rng.uniform(0.3, 0.99),
                    threshold=0.8,
                    top_k=[(label, 0.8)],
                    decision=decision,
                    reasons=reasons or ["above_threshold"],
                    priority=rng.random(),
                )
            )
            times.append(at - timedelta(days=start_d - (start_d - end_d) * i / per_phase))
        if phase and version in (p[0] for p in PHASES[:phase]):  # serving went back: a recorded rollback
            store.record_model_event(
                action="rollback",
                version=version,
                actor="ml_engineer:alice",
                reason=f"{PHASES[phase - 1][0]} misroutes toys",
                previous=PHASES[phase - 1][0],
                at=at - timedelta(days=start_d),
            )
        ids = store.record_predictions(version, rows)
        predictions += len(ids)
        with store.session() as session:
            for prediction_id, when in zip(ids, times, strict=True):
                session.execute(
                    update(Prediction)
                    .where(Prediction.id == prediction_id)
                    .values(created_at=when.replace(tzinfo=None))
                )
        for row, when in zip(rows, times, strict=True):
            if row.decision != "escalated" or rng.random() > 0.85:  # ~15% of escalations stay open
                continue
            error_rate = (
                0.6 if row.brand == BIASED_BRAND else (0.04 if row.reasons == ["spot_check"] else 0.12)
            )
            wrong = rng.random() < error_rate
            annotation += 1
            lead = round(rng.uniform(8, 240), 1)
            done = min(when + timedelta(minutes=rng.uniform(5, 600)), at - timedelta(minutes=1))
            store.record_correction(
                CorrectionEvent(
                    action="created",
                    annotation_id=annotation,
                    task_id=annotation,
                    project_id=1,
                    item_id=row.item_id,
                    label=_other(row.label, rng) if wrong else row.label,
                    raw_label=None,
                    reviewer_id=rng.choice([1, 2, 3]),
                    created_at=done,
                    updated_at=done,
                    lead_time=lead,
                    was_cancelled=False,
                    predicted_label=row.label,
                    model_version=version,
                    model_score=row.confidence,
                    source="webhook",
                )
            )
            reviews += 1
    with store.session() as session:
        session.add_all(
            [
                RetrainRun(
                    status="promoted",
                    stage="done",
                    reasons=["every-25"],
                    created_at=(at - timedelta(days=4.01)).replace(tzinfo=None),
                    finished_at=(at - timedelta(days=4.005)).replace(tzinfo=None),
                    version="2",
                    promoted=True,
                    mlflow_run_id="a" * 32,
                    gate_reason="coverage 0.61 >= 0.52, accuracy 0.95 >= 0.94",
                ),
                RetrainRun(
                    status="rejected",
                    stage="done",
                    reasons=["every-25"],
                    created_at=(at - timedelta(days=3)).replace(tzinfo=None),
                    finished_at=(at - timedelta(days=2.99)).replace(tzinfo=None),
                    version="4",
                    promoted=False,
                    mlflow_run_id="b" * 32,
                    gate_reason="accuracy 0.91 < champion 0.95 - 0.01",
                ),
                RetrainRun(
                    status="failed",
                    stage="failed",
                    reasons=["api"],
                    created_at=(at - timedelta(days=0.5)).replace(tzinfo=None),
                    finished_at=(at - timedelta(days=0.49)).replace(tzinfo=None),
                    error="RetrainError: 12 labels < min_labels 20",
                ),
            ]
        )
    return Seeded(items=per_phase * len(PHASES), predictions=predictions, reviews=reviews, now=at)
