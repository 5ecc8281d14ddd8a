"""Certification on stratified audits: known answers, bad input, and each guarantee proved by simulation."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from learner.certify import (
    GUARANTEES,
    CertificationError,
    CertifyOptions,
    certified_coverage,
    certify_evidence,
    certify_thresholds,
    evidence_of,
)
from learner.thresholds import acceptance_confidence

TARGET, DELTA = 0.95, 0.05
STREAMS = 300  # >= 200 simulated streams per guarantee, as the issue asks


def two_class(conf: NDArray[np.float64]) -> NDArray[np.float64]:
    """(n,) top-class confidences -> (n, 2) probabilities predicting class 0."""
    return np.stack([conf, 1.0 - conf], axis=1)


def simulated_stream(
    rng: np.random.Generator, n: int = 20_000, audits: int = 900
) -> tuple[NDArray[np.float64], NDArray[np.bool_], NDArray[np.int64], NDArray[np.float64]]:
    """A stream of n items: confidence, correctness, stratum (0 = band, 1 = outside), inclusion prob.

    The model is over-confident (accuracy 0.995 - (1 - confidence)), so even the most confident
    items keep ~1-2% errors, as on the real catalogs; the best threshold sits near 0.95. The band (confidence
    >= 0.8) is sampled 10x more densely than the rest.
    """
    conf = rng.beta(4.0, 1.0, size=n)
    accuracy = np.clip(0.995 - (1.0 - conf), 0.0, 1.0)
    correct = rng.random(n) < accuracy
    band = conf >= 0.8
    weight = np.where(band, 1.0, 0.1)
    pi = np.minimum(1.0, audits * weight / weight.sum())
    return conf, correct, np.where(band, 0, 1).astype(np.int64), pi


def certify_one_draw(
    rng: np.random.Generator,
    proba: NDArray[np.float64],
    conf: NDArray[np.float64],
    correct: NDArray[np.bool_],
    strata: NDArray[np.int64],
    pi: NDArray[np.float64],
    guarantee: str,
    score: str = "top_probability",
) -> tuple[float | None, float]:
    """One audit draw from a stream whose items predict class 0 at confidence `conf` (the `score` of
    `proba`) -> (realised accuracy of the accepted stream items, coverage)."""
    audited = rng.random(conf.size) < pi
    th = certify_thresholds(
        proba[audited],
        np.where(correct[audited], 0, 1),
        strata[audited],
        conf,
        strata,
        guarantee=guarantee,
        target=TARGET,
        delta=DELTA,
        score=score,
    )
    assert th.score == score
    accepted = conf >= th.thresholds[0]
    if not accepted.any():
        return None, 0.0
    return float(correct[accepted].mean()), float(accepted.mean())


def draw_and_certify(rng: np.random.Generator, guarantee: str) -> tuple[float | None, float]:
    """One stream + one audit draw, certified on the top-class probability."""
    conf, correct, strata, pi = simulated_stream(rng)
    return certify_one_draw(rng, two_class(conf), conf, correct, strata, pi, guarantee)


def test_high_probability_guarantee_holds_over_streams() -> None:
    rng = np.random.default_rng(2024)
    results = [draw_and_certify(rng, "high_probability") for _ in range(STREAMS)]
    violations = sum(acc is not None and acc < TARGET for acc, _ in results)
    # Monte-Carlo tolerance: 3 binomial standard errors of a share delta over STREAMS draws (~0.038).
    tolerance = 3 * np.sqrt(DELTA * (1 - DELTA) / STREAMS)
    assert violations / STREAMS <= DELTA + tolerance
    # ... and it is not vacuous: most streams certify a real share of the stream.
    assert np.mean([cov for _, cov in results]) > 0.08


def test_expected_guarantee_holds_over_streams() -> None:
    rng = np.random.default_rng(7)
    results = [draw_and_certify(rng, "expected") for _ in range(STREAMS)]
    errors = [0.0 if acc is None else 1.0 - acc for acc, _ in results]
    # Mean error among accepted items <= 1 - target, with 3 standard errors of the mean as tolerance.
    assert np.mean(errors) <= (1 - TARGET) + 3 * np.std(errors) / np.sqrt(STREAMS)
    assert np.mean([cov for _, cov in results]) > 0.3


def pairwise_draw_and_certify(rng: np.random.Generator, guarantee: str) -> tuple[float | None, float]:
    """`draw_and_certify` for a 3-class model certified on its pairwise confidence p1 / (p1 + p2):
    the statement holds for any score fixed before the audits are drawn, so it must hold here too.
    The third class takes a random share of the mass, so p1 and the pairwise score rank differently."""
    n, audits = 20_000, 900
    gap = rng.gamma(2.0, 1.5, size=n)  # logit of the top class over the runner-up
    tail = rng.normal(0.0, 2.0, size=n) - gap / 2  # logit of the third class, relative to the runner-up
    logits = np.stack([gap, np.zeros(n), np.minimum(tail, gap - 1e-3)], axis=1)
    proba = np.exp(logits - logits.max(axis=1, keepdims=True))
    proba /= proba.sum(axis=1, keepdims=True)
    conf = acceptance_confidence(proba, "pairwise")
    correct = rng.random(n) < np.clip(0.995 - (1.0 - conf), 0.0, 1.0)
    strata = np.where(conf >= 0.8, 0, 1).astype(np.int64)
    weight = np.where(strata == 0, 1.0, 0.1)
    pi = np.minimum(1.0, audits * weight / weight.sum())
    return certify_one_draw(rng, proba, conf, correct, strata, pi, guarantee, "pairwise")


def test_both_guarantees_hold_over_streams_on_the_pairwise_score() -> None:
    rng = np.random.default_rng(99)
    high = [pairwise_draw_and_certify(rng, "high_probability") for _ in range(STREAMS)]
    violations = sum(acc is not None and acc < TARGET for acc, _ in high)
    # Tolerances as in the two tests above: 3 binomial / 3 mean standard errors over STREAMS draws.
    assert violations / STREAMS <= DELTA + 3 * np.sqrt(DELTA * (1 - DELTA) / STREAMS)
    assert np.mean([cov for _, cov in high]) > 0.08
    expected = [pairwise_draw_and_certify(rng, "expected") for _ in range(STREAMS)]
    errors = [0.0 if acc is None else 1.0 - acc for acc, _ in expected]
    assert np.mean(errors) <= (1 - TARGET) + 3 * np.std(errors) / np.sqrt(STREAMS)
    assert np.mean([cov for _, cov in expected]) > 0.3


def naive_threshold(conf: NDArray[np.float64], correct: NDArray[np.bool_]) -> float:
    """The most lenient threshold whose *empirical* audit accuracy is >= target (no guarantee)."""
    order = np.argsort(-conf)
    running = np.cumsum(correct[order]) / np.arange(1, conf.size + 1)
    ok = np.flatnonzero((running >= TARGET) & (np.arange(1, conf.size + 1) >= 30))
    return float(conf[order][ok[-1]]) if ok.size else np.inf


def test_simulation_detects_an_unguarded_rule() -> None:
    # The check above can fail: the naive empirical rule on the same draws violates far more often.
    rng = np.random.default_rng(11)
    violations = 0
    for _ in range(STREAMS):
        conf, correct, _, pi = simulated_stream(rng)
        audited = rng.random(conf.size) < pi
        accepted = conf >= naive_threshold(conf[audited], correct[audited])
        violations += bool(accepted.any() and correct[accepted].mean() < TARGET)
    assert violations / STREAMS > 0.2


def test_known_answer_single_stratum() -> None:
    # 400 audits at confidence 0.99 with 4 errors: CP upper bound at 95% is ~0.023 <= 0.05 -> certified;
    # 400 more at 0.9 with 60 errors: cumulative 64/800 > 0.05 -> the walk stops at 0.99.
    conf = np.r_[np.full(400, 0.99), np.full(400, 0.9)]
    y = np.zeros(800, dtype=np.int64)
    y[:4] = 1
    y[400:460] = 1
    strata = np.zeros(800, dtype=np.int64)
    th = certify_thresholds(two_class(conf), y, strata, conf, strata, candidates=[0.99, 0.9, 0.5])
    assert th.thresholds.tolist() == [0.99, 0.99]
    assert th.extra["audits_accepted"] == 400
    assert th.extra["audit_errors_accepted"] == 4
    assert th.extra["error_bound"] == pytest.approx(0.0229, abs=5e-4)
    assert th.method == "stratified_clopper_pearson_fixed_sequence"


def test_sparse_stratum_counts_as_all_wrong() -> None:
    # Same audits, but the stream also holds 100 accepted items of an unaudited stratum: they count as
    # errors, 100 of 500 accepted stream items is 0.2 > 0.05, so nothing is certified.
    conf = np.full(400, 0.99)
    y = np.zeros(400, dtype=np.int64)
    strata = np.zeros(400, dtype=np.int64)
    stream_conf = np.r_[conf, np.full(100, 0.99)]
    stream_strata = np.r_[strata, np.ones(100, dtype=np.int64)]
    for guarantee in GUARANTEES:
        th = certify_thresholds(
            two_class(conf),
            y,
            strata,
            stream_conf,
            stream_strata,
            guarantee=guarantee,
            candidates=[0.99, 0.5],
        )
        assert np.isinf(th.thresholds).all(), guarantee


def test_expected_mode_known_answer() -> None:
    # 99 audits, 3 wrong, all at 0.97: (3 + 1) / (99 + 1) = 0.04 <= 0.05 -> accepted at the lowest grid point.
    conf = np.full(99, 0.97)
    y = np.zeros(99, dtype=np.int64)
    y[:3] = 1
    strata = np.zeros(99, dtype=np.int64)
    th = certify_thresholds(
        two_class(conf), y, strata, conf, strata, guarantee="expected", candidates=[0.99, 0.5]
    )
    assert th.thresholds[0] == 0.5
    assert th.extra["error_bound"] == pytest.approx(0.04)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strata": np.zeros(3, dtype=np.int64)}, "strata must be"),
        ({"strata": np.full(4, 0.5)}, "strata must be"),
        ({"stream_strata": np.full(4, 1, dtype=np.int64)}, "have no stream items"),
        ({"guarantee": "sometimes"}, "guarantee must be one of high_probability, expected"),
        ({"target": 1.5}, "target must be"),
        ({"score": "entropy"}, "expected one of top_probability, pairwise"),
    ],
)
def test_bad_input_is_refused_with_the_reason(kwargs: dict[str, object], message: str) -> None:
    conf = np.full(4, 0.9)
    args: dict[str, object] = {
        "proba": two_class(conf),
        "y": np.zeros(4, dtype=np.int64),
        "strata": np.zeros(4, dtype=np.int64),
        "stream_confidence": conf,
        "stream_strata": np.zeros(4, dtype=np.int64),
    }
    args.update(kwargs)
    with pytest.raises((CertificationError, ValueError), match=message):
        certify_thresholds(**args)  # type: ignore[arg-type]


def test_an_audit_of_a_class_the_model_does_not_know_is_an_error() -> None:
    # 100 audits at 0.99, all correct except 6 whose true class is unknown to the model (-1): 6 / 100
    # errors cannot be certified at 0.95, while dropping them would have certified 94 / 94.
    conf = np.full(100, 0.99)
    y = np.zeros(100, dtype=np.int64)
    y[:6] = -1
    strata = np.zeros(100, dtype=np.int64)
    th = certify_thresholds(two_class(conf), y, strata, conf, strata, candidates=[0.99, 0.5])
    assert np.isinf(th.thresholds).all()
    assert "6 errors in 100 audits" in th.extra["reason"]


def test_trained_on_stream_items_count_at_their_strata_audit_acceptance_share() -> None:
    # 20 audits: 10 confident and right, 10 unsure and wrong; 80 more stream items the model was
    # trained on (their confidence says nothing). At 0.99: 10 scored + 80 x (10 / 20) = 50 of 100.
    conf = np.array([0.99] * 10 + [0.6] * 10)
    y = np.array([0] * 10 + [1] * 10)
    strata = np.zeros(20, dtype=np.int64)
    options = CertifyOptions(guarantee="expected", target=0.9)
    evidence = evidence_of(
        two_class(conf),
        y,
        strata,
        conf,
        strata,
        options=options,
        candidates=[0.99, 0.5],
        trained_strata=np.zeros(80, dtype=np.int64),
    )
    th = certify_evidence(evidence, 2)
    assert th.thresholds[0] == 0.99
    assert th.extra["stream_accepted_share"] == pytest.approx(0.5)
    assert th.extra["n_stream"] == 100
    assert certified_coverage(evidence)[0] == pytest.approx(0.5)
    # Counted at their own (confident) scores instead, they would claim 0.9 of the stream.
    naive = evidence_of(
        two_class(conf),
        y,
        strata,
        np.concatenate([conf, np.full(80, 0.99)]),
        np.zeros(100, dtype=np.int64),
        options=options,
        candidates=[0.99, 0.5],
    )
    assert certified_coverage(naive)[0] == pytest.approx(0.9)


# ---------------------------------------------------------------- the design production certifies on
SEED, SEED_SHARE, STREAM, RATE, WINDOW, PICKS = 300, 0.25, 6_000, 0.08, 400, 400


def production_draw(rng: np.random.Generator, guarantee: str) -> tuple[float, float]:
    """One loop state as production certifies it (`learner.loop`, `serving.retrain`): a seed whose
    quarter audits (stratum 1, inclusion 0.25), a stream of 6,000 routed items audited uniformly at
    0.08 (stratum 0), the 400 most recent audits certify and every older one trained, 400 strategy
    picks (the least confident stream items) trained. Trained-on items are not scored (their
    confidence says nothing) and count at their stratum's audit acceptance share. The threshold is
    then applied to the FUTURE stream: (its expected error among accepted items, its coverage)."""
    n = SEED + STREAM
    conf = rng.beta(4.0, 1.0, size=n)  # the over-confident model of `simulated_stream`
    correct = rng.random(n) < np.clip(0.995 - (1.0 - conf), 0.0, 1.0)
    seed = np.arange(n) < SEED
    strata = np.where(seed, 1, 0).astype(np.int64)
    audited = np.where(seed, rng.random(n) < SEED_SHARE, rng.random(n) < RATE)
    arrival = np.arange(n)  # the seed first, then the stream in routing order
    audit_rows = np.flatnonzero(audited)
    certifying = audit_rows[-WINDOW:]
    cutoff = arrival[certifying[0]]  # the certificate weighs the stream routed since its oldest audit
    stream_rows = np.flatnonzero(~seed)
    picks = stream_rows[~audited[stream_rows]]
    picks = picks[np.argsort(conf[picks])[:PICKS]]
    trained = np.zeros(n, dtype=bool)
    trained[audit_rows[:-WINDOW]] = True  # older audits retired into training
    trained[picks] = True
    trained[seed & ~audited] = True  # the seed's training labels
    in_stream = arrival >= cutoff
    scored = in_stream & ~trained
    options = CertifyOptions(guarantee=guarantee, target=TARGET, delta=DELTA, score="top_probability")
    evidence = evidence_of(
        two_class(conf[certifying]),
        np.where(correct[certifying], 0, 1),
        strata[certifying],
        conf[scored],
        strata[scored],
        options=options,
        trained_strata=strata[in_stream & trained],
    )
    threshold = certify_evidence(evidence, 2).thresholds[0]
    future = rng.beta(4.0, 1.0, size=100_000)
    accepted = future >= threshold
    if not accepted.any():
        return 0.0, 0.0
    error = float(np.mean(1.0 - np.clip(0.995 - (1.0 - future[accepted]), 0.0, 1.0)))
    return error, float(accepted.mean())


def test_both_guarantees_hold_on_the_design_production_certifies_on() -> None:
    # Measured on these draws: expected mean error 0.047 (s.e. 0.001) at coverage 0.31 of an oracle
    # 0.33; high-probability violations 0.017, but it certifies nothing in ~90% of the draws: 400
    # audits cannot prove 95% on a model whose best region keeps ~1-2% errors (as on the real catalogs).
    rng = np.random.default_rng(27)
    expected = [production_draw(rng, "expected") for _ in range(STREAMS)]
    errors = np.array([e for e, _ in expected])
    # Mean error among accepted future items <= 1 - target, 3 standard errors of the mean as tolerance.
    assert errors.mean() <= (1 - TARGET) + 3 * errors.std() / np.sqrt(STREAMS)
    assert np.mean([c for _, c in expected]) > 0.2  # not vacuous: it certifies a real share
    high = [production_draw(rng, "high_probability") for _ in range(STREAMS)]
    violations = sum(e > 1 - TARGET for e, _ in high)
    # 3 binomial standard errors of a share delta over STREAMS draws (~0.038), as above.
    assert violations / STREAMS <= DELTA + 3 * np.sqrt(DELTA * (1 - DELTA) / STREAMS)


@pytest.mark.parametrize("candidates", [[], [0.9, float("nan")], [[0.9, 0.5]]])
def test_a_malformed_candidate_grid_is_refused_with_a_reason(candidates: list[Any]) -> None:
    conf = np.full(10, 0.9)
    strata = np.zeros(10, dtype=np.int64)
    with pytest.raises(ValueError, match="non-empty 1-D array of finite numbers"):
        certify_thresholds(
            two_class(conf), np.zeros(10, dtype=np.int64), strata, conf, strata, candidates=candidates
        )
