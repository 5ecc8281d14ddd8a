"""The learner benchmark on a tiny synthetic catalog: every configuration runs and its figures are sound."""

from __future__ import annotations

import numpy as np
import pytest

from experiments import bench_learner
from hitl.settings import Settings
from learner.data import build_dataset
from learner.loop import training_config
from learner.synthetic import generate_catalog
from tests.unit.experiments.support import HashingEncoder


@pytest.fixture(scope="module")
def corpus() -> bench_learner.Corpus:
    products = generate_catalog(700, seed=3)
    data = build_dataset(products, level=2, min_class_size=20)
    x = HashingEncoder().encode([str(t) for t in data.texts])
    return bench_learner.corpus_of("tiny", data, x, products, Settings())


def test_the_corpus_keeps_the_projects_split_and_aligns_its_side_columns(
    corpus: bench_learner.Corpus,
) -> None:
    assert not set(corpus.pool.tolist()) & set(corpus.test.tolist())
    assert len(corpus.pool) + len(corpus.test) == len(corpus.data)
    assert len(corpus.price) == len(corpus.parents) == len(corpus.data)
    # Each level-2 class has one level-1 parent.
    pairs = set(zip(corpus.data.y.tolist(), corpus.parents.tolist(), strict=True))
    assert len(pairs) == len(corpus.data.classes)


@pytest.mark.parametrize("name", list(bench_learner.CONFIGS))
def test_every_configuration_scores_the_test_split(corpus: bench_learner.Corpus, name: str) -> None:
    config = training_config(Settings().learner, device="cpu")
    rows = bench_learner.random_labels(corpus, 300, seed=0)
    scored = bench_learner.CONFIGS[name](corpus, rows, config)
    assert scored.pred.shape == scored.score.shape == corpus.test.shape
    figures = bench_learner.metrics(corpus, scored)
    # A synthetic catalog is easy: every configuration learns it, none is perfect on every item by luck alone.
    assert figures["accuracy"] > 0.6
    assert 0.0 <= figures["oracle_coverage_95"] <= 1.0
    # Every score ranks better than chance: a random order's area is about the full-coverage risk.
    assert 0.0 <= figures["aurc"] < 1.0 - figures["accuracy"]
    assert figures["train_s"] > 0
    assert figures["infer_ms_per_item"] > 0


def test_random_labels_are_a_seeded_subset_of_the_pool(corpus: bench_learner.Corpus) -> None:
    a = bench_learner.random_labels(corpus, 100, seed=1)
    assert np.array_equal(a, bench_learner.random_labels(corpus, 100, seed=1))
    assert len(set(a.tolist())) == 100
    assert set(a.tolist()) <= set(corpus.pool.tolist())
    assert np.array_equal(bench_learner.random_labels(corpus, None, seed=1), corpus.pool)


def test_margin_label_sets_grow_by_the_schedule_and_prefer_uncertain_items(
    corpus: bench_learner.Corpus,
) -> None:
    config = training_config(Settings().learner, device="cpu")
    sets = bench_learner.margin_label_sets(
        corpus, config, seed=0, schedule=((150, 50), (250, 100)), seed_labels=50
    )
    assert sorted(sets) == [150, 250]
    assert (len(sets[150]), len(sets[250])) == (150, 250)
    assert set(sets[150].tolist()) <= set(sets[250].tolist()) <= set(corpus.pool.tolist())
    # The loop's mix: a third of each round drawn uniformly, so its picks are less uncertain on average.
    mixed = bench_learner.margin_label_sets(
        corpus, config, seed=0, schedule=((150, 50), (250, 100)), seed_labels=50, random_share=1 / 3
    )
    assert (len(mixed[150]), len(mixed[250])) == (150, 250)
    assert not np.array_equal(mixed[250], sets[250])


def test_the_summary_checks_the_default_against_the_targets() -> None:
    row = {
        "n_labels": 3200,
        "accuracy": 0.9,
        "macro_f1": 0.9,
        "oracle_coverage_95": 0.5,
        "aurc": 0.03,
        "train_s": 1.0,
        "infer_ms_per_item": 0.1,
    }
    cells = {
        "bigbasket/random/3200/default/0": {"key": "k", **row},
        "bigbasket/random/3200/default/1": {"key": "k", **row, "accuracy": 0.82},
        "bigbasket/margin/3200/default/0": {"key": "k", **row, "oracle_coverage_95": 0.4},
        "bigbasket/loop_mix/3200/default/0": {"key": "k", **row, "oracle_coverage_95": 0.6},
    }
    summary = bench_learner.summarize(cells, ["bigbasket"], Settings(), "cmd")
    checks = summary["default"]["targets_at_3200_random"]["bigbasket"]
    assert checks["accuracy"]["measured"] == pytest.approx(0.86)  # the mean over the two label seeds
    assert checks["accuracy"]["met"] is True
    assert checks["oracle_coverage_95"]["met"] is False
    assert checks["al_ranks_as_well"]["met"] is False
    assert checks["loop_ranks_as_well"]["met"] is True
    cell = summary["catalogs"]["bigbasket"]["random"]["3200"]["default"]
    assert (cell["aurc"], cell["seeds"], cell["oracle_coverage_95_range"]) == (
        pytest.approx(0.03),
        2,
        [0.5, 0.5],
    )
