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

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.stats import beta as beta_dist

from learner.calibration import check_labels, check_proba
from learner.exceptions import LearnerError
from learner.thresholds import (
    LEGACY_ACCEPTANCE_SCORE,
    ClassThresholds,
    acceptance_confidence,
    check_acceptance_score,
    check_candidates,
)

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


def band_low(stream_confidence: ArrayLike, band_share: float) -> float:
    """Lower edge of the audit band: the confidence above which the ``band_share`` most confident
    stream items lie, under the model that will route (measured when it is certified)."""
    conf = np.asarray(stream_confidence, dtype=np.float64)
    if conf.size == 0:
        return 0.0
    return float(np.quantile(conf, 1.0 - band_share))


@dataclass(frozen=True)
class CertifyOptions:
    """The statement certified and the knobs of its test (module docstring)."""

    guarantee: str = "high_probability"  # one of GUARANTEES
    target: float = 0.95
    delta: float = 0.05
    min_stratum_share: float = 0.2  # high_probability: sparser strata count as all wrong
    start_factor: int = 1  # high_probability: the walk never starts before a candidate accepting
    start_share: float = 0.25  # max(start_factor * n_min, start_share * audits) audits
    # What the thresholds apply to (`learner.thresholds.acceptance_confidence`); the stream's
    # confidence must be the same score of the same model.
    score: str = LEGACY_ACCEPTANCE_SCORE

    def __post_init__(self) -> None:
        if self.guarantee not in GUARANTEES:
            raise ValueError(f"guarantee must be one of {', '.join(GUARANTEES)}, got {self.guarantee!r}")
        check_acceptance_score(self.score)
        for name, value in (("target", self.target), ("delta", self.delta)):
            if not 0.0 < float(value) < 1.0:
                raise ValueError(f"{name} must be strictly between 0 and 1, got {value!r}")


@dataclass(frozen=True)
class Evidence:
    """What one model's certificate rests on: enough to certify it again on a re-drawn audit sample
    (the gate's paired bootstrap, `learner.gate`)."""

    confidence: NDArray[np.float64]  # (n_audits,) the model's acceptance confidence on each audit
    predicted: NDArray[np.int64]  # (n_audits,) its predicted class
    wrong: NDArray[np.bool_]  # (n_audits,) its prediction is wrong (a class it does not know is wrong)
    strata: NDArray[np.int64]  # (n_audits,)
    stream_confidence: NDArray[np.float64]  # (n_stream,) the stream items the model was not trained on
    stream_strata: NDArray[np.int64]  # (n_stream,)
    grid: NDArray[np.float64]  # candidate thresholds, strictest first
    options: CertifyOptions
    # Strata of the stream items the model WAS trained on: their confidence is not a fresh item's, so
    # each counts as accepted with its stratum's audit acceptance share (`_counts`).
    trained_strata: NDArray[np.int64] = field(default_factory=lambda: np.empty(0, dtype=np.int64))

    @property
    def n_strata(self) -> int:
        highest = max(self.strata.max(initial=-1), self.stream_strata.max(initial=-1))
        return int(max(highest, self.trained_strata.max(initial=-1)) + 1)

    @property
    def n_stream(self) -> int:
        """Every stream item the audits were drawn from: scored ones and trained-on ones."""
        return int(self.stream_confidence.size + self.trained_strata.size)

    @property
    def n_audits(self) -> int:
        return int(self.confidence.size)

    @functools.cached_property
    def scored_counts(self) -> NDArray[np.float64]:
        """(n_candidates, n_strata) scored stream items each candidate accepts: they do not depend on
        how the audits are re-drawn, so every certification of this evidence shares them."""
        counts: NDArray[np.float64] = _weighted_per_stratum(
            self.stream_confidence,
            self.stream_strata,
            np.ones((1, self.stream_confidence.size)),
            self.n_strata,
            self.grid,
        )[0]
        return counts


def evidence_of(
    proba: ArrayLike,
    y: ArrayLike,
    strata: ArrayLike,
    stream_confidence: ArrayLike,
    stream_strata: ArrayLike,
    *,
    options: CertifyOptions,
    candidates: ArrayLike | None = None,
    trained_strata: ArrayLike | None = None,
) -> Evidence:
    """Validated `Evidence` from a model's calibrated probabilities on the audits (arrays as in
    `certify_thresholds`)."""
    p = check_proba(proba)
    raw = np.asarray(y)
    unknown = raw == -1 if raw.shape == (p.shape[0],) else np.zeros(p.shape[0], dtype=bool)
    labels = check_labels(np.where(unknown, 0, raw), p.shape[0], p.shape[1])
    s_audit = _strata(strata, p.shape[0], "strata")
    conf_stream = np.asarray(stream_confidence, dtype=np.float64)
    if conf_stream.ndim != 1 or not np.all(np.isfinite(conf_stream)):
        raise CertificationError(f"stream_confidence must be 1-D and finite, got shape {conf_stream.shape}")
    s_stream = _strata(stream_strata, conf_stream.shape[0], "stream_strata")
    raw_trained = np.asarray([] if trained_strata is None else trained_strata, dtype=np.int64)
    s_trained = _strata(raw_trained, raw_trained.shape[0], "trained_strata")
    known = set(np.unique(s_stream).tolist()) | set(np.unique(s_trained).tolist())
    missing = sorted(set(np.unique(s_audit).tolist()) - known)
    if missing:
        raise CertificationError(
            f"audit strata {missing} have no stream items: the stream must include the audits"
        )
    grid = check_candidates(candidates)
    pred = np.argmax(p, axis=1)
    return Evidence(
        confidence=acceptance_confidence(p, options.score),
        predicted=pred.astype(np.int64),
        wrong=np.asarray((pred != labels) | unknown, dtype=np.bool_),
        strata=s_audit,
        stream_confidence=conf_stream,
        stream_strata=s_stream,
        grid=grid,
        options=options,
        trained_strata=s_trained,
    )


def _weighted_per_stratum(
    conf: NDArray[np.float64],
    strata: NDArray[np.int64],
    weights: NDArray[np.float64],
    n_strata: int,
    grid: NDArray[np.float64],
) -> NDArray[np.float64]:
    """(n_draws, n_candidates, n_strata): total weight of the items of each stratum that each
    candidate accepts, for each row of ``weights`` (n_draws, n_items)."""
    out = np.zeros((weights.shape[0], grid.size, n_strata), dtype=np.float64)
    for s in range(n_strata):
        members = np.flatnonzero(strata == s)
        if not members.size:
            continue
        order = members[np.argsort(-conf[members], kind="stable")]
        cumulative = np.concatenate(
            [np.zeros((weights.shape[0], 1)), np.cumsum(weights[:, order], axis=1)], axis=1
        )
        out[:, :, s] = cumulative[:, accepted_counts(conf[members], grid)]
    return out


@dataclass(frozen=True)
class _Selection:
    """The test's outcome for each of ``n_draws`` audit samples (one for a plain certificate)."""

    k: NDArray[np.intp]  # (n_draws,) certified candidate, -1 = none
    bound: NDArray[np.float64]  # (n_draws, n_candidates) bound (or estimate) on the error proportion
    first: NDArray[np.intp]  # high_probability: where the walk starts, -1 = nothing testable
    start: NDArray[np.int64]  # high_probability: audits the walk needs accepted
    level: NDArray[np.float64]  # high_probability: per-stratum level
    tested: NDArray[np.bool_]  # (n_draws, n_strata) high_probability: strata tested


def _select(
    n_acc: NDArray[np.float64],
    e_acc: NDArray[np.float64],
    n_stream: NDArray[np.float64],
    per_stratum: NDArray[np.float64],
    options: CertifyOptions,
) -> _Selection:
    """Certify on counts: ``n_acc``/``e_acc`` (n_draws, n_candidates, n_strata) audits accepted and
    wrong ones among them, ``n_stream`` (n_draws, n_candidates, n_strata) stream items accepted,
    ``per_stratum`` (n_draws, n_strata) audits of each stratum. Vectorized over draws, so the
    gate's bootstrap re-certifies hundreds of samples at once."""
    eps = 1.0 - float(options.target)
    draws, n_candidates, n_strata = n_acc.shape
    total = n_stream.sum(axis=2)  # (n_draws, n_candidates)
    ks = np.arange(n_candidates)
    none = np.full(draws, -1, dtype=np.intp)
    if options.guarantee == "expected":
        weight = np.where(n_stream > 0, n_stream, 0.0)
        err = (weight * (e_acc + 1.0) / (n_acc + 1.0)).sum(axis=2)
        estimate = np.where(total > 0, err / np.maximum(total, 1e-12), np.inf)
        ok = (estimate <= eps) & (total > 0)
        last = n_candidates - 1 - np.argmax(ok[:, ::-1], axis=1)
        k = np.where(ok.any(axis=1), last, -1).astype(np.intp)
        empty = np.zeros((draws, n_strata), dtype=np.bool_)
        return _Selection(k, estimate, none, np.zeros(draws, np.int64), np.zeros(draws), empty)

    n_total = per_stratum.sum(axis=1, keepdims=True)
    tested = (per_stratum >= options.min_stratum_share * np.maximum(n_total, 1)) & (per_stratum > 0)
    level = float(options.delta) / np.maximum(tested.sum(axis=1), 1)
    n_min = np.maximum(1, np.ceil(np.log(level) / math.log(float(options.target)))).astype(np.int64)
    mask = tested[:, None, :]
    has = (n_acc > 0) & mask
    upper = np.ones(n_acc.shape, dtype=np.float64)
    open_ = has & (e_acc < n_acc)
    for lvl in np.unique(level):  # few distinct levels; each (errors, audits) pair computed once
        cell = open_ & (level == lvl)[:, None, None]
        e, n = e_acc[cell], n_acc[cell]
        stride = float(n.max(initial=0.0)) + 1.0
        _, first, inverse = np.unique(e * stride + n, return_index=True, return_inverse=True)
        upper[cell] = beta_dist.ppf(1.0 - lvl, e[first] + 1, n[first] - e[first])[inverse]
    bound = np.where(total > 0, (n_stream * upper).sum(axis=2) / np.maximum(total, 1e-12), 1.0)
    # The walk's start counts what the loosest candidate accepts (all audits on the default grid).
    tested_total = (n_acc[:, -1, :] * tested).sum(axis=1)
    start = np.maximum(
        options.start_factor * n_min, np.ceil(options.start_share * tested_total).astype(np.int64)
    )
    testable = (n_acc * mask).sum(axis=2) >= start[:, None]
    first = np.where(testable.any(axis=1), np.argmax(testable, axis=1), -1).astype(np.intp)
    # Fixed-sequence: certified down to the candidate before the first failure after the start.
    failing = (bound > eps) & (ks[None, :] >= first[:, None])
    first_fail = np.where(failing.any(axis=1), np.argmax(failing, axis=1), n_candidates)
    k = np.where((first >= 0) & (first_fail > first), first_fail - 1, -1).astype(np.intp)
    return _Selection(k, bound, first, start, level, tested)


def _counts(
    evidence: Evidence, weights: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """(n_acc, e_acc, n_stream, per_stratum) for `_select`, the audits weighted by each row of
    ``weights``."""
    n_strata, grid = evidence.n_strata, evidence.grid
    n_acc = _weighted_per_stratum(evidence.confidence, evidence.strata, weights, n_strata, grid)
    e_acc = _weighted_per_stratum(
        evidence.confidence, evidence.strata, weights * evidence.wrong[None, :], n_strata, grid
    )
    per_stratum = np.zeros((weights.shape[0], n_strata), dtype=np.float64)
    for stratum in range(n_strata):
        per_stratum[:, stratum] = weights[:, evidence.strata == stratum].sum(axis=1)
    # A trained-on stream item counts as accepted with its stratum's audit acceptance share (the
    # audits are a uniform sample of the stratum, fresh to the model); with no audit in the stratum,
    # as accepted everywhere, which the estimate then counts as wrong.
    trained = np.bincount(evidence.trained_strata, minlength=n_strata).astype(np.float64)
    audits = per_stratum[:, None, :]
    share = np.where(audits > 0, n_acc / np.maximum(audits, 1e-12), 1.0)
    n_stream = evidence.scored_counts[None, :, :] + trained[None, None, :] * share
    return n_acc, e_acc, n_stream, per_stratum


def resample_audits(strata: ArrayLike, draws: int, rng: np.random.Generator) -> NDArray[np.float64]:
    """(draws, n) multiplicities of a stratified bootstrap: each stratum's audits re-drawn with
    replacement, its size kept (the design fixes how many audits each stratum gets, on average)."""
    s = np.asarray(strata, dtype=np.int64)
    out = np.zeros((draws, s.size), dtype=np.float64)
    for stratum in np.unique(s):
        members = np.flatnonzero(s == stratum)
        out[:, members] = rng.multinomial(members.size, np.full(members.size, 1.0 / members.size), size=draws)
    return out


def certified_coverage(
    evidence: Evidence, multiplicity: NDArray[np.float64] | None = None
) -> NDArray[np.float64]:
    """(n_draws,) share of the stream the certified threshold accepts, certifying once per row of
    ``multiplicity`` (n_draws, n_audits; None = the audits as drawn, one row). 0 = nothing certified."""
    weights = np.ones((1, evidence.n_audits)) if multiplicity is None else np.asarray(multiplicity, float)
    if weights.ndim != 2 or weights.shape[1] != evidence.n_audits:
        raise CertificationError(
            f"multiplicity must be (n_draws, {evidence.n_audits}), got shape {weights.shape}"
        )
    n_acc, e_acc, n_stream, per_stratum = _counts(evidence, weights)
    k = _select(n_acc, e_acc, n_stream, per_stratum, evidence.options).k
    total = n_stream.sum(axis=2)
    share = total[np.arange(total.shape[0]), np.maximum(k, 0)] / max(evidence.n_stream, 1)
    return np.asarray(np.where(k >= 0, share, 0.0), dtype=np.float64)


def certify_evidence(evidence: Evidence, n_classes: int) -> ClassThresholds:
    """One certified threshold for all ``n_classes`` from `Evidence` (see `certify_thresholds`)."""
    options = evidence.options
    eps = 1.0 - float(options.target)
    n_acc3, e_acc3, n_stream, per_stratum = _counts(evidence, np.ones((1, evidence.n_audits)))
    selection = _select(n_acc3, e_acc3, n_stream, per_stratum, options)
    n_acc, e_acc, grid = n_acc3[0], e_acc3[0], evidence.grid
    total = n_stream[0].sum(axis=1)
    k_raw = int(selection.k[0])
    k = None if k_raw < 0 else k_raw
    audits_per_stratum = np.bincount(evidence.strata, minlength=evidence.n_strata)
    extra: dict[str, Any] = {
        "guarantee": options.guarantee,
        "n_audits": evidence.n_audits,
        "n_stream": evidence.n_stream,
        "n_stream_trained_on": int(evidence.trained_strata.size),
        "audits_per_stratum": audits_per_stratum.tolist(),
        "stream_per_stratum": np.bincount(evidence.stream_strata, minlength=evidence.n_strata).tolist(),
        "n_candidates": int(grid.size),
    }
    if options.guarantee == "expected":
        reason = (
            "certified" if k is not None else f"no threshold has an estimated error proportion <= {eps:.4g}"
        )
        method = "stratified_conformal_selection"
    else:
        first, start = int(selection.first[0]), int(selection.start[0])
        extra.update(
            tested_strata=np.flatnonzero(selection.tested[0]).tolist(),
            level=float(selection.level[0]),
            walk_start=start,
        )
        if first < 0:
            reason = f"no candidate accepts the {start} audits the walk starts at"
        elif k is None:
            reason = (
                f"strictest testable threshold {grid[first]:.6g} not certified: error bound "
                f"{selection.bound[0, first]:.4f} > {eps:.4g} ({int(e_acc[first].sum())} errors in "
                f"{int(n_acc[first].sum())} audits)"
            )
        else:
            reason = "certified"
        method = "stratified_clopper_pearson_fixed_sequence"

    threshold = np.inf if k is None else float(grid[k])
    extra["reason"] = reason
    if k is not None:
        extra.update(
            threshold=threshold,
            error_bound=float(selection.bound[0, k]),
            stream_accepted_share=float(total[k] / max(evidence.n_stream, 1)),
            audits_accepted=int(n_acc[k].sum()),
            audit_errors_accepted=int(e_acc[k].sum()),
        )
    return ClassThresholds(
        thresholds=np.full(n_classes, threshold, dtype=np.float64),
        target=float(options.target),
        delta=float(options.delta),
        n_calibration=np.bincount(evidence.predicted, minlength=n_classes).astype(np.int64),
        method=method,
        extra=extra,
        score=options.score,
    )


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
    score: str = LEGACY_ACCEPTANCE_SCORE,
) -> ClassThresholds:
    """One certified threshold for all classes (see the module docstring for the statement).

    Parameters
    ----------
    proba : (n_audits, n_classes) calibrated probabilities of the model being certified, on audits it
        was not trained on
    y : (n_audits,) true class indices; -1 = a class the model does not know (always an error)
    strata : (n_audits,) stratum of each audit (items drawn with the same probability share one)
    stream_confidence : (n_stream,) the same model's acceptance confidence (`score`) on every stream
        item the audits were drawn from (audited or not; audits included)
    stream_strata : (n_stream,) their strata
    guarantee : one of `GUARANTEES`
    min_stratum_share : high_probability: strata holding fewer audits than this share count as all wrong
    start_factor, start_share : the high_probability walk never starts before a candidate accepting
        ``max(start_factor * n_min, start_share * audits)`` audits
    candidates : threshold grid fixed before seeing the data (default `learner.thresholds.default_candidates`)
    score : what the thresholds apply to, one of `learner.thresholds.ACCEPTANCE_SCORES`

    Returns
    -------
    ClassThresholds
        The same threshold for every class (``inf`` = nothing certified); ``extra`` says why, with the
        accepted share of the stream, the audits and errors behind it and the certified bound.
    """
    p = check_proba(proba)
    if n_classes is not None and n_classes != p.shape[1]:
        raise CertificationError(f"proba has {p.shape[1]} classes, n_classes is {n_classes}")
    options = CertifyOptions(
        guarantee=guarantee,
        target=target,
        delta=delta,
        min_stratum_share=min_stratum_share,
        start_factor=start_factor,
        start_share=start_share,
        score=score,
    )
    evidence = evidence_of(
        p, y, strata, stream_confidence, stream_strata, options=options, candidates=candidates
    )
    return certify_evidence(evidence, p.shape[1])
