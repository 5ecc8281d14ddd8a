"""Per-class thresholds: known answers for the fixed-sequence walk and the statistical guarantee."""

from __future__ import annotations

import json

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy.stats import binom

from learner.thresholds import (
    ClassThresholds,
    acceptance_confidence,
    default_candidates,
    fit_class_thresholds,
    fit_pooled_thresholds,
    fit_thresholds,
    min_accepted_to_pass,
)


def calibration_set(
    groups: list[tuple[float, int, int]], k: int = 2, cls: int = 0
) -> tuple[NDArray[np.float64], NDArray[np.intp]]:
    """Items predicted as `cls`: for each (confidence, n_items, n_wrong), that many rows."""
    rows, labels = [], []
    for conf, n, n_wrong in groups:
        row = np.full(k, (1.0 - conf) / (k - 1))
        row[cls] = conf
        rows += [row] * n
        labels += [(cls + 1) % k] * n_wrong + [cls] * (n - n_wrong)
    return np.array(rows), np.array(labels, dtype=np.intp)


# ------------------------------------------------------------------------------------ known answers


def test_min_accepted_to_pass() -> None:
    assert min_accepted_to_pass(0.95, 0.05) == 59  # 0.95**58 = 0.051 > 0.05 >= 0.95**59 = 0.048
    assert min_accepted_to_pass(0.9, 0.1) == 22
    for target, delta in [(0.99, 0.01), (0.8, 0.2), (0.5, 0.5), (0.95, 0.0025)]:
        n = min_accepted_to_pass(target, delta)
        assert target**n <= delta < target ** (n - 1) or n == 1


def test_fixed_sequence_known_answer() -> None:
    # target 0.9, delta 0.1, so H_t: error > 0.1 is rejected when P(Binom(n, 0.1) <= e) <= 0.1.
    proba, y = calibration_set([(0.95, 30, 0), (0.85, 30, 1), (0.75, 30, 15)])
    # Hand-computed p-values: t=0.9: 0.9**30 = 0.042; t=0.8: 0.9**60 + 60*0.1*0.9**59 = 0.0138;
    # t=0.7: 16 errors in 90 where 9 are expected -> far above 0.1.
    assert 0.9**30 <= 0.1
    assert 0.9**60 + 60 * 0.1 * 0.9**59 <= 0.1
    assert binom.cdf(16, 90, 0.1) > 0.1
    th = fit_class_thresholds(proba, y, target=0.9, delta=0.1, candidates=[0.9, 0.8, 0.7, 0.6])
    assert th.thresholds[0] == 0.8
    info = th.extra["per_class"][0]
    assert (info["n_accepted"], info["reason"]) == (60, "passed")
    assert info["accepted_accuracy"] == pytest.approx(59 / 60)
    assert 0.0 < info["error_upper_bound"] <= 0.1
    # Nothing is predicted as class 1.
    assert th.thresholds[1] == np.inf
    assert th.n_calibration.tolist() == [90, 0]


def test_walk_stops_at_first_non_rejection() -> None:
    # The middle step fails (5 errors in 40) though the lenient one would pass on its own (5 in 240):
    # fixed-sequence testing must not jump over a failure.
    proba, y = calibration_set([(0.95, 30, 0), (0.85, 10, 5), (0.75, 200, 0)])
    th = fit_class_thresholds(proba, y, target=0.9, delta=0.1, candidates=[0.9, 0.8, 0.7])
    assert th.thresholds[0] == 0.9
    alone = fit_class_thresholds(proba, y, target=0.9, delta=0.1, candidates=[0.7])
    assert alone.thresholds[0] == 0.7


def test_untestable_strict_candidates_are_skipped() -> None:
    # 3 items above 0.99 can never pass (22 are needed); they must not end the walk.
    proba, y = calibration_set([(0.995, 3, 0), (0.95, 40, 0), (0.85, 40, 30)])
    th = fit_class_thresholds(proba, y, target=0.9, delta=0.1, candidates=[0.99, 0.9, 0.8])
    assert th.thresholds[0] == 0.9


def test_strictest_testable_failure_gives_inf() -> None:
    proba, y = calibration_set([(0.95, 100, 30)])
    th = fit_class_thresholds(proba, y, target=0.9, delta=0.1, candidates=[0.9, 0.5])
    assert th.thresholds[0] == np.inf
    assert "not rejected" in th.extra["per_class"][0]["reason"]


def test_grid_that_never_accepts_enough_gives_inf() -> None:
    proba, y = calibration_set([(0.995, 10, 0), (0.9, 90, 0)])
    th = fit_class_thresholds(proba, y, target=0.9, delta=0.1, candidates=[0.99])
    assert th.thresholds[0] == np.inf
    assert "no candidate accepts the 22 items" in th.extra["per_class"][0]["reason"]


def test_class_with_too_little_data_gets_inf() -> None:
    rng = np.random.default_rng(0)
    big, y_big = calibration_set([(0.99, 200, 0)], k=3, cls=0)
    small, y_small = calibration_set([(0.99, 10, 0)], k=3, cls=1)  # < min_samples
    middle, y_middle = calibration_set([(0.99, 40, 0)], k=3, cls=2)  # >= min_samples, < 59
    proba = np.vstack([big, small, middle])
    y = np.concatenate([y_big, y_small, y_middle])
    order = rng.permutation(len(y))
    th = fit_class_thresholds(proba[order], y[order], target=0.95, delta=0.05, min_samples=20)
    assert np.isfinite(th.thresholds[0])
    assert th.thresholds[1] == np.inf
    assert th.thresholds[2] == np.inf
    assert th.n_calibration.tolist() == [200, 10, 40]
    assert "min_samples=20" in th.extra["per_class"][1]["reason"]
    assert "59" in th.extra["per_class"][2]["reason"]
    # Items of never-accepted classes are never accepted, however confident.
    mask = th.accept_mask(proba)
    assert not mask[200:].any()
    # A caller holding the confidence and the predicted class gets the same decision.
    again = th.accepts(th.confidence(proba), np.argmax(proba, axis=1))
    np.testing.assert_array_equal(again, mask)
    assert mask.any()
    assert not mask.all()


def test_perfect_classifier_gets_a_threshold() -> None:
    rng = np.random.default_rng(1)
    k, n = 4, 400
    y = rng.integers(k, size=n)
    conf = rng.uniform(0.5, 1.0, size=n)
    proba = np.tile(((1 - conf) / (k - 1))[:, None], (1, k))
    proba[np.arange(n), y] = conf
    th = fit_class_thresholds(proba, y, target=0.95, delta=0.05)
    assert np.all(np.isfinite(th.thresholds))
    # With no errors every testable candidate passes, so the rule accepts every calibration item.
    assert th.accept_mask(proba).all()


def test_one_hot_perfect_classifier() -> None:
    y = np.repeat([0, 1], 100)
    proba = np.eye(2)[y]
    th = fit_class_thresholds(proba, y)
    assert np.all(np.isfinite(th.thresholds))
    assert th.accept_mask(proba).all()


def test_roundtrip_through_json() -> None:
    proba, y = calibration_set([(0.95, 100, 0), (0.7, 50, 20)], k=3)
    th = fit_class_thresholds(proba, y, target=0.9, delta=0.1)
    data = json.loads(json.dumps(th.to_dict(), allow_nan=False))
    back = ClassThresholds.from_dict(data)
    np.testing.assert_array_equal(back.thresholds, th.thresholds)
    np.testing.assert_array_equal(back.n_calibration, th.n_calibration)
    assert (back.target, back.delta, back.method) == (0.9, 0.1, th.method)
    assert back.extra == th.extra


def test_default_candidates_are_strictly_decreasing_and_data_free() -> None:
    grid = default_candidates()
    assert grid[0] == 1.0
    assert grid[-1] == 0.0
    assert np.all(np.diff(grid) < 0)
    assert np.min(np.abs(np.diff(grid))) > 1e-9
    assert np.any((grid > 0.999) & (grid < 1.0))  # resolution where confident models live


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target": 1.0}, "target"),
        ({"target": 0.0}, "target"),
        ({"delta": 0.0}, "delta"),
        ({"delta": 1.5}, "delta"),
        ({"min_samples": 0}, "min_samples"),
        ({"candidates": []}, "candidates"),
        ({"candidates": [0.5, np.nan]}, "candidates"),
    ],
)
def test_validates_arguments(kwargs: dict[str, object], message: str) -> None:
    proba, y = calibration_set([(0.9, 30, 0)])
    with pytest.raises(ValueError, match=message):
        fit_class_thresholds(proba, y, **kwargs)  # type: ignore[arg-type]


def test_validates_arrays() -> None:
    proba, y = calibration_set([(0.9, 30, 0)])
    with pytest.raises(ValueError, match=r"shape \(30,\)"):
        fit_class_thresholds(proba, y[:-1])
    with pytest.raises(ValueError, match="rows must sum to 1"):
        fit_class_thresholds(proba * 3, y)


# ------------------------------------------------------------------------------------ the guarantee
#
# Known model, per predicted class c: confidence s = 1/K + (1 - 1/K) * B with B ~ Beta(ALPHA[c], 1),
# and the item is correct with probability 1 - SLOPE[c] * (1 - s): SLOPE > 1 is over-confidence
# (true error SLOPE times what the confidence claims). For a threshold t, with u = (t - 1/K) / (1 - 1/K),
#   P(s >= t) = 1 - u^a,   E[1 - B; B >= u] = (1 - u^a) - a / (a + 1) * (1 - u^(a + 1)),
# so the population accuracy of accepted items is exactly
#   acc_c(t) = 1 - SLOPE[c] * (1 - 1/K) * E[1 - B; B >= u] / P(B >= u).

K = 3
ALPHA = np.array([8.0, 5.0, 12.0])
SLOPE = np.array([1.5, 1.3, 1.0])
TARGET, DELTA = 0.95, 0.05
N_DRAWS, N_CALIBRATION = 300, 3000


def exact_accuracy_and_coverage(t: float, c: int) -> tuple[float, float]:
    """Population accuracy and coverage (within class c) of the rule `confidence >= t`."""
    a0, b0 = 1.0 / K, 1.0 - 1.0 / K
    u = min(max((t - a0) / b0, 0.0), 1.0)
    a = ALPHA[c]
    mass = 1.0 - u**a
    if mass == 0.0:
        return 1.0, 0.0  # accepts nothing, so it cannot miss the target
    tail_error = mass - a / (a + 1.0) * (1.0 - u ** (a + 1.0))
    return 1.0 - SLOPE[c] * b0 * tail_error / mass, mass


def draw_calibration(rng: np.random.Generator, n: int) -> tuple[NDArray[np.float64], NDArray[np.intp]]:
    pred = rng.integers(K, size=n)
    s = 1.0 / K + (1.0 - 1.0 / K) * rng.beta(ALPHA[pred], 1.0)
    correct = rng.random(n) < 1.0 - SLOPE[pred] * (1.0 - s)
    y = np.where(correct, pred, (pred + rng.integers(1, K, size=n)) % K)
    proba = np.tile(((1.0 - s) / (K - 1))[:, None], (1, K))
    proba[np.arange(n), pred] = s
    return proba, y.astype(np.intp)


def realised_failures(delta: float, seed: int) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Per class: number of draws whose threshold misses TARGET, and mean coverage over draws."""
    rng = np.random.default_rng(seed)
    failures = np.zeros(K, dtype=np.int64)
    coverage = np.zeros(K)
    for _ in range(N_DRAWS):
        proba, y = draw_calibration(rng, N_CALIBRATION)
        th = fit_class_thresholds(proba, y, target=TARGET, delta=delta)
        for c in range(K):
            if np.isfinite(th.thresholds[c]):
                acc, cov = exact_accuracy_and_coverage(float(th.thresholds[c]), c)
                failures[c] += acc < TARGET
                coverage[c] += cov / N_DRAWS
    return failures, coverage


def test_model_helpers_agree_with_simulation() -> None:
    # Guard the closed form the guarantee test relies on against a large Monte Carlo sample.
    rng = np.random.default_rng(0)
    proba, y = draw_calibration(rng, 400_000)
    pred, conf = proba.argmax(axis=1), proba.max(axis=1)
    for c in range(K):
        for t in [0.5, 0.9, 0.97]:
            accepted = (pred == c) & (conf >= t)
            acc, cov = exact_accuracy_and_coverage(t, c)
            assert np.mean(y[accepted] == c) == pytest.approx(acc, abs=0.005)
            assert accepted.sum() / (pred == c).sum() == pytest.approx(cov, abs=0.005)


def test_accuracy_guarantee_holds_over_calibration_draws() -> None:
    failures, coverage = realised_failures(DELTA, seed=2024)
    # Per class, P(miss) <= DELTA. Allow the 99.9% binomial quantile of N_DRAWS draws at DELTA.
    allowed = binom.ppf(0.999, N_DRAWS, DELTA)
    assert np.all(failures <= allowed), (failures, allowed)
    # The rule is not vacuous: every class is auto-accepted a useful share of the time.
    assert np.all(coverage > 0.05), coverage


def test_guarantee_check_detects_an_unguarded_rule() -> None:
    # delta = 0.5 is roughly "empirical accuracy >= target": the same check must flag it, otherwise the
    # guarantee test above could not fail.
    failures, _ = realised_failures(0.5, seed=2024)
    assert np.all(failures > binom.ppf(0.999, N_DRAWS, DELTA)), failures


# ------------------------------------------------------------------------------------ pooled mode


def test_pooled_mode_gives_small_classes_a_shared_threshold() -> None:
    # Class 0 is large (400 predictions); classes 1-3 have 55-95 each: too few for a per-class test
    # at 0.95 / 0.05 (59 accepted and error-free), enough together for the pooled one; class 4 is
    # never predicted. Bad tails (0.975 for class 0, 0.55 in the pool) stop each walk.
    k = 5
    p0, y0 = calibration_set([(0.99, 300, 0), (0.975, 100, 60)], k=k, cls=0)
    p1, y1 = calibration_set([(0.97, 55, 0), (0.55, 40, 30)], k=k, cls=1)
    p2, y2 = calibration_set([(0.97, 55, 1)], k=k, cls=2)
    p3, y3 = calibration_set([(0.97, 55, 0)], k=k, cls=3)
    proba, y = np.vstack([p0, p1, p2, p3]), np.concatenate([y0, y1, y2, y3])

    strict = fit_class_thresholds(proba, y)
    assert np.isfinite(strict.thresholds[0])
    assert np.isinf(strict.thresholds[1:]).all()

    th = fit_pooled_thresholds(proba, y, per_class_min=200, candidates=[0.995, 0.985, 0.965, 0.5])
    assert th.method == "pooled_fixed_sequence_clopper_pearson"
    assert th.thresholds[0] == 0.985  # its own walk, at delta / 2 (one large class)
    assert (th.thresholds[1:] == 0.965).all()  # the pool's threshold, also for the unseen class 4
    assert th.extra["delta_class"] == pytest.approx(0.025)
    assert th.extra["pool"]["n_items"] == 205
    assert th.extra["pool"]["n_accepted"] == 165
    assert [info["group"] for info in th.extra["per_class"]] == ["class", "pool", "pool", "pool", "pool"]
    # Recorded in the bundle's manifest: a JSON round trip keeps the method and thresholds.
    again = ClassThresholds.from_dict(json.loads(json.dumps(th.to_dict())))
    np.testing.assert_array_equal(again.thresholds, th.thresholds)
    assert again.method == th.method


def test_pooled_walk_starts_where_it_has_power() -> None:
    # The most confident 72 items (the bare minimum at delta / 2) hold one error: a walk starting
    # there stops at once; starting at 2 x 72 items it passes.
    proba, y = calibration_set([(0.999, 72, 1), (0.99, 300, 3), (0.6, 100, 50)], k=2)
    late = fit_pooled_thresholds(proba, y, per_class_min=10_000, candidates=[0.999, 0.99, 0.5])
    early = fit_pooled_thresholds(
        proba, y, per_class_min=10_000, start_factor=1, candidates=[0.999, 0.99, 0.5]
    )
    assert late.thresholds[0] == 0.99
    assert np.isinf(early.thresholds[0])


def test_fit_thresholds_dispatches_and_refuses_unknown_modes() -> None:
    proba, y = calibration_set([(0.99, 300, 0)])
    assert fit_thresholds(proba, y, mode="per_class").method == "fixed_sequence_clopper_pearson"
    assert fit_thresholds(proba, y, mode="pooled").method.startswith("pooled")
    with pytest.raises(ValueError, match="threshold mode"):
        fit_thresholds(proba, y, mode="global")
    with pytest.raises(ValueError, match="start_factor"):
        fit_pooled_thresholds(proba, y, start_factor=0)
    with pytest.raises(ValueError, match="start_share"):
        fit_pooled_thresholds(proba, y, start_share=1.0)


def overall_accuracy(thresholds: NDArray[np.float64]) -> float:
    """Population accuracy of everything auto-accepted (classes predicted equally often)."""
    covered = correct = 0.0
    for c in range(K):
        if np.isfinite(thresholds[c]):
            acc, cov = exact_accuracy_and_coverage(float(thresholds[c]), c)
            covered += cov
            correct += cov * acc
    return 1.0 if covered == 0.0 else correct / covered


@pytest.mark.parametrize("per_class_min", [10_000, 230])
def test_pooled_guarantee_holds_over_calibration_draws(per_class_min: int) -> None:
    # 600 calibration items, ~200 per class: per_class_min=10_000 pools all classes; 230 gives a
    # mix of large and pooled classes from draw to draw. P(overall accuracy < target) <= DELTA.
    rng = np.random.default_rng(7)
    n_draws, failures, coverage = 300, 0, 0.0
    for _ in range(n_draws):
        proba, y = draw_calibration(rng, 600)
        th = fit_pooled_thresholds(proba, y, target=TARGET, delta=DELTA, per_class_min=per_class_min)
        failures += overall_accuracy(th.thresholds) < TARGET
        coverage += float(
            np.mean(
                [
                    exact_accuracy_and_coverage(float(t), c)[1] if np.isfinite(t) else 0.0
                    for c, t in enumerate(th.thresholds)
                ]
            )
        )
    assert failures <= binom.ppf(0.999, n_draws, DELTA), failures
    # Not vacuous: with ~200 items per class the strict per-class mode would still cover something,
    # the pooled one must too.
    assert coverage / n_draws > 0.05, coverage / n_draws


def test_pooled_guarantee_check_detects_an_unguarded_rule() -> None:
    rng = np.random.default_rng(7)
    n_draws, failures = 300, 0
    for _ in range(n_draws):
        proba, y = draw_calibration(rng, 600)
        th = fit_pooled_thresholds(proba, y, target=TARGET, delta=0.9, per_class_min=10_000, start_factor=1)
        failures += overall_accuracy(th.thresholds) < TARGET
    assert failures > binom.ppf(0.999, n_draws, DELTA), failures


def test_acceptance_confidence_known_answers() -> None:
    proba = np.array([[0.6, 0.1, 0.3], [0.2, 0.2, 0.6], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert acceptance_confidence(proba, "top_probability").tolist() == [0.6, 0.6, 1.0, 0.0]
    pairwise = acceptance_confidence(proba, "pairwise")
    # The runner-up, not the tail: 0.6 / 0.9; a tie for second place; a one-hot row; no mass at all.
    np.testing.assert_allclose(pairwise, [0.6 / 0.9, 0.6 / 0.8, 1.0, 0.5])
    assert acceptance_confidence(np.empty((0, 3)), "pairwise").shape == (0,)
    assert acceptance_confidence(np.array([[1.0], [1.0]]), "pairwise").tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="top_probability, pairwise"):
        acceptance_confidence(proba, "entropy")


def test_pairwise_confidence_ranks_by_the_top_two_logits_alone() -> None:
    # p1 / (p1 + p2) = sigmoid(z1 - z2): the same ranking as the top-two logit gap, whatever the tail.
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(500, 40))
    proba = np.exp(logits - logits.max(axis=1, keepdims=True))
    proba /= proba.sum(axis=1, keepdims=True)
    top_two = np.sort(logits, axis=1)[:, -2:]
    expected = 1.0 / (1.0 + np.exp(-(top_two[:, 1] - top_two[:, 0])))
    np.testing.assert_allclose(acceptance_confidence(proba, "pairwise"), expected, rtol=1e-9)
    assert (acceptance_confidence(proba, "pairwise") >= acceptance_confidence(proba, "top_probability")).all()


def test_thresholds_apply_to_their_recorded_score() -> None:
    proba = np.array([[0.6, 0.1, 0.3], [0.5, 0.45, 0.05]])
    base = dict(thresholds=np.full(3, 0.65), target=0.9, delta=0.1, n_calibration=np.zeros(3, dtype=np.int64))
    assert ClassThresholds(**base).accept_mask(proba).tolist() == [False, False]  # type: ignore[arg-type]
    pairwise = ClassThresholds(**base, score="pairwise")  # type: ignore[arg-type]
    assert pairwise.accept_mask(proba).tolist() == [True, False]  # 0.667 and 0.526
    back = ClassThresholds.from_dict(json.loads(json.dumps(pairwise.to_dict())))
    assert back.score == "pairwise"
    assert back.accept_mask(proba).tolist() == [True, False]
    # A bundle certified before the score was recorded keeps the top probability it was fitted on.
    legacy = pairwise.to_dict()
    del legacy["score"]
    assert ClassThresholds.from_dict(legacy).score == "top_probability"
    with pytest.raises(ValueError, match="expected one of top_probability, pairwise"):
        ClassThresholds(**base, score="margin")  # type: ignore[arg-type]
