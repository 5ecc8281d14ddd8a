"""`ModelHolder`: loading, atomic swap, refresh from a changed bundle, failures keep the old model."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from hitl.settings import ServingSettings, Settings
from learner.bundle import ModelBundle
from learner.encoder import HFEncoder
from serving.model import ModelHolder, ModelLoadError, ModelNotReadyError, local_version

pytestmark = pytest.mark.slow


def holder_for(tmp_path: Path, embedding_dir: Path, bundle: Path | None, enc: HFEncoder) -> ModelHolder:
    settings = Settings(
        state_dir=embedding_dir.parent,
        serving=ServingSettings(bundle_path=bundle, model_poll_interval_s=0, model_source="auto"),
    )
    return ModelHolder(settings, encoder_factory=lambda _ref: enc)


def retempered(small_bundle_dir: Path, out: Path, factor: float) -> Path:
    bundle = ModelBundle.load(small_bundle_dir)
    bundle.temperature *= factor
    return bundle.save(out)


def test_not_ready_without_a_source(tmp_path: Path, embedding_dir: Path, minilm_encoder: HFEncoder) -> None:
    holder = holder_for(tmp_path, embedding_dir, None, minilm_encoder)
    assert holder.source == "none"  # no bundle, and no MLflow database under the state dir
    assert holder.refresh() is False
    with pytest.raises(ModelNotReadyError):
        holder.require()


def test_refresh_loads_then_swaps_on_a_new_manifest(
    tmp_path: Path, small_bundle_dir: Path, embedding_dir: Path, minilm_encoder: HFEncoder
) -> None:
    served = tmp_path / "served"
    shutil.copytree(small_bundle_dir, served)
    holder = holder_for(tmp_path, embedding_dir, served, minilm_encoder)
    swapped: list[str] = []
    holder.on_swap.append(lambda m: swapped.append(m.version))
    assert holder.refresh() is True
    old = holder.require()
    assert old.version == local_version(served)
    assert holder.refresh() is False  # unchanged manifest: no reload

    _, x = old.features(["Wireless Noise Cancelling Headphones"])  # head inputs (hybrid bundle)
    before = old.predict_proba(x)
    retempered(served, served, 2.0)  # a new model written into the served folder
    assert holder.refresh() is True
    new = holder.require()
    assert new is not old
    assert new.version != old.version
    assert swapped == [old.version, new.version]
    # the old object stays fully usable for a request that took it before the swap
    assert np.array_equal(old.predict_proba(x), before)
    assert not np.allclose(new.predict_proba(x), before)
    assert new.cache is old.cache  # same encoder: the embedding cache (and encoder) are reused
    holder.close()


def test_a_broken_update_keeps_serving_the_old_model(
    tmp_path: Path, small_bundle_dir: Path, embedding_dir: Path, minilm_encoder: HFEncoder
) -> None:
    served = tmp_path / "served"
    shutil.copytree(small_bundle_dir, served)
    holder = holder_for(tmp_path, embedding_dir, served, minilm_encoder)
    holder.refresh()
    current = holder.require()
    (served / "head.npz").write_bytes(b"corrupt")
    manifest = (served / "manifest.json").read_text()
    (served / "manifest.json").write_text(manifest.replace('"temperature"', '"temperature" ', 1))
    assert holder.refresh() is False
    assert holder.require() is current
    assert holder.last_error is not None
    assert "corrupt" in holder.last_error
    holder.close()


def test_a_missing_bundle_fails_loudly(
    tmp_path: Path, embedding_dir: Path, minilm_encoder: HFEncoder
) -> None:
    holder = holder_for(tmp_path, embedding_dir, tmp_path / "nope", minilm_encoder)
    with pytest.raises((ModelLoadError, OSError)):
        holder.refresh()


def test_encoder_mismatch_is_refused(
    tmp_path: Path, small_bundle_dir: Path, embedding_dir: Path, minilm_encoder: HFEncoder
) -> None:
    bundle = ModelBundle.load(small_bundle_dir)
    bundle.encoder_id = "some-other-encoder@0"
    other = bundle.save(tmp_path / "other")
    holder = holder_for(tmp_path, embedding_dir, other, minilm_encoder)
    with pytest.raises(ModelLoadError, match="trained on encoder"):
        holder.refresh()


class Renamed:
    """The session's MiniLM under another id: stands in for a fine-tuned encoder of each version."""

    def __init__(self, encoder: HFEncoder, encoder_id: str) -> None:
        self.encoder, self.encoder_id, self.dim = encoder, encoder_id, encoder.dim

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        return self.encoder.encode(texts)


def test_encoders_of_versions_two_swaps_old_are_let_go(
    tmp_path: Path, small_bundle_dir: Path, embedding_dir: Path, minilm_encoder: HFEncoder
) -> None:
    # Each fine-tuned version brings its own encoder (~90 MB): a server promoting one per retrain
    # keeps only those of the current and the previous model.
    settings = Settings(state_dir=embedding_dir.parent, serving=ServingSettings(model_poll_interval_s=0))
    holder = ModelHolder(settings, encoder_factory=lambda ref: Renamed(minilm_encoder, f"{ref}@0"))
    models = []
    for i in range(3):
        bundle = ModelBundle.load(small_bundle_dir)
        bundle.encoder_ref, bundle.encoder_id = f"tuned-{i}", f"tuned-{i}@0"
        models.append(holder.build(bundle.save(tmp_path / f"v{i}"), str(i), "test"))
        holder.swap(models[-1])
        assert holder.encoders_loaded == min(i + 1, 2)
    assert holder.require() is models[2]
    # A request still holding the oldest model finishes on it: its cache was let go, not closed.
    embeddings, _ = models[0].features(["Wireless Noise Cancelling Headphones"])
    assert embeddings.shape == (1, minilm_encoder.dim)
    holder.close()
