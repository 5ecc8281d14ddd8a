"""Certified auto-accept thresholds from a stratified audit sample.

The labels that certify a model are **audits**: stream items drawn at routing time with a known
inclusion probability ``pi > 0`` that the model was not trained on (`learner.loop.AuditPolicy`: denser
in the confidence band where candidate thresholds lie). Items drawn with the same ``pi`` form a
**stratum**: within it, the audits are a uniform (Bernoulli) sample of the stream items of that
stratum, so their error rate estimates the stratum's without bias. What is *not* sampled is still
known: the model's confidence on every stream item (no label needed), hence for every candidate
threshold ``t`` the number ``N_s(t)`` of stream items of stratum ``s`` it would accept.

The error rate of everything accepted at ``t`` is ``sum_s N_s(t) r_s(t) / sum_s N_s(t)``, with
``r_s(t)`` the error rate of stratum ``s`` among accepted items. Two guarantees (`GUARANTEES`):

``high_probability``
    ``P(accuracy of auto-accepted items >= target) >= 1 - delta`` over the audit draw. For each
    candidate ``t``, every *tested* stratum (one holding at least ``min_stratum_share`` of the audits)
    gets a one-sided exact Clopper–Pearson upper bound on ``r_s(t)`` at level ``delta / n_tested``;
    every other stratum is counted as all wrong (bound 1: sparse strata cost coverage, never validity).
    ``t`` is certified when ``sum_s N_s(t) * upper_s(t) <= (1 - target) * sum_s N_s(t)``. Candidates
    are walked strict -> lenient (fixed-sequence testing, Learn-then-Test: no multiplicity correction
    over thresholds). Where the walk starts matters for power: real catalogs keep 2-3% label noise
    even among the most confident items, so a walk started on a few dozen audits dies at its first
    error, and one started too leniently fails at once. The walk starts at the first candidate whose
    tested strata accept ``max(start_factor * n_min, start_share * audits)`` audits: counts only, never
    correctness, so the start costs no validity. (Choosing the start on a held-apart quarter of the
    audits was measured too, and lost more power than it gained.)
``expected``
    ``E[error rate among auto-accepted items] <= 1 - target``: conformal selection / BH (Jin & Candès,
    JMLR 2023) per stratum. The most lenient ``t`` whose estimated error proportion
    ``sum_s N_s(t) (e_s(t) + 1) / (n_s(t) + 1) / sum_s N_s(t)`` is <= ``1 - target`` is taken (``e, n``:
    errors and audits accepted in stratum ``s``; the ``+ 1`` is the conformal correction, and it makes a
    stratum without audits count as all wrong).

Why not an importance-weighted betting e-process (Waudby-Smith & Ramdas; Xu et al.)? Its bet must
keep every wealth factor positive for the *largest* weight, so dense sampling in the band shrinks the
bet on exactly the audits that matter; on bigbasket at 800-1,200 audits it certified nothing in most
draws where this test certifies 0.4-0.6 of the oracle coverage (experiments/results/loop/FINDINGS.md).

Everything here is a vectorized pure function over arrays.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.stats import beta as beta_dist

from learner.calibration import check_labels, check_proba
from learner.exceptions import LearnerError
from learner.thresholds import ClassThresholds, default_candidates

Guarantee = Literal["high_probability", "expected"]
GUARANTEES: tuple[str, ...] = ("high_probability", "expected")


class CertificationError(LearnerError):
    """Audit or stream arrays that cannot be certified on (shapes, unknown strata)."""


def _strata(values: ArrayLike, n: int, name: str) -> NDArray[np.int64]:
    s = np.asarray(values)
    if s.shape != (n,) or (n and not np.issubdtype(s.dtype, np.integer)):
        raise CertificationError(f"{name} must be ({n},) integers, got shape {s.shape}, dtype {s.dtype}")
    if n and s.min() < 0:
        raise CertificationError(f"{name} must be >= 0, got {int(s.min())}")
    return s.astype(np.int64)


def accepted_counts(conf: NDArray[np.float64], grid: NDArray[np.float64]) -> NDArray[np.intp]:
    """For each candidate t (strictest first): how many of `conf` are >= t."""
    return np.searchsorted(np.sort(-conf), -grid, side="right")


def _per_stratum(
    conf: NDArray[np.float64], strata: NDArray[np.int64], n_strata: int, grid: NDArray[np.float64]
) -> NDArray[np.int64]:
    """(n_candidates, n_strata) accepted counts per stratum."""
    out = np.zeros((grid.size, n_strata), dtype=np.int64)
    for s in range(n_strata):
        out[:, s] = accepted_counts(conf[strata == s], grid)
    return out


def _stratified_bound(
    n_acc: NDArray[np.int64],
    e_acc: NDArray[np.int64],
    n_stream: NDArray[np.int64],
    tested: NDArray[np.bool_],
    level: float,
) -> NDArray[np.float64]:
    """(n_candidates,) upper bound on the stream error rate among accepted items: Clopper–Pearson at
    `level` in each tested stratum, 1 (all wrong) in the others, weighted by accepted stream counts."""
    upper = np.ones(n_acc.shape, dtype=np.float64)
    has = (n_acc > 0) & tested[None, :]
    upper[has] = beta_dist.ppf(1.0 - level, e_acc[has] + 1, n_acc[has] - e_acc[has])
    total = n_stream.sum(axis=1)
    out: NDArray[np.float64] = np.where(total > 0, (n_stream * upper).sum(axis=1) / np.maximum(total, 1), 1.0)
    return out


def band_low(stream_confidence: ArrayLike, band_share: float) -> float:
    """Lower edge of the audit band: the confidence above which the ``band_share`` most confident
    stream items lie, under the model that will route (measured when it is certified)."""
    conf = np.asarray(stream_confidence, dtype=np.float64)
    if conf.size == 0:
        return 0.0
    return float(np.quantile(conf, 1.0 - band_share))


def certify_thresholds(
    proba: ArrayLike,
    y: ArrayLike,
    strata: ArrayLike,
    stream_confidence: ArrayLike,
    stream_strata: ArrayLike,
    *,
    n_classes: int | None = None,
    guarantee: str = "high_probability",
    target: float = 0.95,
    delta: float = 0.05,
    min_stratum_share: float = 0.2,
    start_factor: int = 1,
    start_share: float = 0.25,
    candidates: ArrayLike | None = None,
) -> ClassThresholds:
    """One certified threshold for all classes (see the module docstring for the statement).

    Parameters
    ----------
    proba : (n_audits, n_classes) calibrated probabilities of the model being certified, on audits it
        was not trained on
    y : (n_audits,) true class indices; -1 = a class the model does not know (always an error)
    strata : (n_audits,) stratum of each audit (items drawn with the same probability share one)
    stream_confidence : (n_stream,) the same model's top-class confidence on every stream item the
        audits were drawn from (audited or not; audits included)
    stream_strata : (n_stream,) their strata
    guarantee : one of `GUARANTEES`
    min_stratum_share : high_probability: strata holding fewer audits than this share count as all wrong
    start_factor, start_share : the high_probability walk never starts before a candidate accepting
        ``max(start_factor * n_min, start_share * audits)`` audits
    candidates : threshold grid fixed before seeing the data (default `learner.thresholds.default_candidates`)

    Returns
    -------
    ClassThresholds
        The same threshold for every class (``inf`` = nothing certified); ``extra`` says why, with the
        accepted share of the stream, the audits and errors behind it and the certified bound.
    """
    p = check_proba(proba)
    raw = np.asarray(y)
    unknown = raw == -1 if raw.shape == (p.shape[0],) else np.zeros(p.shape[0], dtype=bool)
    labels = check_labels(np.where(unknown, 0, raw), p.shape[0], p.shape[1])
    if n_classes is not None and n_classes != p.shape[1]:
        raise CertificationError(f"proba has {p.shape[1]} classes, n_classes is {n_classes}")
    s_audit = _strata(strata, p.shape[0], "strata")
    conf_stream = np.asarray(stream_confidence, dtype=np.float64)
    if conf_stream.ndim != 1 or not np.all(np.isfinite(conf_stream)):
        raise CertificationError(f"stream_confidence must be 1-D and finite, got shape {conf_stream.shape}")
    s_stream = _strata(stream_strata, conf_stream.shape[0], "stream_strata")
    if guarantee not in GUARANTEES:
        raise ValueError(f"guarantee must be one of {', '.join(GUARANTEES)}, got {guarantee!r}")
    for name, value in (("target", target), ("delta", delta)):
        if not 0.0 < float(value) < 1.0:
            raise ValueError(f"{name} must be strictly between 0 and 1, got {value!r}")
    n_strata = int(max(s_audit.max(initial=-1), s_stream.max(initial=-1)) + 1)
    missing = sorted(set(np.unique(s_audit).tolist()) - set(np.unique(s_stream).tolist()))
    if missing:
        raise CertificationError(
            f"audit strata {missing} have no stream items: the stream must include the audits"
        )
    grid = (
        default_candidates() if candidates is None else np.unique(np.asarray(candidates, float))[::-1].copy()
    )
    eps = 1.0 - float(target)
    pred = np.argmax(p, axis=1)
    conf = p[np.arange(p.shape[0]), pred]
    wrong = (pred != labels) | unknown

    n_acc = _per_stratum(conf, s_audit, n_strata, grid)  # audits accepted, per stratum
    e_acc = _per_stratum(conf[wrong], s_audit[wrong], n_strata, grid)  # ... of which wrong
    n_stream = _per_stratum(conf_stream, s_stream, n_strata, grid)  # stream items accepted
    total = n_stream.sum(axis=1)
    audits_per_stratum = np.bincount(s_audit, minlength=n_strata)
    extra: dict[str, Any] = {
        "guarantee": guarantee,
        "n_audits": int(p.shape[0]),
        "n_stream": int(conf_stream.size),
        "audits_per_stratum": audits_per_stratum.tolist(),
        "stream_per_stratum": np.bincount(s_stream, minlength=n_strata).tolist(),
        "n_candidates": int(grid.size),
    }

    if guarantee == "expected":
        with np.errstate(invalid="ignore", divide="ignore"):
            err = np.where(n_stream > 0, n_stream * (e_acc + 1) / (n_acc + 1), 0.0).sum(axis=1)
            estimate = np.where(total > 0, err / np.maximum(total, 1), np.inf)
        ok = (estimate <= eps) & (total > 0)
        k = int(np.flatnonzero(ok)[-1]) if ok.any() else None
        bound = None if k is None else float(estimate[k])
        reason = (
            "certified" if k is not None else f"no threshold has an estimated error proportion <= {eps:.4g}"
        )
        method = "stratified_conformal_selection"
    else:
        tested = (audits_per_stratum >= min_stratum_share * max(int(p.shape[0]), 1)) & (
            audits_per_stratum > 0
        )
        level = float(delta) / max(int(tested.sum()), 1)
        n_min = max(1, math.ceil(math.log(level) / math.log(float(target))))
        bound_t = _stratified_bound(n_acc, e_acc, n_stream, tested, level)
        start = max(start_factor * n_min, math.ceil(start_share * int(n_acc[-1, tested].sum())))
        testable = n_acc[:, tested].sum(axis=1) >= start
        extra.update(tested_strata=np.flatnonzero(tested).tolist(), level=level, walk_start=start)
        k = None
        if not testable.any():
            reason = f"no candidate accepts the {start} audits the walk starts at"
        else:
            first = int(np.argmax(testable))
            passed = bound_t[first:] <= eps
            n_passed = int(np.argmin(passed)) if not passed.all() else int(passed.size)
            if n_passed == 0:
                reason = (
                    f"strictest testable threshold {grid[first]:.6g} not certified: error bound "
                    f"{bound_t[first]:.4f} > {eps:.4g} ({int(e_acc[first].sum())} errors in "
                    f"{int(n_acc[first].sum())} audits)"
                )
            else:
                k = first + n_passed - 1
                reason = "certified"
        bound = None if k is None else float(bound_t[k])
        method = "stratified_clopper_pearson_fixed_sequence"

    threshold = np.inf if k is None else float(grid[k])
    extra["reason"] = reason
    if k is not None:
        extra.update(
            threshold=threshold,
            error_bound=bound,
            stream_accepted_share=float(total[k] / max(conf_stream.size, 1)),
            audits_accepted=int(n_acc[k].sum()),
            audit_errors_accepted=int(e_acc[k].sum()),
        )
    return ClassThresholds(
        thresholds=np.full(p.shape[1], threshold, dtype=np.float64),
        target=float(target),
        delta=float(delta),
        n_calibration=np.bincount(pred, minlength=p.shape[1]).astype(np.int64),
        method=method,
        extra=extra,
    )
