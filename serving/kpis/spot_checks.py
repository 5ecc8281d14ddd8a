"""Realised accuracy of auto-accepted items, from the reviewed spot checks."""

from __future__ import annotations

from collections import defaultdict

from learner.loop import describe_guarantee
from learner.settings import LearnerSettings
from serving.kpis.common import SPOT_CHECK, ItemView, item_views, target_status
from serving.kpis.schemas import SpotCheckKpis, SpotCheckVersion
from serving.kpis.statistics import clopper_pearson
from serving.routing import AUDIT_REASONS
from serving.store import Store


def spot_checks(store: Store, learner: LearnerSettings, items: list[ItemView] | None = None) -> SpotCheckKpis:
    confidence = 1.0 - learner.delta
    views = items if items is not None else item_views(store)
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
        target=learner.target_accuracy,
        status=target_status(interval, learner.target_accuracy),
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
