"""The product owners' KPIs, computed read-only from the serving store.

Every figure on the dashboard (`GET /dashboard`), in the JSON metrics (`GET /v1/metrics/...`) and in
`hitl report` comes from here, so the three always agree. Nothing is written.

Definitions (the tests recompute them with plain SQL, so they are spelled out):

- *first-pass prediction*: a prediction not made by the re-scoring after a promotion
  (`serving.escalation.first_pass`); escalation rates count only these, like
  `/v1/metrics/escalation`.
- *escalation rate*: escalated / first-pass predictions, per time bucket (`dashboard.window_s`), per model
  version, and split by reason (an escalation with two reasons counts once under each).
- *an item's prediction*: its newest first-pass prediction. *An item's review*: its newest usable
  correction (`Store.current_labels`: created/updated, not later deleted/cancelled/rejected). A reviewed
  item is *corrected* when the reviewer's label differs from the item's prediction.
- *spot-check accuracy*: among items whose prediction was escalated ONLY for `spot_check` (would-be
  auto-accepts sampled for review) and that were reviewed, the share the reviewer confirmed; with an exact
  (Clopper-Pearson) interval at the learner's 1 - delta level, against `learner.target_accuracy`.
- *reviews*: correction states with action created/updated (an edit is a second review).
- *segments*: items by predicted category, price band and brand; per segment the escalation rate and
  the correction rate; a segment whose correction rate differs from the rest of the items is flagged by a
  two-sided Fisher exact test, Holm-corrected over every tested segment at `dashboard.significance`.
- *model timeline*: retrain runs (promoted / rejected with the gate's reason / failed) from
  `retrain_runs`; champion moves by hand (manual promote, rollback: who and why) from the audit trail's
  `model_event` rows the promoter writes; and when each version first served a prediction.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Literal

from pydantic import BaseModel
from scipy import stats
from sqlalchemy import func, select

from learner.loop import describe_guarantee
from serving.escalation import combine, escalation_windows, first_pass, over_time, per_version
from serving.retrain import RetrainRun
from serving.routing import AUDIT_REASONS
from serving.settings import AppSettings
from serving.store import Correction, CorrectionRecord, Item, ModelVersion, Prediction, Store, review_action

SPOT_CHECK = "spot_check"
USABLE_ACTIONS = ("created", "updated")
NO_BRAND = "(no brand)"
NO_PRICE = "(no price)"
QUEUE_AGE_BUCKETS: tuple[tuple[str, float], ...] = (
    ("< 1 h", 3600.0),
    ("1-24 h", 86400.0),
    ("1-7 d", 7 * 86400.0),
    (">= 7 d", math.inf),
)

Dimension = Literal["category", "price_band", "brand"]
TargetStatus = Literal["meets_target", "below_target", "inconclusive", "no_data"]
EventKind = Literal["served", "promoted", "rejected", "failed", "rolled_back"]


# ----------------------------------------------------------------------------------------------- schemas
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


class SpotCheckKpis(BaseModel):
    sampled: int
    reviewed: int
    correct: int
    accuracy: float | None
    interval: Interval | None
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


# ----------------------------------------------------------------------------------------------- helpers
def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _naive(value: datetime) -> datetime:
    return _aware(value).replace(tzinfo=None)


def _now(now: datetime | None) -> datetime:
    return _aware(now) if now is not None else datetime.now(UTC)


def clopper_pearson(successes: int, trials: int, confidence: float) -> Interval:
    """The exact two-sided binomial interval (never narrower than the truth: conservative)."""
    if trials <= 0 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials > 0, got {successes}/{trials}")
    alpha = 1.0 - confidence
    low = 0.0 if successes == 0 else float(stats.beta.ppf(alpha / 2, successes, trials - successes + 1))
    high = (
        1.0
        if successes == trials
        else float(stats.beta.ppf(1 - alpha / 2, successes + 1, trials - successes))
    )
    return Interval(low=low, high=high, confidence=confidence)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (controls the family-wise error rate), in input order."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


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


# ----------------------------------------------------------------------------------------------- figures
def _at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def escalation(store: Store, settings: AppSettings) -> EscalationKpis:
    """The escalation rate in total, per time window (`dashboard.window_s`) and per model version, from
    `serving.escalation`, the one place that computes it."""
    window_s = settings.dashboard.window_s
    windows = escalation_windows(store, window_s=window_s)
    total = combine(windows) if windows else None
    return EscalationKpis(
        window_s=window_s,
        predicted=total.predicted if total else 0,
        escalated=total.escalated if total else 0,
        rate=total.rate if total else None,
        by_reason=total.by_reason if total else {},
        over_time=[
            EscalationPoint(
                window_start=_at(w.window_start),
                predicted=w.predicted,
                escalated=w.escalated,
                rate=w.rate,
                by_reason=w.by_reason,
            )
            for w in over_time(windows)
        ],
        by_version=[
            VersionEscalation(
                model_version=version,
                first_seen=_at(w.first_seen),
                last_seen=_at(w.last_seen),
                predicted=w.predicted,
                escalated=w.escalated,
                rate=w.rate,
                by_reason=w.by_reason,
            )
            for version, w in per_version(windows).items()
        ],
    )


@dataclass(frozen=True)
class _ItemView:
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


def _items(store: Store) -> list[_ItemView]:
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
    reviews = store.current_labels()
    with store.session() as session:
        rows = session.execute(query).all()
    return [
        _ItemView(item_id, version, label, decision, list(reasons or []), brand, price, reviews.get(item_id))
        for item_id, version, label, decision, reasons, brand, price in rows
    ]


def _status(interval: Interval | None, target: float) -> TargetStatus:
    if interval is None:
        return "no_data"
    if interval.low >= target:
        return "meets_target"
    if interval.high < target:
        return "below_target"
    return "inconclusive"


def spot_checks(store: Store, settings: AppSettings, items: list[_ItemView] | None = None) -> SpotCheckKpis:
    confidence = 1.0 - settings.learner.delta
    views = items if items is not None else _items(store)
    sampled = [i for i in views if i.reasons == [SPOT_CHECK]]
    reviewed = [i for i in sampled if i.review is not None]
    per_version: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for i in reviewed:
        per_version[i.model_version][0] += 1
        per_version[i.model_version][1] += 0 if i.corrected else 1
    correct = sum(0 if i.corrected else 1 for i in reviewed)
    interval = clopper_pearson(correct, len(reviewed), confidence) if reviewed else None
    audits = [i for i in views if AUDIT_REASONS & set(i.reasons)]
    audits_reviewed = sum(i.review is not None for i in audits)
    learner = settings.learner
    return SpotCheckKpis(
        audits=len(audits),
        audits_reviewed=audits_reviewed,
        audit_backlog=len(audits) - audits_reviewed,
        guarantee=describe_guarantee(learner.guarantee, learner.target_accuracy, learner.delta),
        sampled=len(sampled),
        reviewed=len(reviewed),
        correct=correct,
        accuracy=correct / len(reviewed) if reviewed else None,
        interval=interval,
        target=settings.learner.target_accuracy,
        status=_status(interval, settings.learner.target_accuracy),
        by_version=[
            SpotCheckVersion(
                model_version=v,
                reviewed=n,
                correct=k,
                accuracy=k / n,
                interval=clopper_pearson(k, n, confidence),
            )
            for v, (n, k) in sorted(per_version.items())
        ],
    )


def queue(store: Store, now: datetime | None = None) -> QueueKpis:
    at = _now(now)
    opens = store.open_escalations(limit=2**31 - 1)
    ages = [max(0.0, (at - o.prediction.created_at).total_seconds()) for o in opens]
    by_age = {name: 0 for name, _ in QUEUE_AGE_BUCKETS}
    for age in ages:
        name = next(name for name, upper in QUEUE_AGE_BUCKETS if age < upper)
        by_age[name] += 1
    reasons = Counter(r for o in opens for r in o.prediction.reasons)
    return QueueKpis(
        open=len(opens),
        oldest_age_s=max(ages) if ages else None,
        median_age_s=float(statistics.median(ages)) if ages else None,
        by_age=by_age,
        by_reason=dict(sorted(reasons.items())),
    )


def _review_rows(store: Store) -> list[tuple[str | None, str | None, datetime, float | None]]:
    query = (
        select(Correction.label, Correction.predicted_label, Correction.updated_at, Correction.lead_time)
        .where(Correction.action.in_(USABLE_ACTIONS))
        .order_by(Correction.id)
    )
    with store.session() as session:
        return [(label, predicted, _aware(at), lead) for label, predicted, at, lead in session.execute(query)]


def _quantile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


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
        p90_lead_time_s=_quantile(leads, 0.9) if leads else None,
    )


def throughput(store: Store, settings: AppSettings, now: datetime | None = None) -> ThroughputKpis:
    window_s = settings.dashboard.window_s
    since = _naive(_now(now) - timedelta(seconds=window_s))
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


def cost(store: Store, settings: AppSettings, escalation_rate: float | None) -> CostKpis:
    config = settings.dashboard
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


DIMENSIONS: tuple[Dimension, ...] = ("category", "price_band", "brand")


def _segment_order(key: tuple[Dimension, str], bounds: Sequence[float]) -> tuple[int, int, str]:
    """Dimensions in a fixed order; price bands from cheap to expensive, the rest by name."""
    dimension, name = key
    rank = 0
    if dimension == "price_band":
        bands = [price_band(None, bounds), *(price_band(b - 1e-9, bounds) for b in bounds)]
        bands.append(price_band(bounds[-1], bounds) if bounds else "all")
        rank = bands.index(name) if name in bands else len(bands)
    return DIMENSIONS.index(dimension), rank, name


def segments(store: Store, settings: AppSettings, items: list[_ItemView] | None = None) -> SegmentKpis:
    config = settings.dashboard
    views = items if items is not None else _items(store)
    brand_counts = Counter(i.brand or NO_BRAND for i in views)
    top_brands = {
        b for b, _ in sorted(brand_counts.items(), key=lambda kv: (-kv[1], kv[0]))[: config.top_brands]
    }
    groups: dict[tuple[Dimension, str], list[_ItemView]] = defaultdict(list)
    for i in views:
        groups[("category", i.label)].append(i)
        groups[("price_band", price_band(i.price, config.price_bands))].append(i)
        if (i.brand or NO_BRAND) in top_brands:
            groups[("brand", i.brand or NO_BRAND)].append(i)
    total_reviewed = sum(1 for i in views if i.review is not None)
    total_corrected = sum(1 for i in views if i.corrected)
    found: list[SegmentKpi] = []
    tested: list[int] = []
    p_values: list[float] = []
    for (dimension, name), members in sorted(
        groups.items(), key=lambda kv: _segment_order(kv[0], config.price_bands)
    ):
        reviewed = sum(1 for i in members if i.review is not None)
        corrected = sum(1 for i in members if i.corrected)
        rest_reviewed, rest_corrected = total_reviewed - reviewed, total_corrected - corrected
        p_value: float | None = None
        if reviewed >= config.min_segment_size and rest_reviewed >= config.min_segment_size:
            table = [[corrected, reviewed - corrected], [rest_corrected, rest_reviewed - rest_corrected]]
            p_value = float(stats.fisher_exact(table, alternative="two-sided").pvalue)
            tested.append(len(found))
            p_values.append(p_value)
        rate = corrected / reviewed if reviewed else None
        rest_rate = rest_corrected / rest_reviewed if rest_reviewed else None
        escalated = sum(1 for i in members if i.decision == "escalated")
        found.append(
            SegmentKpi(
                dimension=dimension,
                segment=name,
                items=len(members),
                escalated=escalated,
                escalation_rate=escalated / len(members),
                reviewed=reviewed,
                corrected=corrected,
                correction_rate=rate,
                rest_correction_rate=rest_rate,
                p_value=p_value,
                p_adjusted=None,
                flagged=False,
                direction=None,
            )
        )
    for index, adjusted in zip(tested, holm(p_values), strict=True):
        segment = found[index]
        flagged = adjusted < config.significance
        direction: Literal["higher", "lower"] | None = None
        if flagged and segment.correction_rate is not None and segment.rest_correction_rate is not None:
            direction = "higher" if segment.correction_rate > segment.rest_correction_rate else "lower"
        found[index] = segment.model_copy(
            update={"p_adjusted": adjusted, "flagged": flagged, "direction": direction}
        )
    return SegmentKpis(
        significance=config.significance,
        min_segment_size=config.min_segment_size,
        tested=len(tested),
        segments=found,
    )


def _registry_version(label: str, registered_model: str) -> str | None:
    prefix = f"{registered_model}:v"
    return label[len(prefix) :] if label.startswith(prefix) else None


def timeline(store: Store, settings: AppSettings) -> list[TimelineEvent]:
    ui = mlflow_ui_url(settings)
    name = settings.mlflow.registered_model
    events: list[TimelineEvent] = []
    with store.session() as session:
        runs = session.execute(
            select(
                RetrainRun.id,
                RetrainRun.status,
                RetrainRun.finished_at,
                RetrainRun.version,
                RetrainRun.gate_reason,
                RetrainRun.error,
                RetrainRun.mlflow_run_id,
            )
            .where(RetrainRun.status.in_(("promoted", "rejected", "failed")))
            .order_by(RetrainRun.id)
        ).all()
        first_served = session.execute(
            select(Prediction.model_version, func.min(Prediction.created_at)).group_by(
                Prediction.model_version
            )
        ).all()
        loaded = dict(session.execute(select(ModelVersion.version, ModelVersion.first_loaded_at)).all())
    for run_id, status, finished, run_version, gate_reason, error, mlflow_run_id in runs:
        label = f"{name}:v{run_version}" if run_version else "(not registered)"
        events.append(
            TimelineEvent(
                at=_aware(finished) if finished is not None else datetime.fromtimestamp(0, UTC),
                kind=status,
                model_version=label,
                reason=gate_reason if status != "failed" else error,
                run_id=run_id,
                mlflow_run_id=mlflow_run_id,
                mlflow_url=f"{ui}/#/runs/{mlflow_run_id}" if mlflow_run_id else None,
            )
        )
    gate_promoted = {e.model_version for e in events if e.kind == "promoted"}
    for move in store.model_events():  # champion moves recorded by the promoter (audit trail)
        version = move.after or move.model_version or "(unknown)"
        if move.action == "promoted" and version in gate_promoted:
            continue  # the retrain run above already shows it, with the gate's reason
        kind: EventKind = "rolled_back" if move.action == "rollback" else "promoted"
        given = move.details.get("reason")
        registry_version = _registry_version(version, name)
        events.append(
            TimelineEvent(
                at=_aware(move.created_at),
                kind=kind,
                model_version=version,
                reason=f"{move.action.replace('_', ' ')} by {move.actor}"
                + (f": {given}" if given and given != move.action.replace("_", " ") else ""),
                mlflow_url=f"{ui}/#/models/{name}/versions/{registry_version}" if registry_version else None,
            )
        )
    seen: set[str] = set()
    for version, created in first_served:
        seen.add(version)
        registry_version = _registry_version(version, name)
        events.append(
            TimelineEvent(
                at=_aware(created),
                kind="served",
                model_version=version,
                mlflow_url=f"{ui}/#/models/{name}/versions/{registry_version}" if registry_version else None,
            )
        )
    for version, first_loaded in loaded.items():  # loaded but not (yet) used for a prediction
        if version not in seen:
            events.append(TimelineEvent(at=_aware(first_loaded), kind="served", model_version=version))
    return sorted(events, key=lambda e: (e.at, e.kind, e.model_version))


# ----------------------------------------------------------------------------------------------- all
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
    at = _now(now)
    escalation_kpis = escalation(store, settings)
    review_kpis = reviews(store)
    items = _items(store)
    return DashboardKpis(
        generated_at=at,
        empty=empty_states(store, escalation_kpis, review_kpis),
        escalation=escalation_kpis,
        spot_checks=spot_checks(store, settings, items),
        queue=queue(store, at),
        reviews=review_kpis,
        throughput=throughput(store, settings, at),
        cost=cost(store, settings, escalation_kpis.rate),
        segments=segments(store, settings, items),
        timeline=timeline(store, settings),
    )


__all__ = [
    "CostKpis",
    "DashboardKpis",
    "EmptyState",
    "EscalationKpis",
    "Interval",
    "QueueKpis",
    "ReviewKpis",
    "SegmentKpis",
    "SpotCheckKpis",
    "ThroughputKpis",
    "TimelineEvent",
    "clopper_pearson",
    "cost",
    "dashboard",
    "escalation",
    "holm",
    "price_band",
    "queue",
    "reviews",
    "segments",
    "spot_checks",
    "throughput",
    "timeline",
]
