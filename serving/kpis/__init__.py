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
- *spot-check accuracy*: among items whose FIRST routing (`serving.escalation.first_routings`, where the
  audit draw happens) was escalated ONLY for `spot_check` (would-be auto-accepts sampled for review) and
  that were reviewed, the share the reviewer confirmed of that prediction, attributed to its model
  version; with an exact (Clopper-Pearson) interval at the learner's 1 - delta level, against
  `learner.target_accuracy`. Spot checks drawn with different inclusion probabilities are weighted by
  how many would-be auto-accepts each probability stands for (`serving.kpis.spot_checks`).
- *audit backlog*: items drawn into the audit sample at their first routing with no usable review.
- *queue*: open escalations (`Store.open_escalations`: a label later deleted, cancelled or rejected
  reopens an item), aged from when each started waiting (`Store.waiting_since`), not from a promotion's
  re-score.
- *reviews*: correction states with action created/updated (an edit is a second review).
- *segments*: items by predicted category, price band and brand; per segment the escalation rate and
  the correction rate; a segment whose correction rate differs from the rest of the items is flagged by a
  two-sided Fisher exact test, Holm-corrected over every tested segment at `dashboard.significance`.
- *model timeline*: retrain runs (promoted / rejected with the gate's reason / failed) from
  `retrain_runs`; champion moves by hand (manual promote, rollback: who and why) from the audit trail's
  `model_event` rows the promoter writes; and when each version first served a prediction.

One module per figure (`escalation`, `spot_checks`, `queue`, `reviews`, `cost`, `segments`, `timeline`),
their schemas (`schemas`), the statistics they use (`statistics`) and what they share (`common`);
`board.dashboard` assembles them."""

from __future__ import annotations

from serving.kpis.board import dashboard, empty_states
from serving.kpis.common import price_band, target_status
from serving.kpis.cost import cost
from serving.kpis.escalation import escalation
from serving.kpis.queue import queue
from serving.kpis.reviews import reviews, throughput
from serving.kpis.schemas import (
    CostKpis,
    DailyReviews,
    DashboardKpis,
    Dimension,
    EmptyState,
    EscalationKpis,
    EscalationPoint,
    EventKind,
    Interval,
    QueueKpis,
    ReviewKpis,
    SegmentKpi,
    SegmentKpis,
    SpotCheckKpis,
    SpotCheckVersion,
    TargetStatus,
    ThroughputKpis,
    TimelineEvent,
    VersionEscalation,
)
from serving.kpis.segments import segments
from serving.kpis.spot_checks import spot_checks
from serving.kpis.statistics import clopper_pearson, holm
from serving.kpis.timeline import timeline

__all__ = [
    "CostKpis",
    "DailyReviews",
    "DashboardKpis",
    "Dimension",
    "EmptyState",
    "EscalationKpis",
    "EscalationPoint",
    "EventKind",
    "Interval",
    "QueueKpis",
    "ReviewKpis",
    "SegmentKpi",
    "SegmentKpis",
    "SpotCheckKpis",
    "SpotCheckVersion",
    "TargetStatus",
    "ThroughputKpis",
    "TimelineEvent",
    "VersionEscalation",
    "clopper_pearson",
    "cost",
    "dashboard",
    "empty_states",
    "escalation",
    "holm",
    "price_band",
    "queue",
    "reviews",
    "segments",
    "spot_checks",
    "target_status",
    "throughput",
    "timeline",
]
