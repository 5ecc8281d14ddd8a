"""The KPI schemas: what every figure returns (the JSON of `GET /v1/metrics/*`)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel

Dimension = Literal["category", "price_band", "brand"]


TargetStatus = Literal["meets_target", "below_target", "inconclusive", "no_data"]


EventKind = Literal["served", "promoted", "rejected", "failed", "rolled_back"]


class EscalationPoint(BaseModel):
    window_start: datetime
    predicted: int
    escalated: int
    rate: float
    by_reason: dict[str, int]


class VersionEscalation(BaseModel):
    model_version: str
    first_seen: datetime
    last_seen: datetime
    predicted: int
    escalated: int
    rate: float
    by_reason: dict[str, int]


class EscalationKpis(BaseModel):
    window_s: int
    predicted: int
    escalated: int
    rate: float | None
    by_reason: dict[str, int]
    over_time: list[EscalationPoint]
    by_version: list[VersionEscalation]


class Interval(BaseModel):
    low: float
    high: float
    confidence: float
    method: str = "clopper-pearson"


class SpotCheckVersion(BaseModel):
    model_version: str
    reviewed: int
    correct: int
    accuracy: float | None
    interval: Interval | None
    strata: int = 1  # inclusion probabilities its spot checks were drawn with (`serving.kpis.spot_checks`)


class SpotCheckKpis(BaseModel):
    sampled: int  # would-be auto-accepts drawn for review at their first routing
    reviewed: int
    correct: int  # reviewed ones the reviewer confirmed (a count; `accuracy` weighs the strata)
    accuracy: float | None
    interval: Interval | None
    strata: int = 1
    target: float
    status: TargetStatus
    by_version: list[SpotCheckVersion]
    audits: int = 0  # every item drawn into the audit sample (spot checks + escalated audits)
    audits_reviewed: int = 0
    audit_backlog: int = 0  # audits nobody has reviewed yet: they hold back the next certificate
    guarantee: str = ""  # the statement in force (learner.guarantee)


class QueueKpis(BaseModel):
    open: int
    oldest_age_s: float | None
    median_age_s: float | None
    by_age: dict[str, int]
    by_reason: dict[str, int]


class DailyReviews(BaseModel):
    day: date
    reviews: int
    approved: int
    corrected: int


class ReviewKpis(BaseModel):
    reviews: int
    approved: int
    corrected: int
    per_day: list[DailyReviews]
    lead_times: int
    median_lead_time_s: float | None
    p90_lead_time_s: float | None


class ThroughputKpis(BaseModel):
    window_s: int
    predictions: int
    reviews: int
    predictions_per_hour: float
    reviews_per_hour: float


class CostKpis(BaseModel):
    currency: str
    human_cost_per_review: float
    compute_cost_per_item: float
    reviews: int
    predictions: int
    items: int
    total_cost: float
    cost_per_item: float | None
    projected_cost_per_item: float | None


class SegmentKpi(BaseModel):
    dimension: Dimension
    segment: str
    items: int
    escalated: int
    escalation_rate: float
    reviewed: int
    corrected: int
    correction_rate: float | None
    rest_correction_rate: float | None
    p_value: float | None
    p_adjusted: float | None
    flagged: bool
    direction: Literal["higher", "lower"] | None


class SegmentKpis(BaseModel):
    significance: float
    method: str = "fisher-exact, holm"
    min_segment_size: int
    tested: int
    segments: list[SegmentKpi]


class TimelineEvent(BaseModel):
    at: datetime
    kind: EventKind
    model_version: str
    reason: str | None = None
    run_id: int | None = None
    mlflow_run_id: str | None = None
    mlflow_url: str | None = None


class EmptyState(BaseModel):
    key: str
    message: str


class DashboardKpis(BaseModel):
    generated_at: datetime
    empty: list[EmptyState]
    escalation: EscalationKpis
    spot_checks: SpotCheckKpis
    queue: QueueKpis
    reviews: ReviewKpis
    throughput: ThroughputKpis
    cost: CostKpis
    segments: SegmentKpis
    timeline: list[TimelineEvent]
