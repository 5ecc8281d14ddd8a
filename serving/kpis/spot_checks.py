"""Realised accuracy of auto-accepted items, from the reviewed spot checks.

A spot check is a would-be auto-accept drawn into the audit sample at its first routing, with the
inclusion probability that prediction logged (`serving.routing`). So the figure is about that first
prediction, whatever later predictions of the item say (a later model may have trained on its label),
and items drawn with one probability form a stratum. Each stratum's reviewed spot checks are a uniform
sample of its would-be auto-accepts, whose number is known, so the accuracy of all auto-accepts is the
strata's accuracies weighted by those numbers (post-stratification). With one probability (the default
audit design) that is the plain share confirmed, with its exact interval. With several, each stratum
gets an exact Clopper-Pearson interval at a Bonferroni share of the level, a stratum without a reviewed
spot check counts as anything in [0, 1], and the bounds are weighted like the estimate: conservative,
never narrower than the truth.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from learner.loop import STRATUM_DIGITS, describe_guarantee
from learner.settings import LearnerSettings
from serving.escalation import FirstRouting, first_routings
from serving.kpis.common import target_status
from serving.kpis.schemas import Interval, SpotCheckKpis, SpotCheckVersion
from serving.kpis.statistics import clopper_pearson
from serving.routing import Decision, Reason
from serving.store import CorrectionRecord, Store


@dataclass
class _Stratum:
    population: int = 0  # would-be auto-accepts routed with this inclusion probability
    reviewed: int = 0  # ... of them spot checks with a usable review
    correct: int = 0  # ... the reviewer confirmed


@dataclass(frozen=True)
class _Estimate:
    reviewed: int
    correct: int
    accuracy: float | None
    interval: Interval | None
    strata: int

    def fields(self) -> dict[str, Any]:
        return {
            "reviewed": self.reviewed,
            "correct": self.correct,
            "accuracy": self.accuracy,
            "interval": self.interval,
            "strata": self.strata,
        }


def _would_be_auto_accept(routing: FirstRouting) -> bool:
    return routing.decision == Decision.AUTO_ACCEPTED or routing.reasons == (Reason.SPOT_CHECK,)


def _estimate(strata: Iterable[_Stratum], confidence: float) -> _Estimate:
    populated = [s for s in strata if s.population > 0]
    reviewed = sum(s.reviewed for s in populated)
    correct = sum(s.correct for s in populated)
    if not reviewed:
        return _Estimate(0, 0, None, None, len(populated))
    if len(populated) == 1:
        only = populated[0]
        interval = clopper_pearson(only.correct, only.reviewed, confidence)
        return _Estimate(reviewed, correct, only.correct / only.reviewed, interval, 1)
    total = sum(s.population for s in populated)
    estimated = [s for s in populated if s.reviewed]
    accuracy = sum(s.population * s.correct / s.reviewed for s in estimated) / sum(
        s.population for s in estimated
    )
    each = 1.0 - (1.0 - confidence) / len(populated)  # Bonferroni over the strata
    low = high = 0.0
    for s in populated:
        bounds = (
            clopper_pearson(s.correct, s.reviewed, each)
            if s.reviewed
            else Interval(low=0, high=1, confidence=1)
        )
        low += s.population * bounds.low / total
        high += s.population * bounds.high / total
    interval = Interval(
        low=low, high=min(high, 1.0), confidence=confidence, method="stratified clopper-pearson (bonferroni)"
    )
    return _Estimate(reviewed, correct, accuracy, interval, len(populated))


def spot_checks(
    store: Store, learner: LearnerSettings, reviews: dict[str, CorrectionRecord] | None = None
) -> SpotCheckKpis:
    confidence = 1.0 - learner.delta
    current = reviews if reviews is not None else store.current_labels()
    routings = first_routings(store)
    by_version: dict[str, dict[float | None, _Stratum]] = defaultdict(lambda: defaultdict(_Stratum))
    sampled = audits = audits_reviewed = 0
    for item_id, routing in routings.items():
        review = current.get(item_id)
        if routing.audited:
            audits += 1
            audits_reviewed += review is not None
        if not _would_be_auto_accept(routing):
            continue
        pi = None if routing.inclusion is None else round(routing.inclusion, STRATUM_DIGITS)
        stratum = by_version[routing.model_version][pi]
        stratum.population += 1
        if routing.reasons == (Reason.SPOT_CHECK,):
            sampled += 1
            if review is not None:
                stratum.reviewed += 1
                stratum.correct += review.label == routing.label
    pooled: dict[float | None, _Stratum] = defaultdict(_Stratum)
    for strata in by_version.values():
        for pi, s in strata.items():
            pooled[pi].population += s.population
            pooled[pi].reviewed += s.reviewed
            pooled[pi].correct += s.correct
    overall = _estimate(pooled.values(), confidence)
    versions = {v: _estimate(strata.values(), confidence) for v, strata in sorted(by_version.items())}
    return SpotCheckKpis(
        audits=audits,
        audits_reviewed=audits_reviewed,
        audit_backlog=audits - audits_reviewed,
        guarantee=describe_guarantee(learner.guarantee, learner.target_accuracy, learner.delta),
        sampled=sampled,
        **overall.fields(),
        target=learner.target_accuracy,
        status=target_status(overall.interval, learner.target_accuracy),
        by_version=[
            SpotCheckVersion(model_version=v, **e.fields()) for v, e in versions.items() if e.reviewed
        ],
    )
