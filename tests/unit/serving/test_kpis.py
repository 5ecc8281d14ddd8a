"""The dashboard's KPIs (`serving.kpis`): known answers on a hand-built store, the seeded history, and
the statistics helpers."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import update

import serving.sessions  # noqa: F401  (registers the dashboard's session table)
from hitl.settings import DashboardSettings, Settings
from labeling.webhooks import CorrectionEvent, DeletionEvent
from serving import kpis
from serving.retrain import RESCORE_ACTOR
from serving.store import NewPrediction, Prediction, Store
from tests.unit.serving.dashboard_seed import BIASED_BRAND, MODEL, seed

NOW = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    db = Store(f"sqlite:///{tmp_path / 'kpis.db'}")
    db.create_all()
    yield db
    db.close()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        state_dir=tmp_path,
        dashboard=DashboardSettings(
            human_cost_per_review=2.0, compute_cost_per_item=0.01, window_s=3600, min_segment_size=5
        ),
    )


def _row(item_id: str, label: str, decision: str, reasons: list[str], **extra: object) -> NewPrediction:
    values: dict[str, object] = {
        "item_id": item_id,
        "title": f"title {item_id}",
        "description": "",
        "brand": None,
        "price": None,
        "category_hint": None,
        "label": label,
        "confidence": 0.9,
        "threshold": 0.8,
        "top_k": [(label, 0.9)],
        "decision": decision,
        "reasons": reasons,
        "priority": 0.5,
    }
    values.update(extra)
    return NewPrediction(**values)  # type: ignore[arg-type]


def _predict(store: Store, version: str, rows: list[NewPrediction], at: datetime, **kwargs: str) -> None:
    store.register_model_version(version, source="t", encoder_id="t", n_labels=2, details={})
    ids = store.record_predictions(version, rows, **kwargs)  # type: ignore[arg-type]
    with store.session() as session:
        session.execute(
            update(Prediction).where(Prediction.id.in_(ids)).values(created_at=at.replace(tzinfo=None))
        )


def _review(
    store: Store, annotation: int, item_id: str, label: str, predicted: str, at: datetime, lead: float
) -> None:
    store.record_correction(
        CorrectionEvent(
            action="created",
            annotation_id=annotation,
            task_id=annotation,
            project_id=1,
            item_id=item_id,
            label=label,
            raw_label=None,
            reviewer_id=1,
            created_at=at,
            updated_at=at,
            lead_time=lead,
            was_cancelled=False,
            predicted_label=predicted,
            model_version="m:v1",
            model_score=0.9,
            source="webhook",
        )
    )


def _known_store(store: Store) -> None:
    """v1 at 09:10 predicts a..d; v2 at 11:30 predicts e, f; a re-score of c by v2 must not count."""
    t1, t2 = NOW - timedelta(hours=2, minutes=50), NOW - timedelta(minutes=30)
    _predict(
        store,
        "m:v1",
        [
            _row("a", "A", "auto_accepted", ["above_threshold"], brand="X", price=5.0),
            _row("b", "A", "escalated", ["below_threshold", "high_value"], brand="X", price=2000.0),
            _row("c", "B", "escalated", ["spot_check"], brand="Y", price=20.0),
            _row("d", "B", "escalated", ["spot_check"], brand="Y", price=None),
        ],
        t1,
    )
    _predict(
        store,
        "m:v2",
        [
            _row("e", "B", "escalated", ["below_threshold"]),
            _row("f", "B", "auto_accepted", ["above_threshold"]),
        ],
        t2,
    )
    _predict(
        store, "m:v2", [_row("c", "B", "auto_accepted", ["above_threshold"])], t2, requested_by=RESCORE_ACTOR
    )
    # b corrected (A -> B), c confirmed, d corrected; e stays open. Lead times 10, 20, 60 s.
    _review(store, 1, "b", "B", "A", NOW - timedelta(days=1, hours=1), 10.0)
    _review(store, 2, "c", "B", "B", NOW - timedelta(minutes=20), 20.0)
    _review(store, 3, "d", "A", "B", NOW - timedelta(minutes=10), 60.0)


def test_an_empty_store_explains_itself(store: Store, settings: Settings) -> None:
    board = kpis.dashboard(store, settings, NOW)
    assert {e.key for e in board.empty} == {"no_model", "no_corrections"}
    assert board.escalation.rate is None
    assert board.escalation.over_time == []
    assert board.spot_checks.status == "no_data"
    assert board.spot_checks.interval is None
    assert board.queue.open == 0
    assert board.queue.median_age_s is None
    assert board.reviews.median_lead_time_s is None
    assert board.cost.cost_per_item is None
    assert board.segments.segments == []
    assert board.timeline == []


def test_a_loaded_model_without_predictions_is_its_own_empty_state(store: Store, settings: Settings) -> None:
    store.register_model_version("m:v1", source="t", encoder_id="t", n_labels=2, details={})
    board = kpis.dashboard(store, settings, NOW)
    assert [e.key for e in board.empty] == ["no_predictions", "no_corrections"]
    assert [(e.kind, e.model_version) for e in board.timeline] == [("served", "m:v1")]


def test_escalation_known_answer(store: Store, settings: Settings) -> None:
    _known_store(store)
    esc = kpis.escalation(store, settings.dashboard)
    assert (esc.predicted, esc.escalated) == (6, 4)  # the re-score is not a first-pass prediction
    assert esc.rate == pytest.approx(4 / 6)
    assert esc.by_reason == {"below_threshold": 2, "high_value": 1, "spot_check": 2}
    assert [(p.window_start, p.predicted, p.escalated) for p in esc.over_time] == [
        (datetime(2026, 6, 10, 9, tzinfo=UTC), 4, 3),
        (datetime(2026, 6, 10, 11, tzinfo=UTC), 2, 1),
    ]
    assert [(v.model_version, v.predicted, v.escalated, v.rate) for v in esc.by_version] == [
        ("m:v1", 4, 3, 0.75),
        ("m:v2", 2, 1, 0.5),
    ]


def test_spot_checks_queue_reviews_throughput_cost_known_answer(store: Store, settings: Settings) -> None:
    _known_store(store)
    board = kpis.dashboard(store, settings, NOW)
    spot = board.spot_checks
    # c and d were spot checks; c's latest first-pass prediction is still the spot check (the re-score is
    # ignored); c confirmed, d corrected.
    assert (spot.sampled, spot.reviewed, spot.correct, spot.accuracy) == (2, 2, 1, 0.5)
    assert spot.interval is not None
    assert spot.interval.confidence == pytest.approx(0.95)
    assert spot.status == "inconclusive"  # 1 of 2: the interval [0.013, 0.987] contains the target
    assert spot.interval.high == pytest.approx(0.98742088, abs=1e-6)
    assert board.queue.open == 1
    assert board.queue.oldest_age_s == pytest.approx(1800.0, abs=5)
    assert board.queue.by_reason == {"below_threshold": 1}
    rv = board.reviews
    assert (rv.reviews, rv.approved, rv.corrected) == (3, 1, 2)
    assert [(d.day.isoformat(), d.reviews, d.corrected) for d in rv.per_day] == [
        ("2026-06-09", 1, 1),
        ("2026-06-10", 2, 1),
    ]
    assert rv.median_lead_time_s == 20.0
    assert rv.p90_lead_time_s == pytest.approx(52.0)
    tp = board.throughput  # the last hour: e and f predicted, c and d reviewed
    assert (tp.predictions, tp.reviews, tp.predictions_per_hour) == (2, 2, 2.0)
    cost = board.cost  # 3 reviews x 2.0 + 7 predictions (incl. the re-score) x 0.01, over 6 items
    assert (cost.reviews, cost.predictions, cost.items) == (3, 7, 6)
    assert cost.cost_per_item == pytest.approx((6.0 + 0.07) / 6)
    assert cost.projected_cost_per_item == pytest.approx(4 / 6 * 2.0 + 0.01)


def test_status_against_the_target(store: Store, settings: Settings) -> None:
    assert kpis.target_status(kpis.Interval(low=0.96, high=0.99, confidence=0.95), 0.95) == "meets_target"
    assert kpis.target_status(kpis.Interval(low=0.80, high=0.94, confidence=0.95), 0.95) == "below_target"
    assert kpis.target_status(kpis.Interval(low=0.90, high=0.99, confidence=0.95), 0.95) == "inconclusive"
    assert kpis.target_status(None, 0.95) == "no_data"


def test_segments_and_timeline_on_the_seeded_history(store: Store, tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    seeded = seed(store, now=NOW)
    board = kpis.dashboard(store, settings, NOW)
    assert board.empty == []
    assert board.reviews.reviews == seeded.reviews
    flagged = [(s.dimension, s.segment, s.direction) for s in board.segments.segments if s.flagged]
    assert flagged == [("brand", BIASED_BRAND, "higher")]
    biased = next(s for s in board.segments.segments if s.segment == BIASED_BRAND)
    assert biased.p_adjusted is not None
    assert biased.p_adjusted < settings.dashboard.significance
    assert biased.p_value is not None
    assert biased.p_adjusted >= biased.p_value
    kinds = [(e.kind, e.model_version) for e in board.timeline]
    assert (kinds[0], kinds[-2]) == (("served", f"{MODEL}:v1"), ("rolled_back", f"{MODEL}:v2"))
    assert ("rejected", f"{MODEL}:v4") in kinds
    assert ("failed", "(not registered)") in kinds
    rejected = next(e for e in board.timeline if e.kind == "rejected")
    assert rejected.reason is not None
    assert "accuracy" in rejected.reason
    assert rejected.mlflow_url == f"http://127.0.0.1:5000/#/runs/{'b' * 32}"
    served = next(e for e in board.timeline if e.kind == "served")
    assert served.mlflow_url == f"http://127.0.0.1:5000/#/models/{MODEL}/versions/1"
    # Every segment dimension covers every item exactly once (brands: all four are within top_brands).
    for dimension in ("category", "price_band", "brand"):
        assert sum(s.items for s in board.segments.segments if s.dimension == dimension) == seeded.items


def test_clopper_pearson_known_answers() -> None:
    none_right = kpis.clopper_pearson(0, 10, 0.95)
    assert none_right.low == 0.0
    assert none_right.high == pytest.approx(1 - 0.025 ** (1 / 10))
    all_right = kpis.clopper_pearson(10, 10, 0.95)
    assert all_right.high == 1.0
    assert all_right.low == pytest.approx(0.025 ** (1 / 10))
    half = kpis.clopper_pearson(50, 100, 0.95)
    assert [half.low, half.high] == pytest.approx([0.3983, 0.6017], abs=1e-4)
    with pytest.raises(ValueError, match="3/2"):
        kpis.clopper_pearson(3, 2, 0.95)


def test_holm_known_answer() -> None:
    assert kpis.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert kpis.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert kpis.holm([]) == []


@pytest.mark.parametrize(
    ("price", "band"),
    [(None, "(no price)"), (math.nan, "(no price)"), (0.0, "<10"), (9.99, "<10"), (10.0, "10-50"),
     (999.0, "200-1000"), (1000.0, ">=1000")],
)  # fmt: skip
def test_price_bands(price: float | None, band: str) -> None:
    assert kpis.price_band(price, [10.0, 50.0, 200.0, 1000.0]) == band


@pytest.mark.parametrize("bands", [[10.0, 5.0], [10.0, 10.0], [0.0, 10.0]])
def test_price_bands_must_be_positive_and_ascending(bands: list[float]) -> None:
    with pytest.raises(ValidationError, match="strictly ascending"):
        DashboardSettings(price_bands=bands)


def test_a_spot_check_counts_for_the_prediction_that_drew_it(store: Store, settings: Settings) -> None:
    t0 = NOW - timedelta(hours=3)
    _predict(store, "m:v1", [_row("a", "X", "escalated", ["spot_check"], audit_probability=0.1)], t0)
    _review(store, 1, "a", "Z", "X", t0 + timedelta(minutes=5), 5.0)  # v1 was wrong
    # v2 trained on that label, predicts Z and draws the item again: it must not count, for v2 or for v1.
    _predict(store, "m:v2", [_row("a", "Z", "escalated", ["spot_check"], audit_probability=0.1)], NOW)
    spot = kpis.dashboard(store, settings, NOW).spot_checks
    assert (spot.sampled, spot.reviewed, spot.correct, spot.accuracy) == (1, 1, 0, 0.0)
    assert [(v.model_version, v.reviewed, v.correct) for v in spot.by_version] == [("m:v1", 1, 0)]
    assert (spot.audits, spot.audit_backlog) == (1, 0)


def test_spot_check_accuracy_weighs_strata_drawn_with_unequal_probabilities(
    store: Store, settings: Settings
) -> None:
    # In the band (probability 0.5): 4 would-be auto-accepts, 2 drawn, both right. Outside it (0.1):
    # 6, 1 drawn and wrong. Post-stratified: (4 * 1 + 6 * 0) / 10 = 0.4, not the audits' 2 / 3.
    rows = [
        _row(f"in{i}", "A", "auto_accepted", ["above_threshold"], audit_probability=0.5) for i in range(2)
    ]
    rows += [_row(f"in-s{i}", "A", "escalated", ["spot_check"], audit_probability=0.5) for i in range(2)]
    rows += [
        _row(f"out{i}", "A", "auto_accepted", ["above_threshold"], audit_probability=0.1) for i in range(5)
    ]
    rows += [_row("out-s", "A", "escalated", ["spot_check"], audit_probability=0.1)]
    _predict(store, "m:v1", rows, NOW - timedelta(hours=1))
    for n, item in enumerate(["in-s0", "in-s1"]):
        _review(store, n + 1, item, "A", "A", NOW, 1.0)
    _review(store, 3, "out-s", "B", "A", NOW, 1.0)
    spot = kpis.spot_checks(store, settings.learner)
    assert (spot.sampled, spot.reviewed, spot.correct, spot.strata) == (3, 3, 2, 2)
    assert spot.accuracy == pytest.approx(0.4)
    assert spot.interval is not None
    # Each stratum at 1 - 0.05 / 2, weighted by its share: 0.4 * [0.158, 1] + 0.6 * [0, 0.987].
    inside = kpis.clopper_pearson(2, 2, 0.975)
    outside = kpis.clopper_pearson(0, 1, 0.975)
    assert spot.interval.low == pytest.approx(0.4 * inside.low + 0.6 * outside.low)
    assert spot.interval.high == pytest.approx(0.4 * inside.high + 0.6 * outside.high)
    assert spot.interval.confidence == pytest.approx(0.95)


def test_the_queue_holds_items_whose_review_was_withdrawn_and_ages_from_the_escalation(
    store: Store, settings: Settings
) -> None:
    t0 = NOW - timedelta(days=3)
    _predict(store, "m:v1", [_row("a", "A", "escalated", ["below_threshold"])], t0)
    _predict(store, "m:v1", [_row("b", "A", "escalated", ["below_threshold"])], t0)
    _review(store, 1, "b", "B", "A", t0 + timedelta(hours=1), 1.0)
    store.record_deletion(DeletionEvent((1,), 1, "webhook"))  # b is back in Label Studio's queue
    # A promotion re-scores both: still escalated, and no younger for it.
    _predict(
        store,
        "m:v2",
        [_row("a", "A", "escalated", ["below_threshold"]), _row("b", "A", "escalated", ["below_threshold"])],
        NOW - timedelta(hours=1),
        requested_by=RESCORE_ACTOR,
    )
    queue = kpis.dashboard(store, settings, NOW).queue
    assert queue.open == 2
    assert queue.oldest_age_s == pytest.approx(3 * 86400.0)
    assert queue.by_age == {"< 1 h": 0, "1-24 h": 0, "1-7 d": 2, ">= 7 d": 0}
    _review(store, 2, "a", "A", "A", NOW, 1.0)
    assert [o.prediction.item_id for o in store.open_escalations()] == ["b"]
