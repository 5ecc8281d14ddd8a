"""The escalation-rate figure of the dashboard (from `serving.escalation`, where it is computed)."""

from __future__ import annotations

from serving.escalation import combine, escalation_windows, over_time, per_version
from serving.kpis.common import from_epoch
from serving.kpis.schemas import EscalationKpis, EscalationPoint, VersionEscalation
from serving.settings import DashboardSettings
from serving.store import Store


def escalation(store: Store, dashboard: DashboardSettings) -> EscalationKpis:
    """The escalation rate in total, per time window (`dashboard.window_s`) and per model version, from
    `serving.escalation`, the one place that computes it."""
    window_s = dashboard.window_s
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
                window_start=from_epoch(w.window_start),
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
                first_seen=from_epoch(w.first_seen),
                last_seen=from_epoch(w.last_seen),
                predicted=w.predicted,
                escalated=w.escalated,
                rate=w.rate,
                by_reason=w.by_reason,
            )
            for version, w in per_version(windows).items()
        ],
    )
