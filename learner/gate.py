"""The promotion gate: paired tests that noise does not decide.

Challenger and champion are scored on the SAME audits (which neither was trained on), so item-level
differences cancel what the two share. The challenger is refused on a metric only when it is
significantly worse by more than the metric's margin: the one-sided p-value of
``H0: difference >= -margin`` is below ``alpha / 2`` (the two metrics share ``alpha``, so a challenger as
good as the champion is refused with probability at most ~``alpha``).

Accuracy: a paired importance-weighted z-test. For each audit i with weight ``w_i = 1 / pi_i`` and
``d_i`` the difference in correctness, ``D = sum w d / sum w`` estimates the stream-level difference;
its standard error is the ratio estimator's linearisation ``sqrt(sum w^2 (d - D)^2) / sum w``.

Certified coverage: a paired stratified bootstrap. Coverage is known exactly on the stream once the
threshold is fixed, so its noise is the certificate's: which threshold the audits certify. Comparing the
two accept-indicators on the audits (a z-test as for accuracy) treats both thresholds as fixed and
calls a jump of the certified threshold between two near-identical models "significant" (measured:
retrains adding 25 random corrections were refused 15% of the time on instacart). So both models are
re-certified on the same re-drawn audit samples (`learner.certify.resample_audits`), and the
p-value is the share of draws where the challenger is not worse by more than the margin.

Pure functions over arrays; `serving.retrain` and the simulations call the same one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.stats import norm

from learner.certify import Evidence, certified_coverage, resample_audits
from learner.exceptions import LearnerError


class GateError(LearnerError):
    """Arrays the gate cannot compare (lengths, weights)."""


@dataclass(frozen=True)
class AuditScores:
    """One model on the gate's audits: is each prediction right, would it be auto-accepted, and the
    evidence its certificate rests on (to re-certify it on re-drawn audits)."""

    correct: NDArray[np.bool_]
    accepted: NDArray[np.bool_]
    evidence: Evidence


def audit_scores(
    proba: NDArray[np.float64], labels: Sequence[str], y: Sequence[str], thresholds: Any, evidence: Evidence
) -> AuditScores:
    """(n, n_labels) probabilities of a model on the audits, its labels, the audits' true labels, its
    certified thresholds (`ClassThresholds`) and their `Evidence` -> its `AuditScores`. An audit whose
    label the model does not know is an error."""
    if len(y) != evidence.n_audits:
        raise GateError(f"{len(y)} audits, but the certificate rests on {evidence.n_audits}")
    if not len(y):
        return AuditScores(np.empty(0, dtype=np.bool_), np.empty(0, dtype=np.bool_), evidence)
    predicted = np.asarray(labels, dtype=object)[np.argmax(proba, axis=1)]
    correct = np.asarray(predicted == np.asarray(list(y), dtype=object), dtype=np.bool_)
    return AuditScores(correct, np.asarray(thresholds.accept_mask(proba), dtype=np.bool_), evidence)


@dataclass(frozen=True)
class PairedTest:
    metric: str
    test: str  # which paired test, in words
    challenger: float  # the challenger's metric (stream-level estimate)
    champion: float
    difference: float  # challenger - champion
    low: float  # 95% interval of the difference
    high: float
    margin: float
    p_value: float  # one-sided, H0: difference >= -margin
    worse: bool  # p_value < level

    def describe(self) -> str:
        return (
            f"{self.metric} {self.champion:.4f} -> {self.challenger:.4f} "
            f"(paired difference {self.difference:+.4f}, 95% CI [{self.low:+.4f}, {self.high:+.4f}], "
            f"p = {self.p_value:.3g} for 'worse by more than {self.margin:.3g}', {self.test})"
        )


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    tests: tuple[PairedTest, ...] = ()


def paired_test(
    metric: str,
    challenger: ArrayLike,
    champion: ArrayLike,
    weights: ArrayLike,
    *,
    margin: float,
    level: float,
) -> PairedTest:
    """One weighted paired z-test (module docstring). Arrays are (n,) per-audit values."""
    a = np.asarray(challenger, dtype=np.float64)
    b = np.asarray(champion, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if not (a.shape == b.shape == w.shape) or a.ndim != 1:
        raise GateError(f"paired arrays differ in shape: {a.shape}, {b.shape}, weights {w.shape}")
    if a.size == 0:
        raise GateError("no audits to compare on")
    if not np.all(np.isfinite(w) & (w > 0)):
        raise GateError("weights must be finite and > 0")
    total = float(w.sum())
    d = a - b
    diff = float((w * d).sum() / total)
    se = float(math.sqrt(float((w**2 * (d - diff) ** 2).sum())) / total)
    # With every pair identical (se 0) the challenger is worse exactly when that difference is < -margin.
    constant = 0.0 if diff < -margin else 1.0
    p_value = float(norm.cdf((diff + margin) / se)) if se > 0 else constant
    return PairedTest(
        metric=metric,
        test="paired z-test",
        challenger=float((w * a).sum() / total),
        champion=float((w * b).sum() / total),
        difference=diff,
        low=diff - 1.96 * se,
        high=diff + 1.96 * se,
        margin=float(margin),
        p_value=p_value,
        worse=p_value < level,
    )


def bootstrap_coverage_test(
    challenger: Evidence,
    champion: Evidence,
    *,
    margin: float,
    level: float,
    draws: int = 200,
    seed: int = 0,
) -> PairedTest:
    """Paired stratified bootstrap of the certified coverage (module docstring): both models
    re-certified on the same ``draws`` re-drawn audit samples. The seed is fixed so a decision can be
    reproduced from the same audits."""
    if challenger.n_audits != champion.n_audits or not np.array_equal(challenger.strata, champion.strata):
        raise GateError(
            f"the two certificates rest on different audits ({challenger.n_audits} vs {champion.n_audits})"
        )
    if challenger.n_audits == 0:
        raise GateError("no audits to compare on")
    if draws < 1:
        raise GateError(f"bootstrap draws must be >= 1, got {draws}")
    # Row 0: the audits as drawn; the other rows: the re-draws. One certification call per model.
    multiplicity = np.vstack(
        [
            np.ones((1, challenger.n_audits)),
            resample_audits(challenger.strata, draws, np.random.default_rng(seed)),
        ]
    )
    challenger_cov, champion_cov = (
        certified_coverage(challenger, multiplicity),
        certified_coverage(champion, multiplicity),
    )
    a, b = float(challenger_cov[0]), float(champion_cov[0])
    diffs = challenger_cov[1:] - champion_cov[1:]
    p_value = float((1 + np.count_nonzero(diffs >= -margin)) / (draws + 1))
    low, high = np.quantile(diffs, [0.025, 0.975])
    return PairedTest(
        metric="certified coverage",
        test=f"paired bootstrap, {draws} re-certifications",
        challenger=a,
        champion=b,
        difference=a - b,
        low=float(low),
        high=float(high),
        margin=float(margin),
        p_value=p_value,
        worse=p_value < level,
    )


def paired_gate(
    challenger: AuditScores,
    champion: AuditScores,
    inclusion: ArrayLike,
    *,
    accuracy_margin: float = 0.01,
    coverage_margin: float = 0.02,
    alpha: float = 0.05,
    bootstrap_draws: int = 200,
) -> GateDecision:
    """Promote unless the challenger is significantly worse on accuracy or on certified coverage.

    Both `AuditScores` are on the same audits, whose inclusion probabilities are ``inclusion`` (n,).
    """
    pi = np.asarray(inclusion, dtype=np.float64)
    if not np.all((pi > 0) & (pi <= 1)):
        raise GateError("inclusion probabilities must lie in (0, 1]")
    level = alpha / 2
    tests = (
        paired_test(
            "accuracy", challenger.correct, champion.correct, 1.0 / pi, margin=accuracy_margin, level=level
        ),
        bootstrap_coverage_test(
            challenger.evidence,
            champion.evidence,
            margin=coverage_margin,
            level=level,
            draws=bootstrap_draws,
        ),
    )
    worse = [t for t in tests if t.worse]
    summary = "; ".join(t.describe() for t in tests)
    n = int(pi.size)
    if worse:
        names = " and ".join(t.metric for t in worse)
        return GateDecision(
            False, f"significantly worse on {names} (on {n} audits, level {level:.3g}): {summary}", tests
        )
    return GateDecision(True, f"not significantly worse (on {n} audits): {summary}", tests)


@dataclass(frozen=True)
class GatePolicy:
    """The gate's margins and level (production: `RetrainSettings`), applied by `decide`."""

    accuracy_margin: float = 0.01
    coverage_margin: float = 0.02
    alpha: float = 0.05
    bootstrap_draws: int = 200

    def decide(
        self, challenger: AuditScores, champion: AuditScores | None, inclusion: ArrayLike
    ) -> GateDecision:
        """Promote when there is no champion or no audit yet; otherwise `paired_gate`."""
        if champion is None:
            return GateDecision(True, "no champion to beat")
        pi = np.asarray(inclusion, dtype=np.float64)
        if not pi.size:
            return GateDecision(
                True, "no reviewed audits yet to compare on: the challenger is certified on none"
            )
        return paired_gate(
            challenger,
            champion,
            pi,
            accuracy_margin=self.accuracy_margin,
            coverage_margin=self.coverage_margin,
            alpha=self.alpha,
            bootstrap_draws=self.bootstrap_draws,
        )
