"""The promotion gate: a paired, importance-weighted test that noise does not decide.

Challenger and champion are scored on the SAME audits (which neither was trained on), so item-level
differences cancel what the two share. For each audit i with weight ``w_i = 1 / pi_i`` and a per-item
difference ``d_i`` (correctness, or acceptance by each model's own certified threshold), the weighted
mean difference ``D = sum w d / sum w`` estimates the stream-level difference; its standard error is the
ratio estimator's linearisation ``sqrt(sum w^2 (d - D)^2) / sum w``. The challenger is refused on a
metric only when it is significantly worse by more than the metric's margin: the one-sided p-value of
``H0: difference >= -margin`` is below ``alpha / 2`` (the two metrics share ``alpha``, so a challenger as
good as the champion is refused with probability at most ~``alpha``).

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

from learner.exceptions import LearnerError


class GateError(LearnerError):
    """Arrays the gate cannot compare (lengths, weights)."""


@dataclass(frozen=True)
class AuditScores:
    """One model on the gate's audits: is each prediction right, and would it be auto-accepted."""

    correct: NDArray[np.bool_]
    accepted: NDArray[np.bool_]


def audit_scores(
    proba: NDArray[np.float64], labels: Sequence[str], y: Sequence[str], thresholds: Any
) -> AuditScores:
    """(n, n_labels) probabilities of a model on the audits, its labels, the audits' true labels and
    its certified thresholds (`ClassThresholds`) -> its `AuditScores`. An audit whose label the model
    does not know is an error."""
    if not len(y):
        return AuditScores(np.empty(0, dtype=np.bool_), np.empty(0, dtype=np.bool_))
    predicted = np.asarray(labels, dtype=object)[np.argmax(proba, axis=1)]
    correct = np.asarray(predicted == np.asarray(list(y), dtype=object), dtype=np.bool_)
    return AuditScores(correct, np.asarray(thresholds.accept_mask(proba), dtype=np.bool_))


@dataclass(frozen=True)
class PairedTest:
    metric: str
    challenger: float  # weighted mean of the challenger's metric on the audits
    champion: float
    difference: float  # challenger - champion
    standard_error: float
    margin: float
    p_value: float  # one-sided, H0: difference >= -margin
    worse: bool  # p_value < level

    def describe(self) -> str:
        low = self.difference - 1.96 * self.standard_error
        high = self.difference + 1.96 * self.standard_error
        return (
            f"{self.metric} {self.champion:.4f} -> {self.challenger:.4f} "
            f"(paired difference {self.difference:+.4f}, 95% CI [{low:+.4f}, {high:+.4f}], "
            f"p = {self.p_value:.3g} for 'worse by more than {self.margin:.3g}')"
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
        challenger=float((w * a).sum() / total),
        champion=float((w * b).sum() / total),
        difference=diff,
        standard_error=se,
        margin=float(margin),
        p_value=p_value,
        worse=p_value < level,
    )


def paired_gate(
    challenger_correct: ArrayLike,
    champion_correct: ArrayLike,
    challenger_accepted: ArrayLike,
    champion_accepted: ArrayLike,
    inclusion: ArrayLike,
    *,
    accuracy_margin: float = 0.01,
    coverage_margin: float = 0.02,
    alpha: float = 0.05,
) -> GateDecision:
    """Promote unless the challenger is significantly worse on accuracy or on certified coverage.

    Parameters
    ----------
    *_correct : (n,) bool, each model's prediction is right on audit i (an unknown class is wrong)
    *_accepted : (n,) bool, audit i would be auto-accepted by that model's certified thresholds
    inclusion : (n,) the audits' inclusion probabilities
    """
    pi = np.asarray(inclusion, dtype=np.float64)
    if not np.all((pi > 0) & (pi <= 1)):
        raise GateError("inclusion probabilities must lie in (0, 1]")
    w = 1.0 / pi
    level = alpha / 2
    tests = (
        paired_test("accuracy", challenger_correct, champion_correct, w, margin=accuracy_margin, level=level),
        paired_test(
            "certified coverage",
            challenger_accepted,
            champion_accepted,
            w,
            margin=coverage_margin,
            level=level,
        ),
    )
    worse = [t for t in tests if t.worse]
    summary = "; ".join(t.describe() for t in tests)
    n = int(pi.size)
    if worse:
        names = " and ".join(t.metric for t in worse)
        return GateDecision(
            False,
            f"significantly worse on {names} (paired z-test on {n} audits, level {level:.3g}): {summary}",
            tests,
        )
    return GateDecision(True, f"not significantly worse (paired z-test on {n} audits): {summary}", tests)


@dataclass(frozen=True)
class GatePolicy:
    """The gate's margins and level (production: `RetrainSettings`), applied by `decide`."""

    accuracy_margin: float = 0.01
    coverage_margin: float = 0.02
    alpha: float = 0.05

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
            challenger.correct,
            champion.correct,
            challenger.accepted,
            champion.accepted,
            pi,
            accuracy_margin=self.accuracy_margin,
            coverage_margin=self.coverage_margin,
            alpha=self.alpha,
        )
