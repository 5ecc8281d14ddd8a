"""The active-learning loop's policy, defined once: production and simulations both run it.

Pure: arrays and records in, decisions out, no I/O. `serving` wraps it with adapters (the store, MLflow,
the Label Studio outbox); `experiments/simulate.py` with in-memory ones. What it decides:

- **provenance** of every label (`Provenance`): a seed label, an audit (drawn with a logged inclusion
  probability), a strategy pick, or a correction of an escalated item;
- **the audit draw** (`AuditPolicy`): every routed item is drawn into the audit sample with a known
  probability, denser in the confidence band where candidate thresholds lie, never 0;
- **label roles** (`split_roles`): the most recent audits (`AuditSettings.certify_window`) certify the
  thresholds and form the gate's holdout, and are not trained on; older audits and every other label
  train. A model is therefore certified only on audits it did not see;
- **strata** (`strata_of`): audits drawn with the same probability form one stratum for
  `learner.certify`;
- **the review priority** (`review_priority`): the configured strategy's score, audits first;
- **the training configuration** (`training_config`) and the encoder's optional fine-tune
  (`encoder_finetune`), from `LearnerSettings`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Hashable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike, NDArray

from learner.certify import band_low
from learner.features import FeatureSpec
from learner.settings import AuditSettings, LearnerSettings
from learner.strategies import entropy, get_strategy, least_confidence, margin
from learner.training import TrainingConfig

if TYPE_CHECKING:  # torch and transformers load only where a fine-tune runs
    from learner.encoder import HFEncoder
    from learner.finetune import FineTuneClassifier

__all__ = ["band_low"]  # the audit band's edge lives with the certification that measures it

# Inclusion probabilities are rounded to this many digits before they name a stratum, so the same
# configured rate always gives the same stratum however it was computed.
STRATUM_DIGITS = 9


class Provenance(StrEnum):
    SEED = "seed"  # a label the loop started from, trained on
    SEED_AUDIT = "seed_audit"  # a seed label drawn (uniformly, by id hash) into the audit sample
    AUDIT = "audit"  # a routed item drawn into the audit sample with a logged probability
    STRATEGY = "strategy"  # picked for review by the active-learning strategy
    CORRECTION = "correction"  # any other reviewed item (an escalation a reviewer chose to label)


AUDIT_PROVENANCES = frozenset({Provenance.SEED_AUDIT, Provenance.AUDIT})


def unit_draw(seed: int, key: str) -> float:
    """A uniform number in [0, 1) fixed by (seed, key): reproducible, and stable across retries."""
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


@dataclass(frozen=True)
class AuditPolicy:
    """Which routed items are audited, with what probability (`AuditSettings`)."""

    rate: float = 0.08
    outside_factor: float = 1.0
    band_share: float = 0.6
    seed_share: float = 0.25
    seed: int = 0
    certify_window: int = 400  # the most recent audits that certify; older ones train (0 = all certify)

    @classmethod
    def of(cls, settings: AuditSettings) -> AuditPolicy:
        return cls(
            rate=settings.rate,
            outside_factor=settings.outside_factor,
            band_share=settings.band_share,
            seed_share=settings.seed_share,
            seed=settings.seed,
            certify_window=settings.certify_window,
        )

    def with_rate(self, rate: float) -> AuditPolicy:
        if not 0.0 < rate <= 1.0:
            raise ValueError(f"audit rate must be in (0, 1], got {rate!r}")
        return replace(self, rate=rate)

    def inclusion(self, confidence: ArrayLike, band_low: float) -> NDArray[np.float64]:
        """(n,) routing-time confidences -> (n,) inclusion probabilities, all > 0.

        ``band_low`` is the routing model's lower edge of the band (`band_low`), stored with it.
        """
        conf = np.asarray(confidence, dtype=np.float64)
        out: NDArray[np.float64] = np.where(conf >= band_low, self.rate, self.rate * self.outside_factor)
        return out

    def draw(
        self, confidence: ArrayLike, band_low: float, uniforms: ArrayLike
    ) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
        """(inclusion probabilities, drawn) for items with the given uniforms in [0, 1).

        Production derives each uniform from the item id (`unit_draw`), so re-predicting an item never
        flips its draw; simulations pass a seeded generator's numbers. Either way the draw is
        independent of the label, which is all the certification needs.
        """
        pi = self.inclusion(confidence, band_low)
        u = np.asarray(uniforms, dtype=np.float64)
        if u.shape != pi.shape:
            raise ValueError(f"uniforms have shape {u.shape}, confidences {pi.shape}")
        drawn: NDArray[np.bool_] = u < pi
        return pi, drawn

    def escalation_share(self, stream_confidence: ArrayLike, band_low: float, accepted_share: float) -> float:
        """The share of a stream a model escalates when it auto-accepts its ``accepted_share`` most
        confident items: everything else, plus the spot checks the audit draw takes from those (business
        rules, which depend on prices and brands, are not counted)."""
        conf = np.sort(np.asarray(stream_confidence, dtype=np.float64))[::-1]
        if conf.size == 0:
            return 1.0
        accepted = conf[: round(min(max(accepted_share, 0.0), 1.0) * conf.size)]
        kept = float((1.0 - self.inclusion(accepted, band_low)).sum())
        return 1.0 - kept / conf.size

    def seed_audit(self, item_ids: Sequence[str]) -> NDArray[np.bool_]:
        """Seed labels that audit instead of train: a uniform share ``seed_share``, by id hash."""
        return np.array([unit_draw(self.seed, f"seed:{i}") < self.seed_share for i in item_ids], dtype=bool)


def strata_of(inclusion: ArrayLike) -> tuple[NDArray[np.int64], list[float]]:
    """(n,) inclusion probabilities -> (n,) stratum ids and the probability of each stratum."""
    pi = np.round(np.asarray(inclusion, dtype=np.float64), STRATUM_DIGITS)
    levels, ids = np.unique(pi, return_inverse=True)
    return ids.astype(np.int64), [float(v) for v in levels]


@dataclass(frozen=True)
class Roles:
    """Row indices of the labels by role; an audit never trains a model it certifies."""

    train: NDArray[np.intp]
    certify: NDArray[np.intp]
    # The certifying audits' arrivals start here (`audit_cutoff`), and so does their stream; None = all.
    cutoff: float | None = None


def canonical_order(item_ids: Sequence[Hashable]) -> NDArray[np.intp]:
    """Indices that put labels in item-id order (stable for repeated ids): a model is then a function
    of its labels, not of the order they arrived in (L-BFGS stopped after a fixed number of iterations
    ends elsewhere, to ~1e-3 in probability, on another row order), so the retrain job and the
    simulation fit the same model on the same labels."""
    keys = np.array([str(i) for i in item_ids], dtype=object)
    return np.argsort(keys, kind="stable").astype(np.intp)


def audit_cutoff(audit_arrivals: ArrayLike, window: int) -> float | None:
    """The arrival from which audits certify when only the ``window`` most recent ones do; None = every
    audit certifies (``window`` 0, or no more audits than it).

    An audit certifies the models trained after it arrived, on the stream it was drawn from. Once
    ``window`` newer audits exist it has done that job, and it trains from then on: the models that
    follow are certified on the newer audits and on the stream routed since the cutoff only, which
    they were not trained on (audits older than a model's cutoff are always older than a later
    model's). The cutoff depends on the audit draws alone, never on a label, so the audits after it
    are still a probability sample of the stream after it.
    """
    arrivals = np.sort(np.asarray(audit_arrivals, dtype=np.float64))
    if window <= 0 or arrivals.size <= window:
        return None
    return float(arrivals[arrivals.size - window])


def split_roles(
    provenance: Sequence[str],
    item_ids: Sequence[Hashable] | None = None,
    *,
    arrivals: ArrayLike | None = None,
    window: int = 0,
    floor: float | None = None,
) -> Roles:
    """Audits (routed and seed) certify and form the gate's holdout; everything else trains. With
    `item_ids`, each role's rows come in `canonical_order`. With ``arrivals`` (each label's routing
    time or position, seed labels first) and a ``window``, only the ``window`` most recent audits
    certify and older ones train (`audit_cutoff`).

    ``floor`` is where the champion's certifying audits started (its `Roles.cutoff`): it trained on
    every audit before it, so none of those certifies again, whatever the window says. The window
    alone moves forward only while audits are added; an audit can also leave the sample (a deleted or
    rejected review makes it unreviewed again, and the stream then stops before it), and the window
    would then reach back over audits the champion trained on, which the gate re-certifies it on.
    The floor, like the window, depends on arrivals alone, never on a label."""
    audit = np.array([p in AUDIT_PROVENANCES for p in provenance], dtype=bool)
    cutoff = None
    if arrivals is not None and (window > 0 or floor is not None):
        arrival = np.asarray(arrivals, dtype=np.float64)
        if arrival.shape != audit.shape:
            raise ValueError(f"arrivals have shape {arrival.shape}, provenance ({audit.size},)")
        cutoff = audit_cutoff(arrival[audit], window)
        if floor is not None and (cutoff is None or floor > cutoff):
            cutoff = float(floor)
        if cutoff is not None:
            audit &= arrival >= cutoff
    order = np.arange(len(audit), dtype=np.intp) if item_ids is None else canonical_order(item_ids)
    return Roles(train=order[~audit[order]], certify=order[audit[order]], cutoff=cutoff)


def certification_stream(
    stream_ids: Sequence[Hashable], trained_ids: Collection[Hashable]
) -> NDArray[np.bool_]:
    """(n_stream,) which stream items a model's certificate counts: every one it was NOT trained on.

    The certificate weighs each stratum's audit error rate by how many stream items the model accepts
    at a threshold. A model is confident on its own training items, so counting them inflates those
    counts: measured on instacart (through the API, round 1), the stream share "accepted" was 0.685
    while 40% of the audits - a uniform sample of the same stream - were. The certifying audits stay
    in: the model was not trained on them.
    """
    trained = set(trained_ids)
    return np.array([i not in trained for i in stream_ids], dtype=np.bool_)


# Priority of an audit in the review queue: above every strategy score, which are capped below it, so
# a queue sorted by priority (Label Studio: prediction score = 1 - priority, lowest first) serves every
# audit before any strategy pick.
AUDIT_PRIORITY = 1.0
STRATEGY_MAX_PRIORITY = 0.999


def review_priority(
    proba: ArrayLike, strategy: str, *, audited: ArrayLike | None = None
) -> NDArray[np.float64]:
    """(n, n_classes) probabilities -> (n,) review priority in [0, 1], higher reviewed first.

    Strategy scores are capped at `STRATEGY_MAX_PRIORITY`; audits get `AUDIT_PRIORITY`.

    The configured strategy's usefulness score: `margin` and `least_confidence`/`entropy` normalised to
    [0, 1]; `random` gives every item the same priority (arrival order); `batch_diverse` needs the
    whole batch to pick, so a queue ordered one item at a time uses its margin. Audited items come
    first (`AUDIT_PRIORITY`): they measure realised accuracy and certify the next model only if
    someone reviews them.
    """
    get_strategy(strategy)  # ValueError listing the valid names
    p = np.asarray(proba, dtype=np.float64)
    n_classes = p.shape[1]
    score: NDArray[np.float64]
    if strategy == "random":
        score = np.full(p.shape[0], 0.5)
    elif strategy == "least_confidence":
        score = least_confidence(p) / max(1.0 - 1.0 / n_classes, 1e-12)
    elif strategy == "entropy":
        score = entropy(p) / max(float(np.log(n_classes)), 1e-12)
    else:  # margin, batch_diverse
        score = margin(p)
    out: NDArray[np.float64] = np.clip(score, 0.0, STRATEGY_MAX_PRIORITY)
    if audited is not None:
        out = np.where(np.asarray(audited, dtype=bool), AUDIT_PRIORITY, out)
    return out


def training_config(
    learner: LearnerSettings,
    *,
    device: str | None = None,
    target: float | None = None,
    delta: float | None = None,
) -> TrainingConfig:
    """The one mapping from `LearnerSettings` to the training pipeline's configuration."""
    head = learner.head
    return TrainingConfig(
        hidden_dim=head.hidden_dim,
        epochs=head.epochs,
        learning_rate=head.learning_rate,
        weight_decay=head.weight_decay,
        batch_size=head.batch_size,
        class_weight=head.class_weight,
        warm_start_iterations=head.warm_start_iterations,
        device=learner.device if device is None else device,
        seed=learner.seed,
        target_accuracy=learner.target_accuracy if target is None else target,
        delta=learner.delta if delta is None else delta,
        features=FeatureSpec.of(learner),
        guarantee=learner.guarantee,
        min_stratum_share=learner.audit.min_stratum_share,
        start_share=learner.audit.start_share,
        band_share=learner.audit.band_share,
        acceptance_score=learner.acceptance_score,
    )


def encoder_finetune(learner: LearnerSettings, encoder: HFEncoder) -> FineTuneClassifier | None:
    """The end-to-end fine-tune of `encoder` that ``learner.finetune`` configures, None when disabled:
    the one mapping from settings to `FineTuneClassifier`, beside `training_config`."""
    from learner.finetune import FineTuneClassifier

    tune = learner.finetune
    if not tune.enabled:
        return None
    return FineTuneClassifier(
        encoder,
        epochs=tune.epochs,
        learning_rate=tune.learning_rate,
        batch_size=tune.batch_size,
        max_steps=tune.max_steps,
        class_weight=learner.head.class_weight,
        device=learner.device,
        seed=learner.seed,
    )


def describe_guarantee(guarantee: str, target: float, delta: float) -> str:
    """The statement in force, in words (dashboard, MLflow, README)."""
    if guarantee == "expected":
        return (
            f"mean error among auto-accepted items <= {1 - target:.3g} (accuracy {target:.3g} in expectation "
            "over audit samples; a sample that certifies nothing counts as no error)"
        )
    return f"accuracy of auto-accepted items >= {target:.3g} with probability >= {1 - delta:.3g}"
