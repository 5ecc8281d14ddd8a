"""The open review queue and its age."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from datetime import datetime

from serving.kpis.common import now_utc
from serving.kpis.schemas import QueueKpis
from serving.store import CorrectionRecord, Store

QUEUE_AGE_BUCKETS: tuple[tuple[str, float], ...] = (
    ("< 1 h", 3600.0),
    ("1-24 h", 86400.0),
    ("1-7 d", 7 * 86400.0),
    (">= 7 d", math.inf),
)


def queue(
    store: Store, now: datetime | None = None, reviews: dict[str, CorrectionRecord] | None = None
) -> QueueKpis:
    """Open escalations, aged from when each item started waiting (`Store.waiting_since`)."""
    at = now_utc(now)
    opens = store.open_escalations(limit=2**31 - 1)
    current = reviews if reviews is not None else store.current_labels()
    since = store.waiting_since(
        [o.prediction.item_id for o in opens], {i: r.received_at for i, r in current.items()}
    )
    ages = [
        max(0.0, (at - since.get(o.prediction.item_id, o.prediction.created_at)).total_seconds())
        for o in opens
    ]
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
