"""The retraining loop without services: splits, label collection, gate, coalescing triggers, every-N."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from learner.data import Product
from learner.evaluation import EvaluationReport
from serving.retrain import (
    LabeledText,
    RetrainWorker,
    add_seed_labels,
    collect_labels,
    count_new_corrections,
    escalation_windows,
    gate,
    in_holdout,
    split_labels,
)
from serving.store import Store
from tests.unit.serving.retrain_support import BowEmbedder, correction, predicted, retrain_settings


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    db = Store(f"sqlite:///{tmp_path / 'hitl.db'}")
    db.create_all()
    yield db
    db.close()


def report(accuracy: float, coverage: float) -> EvaluationReport:
    return EvaluationReport(
        accuracy=accuracy,
        macro_f1=accuracy,
        ece=0.05,
        target=0.95,
        coverage_at_target=coverage,
        auto_accept_coverage=coverage,
        auto_accept_accuracy=0.96,
        n_items=100,
        n_auto_accepted=int(coverage * 100),
    )


def test_holdout_is_fixed_and_close_to_the_fraction() -> None:
    ids = [f"item-{i}" for i in range(4000)]
    first = [i for i in ids if in_holdout(i, 0.2)]
    assert first == [i for i in ids if in_holdout(i, 0.2)]
    assert 0.17 < len(first) / len(ids) < 0.23
    # A larger fraction only adds items: what was held out stays held out.
    assert set(first) <= {i for i in ids if in_holdout(i, 0.3)}


def test_split_never_trains_on_the_holdout() -> None:
    rows = [LabeledText(f"i{i}", f"text {i}", "A" if i % 2 else "B", "seed") for i in range(500)]
    splits = split_labels(rows, holdout_fraction=0.25, calibration_fraction=0.3)
    held = {r.item_id for r in splits.holdout}
    assert held == {r.item_id for r in rows if in_holdout(r.item_id, 0.25)}
    assert not held & {r.item_id for r in splits.train + splits.calibration}
    assert len(splits.train) + len(splits.calibration) + len(splits.holdout) == 500
    assert splits.calibration
    assert splits.train


@pytest.mark.parametrize(
    ("challenger", "champion", "promote"),
    [
        (report(0.90, 0.60), None, True),
        (report(0.92, 0.70), report(0.90, 0.60), True),  # better on both
        (report(0.895, 0.60), report(0.90, 0.60), True),  # accuracy within the 0.01 tolerance
        (report(0.85, 0.70), report(0.90, 0.60), False),  # accuracy beyond the tolerance
        (report(0.95, 0.55), report(0.90, 0.60), False),  # coverage worse
    ],
)
def test_gate(challenger: EvaluationReport, champion: EvaluationReport | None, promote: bool) -> None:
    decision = gate(challenger, champion, accuracy_tolerance=0.01)
    assert decision.promote is promote
    assert decision.reason


def test_gate_reason_names_what_got_worse() -> None:
    decision = gate(report(0.80, 0.50), report(0.90, 0.60), accuracy_tolerance=0.01)
    assert "coverage" in decision.reason
    assert "accuracy" in decision.reason


def test_collect_labels_latest_correction_wins_and_overrides_the_seed(store: Store) -> None:
    seed = [
        Product(id="s1", title="steel frying pan", category=["Home", "Cookware"]),
        Product(id="s2", title="trail running shoe", category=["Sports", "Running"]),
    ]
    assert add_seed_labels(store, seed, level=2) == 2
    assert add_seed_labels(store, seed, level=2) == 0  # idempotent
    predicted(store, "v1", "s2", "trail running shoe", escalated=True, reasons=["below_threshold"])
    predicted(store, "v1", "p1", "road bike helmet", escalated=True, reasons=["below_threshold"])
    store.record_correction(correction(1, "s2", "Sports > Cycling", minute=1))
    store.record_correction(correction(2, "p1", "Sports > Running", minute=1))
    store.record_correction(correction(2, "p1", "Sports > Cycling", action="updated", minute=2))
    store.record_correction(correction(3, "ghost", "Sports > Cycling", minute=3))  # never predicted: no text
    labels, watermark = collect_labels(store)
    by_id = {r.item_id: r for r in labels}
    assert set(by_id) == {"s1", "s2", "p1"}
    assert by_id["s1"].label == "Home > Cookware"
    assert by_id["s1"].source == "seed"
    assert by_id["s2"].label == "Sports > Cycling"
    assert by_id["s2"].source == "correction"
    assert by_id["p1"].label == "Sports > Cycling"
    assert by_id["p1"].text == "road bike helmet"
    assert watermark == 4
    assert count_new_corrections(store, 0) == 4
    assert count_new_corrections(store, watermark) == 0


def test_triggers_coalesce_into_one_run(tmp_path: Path, store: Store) -> None:
    worker = RetrainWorker(retrain_settings(tmp_path), store, embedder=BowEmbedder(), auto=False)
    first = worker.trigger("api")
    second = worker.trigger("label-studio")
    third = worker.trigger("api")
    assert first.status == "queued"
    assert (second.run_id, second.status) == (first.run_id, "coalesced")
    assert third.run_id == first.run_id
    record = worker.get(first.run_id)
    assert record is not None
    assert record.reasons == ["api", "label-studio", "api"]
    assert record.status == "queued"


def test_every_n_corrections_triggers_once(tmp_path: Path, store: Store) -> None:
    worker = RetrainWorker(
        retrain_settings(tmp_path, retrain_every_n_corrections=3), store, embedder=BowEmbedder(), auto=True
    )
    for i in range(2):
        predicted(store, "v1", f"p{i}", f"thing {i}", escalated=True, reasons=["below_threshold"])
        store.record_correction(correction(i + 1, f"p{i}", "A > B", minute=i))
    worker._maybe_auto_trigger()
    assert worker.runs() == []
    store.record_correction(correction(3, "p0", "A > C", action="updated", minute=5))
    worker._maybe_auto_trigger()
    worker._maybe_auto_trigger()  # the queued run absorbs further checks
    runs = worker.runs()
    assert len(runs) == 1
    assert runs[0].reasons == ["corrections:3"]


def test_escalation_windows_by_version_and_reason(store: Store) -> None:
    predicted(store, "v1", "a", "a", escalated=True, reasons=["below_threshold"])
    predicted(store, "v1", "b", "b", escalated=True, reasons=["below_threshold", "high_value"])
    predicted(store, "v1", "c", "c", escalated=False, reasons=["above_threshold"])
    predicted(store, "v1", "d", "d", escalated=False, reasons=["above_threshold"])
    predicted(store, "v2", "e", "e", escalated=False, reasons=["above_threshold"])
    windows = {w.model_version: w for w in escalation_windows(store, window_s=86400)}
    assert (windows["v1"].predicted, windows["v1"].escalated) == (4, 2)
    assert windows["v1"].rate == 0.5
    assert windows["v1"].by_reason == {"below_threshold": 2, "high_value": 1}
    assert windows["v1"].metrics()["escalation_rate_high_value"] == 0.25
    assert windows["v2"].rate == 0.0
