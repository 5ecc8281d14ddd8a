"""The paired gate: known answers, bad input, and its false-refusal rate proved by simulation."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from learner.certify import GUARANTEES, CertifyOptions, Evidence, certify_evidence
from learner.gate import AuditScores, GateError, bootstrap_coverage_test, paired_gate, paired_test
from learner.thresholds import default_candidates

DRAWS = 150  # per guarantee; the tolerance below is 3 binomial standard errors
TARGET = 0.9


def scores(
    conf: NDArray[np.float64],
    correct: NDArray[np.bool_],
    audited: NDArray[np.bool_],
    strata: NDArray[np.int64],
    guarantee: str = "expected",
) -> AuditScores:
    """One model on a simulated stream: its confidence and correctness on every stream item, the
    audited ones drawn from them."""
    evidence = Evidence(
        confidence=conf[audited],
        predicted=np.zeros(int(audited.sum()), dtype=np.int64),
        wrong=~correct[audited],
        strata=strata[audited],
        stream_confidence=conf,
        stream_strata=strata,
        grid=default_candidates(),
        options=CertifyOptions(guarantee=guarantee, target=TARGET),
    )
    return AuditScores(correct[audited], np.zeros(int(audited.sum()), dtype=np.bool_), evidence)


def population(rng: np.random.Generator, n: int = 8_000) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """True confidence of each item and the probability the model is right on it (over-confident,
    so the best threshold lies inside the range, not at its end)."""
    conf = rng.beta(4.0, 1.0, size=n)
    return conf, np.clip(0.99 - (1.0 - conf), 0.0, 1.0)


def retrain(
    rng: np.random.Generator, conf: NDArray[np.float64], accuracy: NDArray[np.float64], u: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """A model as one retrain gives it: the population's confidence with a little item-level noise,
    right where the shared draw ``u`` falls under its accuracy (so two retrains mostly agree)."""
    noisy = np.clip(conf + rng.normal(0.0, 0.02, conf.size), 0.0, 1.0)
    return noisy, u < accuracy


def audit_draw(
    rng: np.random.Generator, conf: NDArray[np.float64]
) -> tuple[NDArray[np.bool_], NDArray[np.int64], NDArray[np.float64]]:
    strata = np.where(conf >= 0.8, 0, 1).astype(np.int64)
    pi = np.where(strata == 0, 0.1, 0.04)
    return rng.random(conf.size) < pi, strata, pi


def test_identical_models_are_never_refused() -> None:
    rng = np.random.default_rng(1)
    conf, accuracy = population(rng)
    model = retrain(rng, conf, accuracy, rng.random(conf.size))
    audited, strata, pi = audit_draw(rng, conf)
    same = scores(*model, audited, strata)
    decision = paired_gate(same, same, pi[audited])
    assert decision.promote
    assert [t.difference for t in decision.tests] == [0.0, 0.0]
    assert decision.tests[1].low == decision.tests[1].high == 0.0


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


def test_a_clearly_less_accurate_challenger_is_refused_with_the_test_named() -> None:
    rng = np.random.default_rng(2)
    conf, accuracy = population(rng)
    u = rng.random(conf.size)
    champion_conf, champion_correct = retrain(rng, conf, accuracy, u)
    worse_correct = champion_correct & (rng.random(conf.size) > 0.1)
    audited, strata, pi = audit_draw(rng, conf)
    decision = paired_gate(
        scores(champion_conf, worse_correct, audited, strata),
        scores(champion_conf, champion_correct, audited, strata),
        pi[audited],
    )
    assert not decision.promote
    assert "significantly worse on accuracy" in decision.reason
    assert "p = " in decision.reason
    assert "95% CI" in decision.reason
    assert "paired z-test" in decision.reason
    assert "paired bootstrap" in decision.reason


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_false_refusal_rate_of_equally_good_challengers(guarantee: str) -> None:
    """Challenger and champion are two retrains of the SAME quality, differing item by item (confidence
    noise, ~5% of the items redrawn): refused in at most alpha of the draws (tolerance: 3 binomial
    standard errors). Both re-certified on the same audits, as production does."""
    rng = np.random.default_rng(5)
    alpha = 0.05
    refused = naive = 0
    for _ in range(DRAWS):
        conf, accuracy = population(rng)
        u = rng.random(conf.size)
        champion = retrain(rng, conf, accuracy, u)
        u_other = np.where(rng.random(conf.size) < 0.05, rng.random(conf.size), u)
        challenger = retrain(rng, conf, accuracy, u_other)
        audited, strata, pi = audit_draw(rng, conf)
        new = scores(*challenger, audited, strata, guarantee)
        old = scores(*champion, audited, strata, guarantee)
        refused += not paired_gate(new, old, pi[audited], alpha=alpha).promote
        naive += naive_coverage_refusal(new, old, pi[audited], level=alpha / 2)
    tolerance = 3 * np.sqrt(alpha * (1 - alpha) / DRAWS)
    assert refused / DRAWS <= alpha + tolerance
    # The simulation can tell: comparing accept-indicators at the two certified thresholds as if
    # they were fixed (the gate before the bootstrap) refuses these same challengers far more often.
    assert naive / DRAWS > alpha + tolerance


def naive_coverage_refusal(
    challenger: AuditScores, champion: AuditScores, pi: NDArray[np.float64], level: float
) -> bool:
    """Certified coverage compared as a z-test on the audits' accept-indicators, thresholds fixed."""
    new, old = (
        s.evidence.confidence >= certify_evidence(s.evidence, 2).thresholds[0] for s in (challenger, champion)
    )
    return paired_test("coverage", new, old, 1.0 / pi, margin=0.02, level=level).worse


def test_the_gate_detects_a_real_drop_in_certified_coverage() -> None:
    # The check above can fail: a challenger whose confidence no longer ranks its errors (a third of
    # them sit among its most confident items) certifies far less and is refused in most draws.
    rng = np.random.default_rng(6)
    refused = 0
    for _ in range(40):
        conf, accuracy = population(rng)
        u = rng.random(conf.size)
        champion = retrain(rng, conf, accuracy, u)
        worse_conf = np.where(~champion[1] & (rng.random(conf.size) < 0.33), 0.999, champion[0])
        audited, strata, pi = audit_draw(rng, conf)
        decision = paired_gate(
            scores(worse_conf, champion[1], audited, strata),
            scores(*champion, audited, strata),
            pi[audited],
        )
        refused += not decision.promote and "certified coverage" in decision.reason
    assert refused / 40 > 0.8


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((np.ones(3), np.ones(4), np.ones(3)), "differ in shape"),
        ((np.ones(0), np.ones(0), np.ones(0)), "no audits"),
        ((np.ones(2), np.ones(2), np.array([1.0, -1.0])), "weights must be"),
    ],
)
def test_bad_input_is_refused(args: tuple[NDArray[np.float64], ...], message: str) -> None:
    with pytest.raises(GateError, match=message):
        paired_test("accuracy", *args, margin=0.0, level=0.05)


def test_bad_gate_input_is_refused() -> None:
    rng = np.random.default_rng(3)
    conf, accuracy = population(rng, 2_000)
    model = retrain(rng, conf, accuracy, rng.random(conf.size))
    audited, strata, _pi = audit_draw(rng, conf)
    a = scores(*model, audited, strata)
    with pytest.raises(GateError, match="inclusion probabilities"):
        paired_gate(a, a, np.zeros(int(audited.sum())))
    other = scores(*model, ~audited, strata)
    with pytest.raises(GateError, match="different audits"):
        bootstrap_coverage_test(a.evidence, other.evidence, margin=0.02, level=0.025)
    with pytest.raises(GateError, match="draws must be >= 1"):
        bootstrap_coverage_test(a.evidence, a.evidence, margin=0.02, level=0.025, draws=0)
