"""The paired gate: known answers, bad input, and its false-refusal rate proved by simulation."""

from __future__ import annotations

import numpy as np
import pytest

from learner.gate import GateError, paired_gate, paired_test

DRAWS = 400


def test_identical_models_are_never_refused() -> None:
    correct = np.array([True] * 90 + [False] * 10)
    accepted = np.array([True] * 50 + [False] * 50)
    decision = paired_gate(correct, correct, accepted, accepted, np.full(100, 0.1))
    assert decision.promote
    assert [t.difference for t in decision.tests] == [0.0, 0.0]


def test_known_answer_paired_difference_and_weights() -> None:
    # Two audits drawn with probability 0.5 (weight 2) and two with 0.25 (weight 4): the challenger is
    # right on one heavy audit where the champion is wrong -> difference 4 / 12.
    challenger = np.array([1.0, 1.0, 1.0, 0.0])
    champion = np.array([1.0, 1.0, 0.0, 0.0])
    test = paired_test(
        "accuracy", challenger, champion, 1 / np.array([0.5, 0.5, 0.25, 0.25]), margin=0.0, level=0.05
    )
    assert test.difference == pytest.approx(4 / 12)
    assert test.challenger == pytest.approx(8 / 12)
    assert not test.worse


def test_a_clearly_worse_challenger_is_refused_with_the_test_named() -> None:
    champion = np.array([True] * 380 + [False] * 20)
    challenger = np.array([True] * 330 + [False] * 70)
    accepted = np.ones(400, dtype=bool)
    decision = paired_gate(challenger, champion, accepted, accepted, np.full(400, 0.05))
    assert not decision.promote
    assert "significantly worse on accuracy" in decision.reason
    assert "p = " in decision.reason
    assert "95% CI" in decision.reason


def test_false_refusal_rate_of_equally_good_challengers() -> None:
    """Challenger and champion with the SAME true accuracy and coverage, differing item by item as two
    retrains do: refused in at most alpha of the draws (tolerance: 3 binomial standard errors)."""
    rng = np.random.default_rng(5)
    alpha = 0.05
    refused = 0
    for _ in range(DRAWS):
        n = 600
        base = rng.random(n) < 0.85
        flip = rng.random(n) < 0.06  # the two models disagree on ~6% of the audits, symmetrically
        other = np.where(flip, rng.random(n) < 0.85, base)
        acc_a = rng.random(n) < 0.4
        acc_b = np.where(rng.random(n) < 0.1, rng.random(n) < 0.4, acc_a)
        pi = rng.choice([0.05, 0.2], size=n)
        refused += not paired_gate(other, base, acc_b, acc_a, pi, alpha=alpha).promote
    assert refused / DRAWS <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / DRAWS)


def test_the_gate_detects_a_real_drop() -> None:
    # The check above can fail: a challenger 4 points worse is refused in most draws.
    rng = np.random.default_rng(6)
    refused = 0
    for _ in range(100):
        n = 600
        base = rng.random(n) < 0.85
        worse = base & (rng.random(n) > 0.08)
        accepted = np.ones(n, dtype=bool)
        refused += not paired_gate(worse, base, accepted, accepted, np.full(n, 0.1)).promote
    assert refused / 100 > 0.8


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((np.ones(3), np.ones(4), np.ones(3)), "differ in shape"),
        ((np.ones(0), np.ones(0), np.ones(0)), "no audits"),
        ((np.ones(2), np.ones(2), np.array([1.0, -1.0])), "weights must be"),
    ],
)
def test_bad_input_is_refused(args: tuple[np.ndarray, np.ndarray, np.ndarray], message: str) -> None:
    with pytest.raises(GateError, match=message):
        paired_test("accuracy", *args, margin=0.0, level=0.05)
    with pytest.raises(GateError, match="inclusion probabilities"):
        paired_gate(np.ones(2), np.ones(2), np.ones(2), np.ones(2), np.array([0.5, 0.0]))
