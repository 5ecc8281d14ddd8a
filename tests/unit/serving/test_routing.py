"""The routing policy: one known-answer test per rule, stability, and the spot-check rate."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hitl.settings import RoutingSettings
from serving.routing import Decision, Reason, RouteInput, known_hint, route, spot_check_draw

LABELS = ["Audio > Headphones", "Audio > Speakers", "Home > Cookware"]
THRESHOLDS = np.array([0.8, 0.9, np.inf])
NO_SPOT = RoutingSettings(spot_check_rate=0.0, high_value_price=500.0)


def one(proba: list[float], item: RouteInput | None = None, policy: RoutingSettings = NO_SPOT, **kw: object):
    out = route(np.array([proba]), LABELS, THRESHOLDS, [item or RouteInput("a")], policy, **kw)  # type: ignore[arg-type]
    return out[0]


def test_confident_item_is_auto_accepted_with_top_k() -> None:
    r = one([0.85, 0.1, 0.05])
    assert r.decision is Decision.AUTO_ACCEPTED
    assert r.reasons == [Reason.ABOVE_THRESHOLD]
    assert r.label == "Audio > Headphones"
    assert r.threshold == 0.8
    assert [c for c, _ in r.top_k] == LABELS
    assert r.priority == pytest.approx(1 - 0.75)


def test_below_threshold_and_never_accepted_class() -> None:
    assert one([0.79, 0.2, 0.01]).reasons == [Reason.BELOW_THRESHOLD]
    never = one([0.0, 0.0, 1.0])
    assert never.reasons == [Reason.BELOW_THRESHOLD]
    assert never.threshold is None


def test_high_value_boundary_is_inclusive() -> None:
    assert one([0.9, 0.05, 0.05], RouteInput("a", price=500.0)).reasons == [Reason.HIGH_VALUE]
    assert one([0.9, 0.05, 0.05], RouteInput("a", price=499.99)).decision is Decision.AUTO_ACCEPTED
    off = RoutingSettings(spot_check_rate=0.0, high_value_price=None)
    assert one([0.9, 0.05, 0.05], RouteInput("a", price=1e9), off).decision is Decision.AUTO_ACCEPTED


def test_always_review_category_by_label_or_prefix_and_brand() -> None:
    by_prefix = RoutingSettings(spot_check_rate=0.0, always_review_categories=["Audio"])
    assert one([0.9, 0.05, 0.05], policy=by_prefix).reasons == [Reason.ALWAYS_REVIEW_CATEGORY]
    # "Aud" is not a path prefix of "Audio > ..."
    partial = RoutingSettings(spot_check_rate=0.0, always_review_categories=["Aud"])
    assert one([0.9, 0.05, 0.05], policy=partial).decision is Decision.AUTO_ACCEPTED
    brands = RoutingSettings(spot_check_rate=0.0, always_review_brands=["Sony"])
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


def test_reasons_accumulate() -> None:
    policy = RoutingSettings(spot_check_rate=1.0, high_value_price=10.0, always_review_brands=["X"])
    r = one([0.5, 0.3, 0.2], RouteInput("a", price=20.0, brand="x"), policy)
    # spot checks only sample would-be auto-accepts
    assert r.reasons == [Reason.BELOW_THRESHOLD, Reason.HIGH_VALUE, Reason.ALWAYS_REVIEW_BRAND]


def test_spot_check_is_stable_and_seeded() -> None:
    assert spot_check_draw(0, "A", "x") == spot_check_draw(0, "A", "x")
    assert spot_check_draw(0, "A", "x") != spot_check_draw(1, "A", "x")
    policy = RoutingSettings(spot_check_rate=0.5)
    first = [
        r.decision
        for r in route(
            np.tile([0.95, 0.03, 0.02], (50, 1)),
            LABELS,
            THRESHOLDS,
            [RouteInput(f"i{i}") for i in range(50)],
            policy,
        )
    ]
    again = [
        r.decision
        for r in route(
            np.tile([0.95, 0.03, 0.02], (50, 1)),
            LABELS,
            THRESHOLDS,
            [RouteInput(f"i{i}") for i in range(50)],
            policy,
        )
    ]
    assert first == again
    assert Decision.ESCALATED in first
    assert Decision.AUTO_ACCEPTED in first


@pytest.mark.parametrize("rate", [0.05, 0.2])
def test_spot_check_rate_per_class_within_tolerance(rate: float) -> None:
    """Each class's would-be auto-accepts are sampled at `rate` (4.5 sigma binomial tolerance)."""
    n = 6000
    proba = np.zeros((2 * n, 3))
    proba[:n, 0] = 0.95
    proba[:n, 1] = 0.05
    proba[n:, 1] = 0.95
    proba[n:, 0] = 0.05
    items = [RouteInput(f"sku-{i}") for i in range(2 * n)]
    routed = route(proba, LABELS, THRESHOLDS, items, RoutingSettings(spot_check_rate=rate, seed=3))
    tolerance = 4.5 * math.sqrt(rate * (1 - rate) / n)
    for cls in (slice(0, n), slice(n, 2 * n)):
        sampled = np.mean([Reason.SPOT_CHECK in r.reasons for r in routed[cls]])
        assert abs(sampled - rate) < tolerance, (sampled, rate)
    # spot checks escalate; everything else in this batch is auto-accepted
    assert all((r.decision is Decision.ESCALATED) == (Reason.SPOT_CHECK in r.reasons) for r in routed)


def test_shape_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="shape mismatch"):
        route(np.zeros((2, 3)), LABELS, THRESHOLDS, [RouteInput("a")], NO_SPOT)
