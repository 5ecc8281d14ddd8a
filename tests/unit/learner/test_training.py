"""`fit_head`: the one place a training configuration becomes a fitted head."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from numpy.typing import NDArray

from learner.bundle import ModelBundle
from learner.calibration import softmax
from learner.loop import training_config
from learner.settings import LearnerSettings
from learner.thresholds import acceptance_confidence, certification_grid, default_candidates
from learner.training import TrainingConfig, certify_bundle, fit_head, label_indices, train_bundle


def test_fit_head_uses_the_configured_head_and_learns_separable_classes() -> None:
    rng = np.random.default_rng(0)
    centres = np.eye(3, 8) * 4.0
    y = np.repeat(["a", "b", "c"], 40)
    x = centres[np.repeat(np.arange(3), 40)] + rng.standard_normal((120, 8))
    config = replace(TrainingConfig(device="cpu"), epochs=7, weight_decay=3e-3)
    head = fit_head(x.astype(np.float32), list(y), config)
    assert (head.epochs, head.weight_decay, head.class_weight) == (7, 3e-3, config.class_weight)
    assert list(head.classes_) == ["a", "b", "c"]
    assert (head.predict(x.astype(np.float32)) == y).mean() > 0.95


def _default_bundle(
    seed: int, spread: float, per_class: int, every: int
) -> tuple[ModelBundle, NDArray[np.float32], list[str], NDArray[np.intp], TrainingConfig]:
    """The default learner on 4 Gaussian classes (8-d, centres `spread` apart); every `every`-th item
    trains, the rest calibrate: (bundle, x, labels, calibration rows, config)."""
    rng = np.random.default_rng(seed)
    y_idx = np.repeat(np.arange(4), per_class)
    x = ((np.eye(4, 8) * spread)[y_idx] + rng.standard_normal((y_idx.size, 8))).astype(np.float32)
    y = [str(v) for v in y_idx]
    config = training_config(LearnerSettings(device="cpu", features="embedding"), device="cpu")
    train = np.arange(0, y_idx.size, every)
    cal = np.setdiff1d(np.arange(y_idx.size), train)
    bundle = train_bundle(
        x[train],
        [y[i] for i in train],
        x[cal],
        [y[i] for i in cal],
        config=config,
        encoder_ref="test",
        encoder_id="test",
    ).bundle
    return bundle, x, y, cal, config


def test_the_default_learner_certifies_and_predicts_on_the_pairwise_score() -> None:
    bundle, x, _, cal, config = _default_bundle(seed=1, spread=2.5, per_class=150, every=2)
    assert config.acceptance_score == "pairwise"
    assert bundle.thresholds.score == "pairwise"
    proba = bundle.predict_proba(x[cal])
    _, confidence, accepted = bundle.predict(x[cal])
    np.testing.assert_allclose(confidence, acceptance_confidence(proba, "pairwise"))
    assert not np.allclose(confidence, proba.max(axis=1))  # not the top probability
    np.testing.assert_array_equal(accepted, confidence >= bundle.thresholds.thresholds[proba.argmax(axis=1)])
    assert accepted.any()


def test_what_a_certificate_accepts_does_not_depend_on_the_temperature_fitted_on_its_audits() -> None:
    # The temperature is fitted on the audits that then certify: were the candidates fixed in the
    # calibrated score, those labels would choose where they fall along the model's ranking.
    bundle, x, y, cal, config = _default_bundle(seed=2, spread=1.6, per_class=300, every=3)
    logits = bundle.head.logits(x[cal])
    y_cal = label_indices([y[i] for i in cal], bundle.labels)
    accepted = {}
    for temperature in (0.5, 1.0, 2.0, 4.0, bundle.temperature):
        tempered = replace(bundle, temperature=temperature)
        thresholds, _ = certify_bundle(tempered, softmax(logits, temperature), y_cal, config=config)
        accepted[temperature] = thresholds.accept_mask(softmax(logits, temperature))
    assert accepted[1.0].any()
    for temperature, mask in accepted.items():
        np.testing.assert_array_equal(mask, accepted[1.0], err_msg=f"temperature {temperature}")
    # The top-class probability is no monotone map of its value at temperature 1: its grid stays fixed.
    np.testing.assert_array_equal(certification_grid(2.0, "top_probability"), default_candidates())


def test_a_test_split_of_classes_the_head_never_saw_gives_no_report_not_a_crash() -> None:
    rng = np.random.default_rng(0)
    y_idx = np.repeat(np.arange(2), 60)
    x = ((np.eye(2, 8) * 3.0)[y_idx] + rng.standard_normal((120, 8))).astype(np.float32)
    y = [str(v) for v in y_idx]
    config = training_config(LearnerSettings(device="cpu", features="embedding"), device="cpu")
    result = train_bundle(
        x[::2],
        y[::2],
        x[1::2],
        y[1::2],
        config=config,
        encoder_ref="t",
        encoder_id="t",
        x_test=x[:3],
        y_test=["z"] * 3,
    )
    assert result.test_report is None
