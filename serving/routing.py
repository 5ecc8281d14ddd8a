"""The routing policy: auto-accept a prediction, or escalate it to a human, and say why.

Pure and deterministic: the same item, model and settings always give the same decision. Rules, each
adding a reason when it fires (an item is escalated when any reason is present):

- ``below_threshold``: the calibrated confidence is under the class's guaranteed threshold (from the
  bundle; a class without a threshold is never auto-accepted);
- ``high_value``: ``price >= routing.high_value_price``;
- ``always_review_category``: the predicted label equals, or sits under, a configured label or prefix;
- ``always_review_brand``: the brand is configured (case-insensitive);
- ``unknown_category_hint``: the item arrived with a ``category_hint`` (the feed's own category) that is
  neither a label of the model nor an ancestor of one: the item may belong to a category the model has
  never seen, so a human decides whether the taxonomy needs to grow;
- ``out_of_distribution``: when the bundle carries class centroids (``metadata["class_centroids"]``),
  the embedding's cosine to the nearest centroid is below ``routing.novelty_min_similarity``: the text
  looks like nothing the model was trained on (a new category, or junk);
- ``spot_check``: a would-be auto-accept drawn into the audit sample: reviewing it measures the
  realised accuracy of auto-accepts;
- ``audit``: an item escalated for another reason that is drawn into the audit sample too.

The audit draw is the loop's (`learner.loop.AuditPolicy`): every routed item is drawn with a known
inclusion probability, higher in the model's confidence band (``metadata["audit_band_low"]`` of the
bundle) than outside it and never 0, using a uniform number derived from ``sha256(seed, item id)``
rather than a stateful RNG. Re-predicting an item is therefore stable (a retry never flips an item in
or out of the audit), the sample is reproducible from the seed, and the draws are independent of the
labels, so the reviewed audits certify the next model (`learner.certify`) and estimate the realised
accuracy without bias once weighted by 1 / probability, which every routed prediction logs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from numpy.typing import NDArray

from learner.loop import AuditPolicy, review_priority, unit_draw
from learner.thresholds import acceptance_confidence
from serving.settings import RoutingSettings

LABEL_SEPARATOR = " > "


class Reason(StrEnum):
    ABOVE_THRESHOLD = "above_threshold"  # the only reason of an auto-accept
    BELOW_THRESHOLD = "below_threshold"
    HIGH_VALUE = "high_value"
    ALWAYS_REVIEW_CATEGORY = "always_review_category"
    ALWAYS_REVIEW_BRAND = "always_review_brand"
    UNKNOWN_CATEGORY_HINT = "unknown_category_hint"
    OUT_OF_DISTRIBUTION = "out_of_distribution"
    SPOT_CHECK = "spot_check"
    AUDIT = "audit"


AUDIT_REASONS = frozenset({Reason.SPOT_CHECK, Reason.AUDIT})


class Decision(StrEnum):
    AUTO_ACCEPTED = "auto_accepted"
    ESCALATED = "escalated"


@dataclass(frozen=True)
class RouteInput:
    """What the policy needs to know about one item besides the model's probabilities."""

    item_id: str
    price: float | None = None
    brand: str | None = None
    category_hint: str | None = None


@dataclass(frozen=True)
class Routed:
    label: str
    confidence: float
    threshold: float | None  # None = the class is never auto-accepted
    top_k: list[tuple[str, float]]
    decision: Decision
    reasons: list[Reason]
    priority: float  # review priority in [0, 1] from the configured strategy; audits 1.0
    similarity: float | None  # cosine to the nearest class centroid, when the bundle has centroids
    audit_probability: float | None = None  # inclusion probability of the audit draw (None: no audit policy)
    audited: bool = False


@dataclass(frozen=True)
class AuditRouting:
    """The audit draw as routing applies it: the loop's policy and the routing model's band edge."""

    policy: AuditPolicy
    band_low: float


def audit_draw(seed: int, item_id: str) -> float:
    """The uniform number of an item's audit draw, fixed by (seed, item id)."""
    return unit_draw(seed, f"audit:{item_id}")


def _under(label: str, prefix: str) -> bool:
    return label == prefix or label.startswith(prefix + LABEL_SEPARATOR)


def known_hint(hint: str, labels: Sequence[str]) -> bool:
    """A hint is known when it is a label, an ancestor of one, or a descendant of one (deeper feed paths)."""
    norm = LABEL_SEPARATOR.join(part.strip() for part in hint.split(">") if part.strip()).casefold()
    if not norm:
        return True
    for label in labels:
        low = label.casefold()
        if _under(low, norm) or _under(norm, low):
            return True
    return False


def route(
    proba: NDArray[np.float64],
    labels: Sequence[str],
    thresholds: NDArray[np.float64],
    items: Sequence[RouteInput],
    policy: RoutingSettings,
    *,
    score: str,
    similarity: NDArray[np.float64] | None = None,
    audit: AuditRouting | None = None,
    strategy: str = "margin",
) -> list[Routed]:
    """Decide every item.

    Parameters
    ----------
    proba : (n, n_labels) calibrated probabilities
    labels : (n_labels,) category paths
    thresholds : (n_labels,) auto-accept thresholds; ``inf`` = never
    score : what the thresholds apply to (the bundle's `ClassThresholds.score`,
        `learner.thresholds.acceptance_confidence`); also what the audit band is measured in
    items : (n,) the items' routing facts
    policy : the configured rules
    similarity : (n,) cosine to the nearest class centroid, or None when unknown
    audit : the audit draw (None: no item is audited, e.g. replaying decisions)
    strategy : the active-learning strategy whose score orders the review queue (`learner.loop`)
    """
    if proba.shape != (len(items), len(labels)) or thresholds.shape != (len(labels),):
        raise ValueError(
            f"shape mismatch: proba {proba.shape}, {len(items)} items, {len(labels)} labels, "
            f"thresholds {thresholds.shape}"
        )
    categories = [c.strip() for c in policy.always_review_categories if c.strip()]
    brands = {b.strip().casefold() for b in policy.always_review_brands if b.strip()}
    k = min(policy.top_k, len(labels))
    order = np.argsort(-proba, axis=1, kind="stable")
    confidences = acceptance_confidence(proba, score)
    if audit is not None:
        uniforms = [audit_draw(audit.policy.seed, item.item_id) for item in items]
        pis, drawn = audit.policy.draw(confidences, audit.band_low, uniforms)
    else:
        pis, drawn = np.full(len(items), np.nan), np.zeros(len(items), dtype=bool)
    priorities = review_priority(proba, strategy, audited=drawn) if len(items) else np.empty(0)
    out: list[Routed] = []
    for i, item in enumerate(items):
        best = int(order[i, 0])
        label = labels[best]
        confidence = float(confidences[i])
        threshold = float(thresholds[best])
        reasons: list[Reason] = []
        if not confidence >= threshold:
            reasons.append(Reason.BELOW_THRESHOLD)
        if (
            policy.high_value_price is not None
            and item.price is not None
            and item.price >= policy.high_value_price
        ):
            reasons.append(Reason.HIGH_VALUE)
        if any(_under(label, c) for c in categories):
            reasons.append(Reason.ALWAYS_REVIEW_CATEGORY)
        if item.brand and item.brand.strip().casefold() in brands:
            reasons.append(Reason.ALWAYS_REVIEW_BRAND)
        if item.category_hint is not None and not known_hint(item.category_hint, labels):
            reasons.append(Reason.UNKNOWN_CATEGORY_HINT)
        sim = None if similarity is None else float(similarity[i])
        if sim is not None and sim < policy.novelty_min_similarity:
            reasons.append(Reason.OUT_OF_DISTRIBUTION)
        if drawn[i]:
            reasons.append(Reason.AUDIT if reasons else Reason.SPOT_CHECK)
        decision = Decision.ESCALATED if reasons else Decision.AUTO_ACCEPTED
        out.append(
            Routed(
                label=label,
                confidence=confidence,
                threshold=threshold if math.isfinite(threshold) else None,
                top_k=[(labels[int(j)], float(proba[i, j])) for j in order[i, :k]],
                decision=decision,
                reasons=reasons or [Reason.ABOVE_THRESHOLD],
                priority=float(priorities[i]),
                similarity=sim,
                audit_probability=None if audit is None else float(pis[i]),
                audited=bool(drawn[i]),
            )
        )
    return out


def centroid_similarity(
    embeddings: NDArray[np.float32], centroids: NDArray[np.float64]
) -> NDArray[np.float64]:
    """(n, d) unit rows x (c, d) centroids -> (n,) cosine to the nearest centroid."""
    norms = np.linalg.norm(centroids, axis=1, keepdims=True)
    unit = centroids / np.where(norms > 0, norms, 1.0)
    sims = np.asarray(embeddings, dtype=np.float64) @ unit.T
    out: NDArray[np.float64] = sims.max(axis=1)
    return out
