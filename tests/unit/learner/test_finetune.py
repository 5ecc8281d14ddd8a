from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from learner.encoder import HFEncoder
from learner.exceptions import NotFittedError
from learner.finetune import FineTuneClassifier
from learner.loop import encoder_finetune
from learner.settings import FineTuneSettings, LearnerSettings

TEXTS = [
    "Organic green tea 20 bags",
    "Earl grey loose leaf tea",
    "Espresso coffee beans 1kg",
    "Instant coffee granules jar",
    "Men's running shoes size 42",
    "Women's leather ankle boots",
    "Kids rain boots yellow",
    "Trail running sneakers",
    "USB-C charging cable 2m",
    "Wireless phone charger pad",
    "Lightning to USB cable",
    "Fast wall charger 30W",
    "Stainless steel frying pan",
    "Non-stick saucepan 20cm",
    "Cast iron skillet",
    "Wok with lid",
]
LABELS = np.array(["Drinks"] * 4 + ["Shoes"] * 4 + ["Electronics > Cables"] * 4 + ["Kitchen > Pans"] * 4)

pytestmark = pytest.mark.slow


def class_gap(embeddings: NDArray[np.float32]) -> float:
    """Mean cosine within classes minus mean cosine across classes."""
    sims = embeddings @ embeddings.T
    same = (LABELS[:, None] == LABELS[None, :]) & ~np.eye(len(LABELS), dtype=bool)
    return float(sims[same].mean() - sims[LABELS[:, None] != LABELS[None, :]].mean())


@pytest.fixture(scope="module")
def base_embeddings(minilm_encoder: HFEncoder) -> NDArray[np.float32]:
    return minilm_encoder.encode(TEXTS)


@pytest.fixture(scope="module")
def tuned(minilm_encoder: HFEncoder, base_embeddings: NDArray[np.float32]) -> FineTuneClassifier:
    base_id = minilm_encoder.encoder_id
    model = FineTuneClassifier(
        minilm_encoder, epochs=1, batch_size=4, learning_rate=1e-4, max_length=32, device="cpu", seed=0
    ).fit(TEXTS, LABELS)
    # Training ran on a copy: the shared encoder (and every cache key built on its id) is untouched.
    assert minilm_encoder.encoder_id == base_id
    return model


def test_training_pulls_each_class_together(
    tuned: FineTuneClassifier, base_embeddings: NDArray[np.float32]
) -> None:
    assert len(tuned.history_) == 4  # 16 texts / batch 4, one epoch
    assert all(np.isfinite(tuned.history_))
    assert class_gap(tuned.embed(TEXTS)) > class_gap(base_embeddings) + 0.05


def test_caller_encoder_is_not_modified(
    tuned: FineTuneClassifier, minilm_encoder: HFEncoder, base_embeddings: NDArray[np.float32]
) -> None:
    np.testing.assert_array_equal(minilm_encoder.encode(TEXTS), base_embeddings)


def test_predictions(tuned: FineTuneClassifier) -> None:
    assert list(tuned.classes_) == sorted(set(LABELS))
    proba = tuned.predict_proba(TEXTS)
    assert proba.shape == (16, 4)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)
    assert (tuned.predict(TEXTS) == LABELS).mean() == 1.0
    assert tuned.logits(TEXTS).dtype == np.float64


def test_saved_encoder_reloads_with_new_weights(
    tuned: FineTuneClassifier,
    minilm_encoder: HFEncoder,
    base_embeddings: NDArray[np.float32],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tuned.save(tmp_path / "encoder")
    assert (folder / "config.json").is_file()
    reloaded = HFEncoder(folder, device="cpu", max_length=minilm_encoder.max_length)
    assert reloaded.encoder_id != minilm_encoder.encoder_id  # same settings, new weights
    embeddings = reloaded.encode(TEXTS)
    assert np.abs(embeddings - base_embeddings).max() > 1e-3
    np.testing.assert_allclose(embeddings, tuned.embed(TEXTS), atol=1e-5)
    # The exported head on the reloaded encoder reproduces the fine-tuned classifier.
    head = tuned.export_head(device="cpu")
    np.testing.assert_allclose(head.logits(embeddings), tuned.logits(TEXTS), atol=1e-4)


def test_unfitted_use_raises(minilm_encoder: HFEncoder, tmp_path: Path) -> None:
    model = FineTuneClassifier(minilm_encoder, device="cpu")
    with pytest.raises(NotFittedError):
        model.predict_proba(TEXTS)
    with pytest.raises(NotFittedError):
        model.save(tmp_path)


def test_max_steps_caps_training(minilm_encoder: HFEncoder) -> None:
    model = FineTuneClassifier(
        minilm_encoder, epochs=3, batch_size=4, max_steps=5, max_length=32, device="cpu"
    ).fit(TEXTS, LABELS)
    assert model.steps_ == len(model.history_) == 5  # 3 epochs of 4 steps would be 12
    with pytest.raises(ValueError, match="max_steps"):
        FineTuneClassifier(minilm_encoder, max_steps=0)


def test_settings_build_the_fine_tune_only_when_enabled(minilm_encoder: HFEncoder) -> None:
    learner = LearnerSettings(device="cpu")
    assert encoder_finetune(learner, minilm_encoder) is None
    tune = FineTuneSettings(enabled=True, epochs=2, learning_rate=3e-5, batch_size=8, max_steps=7)
    built = encoder_finetune(learner.model_copy(update={"finetune": tune}), minilm_encoder)
    assert built is not None
    assert (built.epochs, built.learning_rate, built.batch_size, built.max_steps) == (2, 3e-5, 8, 7)
    assert built.device == "cpu"
