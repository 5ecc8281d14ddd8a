"""Per-class confidence thresholds with a finite-sample accuracy guarantee.

Two modes (`THRESHOLD_MODES`):

- ``per_class`` (`fit_class_thresholds`): each class gets its own fixed-sequence Clopper–Pearson
  threshold, or none when it has too little calibration data (>= 59 accepted items at 0.95 / 0.05).
- ``pooled`` (`fit_pooled_thresholds`): classes with at least ``per_class_min`` calibration
  predictions get their own threshold; all the other classes share ONE threshold fitted on their
  calibration items together. Both parts run at delta / 2 (the per-class part Bonferroni-split over its
  classes), so the population accuracy of everything auto-accepted is >= target with probability
  >= 1 - delta, while small classes are no longer shut out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.stats import beta as beta_dist
from scipy.stats import binom

from learner.calibration import check_labels, check_proba

THRESHOLD_MODES: tuple[str, ...] = ("per_class", "pooled")
# What a threshold is compared with (`acceptance_confidence`). A bundle records its own, so a bundle
# certified before "pairwise" existed keeps the top-class probability its thresholds were fitted on.
ACCEPTANCE_SCORES: tuple[str, ...] = ("top_probability", "pairwise")
LEGACY_ACCEPTANCE_SCORE = "top_probability"


def check_acceptance_score(score: str) -> str:
    """`score` if it names one of `ACCEPTANCE_SCORES`; ValueError listing them otherwise."""
    if score not in ACCEPTANCE_SCORES:
        raise ValueError(
            f"unknown acceptance score {score!r}; expected one of {', '.join(ACCEPTANCE_SCORES)}"
        )
    return score


def acceptance_confidence(proba: NDArray[np.floating[Any]], score: str) -> NDArray[np.float64]:
    """(n, n_classes) calibrated probabilities -> (n,) the confidence an auto-accept threshold applies to.

    ``top_probability``: p1, the predicted class's probability. ``pairwise``: p1 / (p1 + p2), the
    predicted class's probability in a two-way contest with the runner-up (= sigmoid of the top-two
    logit gap over the temperature; in [0.5, 1]). With dozens of classes, p1 is lowered by mass spread
    over classes that were never in question, so it ranks items by how crowded the tail is as much as
    by the one confusion that matters; the pairwise score ranks by that confusion alone, and accepts
    more at the same accuracy on both real catalogs, with random and with actively picked labels
    (experiments/results/learner). With two classes the two scores coincide.
    """
    check_acceptance_score(score)
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"proba must be 2-D (n, n_classes), got shape {p.shape}")
    if p.shape[0] == 0:
        return np.empty(0, dtype=np.float64)
    if score == "top_probability" or p.shape[1] == 1:
        return np.asarray(p.max(axis=1), dtype=np.float64)
    top_two = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]
    first, second = top_two.max(axis=1), top_two.min(axis=1)
    total = first + second
    # A row whose two largest probabilities underflowed to 0 carries no preference: 0.5.
    return np.asarray(np.where(total > 0, first / np.where(total > 0, total, 1.0), 0.5), dtype=np.float64)


@dataclass(frozen=True)
class ClassThresholds:
    """Auto-accept rule: an item predicted as class c is accepted when its confidence >= thresholds[c].

    `np.inf` means the class is never auto-accepted (too little calibration data, or no threshold passed
    the test).
    """

    thresholds: NDArray[np.float64]  # (n_classes,)
    target: float
    delta: float
    n_calibration: NDArray[np.int64]  # (n_classes,) calibration items predicted as each class
    method: str = "fixed_sequence_clopper_pearson"
    extra: dict[str, Any] = field(default_factory=dict)
    score: str = LEGACY_ACCEPTANCE_SCORE  # what the thresholds apply to (`acceptance_confidence`)

    def __post_init__(self) -> None:
        check_acceptance_score(self.score)

    def confidence(self, proba: NDArray[np.floating[Any]]) -> NDArray[np.float64]:
        """(n, n_classes) calibrated probabilities -> (n,) the confidence these thresholds apply to."""
        return acceptance_confidence(proba, self.score)

    def accept_mask(self, proba: NDArray[np.floating[Any]]) -> NDArray[np.bool_]:
        """(n, n_classes) calibrated probabilities -> (n,) True where the item is auto-accepted."""
        return self.accepts(self.confidence(proba), np.argmax(proba, axis=1))

    def accepts(self, confidence: NDArray[np.float64], predicted: NDArray[np.intp]) -> NDArray[np.bool_]:
        """`accept_mask` for a caller that already holds (n,) `confidence` and (n,) predicted class."""
        return np.asarray(confidence >= self.thresholds[predicted], dtype=np.bool_)

    def to_dict(self) -> dict[str, Any]:
        return {
            "thresholds": [None if not np.isfinite(t) else float(t) for t in self.thresholds],
            "target": self.target,
            "delta": self.delta,
            "n_calibration": [int(n) for n in self.n_calibration],
            "method": self.method,
            "extra": self.extra,
            "score": self.score,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassThresholds:
        return cls(
            thresholds=np.array([np.inf if t is None else t for t in data["thresholds"]], dtype=np.float64),
            target=float(data["target"]),
            delta=float(data["delta"]),
            n_calibration=np.array(data["n_calibration"], dtype=np.int64),
            method=str(data["method"]),
            extra=dict(data.get("extra", {})),
            score=str(data.get("score", LEGACY_ACCEPTANCE_SCORE)),
        )


def default_candidates() -> NDArray[np.float64]:
    """The fixed candidate grid, strictest first: steps of 0.005 on [0, 1], 0.001 on [0.8, 1], plus
    log-spaced points up to ``1 - 1e-6``, where softmax confidences of a good model crowd.

    Thresholds that hold ~95% accuracy lie in [0.8, 1] for a calibrated score, and there a step of
    0.005 moves coverage by up to 0.015: measured on both real catalogs, the best threshold on the
    0.005 grid accepted 0.011 less of a test split than the best of all (0.0015 with 0.001 steps).

    Returns
    -------
    ndarray of float64, shape (n_candidates,)
        Strictly decreasing, from 1.0 to 0.0.
    """
    grid = np.concatenate(
        [np.linspace(0.0, 1.0, 201), np.linspace(0.8, 1.0, 201), 1.0 - np.logspace(-6.0, -2.0, 17)]
    )
    # Rounding merges 1 - 1e-2 with the linear grid's 0.99 instead of keeping two points 1e-16 apart.
    out: NDArray[np.float64] = np.unique(np.round(grid, 12))[::-1].copy()
    return out


def certification_grid(temperature: float, score: str) -> NDArray[np.float64]:
    """The candidate thresholds a model with this `temperature` is certified on, strictest first:
    `default_candidates` placed on its score at temperature 1, expressed in its calibrated score.

    The temperature is fitted on the very audits that then certify the threshold. On a grid fixed in
    the calibrated score those labels would choose where the candidates fall along the model's
    ranking: a choice, by one parameter, that fixed-sequence testing does not allow. The pairwise
    score at temperature T is ``sigmoid(gap / T)`` (``gap``: the top-two logit gap), a monotone map of
    its value at 1, so on this grid each candidate accepts the same items whatever T is: what is
    tested depends on the head alone. The top-class probability is no function of its value at 1
    (a temperature can reorder items), so it keeps the fixed grid.

    Exact up to float saturation: a score rounds to 1.0 once the gap exceeds ~37 T, so below T ~0.4
    the strictest candidates (those above 1 - 1e-16 once mapped) merge at 1.0, which then accepts
    more than its counterpart at T = 1. The walk starts far below them (a quarter of the audits).
    """
    grid = default_candidates()
    if score != "pairwise" or temperature == 1.0:
        return grid
    inside = grid[(grid > 0.0) & (grid < 1.0)]
    mapped = 1.0 / (1.0 + np.exp(-np.log(inside / (1.0 - inside)) / temperature))
    out: NDArray[np.float64] = np.unique(np.concatenate([[0.0, 1.0], mapped]))[::-1].copy()
    return out


def min_accepted_to_pass(target: float, delta: float) -> int:
    """Fewest accepted calibration items with which any threshold can pass: even zero errors among
    fewer items leave ``P(0 errors | error rate = 1 - target) = target**n > delta``.

    Returns
    -------
    int
        ``ceil(log(delta) / log(target))``, e.g. 59 for target 0.95, delta 0.05.
    """
    _check_level(target, "target")
    _check_level(delta, "delta")
    n = max(1, math.ceil(math.log(delta) / math.log(target)))
    # Guard the ceil against log round-off on either side of an exact power.
    while n > 1 and target ** (n - 1) <= delta:
        n -= 1
    while target**n > delta:
        n += 1
    return n


def _check_level(value: float, name: str) -> None:
    if not (isinstance(value, int | float | np.floating) and 0.0 < float(value) < 1.0):
        raise ValueError(f"{name} must be a number strictly between 0 and 1, got {value!r}")


def check_candidates(candidates: ArrayLike | None) -> NDArray[np.float64]:
    """The candidate thresholds, strictest first (`default_candidates` for None); ValueError for an
    empty grid or one holding NaN or infinities."""
    if candidates is None:
        return default_candidates()
    c = np.asarray(candidates, dtype=np.float64)
    if c.ndim != 1 or c.size == 0 or not np.all(np.isfinite(c)):
        raise ValueError(f"candidates must be a non-empty 1-D array of finite numbers, got shape {c.shape}")
    out: NDArray[np.float64] = np.unique(c)[::-1].copy()
    return out


def fit_class_thresholds(
    proba: ArrayLike,
    y: ArrayLike,
    *,
    target: float = 0.95,
    delta: float = 0.05,
    min_samples: int = 20,
    candidates: ArrayLike | None = None,
) -> ClassThresholds:
    """Fit per-class auto-accept thresholds by Learn-then-Test fixed-sequence testing.

    For each class ``c``, only calibration items *predicted* as ``c`` are used. Candidate thresholds
    ``t`` are walked from strict (high) to lenient (low). At each, with ``n_t`` items of confidence
    ``>= t`` of which ``e_t`` are wrong, the null hypothesis ``H_t: 1 - acc_c(t) > 1 - target`` is
    tested with the exact binomial p-value ``P(Binom(n_t, 1 - target) <= e_t)`` (equivalently: the
    one-sided ``1 - delta`` Clopper–Pearson upper bound on the error rate is ``<= 1 - target``) and
    rejected when the p-value is ``<= delta``. The walk stops at the first non-rejection; the last
    rejected ``t`` is the class threshold. Testing in an order fixed before seeing the data needs no
    multiplicity correction, because no true null can be rejected unless the first one in the order is.

    Candidates accepting fewer than ``min_accepted_to_pass(target, delta)`` items cannot be rejected
    even with zero errors; they are skipped instead of ending the walk, since otherwise the strictest
    candidates, which accept almost nothing, would end every walk at once.

    Parameters
    ----------
    proba : array_like, shape (n_items, n_classes)
        Probabilities on a held-out calibration set (not the training set, and preferably not the
        temperature-fitting set), from exactly the model and temperature that will be thresholded.
    y : array_like of int, shape (n_items,)
        True class indices.
    target : float
        Required accuracy of accepted items, in (0, 1).
    delta : float
        Allowed probability (over calibration draws) that a class misses ``target``, in (0, 1).
    min_samples : int
        Classes with fewer calibration predictions get ``np.inf`` without testing.
    candidates : array_like, shape (n_candidates,), optional
        Threshold grid; defaults to `default_candidates`. It must not be derived from this calibration
        data, or the guarantee is void.

    Returns
    -------
    ClassThresholds
        ``thresholds[c]`` is ``np.inf`` (never auto-accept) when the class has fewer than
        ``min_samples`` or ``min_accepted_to_pass`` predictions, or when the strictest testable
        candidate is not rejected. ``extra["per_class"][c]`` records ``n_predicted``, ``n_accepted``,
        ``accepted_accuracy`` (empirical, on calibration), ``error_upper_bound`` (Clopper–Pearson, at
        ``1 - delta``) and ``reason``.

    Notes
    -----
    **What is guaranteed.** Let ``acc_c(t) = P(Y = c | predicted c, confidence >= t)`` under the
    distribution the calibration items come from, and ``t_c`` the returned threshold. Assume

    1. calibration items are i.i.d. from that distribution, and so are the items the rule is applied
       to later (no drift, same model and temperature);
    2. ``acc_c(t)`` does not decrease as ``t`` increases along the grid (higher confidence is not less
       accurate). Only the skipping of untestable strict candidates needs this; the plain fixed
       sequence is valid without it.

    Then for each class ``c`` separately, over the draw of the calibration set::

        P( t_c < inf  and  acc_c(t_c) < target )  <=  delta

    exactly, for any calibration size (it even holds conditionally on the number of items predicted
    as ``c``), and whether or not ``proba`` is calibrated. It is about the *population* accuracy of
    items accepted for ``c``; the accuracy realised on a finite batch fluctuates around it.

    It is a *per-class* statement. The chance that some class misses is only bounded by
    ``n_classes * delta``; pass ``delta / n_classes`` for a simultaneous one. If every class meets the
    target, so does the pooled accuracy of all auto-accepted items.

    References: Angelopoulos, Bates, Candès, Jordan, Lei, "Learn then Test: Calibrating Predictive
    Algorithms to Achieve Risk Control" (2021); Clopper & Pearson (1934).
    """
    p = check_proba(proba)
    labels = check_labels(y, p.shape[0], p.shape[1])
    _check_level(target, "target")
    _check_level(delta, "delta")
    if isinstance(min_samples, bool) or not isinstance(min_samples, int | np.integer) or min_samples < 1:
        raise ValueError(f"min_samples must be a positive integer, got {min_samples!r}")
    grid = check_candidates(candidates)
    eps = 1.0 - float(target)
    n_min = min_accepted_to_pass(target, delta)
    n_classes = p.shape[1]

    pred = np.argmax(p, axis=1)
    conf = p[np.arange(p.shape[0]), pred]
    wrong = pred != labels
    n_calibration = np.bincount(pred, minlength=n_classes).astype(np.int64)

    thresholds = np.full(n_classes, np.inf, dtype=np.float64)
    per_class: list[dict[str, Any]] = []
    for c in range(n_classes):
        info: dict[str, Any] = {
            "class": c,
            "n_predicted": int(n_calibration[c]),
            "threshold": None,
            "n_accepted": 0,
            "accepted_accuracy": None,
            "error_upper_bound": None,
        }
        per_class.append(info)
        if n_calibration[c] < min_samples:
            info["reason"] = f"fewer than min_samples={min_samples} calibration predictions"
            continue
        if n_calibration[c] < n_min:
            info["reason"] = f"fewer than {n_min} calibration predictions, too few to ever pass"
            continue
        order = np.argsort(-conf[pred == c], kind="stable")
        conf_desc = conf[pred == c][order]
        errors_desc = np.concatenate([[0], np.cumsum(wrong[pred == c][order])])
        # Items with confidence >= t are exactly the first n_t of the descending order, ties included.
        n_t = np.searchsorted(-conf_desc, -grid, side="right")
        e_t = errors_desc[n_t]
        testable = n_t >= n_min
        if not testable.any():
            info["reason"] = f"no candidate accepts the {n_min} items needed to pass (lowest: {grid[-1]:.6g})"
            continue
        # n_t grows as t falls, so the untestable candidates form a prefix.
        first = int(np.argmax(testable))
        rejected = binom.cdf(e_t[first:], n_t[first:], eps) <= delta
        n_rejected = int(np.argmin(rejected)) if not rejected.all() else int(rejected.size)
        if n_rejected == 0:
            info["reason"] = (
                f"strictest testable threshold {grid[first]:.6g} not rejected "
                f"({int(e_t[first])} errors in {int(n_t[first])})"
            )
            continue
        k = first + n_rejected - 1
        n_acc, e_acc = int(n_t[k]), int(e_t[k])
        thresholds[c] = grid[k]
        info.update(
            threshold=float(grid[k]),
            n_accepted=n_acc,
            accepted_accuracy=1.0 - e_acc / n_acc,
            error_upper_bound=float(beta_dist.ppf(1.0 - delta, e_acc + 1, n_acc - e_acc)),
            reason="passed",
        )

    return ClassThresholds(
        thresholds=thresholds,
        target=float(target),
        delta=float(delta),
        n_calibration=n_calibration,
        extra={
            "per_class": per_class,
            "min_samples": int(min_samples),
            "min_accepted_to_pass": n_min,
            "n_candidates": int(grid.size),
        },
    )


def _walk(
    conf: NDArray[np.float64],
    wrong: NDArray[np.bool_],
    grid: NDArray[np.float64],
    eps: float,
    delta: float,
    n_min: int,
    n_start: int,
) -> tuple[int | None, int, int, str]:
    """The fixed-sequence walk of `fit_class_thresholds` on one group of items, starting at the first
    candidate that accepts at least ``max(n_min, n_start)`` items.

    Returns (index of the threshold in `grid` or None, n_accepted, n_errors, reason).
    """
    order = np.argsort(-conf, kind="stable")
    conf_desc = conf[order]
    errors_desc = np.concatenate([[0], np.cumsum(wrong[order])])
    n_t = np.searchsorted(-conf_desc, -grid, side="right")
    e_t = errors_desc[n_t]
    testable = n_t >= max(n_min, n_start)
    if not testable.any():
        return None, 0, 0, f"no candidate accepts the {max(n_min, n_start)} items the walk starts at"
    first = int(np.argmax(testable))
    rejected = binom.cdf(e_t[first:], n_t[first:], eps) <= delta
    n_rejected = int(np.argmin(rejected)) if not rejected.all() else int(rejected.size)
    if n_rejected == 0:
        return (
            None,
            0,
            0,
            f"strictest testable threshold {grid[first]:.6g} not rejected "
            f"({int(e_t[first])} errors in {int(n_t[first])})",
        )
    k = first + n_rejected - 1
    return k, int(n_t[k]), int(e_t[k]), "passed"


def fit_pooled_thresholds(
    proba: ArrayLike,
    y: ArrayLike,
    *,
    target: float = 0.95,
    delta: float = 0.05,
    per_class_min: int = 200,
    start_factor: int = 2,
    start_share: float = 0.1,
    candidates: ArrayLike | None = None,
) -> ClassThresholds:
    """Per-class thresholds where a class has the data, one pooled threshold for the rest.

    A class with at least `per_class_min` calibration items *predicted* as it is "large": it gets
    its own fixed-sequence Clopper–Pearson threshold at level ``delta / (2 * n_large)``. All other
    classes are "pooled": the items predicted as any of them are walked together, at level
    ``delta / 2``, and the resulting threshold applies to each of them. The split depends only on the
    predicted-class counts, never on correctness, so each test stays valid conditionally on them.

    Each walk starts later than the bare minimum of `min_accepted_to_pass` items, because the first
    test of a fixed sequence has the least power: at the minimum, ONE error among the most confident
    items ends the walk with nothing accepted (seen in simulations once calibration sets reached
    ~1,000 items, and on real catalogs, whose most confident items still hold 2-3% label noise). The
    pooled walk starts at ``max(start_factor * n_min, start_share * n_pool)`` items, a large class's
    at ``max(n_min, start_share * n_class)`` (its Bonferroni level already makes n_min large).
    Where a walk starts depends on the item counts only, never on correctness, so this is exactly as
    valid as skipping the untestable candidates (see `fit_class_thresholds`, Notes).

    Parameters
    ----------
    proba, y, target, delta, candidates : as in `fit_class_thresholds`
    per_class_min : calibration predictions from which a class gets its own threshold
    start_factor, start_share : where the walks start (above)

    Returns
    -------
    ClassThresholds
        ``method = "pooled_fixed_sequence_clopper_pearson"``; ``extra["per_class"][c]["group"]`` is
        ``"class"`` or ``"pool"``, ``extra["pool"]`` describes the pooled walk.

    Notes
    -----
    **What is guaranteed.** Under the exchangeability and monotonicity assumptions of
    `fit_class_thresholds`, with probability at least ``1 - delta`` over the calibration draw, every
    large class's accepted items AND the pooled classes' accepted items (as one group, in the class
    mix of the calibration data) have population accuracy >= target; hence so has the union of all
    auto-accepted items (a mixture of groups each >= target). Union bound: ``n_large * delta /
    (2 * n_large) + delta / 2 = delta``. Unlike the ``per_class`` mode, a single small class inside
    the pool may sit below the target as long as the pool as a whole does not.
    """
    p = check_proba(proba)
    labels = check_labels(y, p.shape[0], p.shape[1])
    _check_level(target, "target")
    _check_level(delta, "delta")
    for name, value in (("per_class_min", per_class_min), ("start_factor", start_factor)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not 0.0 <= start_share < 1.0:
        raise ValueError(f"start_share must be in [0, 1), got {start_share!r}")
    grid = check_candidates(candidates)
    eps = 1.0 - float(target)
    n_classes = p.shape[1]
    pred = np.argmax(p, axis=1)
    conf = p[np.arange(p.shape[0]), pred]
    wrong = pred != labels
    n_calibration = np.bincount(pred, minlength=n_classes).astype(np.int64)
    large = n_calibration >= per_class_min
    n_large = int(large.sum())
    delta_class = delta / (2 * n_large) if n_large else delta / 2
    delta_pool = delta / 2
    n_min_class = min_accepted_to_pass(target, delta_class)
    n_min_pool = min_accepted_to_pass(target, delta_pool)

    thresholds = np.full(n_classes, np.inf, dtype=np.float64)
    per_class: list[dict[str, Any]] = []
    for c in range(n_classes):
        info: dict[str, Any] = {
            "class": c,
            "n_predicted": int(n_calibration[c]),
            "group": "class" if large[c] else "pool",
            "threshold": None,
            "n_accepted": 0,
            "accepted_accuracy": None,
            "error_upper_bound": None,
        }
        per_class.append(info)
        if not large[c]:
            continue
        members = pred == c
        k, n_acc, e_acc, reason = _walk(
            conf[members],
            wrong[members],
            grid,
            eps,
            delta_class,
            n_min_class,
            math.ceil(start_share * int(members.sum())),
        )
        info["reason"] = reason
        if k is not None:
            thresholds[c] = grid[k]
            info.update(
                threshold=float(grid[k]),
                n_accepted=n_acc,
                accepted_accuracy=1.0 - e_acc / n_acc,
                error_upper_bound=float(beta_dist.ppf(1.0 - delta_class, e_acc + 1, n_acc - e_acc)),
            )

    pooled = ~large[pred]
    pool: dict[str, Any] = {
        "classes": int((~large).sum()),
        "n_items": int(pooled.sum()),
        "threshold": None,
        "n_accepted": 0,
        "accepted_accuracy": None,
        "error_upper_bound": None,
    }
    if pooled.sum() >= n_min_pool:
        k, n_acc, e_acc, reason = _walk(
            conf[pooled],
            wrong[pooled],
            grid,
            eps,
            delta_pool,
            n_min_pool,
            max(start_factor * n_min_pool, math.ceil(start_share * int(pooled.sum()))),
        )
        pool["reason"] = reason
        if k is not None:
            thresholds[~large] = grid[k]
            pool.update(
                threshold=float(grid[k]),
                n_accepted=n_acc,
                accepted_accuracy=1.0 - e_acc / n_acc,
                error_upper_bound=float(beta_dist.ppf(1.0 - delta_pool, e_acc + 1, n_acc - e_acc)),
            )
    else:
        pool["reason"] = f"fewer than {n_min_pool} pooled calibration predictions, too few to ever pass"
    for c in np.flatnonzero(~large):
        per_class[c].update(threshold=pool["threshold"], reason=f"pool: {pool['reason']}")

    return ClassThresholds(
        thresholds=thresholds,
        target=float(target),
        delta=float(delta),
        n_calibration=n_calibration,
        method="pooled_fixed_sequence_clopper_pearson",
        extra={
            "per_class": per_class,
            "pool": pool,
            "per_class_min": int(per_class_min),
            "delta_class": delta_class,
            "delta_pool": delta_pool,
            "start_factor": int(start_factor),
            "start_share": float(start_share),
            "n_candidates": int(grid.size),
        },
    )


def fit_thresholds(
    proba: ArrayLike,
    y: ArrayLike,
    *,
    mode: str = "per_class",
    target: float = 0.95,
    delta: float = 0.05,
    min_samples: int = 20,
    per_class_min: int = 200,
) -> ClassThresholds:
    """Dispatch on `mode` (one of `THRESHOLD_MODES`)."""
    if mode == "per_class":
        return fit_class_thresholds(proba, y, target=target, delta=delta, min_samples=min_samples)
    if mode == "pooled":
        return fit_pooled_thresholds(proba, y, target=target, delta=delta, per_class_min=per_class_min)
    raise ValueError(f"threshold mode must be one of {', '.join(THRESHOLD_MODES)}, got {mode!r}")
