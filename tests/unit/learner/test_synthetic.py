"""The synthetic catalog: deterministic, loadable, realistic, learnable but not trivially."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from learner.data import Product, build_dataset, group_split, label_of, load_catalog, normalize_title
from learner.synthetic import CATEGORIES, generate_catalog, write_catalog


@pytest.fixture(scope="module")
def catalog() -> list[Product]:
    return generate_catalog(2000, seed=0)


def test_same_arguments_give_the_same_catalog(catalog: list[Product]) -> None:
    assert generate_catalog(2000, seed=0) == catalog
    other = generate_catalog(2000, seed=1)
    assert [p.title for p in other] != [p.title for p in catalog]


def test_size_ids_and_categories(catalog: list[Product]) -> None:
    assert len(catalog) == 2000
    assert len({p.id for p in catalog}) == 2000
    sizes = Counter(label_of(p, 2) for p in catalog)
    assert len(sizes) == 20
    assert all(p.category is not None and len(p.category) == 2 for p in catalog)
    # Imbalanced, yet every class holds at least ~2% of the items.
    assert min(sizes.values()) >= 0.02 * 2000
    assert max(sizes.values()) >= 3 * min(sizes.values())
    # Names a Label Studio XML config must escape.
    assert any("&" in label for label in sizes)
    assert any("'" in label for label in sizes)
    assert "Audio Equipment > Headphones" in sizes


@pytest.mark.parametrize("n_categories", [2, 7, len(CATEGORIES)])
def test_n_categories(n_categories: int) -> None:
    products = generate_catalog(300, seed=2, n_categories=n_categories)
    assert len(products) == 300
    assert len({label_of(p, 2) for p in products}) == n_categories


@pytest.mark.parametrize(("n_items", "duplicate_rate"), [(1, 0.05), (5, 0.05), (40, 0.99)])
def test_exact_size_for_tiny_catalogs_and_extreme_rates(n_items: int, duplicate_rate: float) -> None:
    assert len(generate_catalog(n_items, duplicate_rate=duplicate_rate)) == n_items


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_items": 0},
        {"n_categories": 1},
        {"n_categories": len(CATEGORIES) + 1},
        {"label_noise": 1.0},
        {"duplicate_rate": -0.1},
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        generate_catalog(**kwargs)  # type: ignore[arg-type]


def test_round_trip_through_a_file(tmp_path: Path, catalog: list[Product]) -> None:
    path = write_catalog(catalog, tmp_path / "sub" / "synthetic.jsonl")
    loaded = load_catalog(path)
    assert loaded.problems == []
    assert loaded.repeats == []
    assert loaded.products == catalog
    assert not list(path.parent.glob(".*partial"))


def test_looks_like_a_real_feed(catalog: list[Product]) -> None:
    prices = np.array([p.price for p in catalog if p.price is not None])
    assert 0 < len(prices) < len(catalog)  # a few prices are missing
    assert (prices > 0).all()
    assert prices.mean() > np.median(prices)  # right-skewed
    assert prices.max() > 10 * np.median(prices)  # some high-value items
    no_brand = sum(p.brand is None for p in catalog) / len(catalog)
    assert 0.05 < no_brand < 0.25
    empty_description = sum(p.description == "" for p in catalog) / len(catalog)
    assert 0.5 < empty_description < 0.8
    # Brands shared across categories, as in real catalogs.
    categories_of_brand: dict[str, set[str]] = {}
    for p in catalog:
        if p.brand:
            categories_of_brand.setdefault(p.brand, set()).add(label_of(p, 2))
    assert max(len(c) for c in categories_of_brand.values()) >= 3
    # Realistic titles: several words, usually the brand first.
    assert np.median([len(p.title.split()) for p in catalog]) >= 4


def test_pack_size_repeats_share_a_group_key(catalog: list[Product]) -> None:
    groups = Counter(normalize_title(p.title) for p in catalog)
    repeated = sum(n - 1 for n in groups.values() if n > 1)
    assert repeated >= 0.04 * len(catalog)
    # Some repeats are re-typed (case/spacing) and still collapse to one key.
    raw = Counter(p.title for p in catalog)
    assert sum(n - 1 for n in raw.values() if n > 1) < repeated
    fewer = generate_catalog(2000, seed=0, duplicate_rate=0.0)
    assert (
        sum(n - 1 for n in Counter(normalize_title(p.title) for p in fewer).values() if n > 1) < repeated / 2
    )


def test_label_noise_flips_about_that_share(catalog: list[Product]) -> None:
    noisy = generate_catalog(2000, seed=0, label_noise=0.2)
    assert [p.title for p in noisy] == [p.title for p in catalog]  # same items, only labels differ
    flipped = np.mean([a.category != b.category for a, b in zip(noisy, catalog, strict=True)])
    assert 0.15 < flipped < 0.25


def test_bag_of_words_model_learns_it_but_not_perfectly(catalog: list[Product]) -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    data = build_dataset(catalog, level=2, min_class_size=1)
    split = group_split(data, calibration_fraction=0.2, test_fraction=0.2, seed=0)
    vectorizer = TfidfVectorizer(sublinear_tf=True)
    model = LogisticRegression(max_iter=1000, C=10.0)
    # One BLAS thread: on a busy small machine the threaded solver is ~20x slower, not faster.
    with threadpool_limits(limits=1):
        model.fit(vectorizer.fit_transform(data.texts[split.train]), data.labels[split.train])
    predicted = model.predict(vectorizer.transform(data.texts[split.test]))
    accuracy = float(np.mean(predicted == data.labels[split.test]))
    assert 0.75 <= accuracy <= 0.99, accuracy
