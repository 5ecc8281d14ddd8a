"""Evaluation metrics: known answers, agreement with scikit-learn, and the report."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from sklearn.metrics import f1_score

from learner.calibration import expected_calibration_error
from learner.evaluation import (
    EvaluationReport,
    accuracy,
    aurc,
    coverage_at_accuracy,
    curve_area,
    curve_coverage_at,
    evaluate,
    macro_f1,
    risk_coverage_curve,
    selective_curve,
)
from learner.thresholds import ClassThresholds


def predicted(conf: list[float], pred: list[int], k: int = 3) -> NDArray[np.float64]:
    """Proba rows predicting `pred` with top-label confidence `conf`."""
    c = np.asarray(conf)
    proba = np.tile(((1 - c) / (k - 1))[:, None], (1, k))
    proba[np.arange(len(c)), pred] = c
    return proba


def rule(thresholds: list[float]) -> ClassThresholds:
    return ClassThresholds(
        thresholds=np.array(thresholds, dtype=np.float64),
        target=0.9,
        delta=0.05,
        n_calibration=np.zeros(len(thresholds), dtype=np.int64),
    )


# ------------------------------------------------------------------------------------ accuracy, F1


def test_accuracy_known_answer() -> None:
    assert accuracy([0, 1, 2, 2], [0, 1, 1, 2]) == 0.75
    assert accuracy([1], [1]) == 1.0
    with pytest.raises(ValueError, match="at least one"):
        accuracy([], [])
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        accuracy([0, 1, 2], [0, 1])


def test_macro_f1_known_answer() -> None:
    y, pred = [0, 0, 1, 1, 2], [0, 1, 1, 1, 0]
    # class 0: tp 1, fp 1, fn 1 -> 1/2; class 1: tp 2, fp 1, fn 0 -> 4/5; class 2: tp 0 -> 0.
    assert macro_f1(y, pred, 3) == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_macro_f1_leaves_out_classes_absent_everywhere() -> None:
    # Class 3 exists in the label space but in neither y nor pred: it says nothing about the model.
    assert macro_f1([0, 1], [0, 1], 4) == 1.0


def test_macro_f1_checks_the_label_space() -> None:
    with pytest.raises(ValueError, match=r"outside \[0, 2\)"):
        macro_f1([0, 2], [0, 1], 2)


@settings(max_examples=50, deadline=None)
@given(
    pairs=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4)), min_size=1, max_size=40),
)
def test_macro_f1_matches_sklearn(pairs: list[tuple[int, int]]) -> None:
    y, pred = (np.array(v) for v in zip(*pairs, strict=True))
    expected = f1_score(y, pred, average="macro", zero_division=0.0)
    assert macro_f1(y, pred, 5) == pytest.approx(expected)
    assert accuracy(y, pred) == pytest.approx(np.mean(y == pred))


# ------------------------------------------------------------------------------------ risk-coverage


def test_risk_coverage_known_answer() -> None:
    proba = predicted([0.9, 0.8, 0.7, 0.6], [0, 1, 2, 0])
    y = [0, 2, 2, 1]  # correct, wrong, correct, wrong
    coverage, risk = risk_coverage_curve(proba, y)
    np.testing.assert_allclose(coverage, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(risk, [0.0, 0.5, 1 / 3, 0.5])


def test_risk_coverage_groups_tied_confidences() -> None:
    # The two 0.8 items cannot be split by a threshold: one point for both.
    proba = predicted([0.9, 0.8, 0.8, 0.5], [0, 0, 1, 2])
    coverage, risk = risk_coverage_curve(proba, [0, 0, 0, 2])
    np.testing.assert_allclose(coverage, [0.25, 0.75, 1.0])
    np.testing.assert_allclose(risk, [0.0, 1 / 3, 0.25])


def test_coverage_at_accuracy_known_answers() -> None:
    proba = predicted([0.9, 0.8, 0.7, 0.6], [0, 1, 2, 0])
    y = [0, 2, 2, 1]
    assert coverage_at_accuracy(proba, y, 1.0) == 0.25
    assert coverage_at_accuracy(proba, y, 2 / 3) == 0.75  # accuracy 1, 0.5, 2/3, 0.5
    assert coverage_at_accuracy(proba, y, 0.5) == 1.0
    # Nothing reaches the target when the most confident item is wrong.
    assert coverage_at_accuracy(proba, [1, 2, 2, 1], 0.9) == 0.0


def test_coverage_at_accuracy_tolerates_round_off() -> None:
    # 19 of 20 correct is exactly 0.95 even if 1 - 1/20 lands a hair below in floating point.
    proba = predicted([0.9] * 20, [0] * 20)
    y = [0] * 19 + [1]
    assert coverage_at_accuracy(proba, y, 0.95) == 1.0


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 30),
)
def test_risk_coverage_properties(data: Any, n: int) -> None:
    conf = data.draw(st.lists(st.sampled_from([0.4, 0.5, 0.7, 0.9, 1.0]), min_size=n, max_size=n))
    pred = data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    y = np.asarray(data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)))
    proba = predicted(conf, pred)
    coverage, risk = risk_coverage_curve(proba, y)
    assert np.all(np.diff(coverage) > 0)
    assert coverage[-1] == 1.0
    assert np.all((risk >= 0) & (risk <= 1))
    assert risk[-1] == pytest.approx(1 - accuracy(y, proba.argmax(axis=1)))
    target = data.draw(st.floats(0.0, 1.0))
    cov = coverage_at_accuracy(proba, y, target)
    # The chosen coverage is achievable, and no larger achievable one meets the target.
    assert cov == 0.0 or (1 - risk[coverage == cov][0]) >= target - 1e-12
    assert np.all(1 - risk[coverage > cov] < target)


def test_aurc_known_answer() -> None:
    # Risks 0, 1/2, 1/3, 1/2 at coverages 1/4 .. 1: the step integral is their mean.
    proba = predicted([0.9, 0.8, 0.7, 0.6], [0, 1, 2, 0])
    assert aurc(proba, [0, 2, 2, 1]) == pytest.approx((0 + 0.5 + 1 / 3 + 0.5) / 4)


def test_aurc_rewards_a_better_ranking_at_equal_accuracy() -> None:
    correct = np.array([True, True, False, False])
    good = curve_area(*selective_curve([0.9, 0.8, 0.2, 0.1], correct))
    bad = curve_area(*selective_curve([0.1, 0.2, 0.8, 0.9], correct))
    assert good < bad
    assert good == pytest.approx((0 + 0 + 1 / 3 + 0.5) / 4)


def test_selective_curve_takes_any_score_and_matches_the_probability_version() -> None:
    proba = predicted([0.9, 0.8, 0.8, 0.5], [0, 0, 1, 2])
    y = np.array([0, 0, 0, 2])
    score = proba.max(axis=1) * 7.0 - 3.0  # any order-preserving rescaling, outside [0, 1]
    for ours, theirs in zip(
        selective_curve(score, proba.argmax(axis=1) == y), risk_coverage_curve(proba, y), strict=True
    ):
        np.testing.assert_allclose(ours, theirs)
    coverage, risk = selective_curve(score, proba.argmax(axis=1) == y)
    assert curve_coverage_at(coverage, risk, 0.6) == coverage_at_accuracy(proba, y, 0.6)


@pytest.mark.parametrize(
    ("score", "correct"),
    [([], []), ([0.5, 0.4], [True]), ([0.5, float("nan")], [True, False]), ([[0.5]], [[True]])],
)
def test_selective_curve_rejects_bad_input(score: Any, correct: Any) -> None:
    with pytest.raises(ValueError, match=r"one length|at least one|finite"):
        selective_curve(score, correct)


# ------------------------------------------------------------------------------------ report


def test_evaluate_known_answer() -> None:
    proba = predicted([0.95, 0.9, 0.6, 0.99, 0.7], [0, 0, 1, 1, 2])
    y = np.array([0, 1, 1, 1, 0])  # correct, wrong, correct, correct, wrong
    # Class 0 accepts >= 0.92, class 1 accepts >= 0.5, class 2 never.
    report = evaluate(proba, y, rule([0.92, 0.5, np.inf]), target=0.75)
    assert report.n_items == 5
    assert report.accuracy == pytest.approx(0.6)
    assert report.macro_f1 == pytest.approx(macro_f1(y, proba.argmax(axis=1), 3))
    assert report.ece == pytest.approx(expected_calibration_error(proba, y))
    assert report.n_auto_accepted == 3  # items 0, 2, 3
    assert report.auto_accept_coverage == pytest.approx(0.6)
    assert report.auto_accept_accuracy == 1.0
    # By confidence: 0.99 ok, 0.95 ok, 0.9 wrong, 0.7 wrong, 0.6 ok -> running accuracy 1, 1, 2/3, 1/2,
    # 3/5, so the largest coverage with accuracy >= 0.75 is 2/5.
    assert report.coverage_at_target == pytest.approx(0.4)
    assert report.target == 0.75


def test_evaluate_without_thresholds_accepts_nothing() -> None:
    proba = predicted([0.95, 0.9], [0, 1])
    report = evaluate(proba, [0, 1], None, target=0.9)
    assert report.n_auto_accepted == 0
    assert report.auto_accept_coverage == 0.0
    assert math.isnan(report.auto_accept_accuracy)
    data = report.to_dict()
    assert data["auto_accept_accuracy"] is None
    json.dumps(data, allow_nan=False)


def test_report_to_dict_is_plain_json() -> None:
    proba = predicted([0.95, 0.9, 0.6], [0, 1, 2])
    report = evaluate(proba, [0, 1, 1], rule([0.5, 0.5, 0.5]), target=0.9)
    data = report.to_dict()
    assert set(data) == {f for f in EvaluationReport.__dataclass_fields__}
    assert all(type(v) in (int, float) for v in data.values())
    assert json.loads(json.dumps(data, allow_nan=False)) == data
    assert isinstance(data["n_items"], int)


def test_evaluate_report_is_frozen() -> None:
    report = evaluate(predicted([0.9], [0]), [0], None, target=0.9)
    with pytest.raises(AttributeError):
        report.accuracy = 0.0  # type: ignore[misc]


def test_evaluate_rejects_mismatched_thresholds() -> None:
    with pytest.raises(ValueError, match="thresholds cover 2 classes, proba has 3"):
        evaluate(predicted([0.9], [0]), [0], rule([0.5, 0.5]), target=0.9)


def test_evaluate_rejects_empty_input() -> None:
    with pytest.raises(ValueError, match="at least one"):
        evaluate(np.empty((0, 3)), np.empty(0, dtype=int), None, target=0.9)
