"""The loop's policy: audit draws, strata, label roles, review priority and the training configuration."""

from __future__ import annotations

import numpy as np
import pytest

from learner.loop import (
    AUDIT_PRIORITY,
    STRATEGY_MAX_PRIORITY,
    AuditPolicy,
    Provenance,
    audit_cutoff,
    band_low,
    canonical_order,
    certification_stream,
    describe_guarantee,
    review_priority,
    split_roles,
    strata_of,
    training_config,
    unit_draw,
)
from learner.settings import AuditSettings, HeadSettings, LearnerSettings


def test_inclusion_inside_and_outside_the_band_never_zero() -> None:
    policy = AuditPolicy(rate=0.2, outside_factor=0.25)
    pi = policy.inclusion([0.95, 0.7, 0.1], band_low=0.7)
    assert pi.tolist() == [0.2, 0.2, pytest.approx(0.05)]
    pi, drawn = policy.draw([0.95, 0.1], 0.7, [0.19, 0.06])
    assert drawn.tolist() == [True, False]
    with pytest.raises(ValueError, match="uniforms have shape"):
        policy.draw([0.9], 0.5, [0.1, 0.2])
    with pytest.raises(ValueError, match="audit rate"):
        policy.with_rate(0.0)


def test_band_edge_is_the_quantile_of_the_stream() -> None:
    conf = np.linspace(0, 1, 101)
    assert band_low(conf, 0.6) == pytest.approx(0.4)
    assert band_low([], 0.6) == 0.0


def test_strata_by_probability() -> None:
    ids, levels = strata_of([0.08, 0.25, 0.08, 0.08 + 1e-12])
    assert levels == [0.08, 0.25]
    assert ids.tolist() == [0, 1, 0, 0]


def test_seed_audits_are_a_stable_hash_share() -> None:
    policy = AuditPolicy(seed_share=0.3)
    ids = [f"s{i}" for i in range(5000)]
    first = policy.seed_audit(ids)
    assert (first == policy.seed_audit(ids)).all()
    assert 0.27 < first.mean() < 0.33
    assert unit_draw(0, "x") != unit_draw(1, "x")


def test_audits_certify_and_never_train() -> None:
    roles = split_roles(["seed", "seed_audit", "audit", "strategy", "correction"])
    assert roles.certify.tolist() == [1, 2]
    assert roles.train.tolist() == [0, 3, 4]
    assert {Provenance.SEED_AUDIT, Provenance.AUDIT} == {Provenance("seed_audit"), Provenance("audit")}
    # With item ids each role comes in id order (a repeated id keeps its arrival order), so a model
    # is a function of its labels whichever order the store or the simulation holds them in.
    ids = ["b", "z", "a", "c", "b"]
    ordered = split_roles(["seed", "seed_audit", "audit", "strategy", "correction"], ids)
    assert ordered.certify.tolist() == [2, 1]
    assert ordered.train.tolist() == [0, 4, 3]
    assert canonical_order([3, 10, 2]).tolist() == [1, 2, 0]  # ids compare as strings: "10" < "2" < "3"


def test_only_the_most_recent_audits_certify_and_older_ones_train() -> None:
    provenance = ["seed_audit", "seed", "audit", "strategy", "audit", "audit", "correction"]
    arrivals = [-np.inf, -np.inf, 1.0, 2.0, 3.0, 5.0, 4.0]
    # Window 2: the audits at 3 and 5 certify; the seed audit and the audit at 1 have done their job.
    roles = split_roles(provenance, arrivals=arrivals, window=2)
    assert roles.certify.tolist() == [4, 5]
    assert roles.train.tolist() == [0, 1, 2, 3, 6]
    assert roles.cutoff == 3.0
    # No window, or no more audits than it: every audit certifies, nothing is cut.
    for window in (0, 4, 10):
        every = split_roles(provenance, arrivals=arrivals, window=window)
        assert (every.certify.tolist(), every.cutoff) == ([0, 2, 4, 5], None)
    assert split_roles(provenance).cutoff is None
    # The cutoff is the window-th most recent audit's arrival; ties keep every tied audit.
    assert audit_cutoff([5.0, 1.0, 3.0, 3.0], 2) == 3.0
    assert audit_cutoff([-np.inf, -np.inf, 2.0], 2) == -np.inf
    assert audit_cutoff([1.0, 2.0], 2) is None
    with pytest.raises(ValueError, match=r"arrivals have shape \(2,\)"):
        split_roles(provenance, arrivals=[1.0, 2.0], window=1)


def test_audits_the_champion_trained_on_never_certify_again_when_an_audit_leaves_the_sample() -> None:
    # Champion: window 2 over audits at 1, 3, 5 -> it certified on 3 and 5 and trained on 1 and the seed.
    provenance = ["seed_audit", "audit", "audit", "audit"]
    champion = split_roles(provenance, arrivals=[-np.inf, 1.0, 3.0, 5.0], window=2)
    assert champion.cutoff == 3.0
    # The review of the audit at 5 is deleted: it waits again, and the window alone would reach back
    # over the audit at 1 (and the seed audit), which the champion trained on.
    shrunk, arrivals = provenance[:3], [-np.inf, 1.0, 3.0]
    assert split_roles(shrunk, arrivals=arrivals, window=2).certify.tolist() == [1, 2]
    floored = split_roles(shrunk, arrivals=arrivals, window=2, floor=champion.cutoff)
    assert (floored.certify.tolist(), floored.train.tolist(), floored.cutoff) == ([2], [0, 1], 3.0)
    # Without a window the floor alone cuts; a floor below the window's cutoff changes nothing.
    assert split_roles(shrunk, arrivals=arrivals, floor=3.0).certify.tolist() == [2]
    later = split_roles(provenance, arrivals=[-np.inf, 1.0, 3.0, 5.0], window=1, floor=3.0)
    assert (later.certify.tolist(), later.cutoff) == ([3], 5.0)


def test_review_priority_follows_the_strategy_and_audits_come_first() -> None:
    proba = np.array([[0.9, 0.1, 0.0], [0.5, 0.5, 0.0], [0.4, 0.3, 0.3]])
    margin = review_priority(proba, "margin")
    assert margin.tolist() == pytest.approx([0.2, STRATEGY_MAX_PRIORITY, 0.9])
    least = review_priority(proba, "least_confidence")
    assert np.argsort(-least).tolist() == [2, 1, 0]
    assert set(review_priority(proba, "random").tolist()) == {0.5}
    audited = review_priority(proba, "margin", audited=[True, False, False])
    assert audited[0] == AUDIT_PRIORITY > audited[1:].max()
    with pytest.raises(ValueError, match="margin"):
        review_priority(proba, "no-such-strategy")


def test_training_config_is_built_from_the_learner_settings() -> None:
    learner = LearnerSettings(
        target_accuracy=0.9,
        guarantee="high_probability",
        head=HeadSettings(epochs=7),
        audit=AuditSettings(start_share=0.1, band_share=0.5),
    )
    config = training_config(learner, device="cpu", delta=0.1)
    assert (config.epochs, config.device, config.target_accuracy, config.delta) == (7, "cpu", 0.9, 0.1)
    assert (config.guarantee, config.start_share, config.band_share) == ("high_probability", 0.1, 0.5)
    assert config.features.kind == learner.features


def test_an_unknown_strategy_setting_lists_the_valid_names() -> None:
    with pytest.raises(ValueError, match="batch_diverse"):
        LearnerSettings(strategy="smartest")


def test_the_statement_in_force_reads_as_words() -> None:
    assert "with probability >= 0.95" in describe_guarantee("high_probability", 0.95, 0.05)
    assert "mean error" in describe_guarantee("expected", 0.95, 0.05)


def test_a_model_is_certified_over_the_stream_items_it_was_not_trained_on() -> None:
    keep = certification_stream(["seed-1", "seed-audit", "routed-1", "routed-2"], {"seed-1", "routed-2"})
    assert keep.tolist() == [False, True, True, False]
    assert certification_stream([], set()).shape == (0,)


def test_escalation_share_counts_the_spot_checks_taken_from_the_auto_accepts() -> None:
    policy = AuditPolicy(rate=0.1, outside_factor=0.5)
    conf = np.array([0.99, 0.98, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    # The 4 most confident are accepted; 3 lie in the band (rate 0.1), one outside it (0.05).
    assert policy.escalation_share(conf, band_low=0.85, accepted_share=0.4) == pytest.approx(
        1 - (3 * 0.9 + 0.95) / 10
    )
    assert policy.escalation_share(conf, band_low=0.85, accepted_share=0.0) == 1.0
    assert policy.escalation_share([], band_low=0.85, accepted_share=0.5) == 1.0
