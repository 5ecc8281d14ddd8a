from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from learner.encoder import (
    HFEncoder,
    TextEncoder,
    _weights_digest,
    mean_pool,
    resolve_encoder_path,
)
from learner.exceptions import EncoderLoadError
from learner.settings import PACKAGED_ENCODER

TITLES = [
    "Organic green tea, 20 bags",
    "Earl Grey loose leaf black tea 250 g",
    "Men's trail running shoes, size 42",
    "Women's leather ankle boots",
    "USB-C to USB-C charging cable 2 m",
    "Stainless steel frying pan 28 cm",
    "Kids' yellow rain boots",
    "Wireless charging pad for phones",
]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def _cos(a: NDArray[np.float32], b: NDArray[np.float32]) -> float:
    return float(a @ b)


def test_packaged_name_resolves_to_a_model_folder() -> None:
    path = Path(resolve_encoder_path(PACKAGED_ENCODER))
    assert (path / "config.json").is_file()
    assert resolve_encoder_path("sentence-transformers/all-MiniLM-L6-v2") == (
        "sentence-transformers/all-MiniLM-L6-v2"
    )
    assert resolve_encoder_path(Path("/models/mine")) == "/models/mine"


def test_mean_pool_ignores_padding_and_normalises() -> None:
    hidden = torch.tensor([[[1.0, 0.0], [3.0, 0.0], [100.0, 100.0]], [[0.0, 2.0], [0.0, 2.0], [0.0, 2.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    pooled = mean_pool(hidden, mask)
    torch.testing.assert_close(pooled, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))


def test_weights_digest_tracks_every_weight() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    before = _weights_digest(model)
    assert _weights_digest(model) == before
    with torch.no_grad():
        model.weight[2, 1] += 1e-6
    assert _weights_digest(model) != before


def test_missing_path_is_an_encoder_load_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(EncoderLoadError, match="no-such-model"):
        HFEncoder(str(missing))


def test_folder_without_a_model_is_an_encoder_load_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{ not json")
    with pytest.raises(EncoderLoadError, match="local folder") as info:
        HFEncoder(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_unknown_hub_id_offline_is_an_encoder_load_error() -> None:
    with pytest.raises(EncoderLoadError, match=r"no-such-org/no-such-model.*HF_HUB_OFFLINE"):
        HFEncoder("no-such-org/no-such-model")


@pytest.mark.slow
def test_packaged_encoder_gives_384d_unit_vectors(minilm_encoder: HFEncoder) -> None:
    assert isinstance(minilm_encoder, TextEncoder)
    assert minilm_encoder.dim == 384
    assert minilm_encoder.encoder_id.startswith("bert-384d@")
    assert minilm_encoder.device == torch.device("cpu")
    out = minilm_encoder.encode(TITLES)
    assert out.shape == (len(TITLES), 384)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_encoder_id_depends_on_content_not_on_how_the_model_was_named(minilm_encoder: HFEncoder) -> None:
    by_path = HFEncoder(resolve_encoder_path(PACKAGED_ENCODER), device="cpu", max_length=128)
    assert by_path.encoder_id == minilm_encoder.encoder_id
    # Truncation changes long texts' vectors, so it is part of the identity.
    assert HFEncoder(PACKAGED_ENCODER, device="cpu", max_length=64).encoder_id != minilm_encoder.encoder_id


@pytest.mark.slow
def test_similar_titles_are_closer_than_unrelated_ones(minilm_encoder: HFEncoder) -> None:
    tea, earl_grey, shoes, boots, cable, pan, rain_boots, charger = minilm_encoder.encode(TITLES)
    assert _cos(tea, earl_grey) > _cos(tea, shoes) + 0.2
    assert _cos(boots, rain_boots) > _cos(boots, pan) + 0.2
    assert _cos(cable, charger) > _cos(cable, tea) + 0.2


@pytest.mark.slow
def test_batch_size_and_order_do_not_change_vectors(
    minilm_encoder: HFEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = minilm_encoder.encode(TITLES)
    monkeypatch.setattr(minilm_encoder, "batch_size", 3)
    reversed_out = minilm_encoder.encode(TITLES[::-1])
    np.testing.assert_allclose(reversed_out[::-1], reference, atol=1e-5)


@pytest.mark.slow
def test_progress_bar_path_gives_the_same_vectors(
    minilm_encoder: HFEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = minilm_encoder.encode(TITLES)
    monkeypatch.setattr(minilm_encoder, "batch_size", 2)
    monkeypatch.setattr(minilm_encoder, "progress", True)
    np.testing.assert_allclose(minilm_encoder.encode(TITLES), reference, atol=1e-5)


@pytest.mark.slow
def test_pii_is_masked_before_the_model_sees_it(minilm_encoder: HFEncoder) -> None:
    raw, masked, other = minilm_encoder.encode(
        [
            "Returned parcel from jane.doe@example.com, call +44 20 7946 0958",
            "Returned parcel from [EMAIL], call [PHONE]",
            "Returned parcel from bob@test.org, call +1 415 555 2671",
        ]
    )
    np.testing.assert_array_equal(raw, masked)
    np.testing.assert_array_equal(other, masked)


@pytest.mark.slow
def test_empty_input_and_single_string(minilm_encoder: HFEncoder) -> None:
    empty = minilm_encoder.encode([])
    assert empty.shape == (0, 384)
    assert empty.dtype == np.float32
    with pytest.raises(TypeError):
        minilm_encoder.encode("a single title")


@pytest.mark.slow
def test_long_texts_are_truncated_not_rejected(minilm_encoder: HFEncoder) -> None:
    long_text = "waterproof hiking boot " * 400
    (vector,) = minilm_encoder.encode([long_text])
    assert np.isfinite(vector).all()
