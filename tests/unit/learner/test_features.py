"""Hybrid features: deterministic hashed n-grams, recorded in the bundle, rebuilt identically on load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy import sparse

from learner.bundle import MANIFEST_NAME, ModelBundle
from learner.exceptions import BundleFormatError
from learner.features import FeatureSpec, NgramMemo, with_brand_token
from learner.training import TrainingConfig, train_bundle

HYBRID = FeatureSpec(kind="hybrid", ngram_dims=256, ngram_weight=2.0)

# Two classes told apart by one word; the "embeddings" carry no signal at all.
WORDS = {"Kitchen > Pans": "skillet", "Garden > Tools": "trowel"}


def catalog(n: int, seed: int) -> tuple[list[str], list[str], NDArray[np.float32]]:
    rng = np.random.default_rng(seed)
    labels = [list(WORDS)[i] for i in rng.integers(0, 2, size=n)]
    fillers = ["steel", "blue", "large", "classic", "pro", "set", "mini", "eco"]
    texts = [f"{' '.join(rng.choice(fillers, size=3))} {WORDS[label]} {k}" for k, label in enumerate(labels)]
    embeddings = rng.normal(size=(n, 8)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    return texts, labels, embeddings


def test_ngram_features_are_deterministic_unit_norm_and_lexical() -> None:
    texts = ["Basmati Rice 5 kg | brand: India Gate", "basmati rice 1 kg", "Steel Skillet 28 cm"]
    first = HYBRID.ngram_features(texts)
    again = FeatureSpec(kind="hybrid", ngram_dims=256).ngram_features(list(reversed(texts)))[::-1]
    assert first.shape == (3, 256)
    assert first.dtype == np.float32
    np.testing.assert_array_equal(first, again)  # stateless: no fitted vocabulary, order-free
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, rtol=1e-5)
    cosine = first @ first.T
    assert cosine[0, 1] > 0.5 > cosine[0, 2]  # shared words and character n-grams count


def test_model_inputs_layout_and_encoder_part() -> None:
    texts, _, embeddings = catalog(5, seed=0)
    x = HYBRID.model_inputs(embeddings, texts)
    assert x.shape == (5, 8 + 256)
    np.testing.assert_array_equal(HYBRID.encoder_part(x), embeddings)
    np.testing.assert_allclose(x[:, 8:], 2.0 * HYBRID.ngram_features(texts), rtol=1e-6)
    plain = FeatureSpec()
    np.testing.assert_array_equal(plain.model_inputs(embeddings, texts), embeddings)
    with pytest.raises(ValueError, match="texts"):
        HYBRID.model_inputs(embeddings, texts[:-1])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "tfidf"},
        {"ngram_dims": 0},
        {"word_ngrams": (2, 1)},
        {"char_ngrams": (0, 3)},
        {"ngram_weight": 0.0},
    ],
)
def test_bad_specs_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must"):
        FeatureSpec(**kwargs)  # type: ignore[arg-type]


def test_spec_round_trips_and_missing_record_means_embedding() -> None:
    spec = FeatureSpec(
        kind="hybrid", ngram_dims=1024, word_ngrams=(1, 3), ngram_weight=1.5, sublinear_tf=True
    )
    assert FeatureSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert FeatureSpec.from_dict(None) == FeatureSpec(kind="embedding")


def test_hybrid_bundle_learns_from_words_and_serves_identically(tmp_path: Path) -> None:
    texts, labels, embeddings = catalog(400, seed=1)
    x = HYBRID.model_inputs(embeddings, texts)
    config = TrainingConfig(epochs=60, device="cpu", features=HYBRID)
    result = train_bundle(
        x[:200], labels[:200], x[200:300], labels[200:300], config=config, encoder_ref="e", encoder_id="e"
    )
    bundle = result.bundle
    # The embeddings are noise, so only the n-gram block can separate the classes.
    test_texts, test_labels, test_emb = catalog(100, seed=2)
    predicted, _, _ = bundle.predict(bundle.model_inputs(test_emb, test_texts))
    assert np.mean(np.array(predicted) == np.array(test_labels)) > 0.95
    # Centroids (OOD check) live in encoder space, not in the hybrid input space.
    assert np.asarray(bundle.metadata["class_centroids"]).shape == (2, 8)

    loaded = ModelBundle.load(bundle.save(tmp_path / "b"), device="cpu")
    assert loaded.features == HYBRID
    np.testing.assert_array_equal(
        loaded.predict_proba(loaded.model_inputs(test_emb, test_texts)),
        bundle.predict_proba(bundle.model_inputs(test_emb, test_texts)),
    )


def test_bundle_without_feature_record_loads_as_embedding(tmp_path: Path) -> None:
    texts, labels, embeddings = catalog(200, seed=3)
    config = TrainingConfig(epochs=20, device="cpu")
    result = train_bundle(
        embeddings[:100],
        labels[:100],
        embeddings[100:],
        labels[100:],
        config=config,
        encoder_ref="e",
        encoder_id="e",
    )
    folder = result.bundle.save(tmp_path / "old")
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    del manifest["features"]  # as written before features were recorded
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    loaded = ModelBundle.load(folder, device="cpu")
    assert loaded.features.kind == "embedding"
    np.testing.assert_array_equal(loaded.model_inputs(embeddings, texts), embeddings)

    manifest["features"] = {"kind": "bag-of-words"}
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(BundleFormatError, match="corrupt"):
        ModelBundle.load(folder, device="cpu")


@pytest.mark.parametrize(("sublinear_tf", "brand_token"), [(False, False), (True, False), (True, True)])
def test_the_few_texts_path_equals_the_sparse_path_bit_for_bit(sublinear_tf: bool, brand_token: bool) -> None:
    spec = FeatureSpec(kind="hybrid", ngram_dims=512, sublinear_tf=sublinear_tf, brand_token=brand_token)
    texts = [
        "Basmati Rice - Premium, 5 kg | brand: Daawat",
        "Ünïcödé CAFÉ 500ml  tab\tand\nnewline",
        "",
        "   ",
        "a",
        "x " * 40,
        "Organic Bananas Bananas Bananas",
    ] + [f"Item {i} shampoo {i * 7} ml" for i in range(40)]
    sparse = spec.ngram_features(texts)  # more than the fast-path limit: the sklearn path
    few = np.vstack([spec.ngram_features([t]) for t in texts])
    assert np.array_equal(sparse, few)


@pytest.mark.parametrize("count", [1, 40])  # both the per-text and the batched path
def test_personal_data_is_masked_before_it_is_hashed(count: int) -> None:
    # Issue #12.3: n-gram hashes of raw text put fragments of emails and phone numbers into the head.
    spec = FeatureSpec(kind="hybrid")
    raw = ["Kettle, ask jane.doe@example.com or +1 (415) 555-2671"] * count
    masked = ["Kettle, ask [EMAIL] or [PHONE]"] * count
    np.testing.assert_array_equal(spec.ngram_features(raw), spec.ngram_features(masked))
    assert not np.array_equal(spec.ngram_features(raw), spec.ngram_features(["Kettle"] * count))


def test_the_brand_token_is_one_word_per_brand_and_absent_without_a_brand() -> None:
    assert with_brand_token("Garlic Oil 500 mg | brand: Sri Sri Ayurveda") == (
        "Garlic Oil 500 mg | brand: Sri Sri Ayurveda brandtokensrisriayurveda"
    )
    assert with_brand_token("Garlic Oil | brand: SRI-SRI  ayurveda | desc").endswith(
        "brandtokensrisriayurveda"
    )
    assert with_brand_token("Garlic Oil | a description") == "Garlic Oil | a description"
    # Only the brand part counts, not a title that happens to contain the word.
    assert with_brand_token("brand: none here") == "brand: none here"


def test_the_brand_token_makes_two_brands_differ_and_is_recorded_in_the_spec() -> None:
    with_token = FeatureSpec(kind="hybrid", ngram_dims=4096, brand_token=True)
    without = FeatureSpec(kind="hybrid", ngram_dims=4096)
    texts = ["Shampoo 200 ml | brand: Dove", "Shampoo 200 ml | brand: Dave"]
    # Char n-grams of "dove" and "dave" overlap; the token adds one feature each brand alone has.
    gap_with = float(np.linalg.norm(np.subtract(*with_token.ngram_features(texts))))
    gap_without = float(np.linalg.norm(np.subtract(*without.ngram_features(texts))))
    assert gap_with > gap_without
    assert FeatureSpec.from_dict(with_token.to_dict()) == with_token
    legacy = with_token.to_dict()
    del legacy["brand_token"]  # bundles written before the token existed
    assert FeatureSpec.from_dict(legacy).brand_token is False


def test_sparse_inputs_hold_the_numbers_of_model_inputs() -> None:
    texts, _, embeddings = catalog(40, seed=2)  # > the few-texts path, so both n-gram paths are used
    for spec in (HYBRID, FeatureSpec(kind="hybrid", ngram_dims=128, sublinear_tf=True, brand_token=True)):
        dense = spec.model_inputs(embeddings, texts)
        csr = spec.sparse_inputs(embeddings, texts)
        assert csr.shape == dense.shape
        np.testing.assert_array_equal(sparse.csr_matrix(csr).toarray(), dense)
        np.testing.assert_array_equal(spec.encoder_part(csr), embeddings)
    plain = FeatureSpec()
    np.testing.assert_array_equal(plain.sparse_inputs(embeddings, texts), embeddings)  # stays dense
    with pytest.raises(ValueError, match="texts"):
        HYBRID.sparse_inputs(embeddings, texts[:-1])


def test_the_memo_reuses_rows_per_spec_and_stays_bounded() -> None:
    texts, _, embeddings = catalog(30, seed=3)
    memo = NgramMemo(max_texts=50)
    first = HYBRID.sparse_inputs(embeddings, texts, memo)
    assert (memo.misses, memo.hits, len(memo)) == (30, 0, 30)
    again = HYBRID.sparse_inputs(embeddings[::-1], texts[::-1], memo)
    assert (memo.misses, memo.hits) == (30, 30)
    np.testing.assert_array_equal(
        sparse.csr_matrix(again).toarray(), sparse.csr_matrix(first).toarray()[::-1]
    )
    # Another spec's n-grams are other numbers: never served from the first spec's rows.
    other = FeatureSpec(kind="hybrid", ngram_dims=256, sublinear_tf=True)
    np.testing.assert_array_equal(
        sparse.csr_matrix(other.sparse_inputs(embeddings, texts, memo)).toarray(),
        other.model_inputs(embeddings, texts),
    )
    assert memo.misses == 60
    assert len(memo) == 50  # the oldest rows made room
    with pytest.raises(ValueError, match="max_texts"):
        NgramMemo(max_texts=-1)
    off = NgramMemo(max_texts=0)
    HYBRID.sparse_inputs(embeddings, texts, off)
    assert len(off) == 0


def test_a_bundle_trained_on_sparse_inputs_matches_one_trained_on_dense_inputs() -> None:
    texts, labels, embeddings = catalog(120, seed=4)
    config = TrainingConfig(features=HYBRID, epochs=200)
    results = []
    for build in (HYBRID.model_inputs, HYBRID.sparse_inputs):
        x = build(embeddings, texts)
        results.append(
            train_bundle(
                x[:80], labels[:80], x[80:], labels[80:], config=config, encoder_ref="e", encoder_id="e"
            )
        )
    dense, fast = (r.bundle for r in results)
    x_all = HYBRID.model_inputs(embeddings, texts)
    np.testing.assert_allclose(fast.predict_proba(x_all), dense.predict_proba(x_all), atol=1e-3)
    assert fast.metadata["class_centroids"] == dense.metadata["class_centroids"]


def test_the_champion_starts_the_head_only_when_warm_starts_are_on_and_it_fits() -> None:
    texts, labels, embeddings = catalog(160, seed=5)

    def train(config: TrainingConfig, init: ModelBundle | None = None, n: int = 100) -> ModelBundle:
        x = config.features.model_inputs(embeddings, texts)
        return train_bundle(
            x[:n],
            labels[:n],
            x[120:],
            labels[120:],
            config=config,
            encoder_ref="e",
            encoder_id="e",
            init=init,
        ).bundle

    cold = TrainingConfig(features=HYBRID)
    warm = TrainingConfig(features=HYBRID, warm_start_iterations=5)
    champion = train(cold)
    assert champion.metadata["warm_started"] is False
    assert train(cold, champion, n=110).metadata["warm_started"] is False  # off by default
    started = train(warm, champion, n=110)
    assert started.metadata["warm_started"] is True
    assert started.head.n_iter_ <= 5
    other_spec = TrainingConfig(features=FeatureSpec(kind="hybrid", ngram_dims=128), warm_start_iterations=5)
    assert train(other_spec, champion, n=110).metadata["warm_started"] is False  # other features: from zero
