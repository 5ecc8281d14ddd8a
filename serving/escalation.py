"""The escalation rate, computed once: escalated / predicted first-pass predictions per model version and
time window, by reason.

A first-pass prediction is one made for a caller; the re-scores a promotion runs over open escalations
(`requested_by == RESCORE_ACTOR`) are not new items and are left out. Every figure of the
rate reads `escalation_windows` and adds windows up with `combine`: the dashboard (`serving.kpis`, over
time, per version, in total), `GET /v1/metrics/escalation` and the rates logged to each version's MLflow
run (`serving.tracking.log_escalation_windows`). One window setting, `dashboard.window_s`, sizes them all.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, func, or_, select

from serving.store import Prediction, Store, store_time

ALL_VERSIONS = "all"
# `requested_by` of the predictions a promotion makes when it re-scores open escalations.
RESCORE_ACTOR = "retrain:rescore"


@dataclass(frozen=True)
class EscalationWindow:
    """Escalated / predicted of one model version (or `ALL_VERSIONS`) in one time window."""

    model_version: str
    window_start: float  # epoch seconds
    window_s: int
    predicted: int
    escalated: int
    by_reason: dict[str, int]
    first_seen: float = 0.0  # epoch seconds of its first and last prediction
    last_seen: float = 0.0

    @property
    def rate(self) -> float:
        return self.escalated / self.predicted if self.predicted else 0.0

    def metrics(self) -> dict[str, float]:
        """The window as MLflow metrics: the rate, the counts, and the rate by reason."""
        out = {
            "escalation_rate": self.rate,
            "predicted_count": float(self.predicted),
            "escalated_count": float(self.escalated),
        }
        for reason, count in self.by_reason.items():
            out[f"escalation_rate_{reason}"] = count / self.predicted if self.predicted else 0.0
        return out


def first_pass() -> ColumnElement[bool]:
    """Predictions made for a caller, not a promotion's re-score."""
    return or_(Prediction.requested_by.is_(None), Prediction.requested_by != RESCORE_ACTOR)


@dataclass(frozen=True)
class FirstRouting:
    """An item's first routed prediction (re-scores excluded): the audit draw happens there, so it is
    the prediction an audit or spot check measures, whatever later predictions of the item say."""

    created_at: datetime
    inclusion: float | None  # the audit draw's probability (None: routed without an audit policy)
    audited: bool
    # The prediction's id: routing order without ties (rows of one batch can share a timestamp).
    arrival: float
    model_version: str
    label: str
    decision: str
    reasons: tuple[str, ...]


def first_routings(store: Store) -> dict[str, FirstRouting]:
    """item id -> its first routed prediction, in routing order."""
    from serving.routing import AUDIT_REASONS

    first = (
        select(func.min(Prediction.id).label("first_id")).where(first_pass()).group_by(Prediction.item_id)
    ).subquery()
    query = (
        select(
            Prediction.item_id,
            Prediction.created_at,
            Prediction.audit_probability,
            Prediction.reasons,
            Prediction.id,
            Prediction.model_version,
            Prediction.label,
            Prediction.decision,
        )
        .join(first, Prediction.id == first.c.first_id)
        .order_by(Prediction.id)
    )  # routing order
    out: dict[str, FirstRouting] = {}
    with store.session() as session:
        for item_id, created, inclusion, listed, prediction_id, version, label, decision in session.execute(
            query
        ):
            reasons = tuple(listed or ())
            audited = inclusion is not None and bool(AUDIT_REASONS.intersection(reasons))
            out[item_id] = FirstRouting(
                created, inclusion, audited, float(prediction_id), version, label, decision, reasons
            )
    return out


@dataclass
class _Tally:
    predicted: int = 0
    escalated: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    first_seen: float = math.inf
    last_seen: float = -math.inf


def window_start(moment: datetime, window_s: int) -> datetime:
    """The start of the UTC-aligned window of `window_s` seconds that holds `moment` (naive = UTC), as the
    store keeps times; a moment at the calendar's edges is kept as it is (`store_time`)."""
    at = store_time(moment)
    try:
        epoch = at.replace(tzinfo=UTC).timestamp()
        return datetime.fromtimestamp(math.floor(epoch / window_s) * window_s, UTC).replace(tzinfo=None)
    except (OverflowError, ValueError, OSError):
        return at


def escalation_windows(
    store: Store,
    *,
    window_s: int,
    since: datetime | None = None,
    until: datetime | None = None,
    model_version: str | None = None,
) -> list[EscalationWindow]:
    """Per model version and time window of `window_s` seconds (UTC-aligned), oldest first. `since`
    starts at the beginning of its window, so the first window is whole, as every later one is;
    `until` (exclusive) ends the last one."""
    if window_s < 1:
        raise ValueError(f"window_s must be >= 1 second, got {window_s}")
    query = select(
        Prediction.model_version, Prediction.decision, Prediction.reasons, Prediction.created_at
    ).where(first_pass())
    if since is not None:
        query = query.where(Prediction.created_at >= window_start(since, window_s))
    if until is not None:
        query = query.where(Prediction.created_at < store_time(until))
    if model_version is not None:
        query = query.where(Prediction.model_version == model_version)
    tallies: dict[tuple[str, int], _Tally] = {}
    with store.session() as session:
        for version, decision, reasons, created in session.execute(query):
            at = created.replace(tzinfo=UTC).timestamp()
            tally = tallies.setdefault((version, math.floor(at / window_s) * window_s), _Tally())
            tally.predicted += 1
            tally.first_seen, tally.last_seen = min(tally.first_seen, at), max(tally.last_seen, at)
            if decision == "escalated":
                tally.escalated += 1
                for reason in reasons or []:
                    tally.by_reason[reason] = tally.by_reason.get(reason, 0) + 1
    return [
        EscalationWindow(
            model_version=version,
            window_start=float(start),
            window_s=window_s,
            predicted=t.predicted,
            escalated=t.escalated,
            by_reason=dict(sorted(t.by_reason.items())),
            first_seen=t.first_seen,
            last_seen=t.last_seen,
        )
        for (version, start), t in sorted(tallies.items(), key=lambda kv: (kv[0][1], kv[0][0]))
    ]


def combine(windows: Iterable[EscalationWindow], model_version: str = ALL_VERSIONS) -> EscalationWindow:
    """Several windows added up into one, labelled `model_version`, starting at the earliest of them."""
    items = list(windows)
    if not items:
        raise ValueError("combine needs at least one window")
    by_reason: dict[str, int] = {}
    for w in items:
        for reason, count in w.by_reason.items():
            by_reason[reason] = by_reason.get(reason, 0) + count
    return EscalationWindow(
        model_version=model_version,
        window_start=min(w.window_start for w in items),
        window_s=items[0].window_s,
        predicted=sum(w.predicted for w in items),
        escalated=sum(w.escalated for w in items),
        by_reason=dict(sorted(by_reason.items())),
        first_seen=min(w.first_seen for w in items),
        last_seen=max(w.last_seen for w in items),
    )


def per_version(windows: Iterable[EscalationWindow]) -> dict[str, EscalationWindow]:
    """Each model version's windows added up, in the order the versions first answered."""
    grouped: dict[str, list[EscalationWindow]] = {}
    for w in sorted(windows, key=lambda w: w.first_seen):
        grouped.setdefault(w.model_version, []).append(w)
    return {version: combine(ws, version) for version, ws in grouped.items()}


def over_time(windows: Iterable[EscalationWindow]) -> list[EscalationWindow]:
    """All versions added up per time window, oldest first."""
    grouped: dict[float, list[EscalationWindow]] = {}
    for w in windows:
        grouped.setdefault(w.window_start, []).append(w)
    return [combine(grouped[start]) for start in sorted(grouped)]
