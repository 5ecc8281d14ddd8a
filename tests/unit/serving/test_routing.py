"""The routing policy: one known-answer test per rule, stability, and the audit draw's probabilities."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hitl.settings import RoutingSettings
from learner.loop import AUDIT_PRIORITY, AuditPolicy
from serving.routing import AuditRouting, Decision, Reason, Routed, RouteInput, audit_draw, known_hint, route

LABELS = ["Audio > Headphones", "Audio > Speakers", "Home > Cookware"]
THRESHOLDS = np.array([0.8, 0.9, np.inf])
NO_SPOT = RoutingSettings(high_value_price=500.0)
TOP = "top_probability"


def one(
    proba: list[float],
    item: RouteInput | None = None,
    policy: RoutingSettings = NO_SPOT,
    score: str = "top_probability",
    **kw: object,
) -> Routed:
    out = route(np.array([proba]), LABELS, THRESHOLDS, [item or RouteInput("a")], policy, score=score, **kw)  # type: ignore[arg-type]
    return out[0]


def test_confident_item_is_auto_accepted_with_top_k() -> None:
    r = one([0.85, 0.1, 0.05])
    assert r.decision is Decision.AUTO_ACCEPTED
    assert r.reasons == [Reason.ABOVE_THRESHOLD]
    assert r.label == "Audio > Headphones"
    assert r.threshold == 0.8
    assert [c for c, _ in r.top_k] == LABELS
    assert r.priority == pytest.approx(1 - 0.75)  # margin, the default strategy
    assert (r.audit_probability, r.audited) == (None, False)  # no audit policy given


def test_below_threshold_and_never_accepted_class() -> None:
    assert one([0.79, 0.2, 0.01]).reasons == [Reason.BELOW_THRESHOLD]
    never = one([0.0, 0.0, 1.0])
    assert never.reasons == [Reason.BELOW_THRESHOLD]
    assert never.threshold is None


def test_the_pairwise_score_is_what_the_threshold_applies_to() -> None:
    # p1 = 0.7 is below the 0.8 threshold, but against the runner-up it is 0.7 / (0.7 + 0.15) = 0.82.
    proba = [0.7, 0.15, 0.15]
    assert one(proba).decision is Decision.ESCALATED
    pairwise = one(proba, score="pairwise")
    assert pairwise.decision is Decision.AUTO_ACCEPTED
    assert pairwise.confidence == pytest.approx(0.7 / 0.85)
    # The runner-up, not the tail: 0.6 / (0.6 + 0.3) = 0.667 < 0.8.
    assert one([0.6, 0.1, 0.3], score="pairwise").reasons == [Reason.BELOW_THRESHOLD]
    with pytest.raises(ValueError, match="top_probability, pairwise"):
        one(proba, score="margin")


def test_high_value_boundary_is_inclusive() -> None:
    assert one([0.9, 0.05, 0.05], RouteInput("a", price=500.0)).reasons == [Reason.HIGH_VALUE]
    assert one([0.9, 0.05, 0.05], RouteInput("a", price=499.99)).decision is Decision.AUTO_ACCEPTED
    off = RoutingSettings(high_value_price=None)
    assert one([0.9, 0.05, 0.05], RouteInput("a", price=1e9), off).decision is Decision.AUTO_ACCEPTED


def test_always_review_category_by_label_or_prefix_and_brand() -> None:
    by_prefix = RoutingSettings(always_review_categories=["Audio"])
    assert one([0.9, 0.05, 0.05], policy=by_prefix).reasons == [Reason.ALWAYS_REVIEW_CATEGORY]
    # "Aud" is not a path prefix of "Audio > ..."
    partial = RoutingSettings(always_review_categories=["Aud"])
    assert one([0.9, 0.05, 0.05], policy=partial).decision is Decision.AUTO_ACCEPTED
    brands = RoutingSettings(always_review_brands=["Sony"])
    assert one([0.9, 0.05, 0.05], RouteInput("a", brand=" sony "), brands).reasons == [
        Reason.ALWAYS_REVIEW_BRAND
    ]


def test_unknown_category_hint() -> None:
    assert one([0.9, 0.05, 0.05], RouteInput("a", category_hint="Garden > Tools")).reasons == [
        Reason.UNKNOWN_CATEGORY_HINT
    ]
    for known in ("Audio", "audio > headphones", "Audio > Headphones > Over-ear"):
        assert known_hint(known, LABELS), known
    assert not known_hint("Audio > Microphones", LABELS)


def test_out_of_distribution_by_centroid_similarity() -> None:
    far = one([0.9, 0.05, 0.05], similarity=np.array([0.1]))
    near = one([0.9, 0.05, 0.05], similarity=np.array([0.8]))
    assert far.reasons == [Reason.OUT_OF_DISTRIBUTION]
    assert near.decision is Decision.AUTO_ACCEPTED


def test_reasons_accumulate_and_an_audit_adds_its_own() -> None:
    policy = RoutingSettings(high_value_price=10.0, always_review_brands=["X"])
    always = AuditRouting(AuditPolicy(rate=1.0), band_low=0.0)
    r = one([0.5, 0.3, 0.2], RouteInput("a", price=20.0, brand="x"), policy, audit=always)
    assert r.reasons == [Reason.BELOW_THRESHOLD, Reason.HIGH_VALUE, Reason.ALWAYS_REVIEW_BRAND, Reason.AUDIT]
    # a would-be auto-accept drawn into the audit is a spot check
    spot = one([0.9, 0.05, 0.05], audit=always)
    assert (spot.reasons, spot.decision, spot.audited) == ([Reason.SPOT_CHECK], Decision.ESCALATED, True)
    assert spot.priority == AUDIT_PRIORITY  # audits are reviewed first


def test_audit_draw_is_stable_and_seeded() -> None:
    assert audit_draw(0, "x") == audit_draw(0, "x")
    assert audit_draw(0, "x") != audit_draw(1, "x")
    audit = AuditRouting(AuditPolicy(rate=0.5), band_low=0.0)
    proba = np.tile([0.95, 0.03, 0.02], (50, 1))
    items = [RouteInput(f"i{i}") for i in range(50)]
    first, again = (
        [r.decision for r in route(proba, LABELS, THRESHOLDS, items, NO_SPOT, score=TOP, audit=audit)]
        for _ in range(2)
    )
    assert first == again
    assert Decision.ESCALATED in first
    assert Decision.AUTO_ACCEPTED in first


@pytest.mark.parametrize("rate", [0.05, 0.2])
def test_audit_rate_inside_and_outside_the_band_within_tolerance(rate: float) -> None:
    """Items at or above the band edge are drawn at `rate`, the others at rate * outside_factor, and
    every routed item logs its probability (4.5 sigma binomial tolerance)."""
    n = 6000
    proba = np.zeros((2 * n, 3))
    proba[:n, 0] = 0.95  # in the band
    proba[:n, 1] = 0.05
    proba[n:, 1] = 0.6  # below the band edge (0.7): and below its class threshold too
    proba[n:, 0] = 0.4
    items = [RouteInput(f"sku-{i}") for i in range(2 * n)]
    audit = AuditRouting(AuditPolicy(rate=rate, outside_factor=0.5, seed=3), band_low=0.7)
    routed = route(proba, LABELS, THRESHOLDS, items, NO_SPOT, score=TOP, audit=audit)
    for part, expected, reason in (
        (slice(0, n), rate, Reason.SPOT_CHECK),
        (slice(n, 2 * n), rate / 2, Reason.AUDIT),
    ):
        assert [r.audit_probability for r in routed[part]] == pytest.approx([expected] * n)
        drawn = np.mean([r.audited for r in routed[part]])
        assert abs(drawn - expected) < 4.5 * math.sqrt(expected * (1 - expected) / n), (drawn, expected)
        assert all((reason in r.reasons) == r.audited for r in routed[part])
    # in the band, the audits are exactly the escalations
    assert all((r.decision is Decision.ESCALATED) == r.audited for r in routed[:n])


def test_shape_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="shape mismatch"):
        route(np.zeros((2, 3)), LABELS, THRESHOLDS, [RouteInput("a")], NO_SPOT, score=TOP)
