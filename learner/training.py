"""Train a calibrated, thresholded model bundle on cached embeddings.

Pipeline: fit the head on the train split -> fit a temperature on the calibration split -> choose
per-class thresholds on the calibrated calibration probabilities -> evaluate on the test split.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray

from learner.bundle import ModelBundle
from learner.calibration import expected_calibration_error, fit_temperature, softmax
from learner.certify import CertifyOptions, Evidence, band_low, certify_evidence, evidence_of
from learner.evaluation import EvaluationReport, evaluate
from learner.exceptions import LearnerError
from learner.features import FeatureSpec, HeadInputs
from learner.head import ClassWeight, TorchHeadClassifier, start_mismatch
from learner.thresholds import ClassThresholds, certification_grid


@dataclass(frozen=True)
class TrainingConfig:
    """Everything the training pipeline needs; mapped from `Settings.learner` by the caller."""

    hidden_dim: int = 0
    epochs: int = 50
    learning_rate: float = 0.01
    weight_decay: float = 1e-5
    batch_size: int = 512
    class_weight: ClassWeight = "balanced"
    warm_start_iterations: int = 0  # see learner.settings.HeadSettings
    device: str = "auto"
    seed: int = 0
    target_accuracy: float = 0.95
    delta: float = 0.05
    # How the x_* arrays given to `train_bundle` were built (recorded in the bundle for serving).
    features: FeatureSpec = field(default_factory=FeatureSpec)
    guarantee: str = "high_probability"  # see learner.certify.GUARANTEES
    min_stratum_share: float = 0.2
    start_share: float = 0.25
    band_share: float = 0.6  # the audit band of the new model: this share of the stream, most confident
    # What the certified threshold applies to: see learner.thresholds.ACCEPTANCE_SCORES (the
    # default is LearnerSettings.acceptance_score's).
    acceptance_score: str = "pairwise"


@dataclass(frozen=True)
class AuditDesign:
    """How the calibration (audit) items were drawn, for `learner.certify`.

    ``strata[i]`` is the stratum of calibration item i (items drawn with one probability share a
    stratum); ``stream_strata`` those of every stream item the audits were drawn from, audits included;
    ``stream_confidence(bundle)`` returns the bundle's acceptance confidence (`ModelBundle.confidence`)
    on those stream items, in the same order (the caller owns the stream's inputs and can compute it
    in chunks).
    Without a design, the calibration items are taken as a uniform sample: one stratum, and the
    stream is the calibration set itself.
    """

    strata: NDArray[np.int64]
    stream_strata: NDArray[np.int64]
    stream_confidence: Callable[[ModelBundle], NDArray[np.float64]]
    # Strata of the stream items the model was trained on (not scored: see `learner.certify.Evidence`).
    trained_strata: NDArray[np.int64] = field(default_factory=lambda: np.empty(0, dtype=np.int64))


@dataclass(frozen=True)
class TrainingResult:
    bundle: ModelBundle
    ece_before: float
    ece_after: float
    n_train: int
    n_calibration: int
    dropped_calibration: int  # calibration items whose label the head never saw (counted as errors)
    train_seconds: float
    test_report: EvaluationReport | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    evidence: Evidence | None = None  # what the certificate rests on (the gate re-certifies with it)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "n_train": self.n_train,
            "n_calibration": self.n_calibration,
            "dropped_calibration": self.dropped_calibration,
            "n_classes": len(self.bundle.labels),
            "temperature": self.bundle.temperature,
            "ece_before": self.ece_before,
            "ece_after": self.ece_after,
            "train_seconds": self.train_seconds,
            "classes_auto_accepted": int(np.isfinite(self.bundle.thresholds.thresholds).sum()),
        }
        if self.test_report is not None:
            out.update({f"test_{k}": v for k, v in self.test_report.to_dict().items()})
        return out


def fit_head(
    x: HeadInputs, y: Sequence[str], config: TrainingConfig, init: TorchHeadClassifier | None = None
) -> TorchHeadClassifier:
    """The classifier head of `config`, fitted on head inputs `x` ((n, d)) with labels `y` ((n,)).

    With ``config.warm_start_iterations`` > 0 and an `init` head that can start it (`warm_start_from`),
    the fit starts from `init` and runs that many iterations; otherwise it starts from zero.
    """
    warm = init if warm_start_from(init, x, y, config) else None
    head = TorchHeadClassifier(
        hidden_dim=config.hidden_dim,
        epochs=config.warm_start_iterations if warm is not None else config.epochs,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        batch_size=config.batch_size,
        class_weight=config.class_weight,
        device=config.device,
        seed=config.seed,
    )
    return head.fit(x, np.asarray(y), init=warm)


def warm_start_from(
    init: TorchHeadClassifier | None, x: HeadInputs, y: Sequence[str], config: TrainingConfig
) -> bool:
    """Whether `init` can start the fit of `config`'s head on (`x`, `y`): warm starts are on, `init`
    is fitted, and `learner.head.start_mismatch` finds nothing against it (both linear, the same
    input width, exactly the labels of `y`: a new or a vanished class starts from zero)."""
    if init is None or config.warm_start_iterations == 0 or getattr(init, "model_", None) is None:
        return False
    classes = np.unique(np.asarray(y))
    return start_mismatch(init, config.hidden_dim, classes, x.shape[1]) is None


def class_centroids(
    embeddings: NDArray[np.floating[Any]], y: Sequence[str], labels: Sequence[str]
) -> list[list[float]]:
    """Per-label mean embedding, JSON-able, stored as ``metadata["class_centroids"]``.

    Serving compares new items against these to flag text unlike anything the model was trained on.
    (n, d) embeddings, (n,) labels -> (n_labels, d) nested lists; a label with no member gets zeros.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    ys = np.asarray(list(y))
    rows: list[list[float]] = []
    for label in labels:
        members = x[ys == label]
        rows.append(members.mean(axis=0).round(6).tolist() if len(members) else [0.0] * x.shape[1])
    return rows


def label_indices(labels: Sequence[str], classes: Sequence[str]) -> NDArray[np.int64]:
    """Map label strings to head class indices; -1 for labels the head does not know."""
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index.get(label, -1) for label in labels], dtype=np.int64)


def certify_bundle(
    bundle: ModelBundle,
    proba: NDArray[np.float64],
    y: NDArray[np.int64],
    *,
    config: TrainingConfig,
    design: AuditDesign | None = None,
) -> tuple[ClassThresholds, Evidence]:
    """Certify `bundle`'s threshold on audits it was not trained on: (thresholds, the evidence they
    rest on, with the bundle's confidence on the stream).

    ``proba`` (n, n_labels) are the bundle's calibrated probabilities on the audits, ``y`` (n,) their
    labels as the bundle's class indices (-1 = a class it does not know). Training certifies each new
    model with it; the gate re-certifies the champion with it on today's audits, so both are compared
    as certified on the same evidence.
    """
    strata: NDArray[np.int64]
    trained: NDArray[np.int64] = np.empty(0, dtype=np.int64)
    if design is None:
        strata = np.asarray(np.zeros(len(y), dtype=np.int64))
        stream_strata, stream_conf = strata, bundle.confidence(proba)
    else:
        trained = np.asarray(design.trained_strata, dtype=np.int64)
        if len(design.strata) != len(y):
            raise LearnerError(f"{len(design.strata)} audit strata for {len(y)} calibration items")
        strata, stream_strata = np.asarray(design.strata), np.asarray(design.stream_strata)
        stream_conf = np.asarray(design.stream_confidence(bundle), dtype=np.float64)
    options = CertifyOptions(
        guarantee=config.guarantee,
        target=config.target_accuracy,
        delta=config.delta,
        min_stratum_share=config.min_stratum_share,
        start_share=config.start_share,
        score=bundle.thresholds.score,
    )
    evidence = evidence_of(
        proba,
        y,
        strata,
        stream_conf,
        stream_strata,
        options=options,
        candidates=certification_grid(bundle.temperature, options.score),
        trained_strata=trained,
    )
    return certify_evidence(evidence, proba.shape[1]), evidence


def train_bundle(
    x_train: HeadInputs,
    y_train: Sequence[str],
    x_calibration: HeadInputs,
    y_calibration: Sequence[str],
    *,
    config: TrainingConfig,
    encoder_ref: str,
    encoder_id: str,
    x_test: NDArray[np.float32] | None = None,
    y_test: Sequence[str] | None = None,
    metadata: dict[str, Any] | None = None,
    design: AuditDesign | None = None,
    init: ModelBundle | None = None,
) -> TrainingResult:
    """Train head and temperature, then certify the threshold on the calibration (audit) items.

    Parameters
    ----------
    x_train, x_calibration, x_test : (n, d) float32 head inputs built by ``config.features``
        (`FeatureSpec.model_inputs`, or the same as CSR from `FeatureSpec.sparse_inputs`, which the
        head fits faster; plain embeddings for an embedding-only spec)
    y_train, y_calibration, y_test : (n,) category labels (strings)
    design : how the calibration items were sampled (`AuditDesign`); None = a uniform sample
    init : the champion, whose head starts the fit when ``config.warm_start_iterations`` > 0 and it
        has the same feature spec, classes and width (`warm_start_from`); recorded as
        ``metadata["warm_started"]``

    A calibration label the head never saw in training counts as an error of the model (it cannot
    predict it), never as a dropped row: dropping it would make the certificate optimistic.
    """
    n_train, n_calibration = x_train.shape[0], x_calibration.shape[0]
    if n_train != len(y_train) or n_calibration != len(y_calibration):
        raise LearnerError(
            f"features and labels differ in length: train {n_train} vs {len(y_train)}, "
            f"calibration {n_calibration} vs {len(y_calibration)}"
        )
    if len(set(y_train)) < 2:
        raise LearnerError(f"training needs at least 2 classes, got {len(set(y_train))}")
    started = time.perf_counter()
    init_head = init.head if init is not None and init.features == config.features else None
    head = fit_head(x_train, y_train, config, init_head)
    classes = [str(c) for c in head.classes_]

    y_cal_all = label_indices(y_calibration, classes)
    known = y_cal_all >= 0
    if not known.any():
        raise LearnerError(f"none of the {len(y_cal_all)} calibration labels occur in training")
    all_logits = head.logits(x_calibration)
    cal_logits, y_cal = all_logits[known], y_cal_all[known]
    ece_before = expected_calibration_error(softmax(cal_logits), y_cal)
    temperature = fit_temperature(cal_logits, y_cal)
    ece_after = expected_calibration_error(softmax(cal_logits, temperature), y_cal)
    bundle = ModelBundle(
        encoder_ref=encoder_ref,
        encoder_id=encoder_id,
        head=head,
        temperature=float(temperature),
        thresholds=ClassThresholds(
            thresholds=np.full(len(classes), np.inf),
            target=config.target_accuracy,
            delta=config.delta,
            n_calibration=np.zeros(len(classes), dtype=np.int64),
            method="uncertified",
            score=config.acceptance_score,
        ),
        labels=classes,
        features=config.features,
        metadata={
            "created_at": datetime.now(UTC).isoformat(),
            "n_labels": len(y_train),
            "n_calibration": len(y_cal_all),
            "seed": config.seed,
            "target_accuracy": config.target_accuracy,
            "delta": config.delta,
            "guarantee": config.guarantee,
            "warm_started": head.warm_started_,
            # OOD similarity is an encoder-space notion: hashed n-grams of a new brand are not "far".
            "class_centroids": class_centroids(config.features.encoder_part(x_train), y_train, classes),
            **(metadata or {}),
        },
    )
    thresholds, evidence = certify_bundle(
        bundle, softmax(all_logits, temperature), y_cal_all, config=config, design=design
    )
    bundle.thresholds = thresholds
    bundle.metadata["audit_band_low"] = band_low(evidence.stream_confidence, config.band_share)
    train_seconds = time.perf_counter() - started

    report = None
    if x_test is not None and y_test is not None and len(y_test) > 0:
        y_idx = label_indices(y_test, classes)
        seen = y_idx >= 0
        if seen.any():  # a test split of classes the head never saw has nothing to report on
            report = evaluate(
                bundle.predict_proba(x_test[seen]), y_idx[seen], thresholds, config.target_accuracy
            )
    return TrainingResult(
        bundle=bundle,
        ece_before=float(ece_before),
        ece_after=float(ece_after),
        n_train=len(y_train),
        n_calibration=len(y_cal_all),
        dropped_calibration=int((~known).sum()),
        train_seconds=train_seconds,
        test_report=report,
        evidence=evidence,
    )
