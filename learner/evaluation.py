"""Offline evaluation: accuracy, macro-F1, calibration and selective (auto-accept) performance."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from learner.calibration import check_labels, check_proba, expected_calibration_error
from learner.thresholds import LEGACY_ACCEPTANCE_SCORE, ClassThresholds, acceptance_confidence


def _check_pair(
    y: ArrayLike, pred: ArrayLike, n_classes: int | None = None
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    p_arr = np.asarray(pred)
    if p_arr.ndim != 1 or p_arr.shape[0] == 0:
        raise ValueError(f"pred must be 1-D with at least one item, got shape {p_arr.shape}")
    # Without a label-space size any non-negative index is valid; the bound only has to exceed them all.
    bound = np.iinfo(np.intp).max if n_classes is None else n_classes
    labels = check_labels(y, p_arr.shape[0], bound)
    predicted = check_labels(p_arr, p_arr.shape[0], bound, name="pred")
    return labels, predicted


def accuracy(y: ArrayLike, pred: ArrayLike) -> float:
    """Share of items with ``pred == y``.

    Parameters
    ----------
    y, pred : array_like of int, shape (n_items,)
        True and predicted class indices; ``n_items >= 1``.
    """
    labels, predicted = _check_pair(y, pred)
    return float(np.mean(labels == predicted))


def macro_f1(y: ArrayLike, pred: ArrayLike, n_classes: int) -> float:
    """Unweighted mean of per-class F1 over the classes present in ``y`` or ``pred``.

    Classes absent from both are left out rather than counted as 0 or 1: they carry no evidence either
    way, and counting them would make the score depend on the size of the label space. This matches
    ``sklearn.metrics.f1_score(y, pred, average="macro")`` with its default ``labels``.

    Parameters
    ----------
    y, pred : array_like of int, shape (n_items,)
    n_classes : int
        Size of the label space; indices must lie in ``[0, n_classes)``.
    """
    labels, predicted = _check_pair(y, pred, n_classes)
    tp = np.bincount(labels[labels == predicted], minlength=n_classes)
    support = np.bincount(labels, minlength=n_classes)
    predicted_count = np.bincount(predicted, minlength=n_classes)
    # F1 = 2TP / (2TP + FP + FN) = 2TP / (support + predicted count); 0 there means the class is absent.
    denom = support + predicted_count
    present = denom > 0
    return float(np.mean(2.0 * tp[present] / denom[present]))


def _top_and_correct(
    proba: ArrayLike, y: ArrayLike, score: str
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Acceptance confidence (`score`) and correctness of each item's top label, both (n_items,)."""
    p = check_proba(proba)
    labels = check_labels(y, p.shape[0], p.shape[1])
    return acceptance_confidence(p, score), np.argmax(p, axis=1) == labels


def selective_curve(score: ArrayLike, correct: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Selective risk against coverage when accepting items by decreasing `score`.

    One point per distinct score: items tied on score cannot be separated by any threshold, so a point
    inside a tie would not correspond to an achievable accept rule.

    Parameters
    ----------
    score : array_like, shape (n_items,)
        Any acceptance score (higher = accept first); only its order matters.
    correct : array_like of bool, shape (n_items,)
        Whether the item's predicted label is right.

    Returns
    -------
    coverage : ndarray of float64, shape (n_points,)
        Share of items with score ``>=`` the point's score; strictly increasing, ends at 1.
    risk : ndarray of float64, shape (n_points,)
        Error rate among those items.
    """
    s = np.asarray(score, dtype=np.float64)
    ok = np.asarray(correct, dtype=np.bool_)
    if s.ndim != 1 or s.shape != ok.shape:
        raise ValueError(f"score and correct must be 1-D of one length, got {s.shape} and {ok.shape}")
    if s.shape[0] == 0:
        raise ValueError("need at least one item, got 0")
    if not np.isfinite(s).all():
        raise ValueError(f"scores must be finite, {int((~np.isfinite(s)).sum())} are not")
    order = np.argsort(-s, kind="stable")
    s_desc, ok_desc = s[order], ok[order]
    n = s_desc.shape[0]
    cum_errors = np.cumsum(~ok_desc)
    # Last position of each run of equal scores in the descending order.
    ends = np.flatnonzero(np.append(s_desc[1:] != s_desc[:-1], True))
    accepted = ends + 1
    coverage = accepted / n
    risk = cum_errors[ends] / accepted
    return coverage.astype(np.float64), risk.astype(np.float64)


def curve_area(coverage: ArrayLike, risk: ArrayLike) -> float:
    """AURC of a `selective_curve`: the step integral of risk over coverage (lower is better).

    Each item contributes the risk of the smallest achievable accept set that contains it, so the
    value depends only on accuracy and on how the score ranks the items.
    """
    c = np.asarray(coverage, dtype=np.float64)
    r = np.asarray(risk, dtype=np.float64)
    return float((r * np.diff(c, prepend=0.0)).sum())


def curve_coverage_at(coverage: ArrayLike, risk: ArrayLike, target: float) -> float:
    """Largest coverage of a `selective_curve` whose selective accuracy is ``>= target`` (0.0 if none)."""
    if not (0.0 <= target <= 1.0):
        raise ValueError(f"target must lie in [0, 1], got {target!r}")
    c = np.asarray(coverage, dtype=np.float64)
    # A tiny tolerance so that e.g. 19/20 counts as meeting 0.95 despite float round-off.
    ok = (1.0 - np.asarray(risk, dtype=np.float64)) >= target - 1e-12
    return float(c[ok].max()) if ok.any() else 0.0


def risk_coverage_curve(
    proba: ArrayLike, y: ArrayLike, score: str = LEGACY_ACCEPTANCE_SCORE
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """`selective_curve` of an acceptance confidence (`learner.thresholds.acceptance_confidence`).

    Parameters
    ----------
    proba : array_like, shape (n_items, n_classes)
    y : array_like of int, shape (n_items,)
    score : one of `learner.thresholds.ACCEPTANCE_SCORES`
    """
    return selective_curve(*_top_and_correct(proba, y, score))


def aurc(proba: ArrayLike, y: ArrayLike, score: str = LEGACY_ACCEPTANCE_SCORE) -> float:
    """Area under the risk-coverage curve of an acceptance confidence (`curve_area`)."""
    return curve_area(*risk_coverage_curve(proba, y, score))


def coverage_at_accuracy(
    proba: ArrayLike, y: ArrayLike, target: float, score: str = LEGACY_ACCEPTANCE_SCORE
) -> float:
    """Largest coverage of a global confidence threshold whose selective accuracy is ``>= target``.

    This is the in-sample (oracle) optimum for one threshold shared by all classes, a yardstick for
    the guaranteed per-class rule, not a rule to deploy.

    Returns
    -------
    float
        In [0, 1]; 0.0 when even the most confident items miss ``target``.
    """
    return curve_coverage_at(*risk_coverage_curve(proba, y, score), target)


@dataclass(frozen=True)
class EvaluationReport:
    """Headline metrics of one model on one labelled set.

    ``auto_accept_accuracy`` is NaN when nothing was auto-accepted (no thresholds, or every item below
    its class threshold): an accuracy over zero items is undefined, and 0 or 1 would both mislead.
    ``to_dict`` turns NaN into ``None``.
    """

    accuracy: float
    macro_f1: float
    ece: float
    target: float
    coverage_at_target: float
    auto_accept_coverage: float
    auto_accept_accuracy: float
    n_items: int
    n_auto_accepted: int

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form: non-finite floats become ``None`` (strict JSON has no NaN)."""
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            if isinstance(value, float):
                out[key] = value if math.isfinite(value) else None
            else:
                out[key] = int(value)
        return out


def evaluate(
    proba: ArrayLike,
    y: ArrayLike,
    thresholds: ClassThresholds | None,
    target: float,
    *,
    n_bins: int = 15,
) -> EvaluationReport:
    """Evaluate calibrated probabilities against true labels.

    Parameters
    ----------
    proba : array_like, shape (n_items, n_classes)
        Calibrated probabilities on a labelled evaluation set (not the calibration set the thresholds
        were fitted on, or the auto-accept numbers are optimistic).
    y : array_like of int, shape (n_items,)
    thresholds : ClassThresholds or None
        The auto-accept rule; ``None`` means nothing is auto-accepted.
    target : float
        Accuracy target for ``coverage_at_target``.
    n_bins : int
        Bins for the ECE.

    Returns
    -------
    EvaluationReport
    """
    p = check_proba(proba)
    labels = check_labels(y, p.shape[0], p.shape[1])
    if p.shape[0] == 0:
        raise ValueError("evaluate needs at least one item, got 0")
    pred = np.argmax(p, axis=1)
    correct = pred == labels
    accepted: NDArray[np.bool_]
    if thresholds is None:
        accepted = np.zeros(p.shape[0], dtype=np.bool_)
    else:
        if thresholds.thresholds.shape != (p.shape[1],):
            raise ValueError(
                f"thresholds cover {thresholds.thresholds.shape[0]} classes, proba has {p.shape[1]}"
            )
        accepted = thresholds.accept_mask(p)
    n_accepted = int(accepted.sum())
    return EvaluationReport(
        accuracy=float(correct.mean()),
        macro_f1=macro_f1(labels, pred, p.shape[1]),
        ece=expected_calibration_error(p, labels, n_bins),
        target=float(target),
        # The oracle of the rule in force: one threshold on the score these thresholds apply to.
        coverage_at_target=coverage_at_accuracy(
            p, labels, target, LEGACY_ACCEPTANCE_SCORE if thresholds is None else thresholds.score
        ),
        auto_accept_coverage=n_accepted / p.shape[0],
        auto_accept_accuracy=float(correct[accepted].mean()) if n_accepted else math.nan,
        n_items=int(p.shape[0]),
        n_auto_accepted=n_accepted,
    )
