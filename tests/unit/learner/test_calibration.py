"""Softmax, temperature scaling, ECE and reliability curves."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from numpy.typing import NDArray

from learner.calibration import (
    TEMPERATURE_BOUNDS,
    check_labels,
    expected_calibration_error,
    fit_temperature,
    reliability_curve,
    softmax,
)


def sample_from_softmax_model(
    seed: int, n: int = 4000, k: int = 5
) -> tuple[NDArray[np.float64], NDArray[np.intp]]:
    """True logits and labels drawn from softmax(true logits): these logits are calibrated by design."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=1.5, size=(n, k))
    p = softmax(logits)
    # Inverse-CDF sampling of one categorical draw per row.
    y = (rng.random((n, 1)) > np.cumsum(p, axis=1)).sum(axis=1)
    return logits, np.minimum(y, k - 1).astype(np.intp)


# ------------------------------------------------------------------------------------ softmax


def test_softmax_known_answer() -> None:
    e = np.exp([1.0, 2.0, 3.0])
    np.testing.assert_allclose(softmax([[1.0, 2.0, 3.0]]), [e / e.sum()])
    np.testing.assert_allclose(softmax([[0.0, np.log(3.0)]]), [[0.25, 0.75]])


def test_softmax_is_stable_for_huge_logits() -> None:
    out = softmax([[1000.0, 0.0], [-1000.0, -1000.0], [1e300, -1e300]])
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, [[1.0, 0.0], [0.5, 0.5], [1.0, 0.0]])


def test_temperature_divides_logits() -> None:
    z = np.random.default_rng(0).normal(size=(10, 4))
    np.testing.assert_allclose(softmax(z, temperature=2.5), softmax(z / 2.5))
    # T -> large flattens towards uniform, T -> small sharpens towards one-hot.
    assert softmax(z, 1000.0).max() < 0.26
    assert np.all(softmax(z, 0.001).max(axis=1) > 0.99)


@pytest.mark.parametrize("temperature", [0.0, -1.0, np.inf, np.nan])
def test_softmax_rejects_bad_temperature(temperature: float) -> None:
    with pytest.raises(ValueError, match="temperature"):
        softmax([[1.0, 2.0]], temperature)


def test_softmax_rejects_bad_logits() -> None:
    with pytest.raises(ValueError, match="2-D"):
        softmax([1.0, 2.0])
    with pytest.raises(ValueError, match="row 1, column 0 is nan"):
        softmax([[1.0, 2.0], [np.nan, 0.0]])


@settings(max_examples=50, deadline=None)
@given(
    z=arrays(np.float64, st.tuples(st.integers(1, 8), st.integers(1, 6)), elements=st.floats(-50, 50)),
    shift=st.floats(-1e3, 1e3),
)
def test_softmax_rows_are_distributions_and_shift_invariant(z: NDArray[np.float64], shift: float) -> None:
    p = softmax(z)
    assert np.all(p >= 0)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(softmax(z + shift), p, atol=1e-9)
    # The arg-max never moves with temperature; compared by value, since a near-tie may round either way.
    tempered = softmax(z, 3.0)
    np.testing.assert_allclose(tempered[np.arange(len(z)), p.argmax(axis=1)], tempered.max(axis=1), rtol=1e-9)


# ------------------------------------------------------------------------------------ temperature fitting


@pytest.mark.parametrize("scale", [4.0, 0.5])
def test_fit_temperature_recovers_the_scale_and_lowers_ece(scale: float) -> None:
    logits, y = sample_from_softmax_model(seed=1)
    # Scaling calibrated logits by `scale` makes the model over- (scale > 1) or under-confident; the
    # best temperature undoes it.
    distorted = logits * scale
    t = fit_temperature(distorted, y)
    assert t == pytest.approx(scale, rel=0.15)
    before = expected_calibration_error(softmax(distorted), y)
    after = expected_calibration_error(softmax(distorted, t), y)
    assert before > 0.05
    assert after < before / 3


def test_fit_temperature_is_near_one_on_calibrated_logits() -> None:
    logits, y = sample_from_softmax_model(seed=2)
    assert fit_temperature(logits, y) == pytest.approx(1.0, abs=0.12)


def test_fit_temperature_minimises_nll() -> None:
    logits, y = sample_from_softmax_model(seed=3, n=500)
    t = fit_temperature(4.0 * logits, y)

    def nll(temp: float) -> float:
        p = softmax(4.0 * logits, temp)
        return float(-np.mean(np.log(p[np.arange(len(y)), y])))

    assert nll(t) <= min(nll(t * 0.97), nll(t * 1.03))


def test_fit_temperature_stays_within_bounds() -> None:
    # Logits that always point at the wrong class: the NLL keeps falling as T grows.
    logits = np.tile([5.0, 0.0], (50, 1))
    y = np.ones(50, dtype=np.intp)
    t = fit_temperature(logits, y)
    assert TEMPERATURE_BOUNDS[0] <= t <= TEMPERATURE_BOUNDS[1]
    assert t == pytest.approx(TEMPERATURE_BOUNDS[1], rel=1e-3)


def test_fit_temperature_validates_inputs() -> None:
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        fit_temperature(np.zeros((3, 2)), [0, 1])
    with pytest.raises(ValueError, match="outside"):
        fit_temperature(np.zeros((2, 2)), [0, 2])
    with pytest.raises(ValueError, match="at least one"):
        fit_temperature(np.zeros((0, 2)), np.zeros(0, dtype=int))


# ------------------------------------------------------------------------------------ ECE and reliability


def _two_class(conf: list[float], correct: list[bool]) -> tuple[NDArray[np.float64], NDArray[np.intp]]:
    """Proba predicting class 0 with the given confidences; y = 0 where correct, else 1."""
    c = np.asarray(conf)
    return np.column_stack([c, 1 - c]), np.where(correct, 0, 1).astype(np.intp)


def test_ece_known_answers() -> None:
    # One bin, confidence 0.8, accuracy 0.5.
    assert expected_calibration_error(*_two_class([0.8] * 4, [True, True, False, False])) == pytest.approx(
        0.3
    )
    # Two bins with gaps 0.1 and 0.1, equal weight.
    proba, y = _two_class([0.9, 0.9, 0.6, 0.6], [True, True, True, False])
    assert expected_calibration_error(proba, y) == pytest.approx(0.1)
    # Perfectly calibrated per bin.
    proba, y = _two_class([0.7] * 10, [True] * 7 + [False] * 3)
    assert expected_calibration_error(proba, y) == pytest.approx(0.0, abs=1e-12)


def test_ece_uses_top_label_confidence() -> None:
    # Predicted class is 1 here: confidence 0.75, all correct -> gap 0.25.
    proba = np.tile([0.25, 0.75], (4, 1))
    assert expected_calibration_error(proba, [1, 1, 1, 1]) == pytest.approx(0.25)


def test_ece_depends_on_bins() -> None:
    proba, y = _two_class([0.55, 0.65], [False, True])
    # One bin: mean conf 0.6, accuracy 0.5 -> 0.1. Ten bins: gaps 0.55 and 0.35 -> 0.45.
    assert expected_calibration_error(proba, y, n_bins=1) == pytest.approx(0.1)
    assert expected_calibration_error(proba, y, n_bins=10) == pytest.approx(0.45)


def test_reliability_curve_bins() -> None:
    proba, y = _two_class([0.6, 0.62, 0.95, 1.0], [True, False, True, True])
    curve = reliability_curve(proba, y, n_bins=5)
    np.testing.assert_allclose(curve.bin_edges, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    # 0.6 sits on an edge and goes to the lower bin (0.4, 0.6]; 1.0 goes to the last bin.
    assert curve.count.tolist() == [0, 0, 1, 1, 2]
    np.testing.assert_allclose(curve.mean_confidence[2:], [0.6, 0.62, 0.975])
    np.testing.assert_allclose(curve.accuracy[2:], [1.0, 0.0, 1.0])
    assert np.all(np.isnan(curve.mean_confidence[:2]))
    assert np.all(np.isnan(curve.accuracy[:2]))
    json.dumps(curve.to_dict(), allow_nan=False)
    assert curve.to_dict()["accuracy"][:2] == [None, None]


@settings(max_examples=40, deadline=None)
@given(data=st.data(), n=st.integers(1, 40), k=st.integers(1, 5), n_bins=st.integers(1, 20))
def test_ece_is_a_weighted_gap_in_unit_interval(data: Any, n: int, k: int, n_bins: int) -> None:
    raw = data.draw(arrays(np.float64, (n, k), elements=st.floats(0.01, 1.0)))
    proba = raw / raw.sum(axis=1, keepdims=True)
    y = np.asarray(data.draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    curve = reliability_curve(proba, y, n_bins)
    assert curve.count.sum() == n
    ece = expected_calibration_error(proba, y, n_bins)
    assert 0.0 <= ece <= 1.0
    used = curve.count > 0
    expected = np.sum(curve.count[used] * np.abs(curve.accuracy[used] - curve.mean_confidence[used])) / n
    assert ece == pytest.approx(expected)
    # Invariant to the order of items.
    order = np.asarray(data.draw(st.permutations(range(n))))
    assert expected_calibration_error(proba[order], y[order], n_bins) == pytest.approx(ece)


def test_ece_validates_inputs() -> None:
    proba, y = _two_class([0.8, 0.7], [True, False])
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(proba, y, n_bins=0)
    with pytest.raises(ValueError, match="at least one"):
        expected_calibration_error(np.empty((0, 2)), np.empty(0, dtype=int))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        expected_calibration_error(proba, [0])
    with pytest.raises(ValueError, match="rows must sum to 1"):
        expected_calibration_error(proba * 2, y)


def test_check_labels() -> None:
    assert check_labels([0.0, 2.0], 2, 3).tolist() == [0, 2]  # whole-number floats are fine
    with pytest.raises(ValueError, match="integer"):
        check_labels([0.5, 1.0], 2, 3)
    with pytest.raises(ValueError, match="integer"):
        check_labels(["a", "b"], 2, 3)
    with pytest.raises(ValueError, match=r"outside \[0, 3\); first is -1 at position 1"):
        check_labels([0, -1], 2, 3)


@pytest.mark.parametrize(("logits", "temperature"), [([[1e308, 0.0]], 0.5), ([[3.0, 1.0]], 1e-320)])
def test_softmax_refuses_a_temperature_that_overflows_the_logits(
    logits: list[list[float]], temperature: float
) -> None:
    with pytest.raises(ValueError, match="overflow"):
        softmax(logits, temperature)
