"""Benchmark of the learner itself: how accurate it is, and how well its confidence ranks items.

For each catalog (bigbasket, instacart; label level 2, the project's group split: train + calibration
parts are the label pool, the test part is evaluated), label budgets 1,000 / 3,200 / 10,000 / all, and
two ways of picking the labels:

- ``random``: a seeded uniform sample of the pool;
- ``margin``: active learning with the default learner and margin sampling, from 200 random seed labels
  in rounds (200 labels a round up to 1,000, then 550 up to 3,200, then 1,700 up to 10,000); every
  configuration is then trained on the same picked labels. ``all`` is the same set for both;
- ``loop_mix``: what the default loop trains on - the same margin rounds with a third of each round
  drawn uniformly at random (`LOOP_RANDOM_SHARE`: at 3,000 corrections the loop of
  experiments/bench_loop.py trains on ~2,800 labels, ~1,000 of them uniform: 200 seed labels and the
  ~800 audits that retired from the certification window).

each configuration is trained and scored on the test split:

- ``accuracy``, ``macro_f1``;
- ``oracle_coverage_95``: the largest share of the test split one confidence threshold (picked on the
  test split itself) auto-accepts at >= 95% accuracy: what the best certified threshold could reach;
- ``aurc``: area under the risk-coverage curve (`learner.evaluation.aurc`), lower is better;
- ``train_s``: fit time on this machine; ``infer_ms_per_item``: head inputs + prediction per test item,
  given the encoder's embeddings (the encoder's own cost is in experiments/results/bench_serving.json).

Configurations (`CONFIGS`): ``wave1`` (the learner before this benchmark: hybrid features with raw
hashed counts, no brand token, weight decay 1e-4, 200 L-BFGS iterations), ``default``
(`configs/default.yaml`: log1p counts, the brand as one token, weight decay 1e-5, 50 iterations,
items accepted by the pairwise score p1 / (p1 + p2), `learner.thresholds.acceptance_confidence`),
``top_probability`` (the same head accepting by p1, the default before), the ``tfidf_lr`` baseline
(scikit-learn TF-IDF word 1-2 + char_wb 2-5, sublinear, LogisticRegression C=20), and candidates built
on the default head and measured with the top-class probability, so comparable with
``top_probability``: ``knn_agreement`` (acceptance score = mean of the top probability
and the share of the 10 nearest labelled neighbours, embedding cosine, that agree), ``label_memory``
(a labelled near-duplicate, cosine >= 0.95, gives its label and is accepted first), ``hierarchy`` (a
level-1 head; score = geometric mean of the level-2 probability and the level-1 probability of its
parent), ``price_bin`` (a log2 price bin added to the n-grams), ``no_brand_token`` (the default
without its brand token), ``finetune`` (`learner.finetune`, 2 epochs, random labels up to 3,200 only;
its train_s includes re-embedding), ``encoder:<folder>`` (another frozen encoder, `--extra-encoder`),
``committee`` (mean probabilities of the default head, an n-gram-only and an embedding-only head).

    .venv/bin/python -m experiments.bench_learner [--catalogs bigbasket instacart] [--data-dir ../shared/data]

Writes experiments/results/learner/summary.json, README.md and risk_coverage.png; finished cells are
kept in experiments/results/learner/cells.jsonl and read back on a rerun (resumable; `--fresh` clears).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from experiments.bench_loop import CATALOGS, load_real
from hitl.settings import Settings, load_settings
from learner.data import LabeledDataset, Product, catalog_file, group_split, load_catalog
from learner.evaluation import curve_area, curve_coverage_at, macro_f1, selective_curve
from learner.loop import training_config
from learner.strategies import get_strategy
from learner.thresholds import LEGACY_ACCEPTANCE_SCORE, acceptance_confidence
from learner.training import TrainingConfig, fit_head

RESULTS = Path("experiments/results/learner")
BUDGETS: tuple[int | None, ...] = (1000, 3200, 10000, None)  # None = every label of the pool
MARGIN_SCHEDULE = ((1000, 200), (3200, 550), (10000, 1700))  # (up to, labels per round)
MARGIN_SEED_LABELS = 200
LOOP_RANDOM_SHARE = 1 / 3  # the uniform share of the default loop's training labels (module docstring)
PICKED = {"margin": 0.0, "loop_mix": LOOP_RANDOM_SHARE}  # label sets picked by a model: uniform share
TARGET = 0.95
CURVE_BUDGET = 3200  # the risk-coverage figure: random labels at this budget
CURVE_CONFIGS = ("wave1", "default", "top_probability", "tfidf_lr", "knn_agreement", "label_memory")
NEAR_DUPLICATE = 0.95
NEIGHBOURS = 10
# The targets for the new default at 3,200 random labels.
TARGETS: Mapping[str, Mapping[str, float]] = {
    "bigbasket": {"oracle_coverage_95": 0.60, "accuracy": 0.85},
    "instacart": {"oracle_coverage_95": 0.60, "accuracy": 0.82},
}


@dataclass(frozen=True)
class Corpus:
    """One catalog as the benchmark sees it; row-aligned arrays over the labelled dataset."""

    name: str
    data: LabeledDataset
    embeddings: NDArray[np.float32]
    pool: NDArray[np.int64]
    test: NDArray[np.int64]
    parents: NDArray[np.int64]  # level-1 class index of each row
    price: NDArray[np.float64]


@dataclass(frozen=True)
class Scored:
    """A configuration's output on the test split: predicted class index and acceptance score."""

    pred: NDArray[np.int64]
    score: NDArray[np.float64]
    train_s: float
    infer_s: float


Config = Callable[[Corpus, NDArray[np.int64], TrainingConfig], Scored]


def _cells_path(out: Path) -> Path:
    return out / "cells.jsonl"


def load_corpus(settings: Settings, name: str, data_dir: Path) -> Corpus:
    """`name` under `data_dir` with its cached embeddings, split as the project splits it."""
    data, x, _ = load_real(settings, name, data_dir)
    products = load_catalog(catalog_file(data_dir, name), strict=False).products
    return corpus_of(name, data, x, products, settings)


def corpus_of(
    name: str,
    data: LabeledDataset,
    embeddings: NDArray[np.float32],
    products: Sequence[Product],
    settings: Settings,
) -> Corpus:
    """The benchmark's view of `data` (built from `products`, whose embeddings are given row-aligned)."""
    split = group_split(
        data,
        calibration_fraction=settings.learner.calibration_fraction,
        test_fraction=settings.learner.test_fraction,
        seed=settings.learner.seed,
    )
    by_id = {p.id: p for p in products}
    rows = [by_id[str(i)] for i in data.ids]
    level1 = [str((p.category or ["?"])[0]) for p in rows]
    names = sorted(set(level1))
    return Corpus(
        name=name,
        data=data,
        embeddings=np.asarray(embeddings, dtype=np.float32),
        pool=np.sort(np.concatenate([split.train, split.calibration])).astype(np.int64),
        test=split.test.astype(np.int64),
        parents=np.array([names.index(v) for v in level1], dtype=np.int64),
        price=np.array([math.nan if p.price is None else p.price for p in rows], dtype=np.float64),
    )


# ----------------------------------------------------------------------------------------- configurations


def _head_scores(
    corpus: Corpus, train: NDArray[np.int64], config: TrainingConfig, texts: Sequence[str] | None = None
) -> tuple[NDArray[np.float64], NDArray[np.int64], float, float]:
    """Fit `config`'s head on `train`; (test probabilities, class index of each column, train_s, infer_s)."""
    all_texts = [str(t) for t in corpus.data.texts] if texts is None else list(texts)
    x = corpus.embeddings
    y = corpus.data.y
    started = time.perf_counter()
    inputs = config.features.model_inputs(x[train], [all_texts[i] for i in train])
    head = fit_head(inputs, [str(v) for v in y[train]], config)
    train_s = time.perf_counter() - started
    started = time.perf_counter()
    proba = head.predict_proba(
        config.features.model_inputs(x[corpus.test], [all_texts[i] for i in corpus.test])
    )
    infer_s = time.perf_counter() - started
    columns = np.array([int(c) for c in head.classes_], dtype=np.int64)
    return proba, columns, train_s, infer_s


def _top(
    proba: NDArray[np.float64], columns: NDArray[np.int64], score: str = LEGACY_ACCEPTANCE_SCORE
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """(predicted class index, acceptance score): the candidates below were measured with the top-class
    probability, the default before ``pairwise``; they compare with ``top_probability``."""
    return columns[proba.argmax(axis=1)], acceptance_confidence(proba, score)


def wave1_config(config: TrainingConfig) -> TrainingConfig:
    """The learner before this benchmark changed the defaults (raw counts, no brand token, weight decay 1e-4,
    200 iterations)."""
    return replace(
        config,
        epochs=200,
        weight_decay=1e-4,
        features=replace(config.features, sublinear_tf=False, brand_token=False),
    )


def run_wave1(corpus: Corpus, train: NDArray[np.int64], config: TrainingConfig) -> Scored:
    proba, columns, train_s, infer_s = _head_scores(corpus, train, wave1_config(config))
    return Scored(*_top(proba, columns), train_s, infer_s)


def run_default(corpus: Corpus, train: NDArray[np.int64], config: TrainingConfig) -> Scored:
    proba, columns, train_s, infer_s = _head_scores(corpus, train, config)
    return Scored(*_top(proba, columns, config.acceptance_score), train_s, infer_s)


def run_top_probability(corpus: Corpus, train: NDArray[np.int64], config: TrainingConfig) -> Scored:
    """The default head, accepting by the top-class probability (the default before ``pairwise``)."""
    return run_default(corpus, train, replace(config, acceptance_score=LEGACY_ACCEPTANCE_SCORE))


def run_tfidf_lr(corpus: Corpus, train: NDArray[np.int64], config: TrainingConfig) -> Scored:
    from scipy import sparse
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    texts = np.asarray([str(t) for t in corpus.data.texts], dtype=object)
    started = time.perf_counter()
    vectorizers = [
        TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True),
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True),
    ]
    x_train = sparse.hstack([v.fit_transform(texts[train]) for v in vectorizers]).tocsr()
    model = LogisticRegression(C=20, max_iter=300).fit(x_train, corpus.data.y[train])
    train_s = time.perf_counter() - started
    started = time.perf_counter()
    x_test = sparse.hstack([v.transform(texts[corpus.test]) for v in vectorizers]).tocsr()
    proba = model.predict_proba(x_test)
    infer_s = time.perf_counter() - started
    return Scored(*_top(proba, model.classes_.astype(np.int64)), train_s, infer_s)


def _neighbours(corpus: Corpus, train: NDArray[np.int64]) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """(n_test, k) nearest labelled rows by embedding cosine (best first) and their similarities."""
    sims = corpus.embeddings[corpus.test] @ corpus.embeddings[train].T
    k = min(NEIGHBOURS, len(train))
    part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(-sims, part, axis=1).argsort(axis=1)
    nearest = np.take_along_axis(part, order, axis=1)
    return train[nearest], np.take_along_axis(sims, nearest, axis=1).astype(np.float64)


def run_knn_agreement(corpus: Corpus, train: NDArray[np.int64], config: TrainingConfig) -> Scored:
    base = run_top_probability(corpus, train, config)
    started = time.perf_counter()
    rows, _ = _neighbours(corpus, train)
    agreement = (corpus.data.y[rows] == base.pred[:, None]).mean(axis=1)
    extra = time.perf_counter() - started
    return Scored(base.pred, 0.5 * base.score + 0.5 * agreement, base.train_s, base.infer_s + extra)


def run_label_memory(corpus: Corpus, train: NDArray[np.int64], config: TrainingConfig) -> Scored:
    base = run_top_probability(corpus, train, config)
    started = time.perf_counter()
    rows, sims = _neighbours(corpus, train)
    memory = sims[:, 0] >= NEAR_DUPLICATE
    pred = np.where(memory, corpus.data.y[rows[:, 0]], base.pred)
    # Near-duplicates rank above every model score (1 + similarity), model scores stay in [0, 1].
    score = np.where(memory, 1.0 + sims[:, 0], base.score)
    extra = time.perf_counter() - started
    return Scored(pred.astype(np.int64), score, base.train_s, base.infer_s + extra)


def run_hierarchy(corpus: Corpus, train: NDArray[np.int64], config: TrainingConfig) -> Scored:
    base = run_top_probability(corpus, train, config)
    texts = [str(t) for t in corpus.data.texts]
    started = time.perf_counter()
    inputs = config.features.model_inputs(corpus.embeddings[train], [texts[i] for i in train])
    level1 = fit_head(inputs, [str(v) for v in corpus.parents[train]], config)
    train_s = time.perf_counter() - started
    started = time.perf_counter()
    test_inputs = config.features.model_inputs(
        corpus.embeddings[corpus.test], [texts[i] for i in corpus.test]
    )
    p1 = level1.predict_proba(test_inputs)
    column = {int(c): j for j, c in enumerate(level1.classes_)}
    parent_of_class = {int(c): int(p) for c, p in zip(corpus.data.y, corpus.parents, strict=True)}
    parent_column = np.array([column.get(parent_of_class[int(c)], -1) for c in base.pred])
    parent_p = np.where(parent_column >= 0, p1[np.arange(len(p1)), np.maximum(parent_column, 0)], 0.0)
    infer_s = time.perf_counter() - started
    return Scored(base.pred, np.sqrt(base.score * parent_p), base.train_s + train_s, base.infer_s + infer_s)


def price_bin_texts(corpus: Corpus) -> list[str]:
    """Item texts with a log2 price bin appended as one word (n-gram view only)."""
    return [
        f"{text} pricebin{math.floor(math.log2(value + 1.0))}" if math.isfinite(value) else str(text)
        for text, value in zip(corpus.data.texts, corpus.price, strict=True)
    ]


def run_price_bin(corpus: Corpus, train: NDArray[np.int64], config: TrainingConfig) -> Scored:
    proba, columns, train_s, infer_s = _head_scores(corpus, train, config, texts=price_bin_texts(corpus))
    return Scored(*_top(proba, columns), train_s, infer_s)


def run_no_brand_token(corpus: Corpus, train: NDArray[np.int64], config: TrainingConfig) -> Scored:
    plain = replace(config, features=replace(config.features, brand_token=False))
    proba, columns, train_s, infer_s = _head_scores(corpus, train, plain)
    return Scored(*_top(proba, columns), train_s, infer_s)


def run_committee(corpus: Corpus, train: NDArray[np.int64], config: TrainingConfig) -> Scored:
    full, columns, train_s, infer_s = _head_scores(corpus, train, config)
    views = [full]
    y = [str(v) for v in corpus.data.y[train]]
    texts = [str(t) for t in corpus.data.texts]

    def embedding_view(rows: NDArray[np.int64]) -> NDArray[np.float32]:
        return corpus.embeddings[rows]

    def ngram_view(rows: NDArray[np.int64]) -> NDArray[np.float32]:
        return config.features.ngram_features([texts[i] for i in rows])

    for view in (embedding_view, ngram_view):
        started = time.perf_counter()
        x_train, x_test = view(train), view(corpus.test)
        head = fit_head(x_train, y, config)
        train_s += time.perf_counter() - started
        started = time.perf_counter()
        views.append(head.predict_proba(x_test))
        infer_s += time.perf_counter() - started
    return Scored(*_top(np.mean(views, axis=0), columns), train_s, infer_s)


def run_finetune(corpus: Corpus, train: NDArray[np.int64], config: TrainingConfig, *, encoder: Any) -> Scored:
    """`learner.finetune`: the encoder and a linear head trained end to end (2 epochs), then the default
    head on the tuned encoder's embeddings, so the n-gram view is kept."""
    from learner.finetune import FineTuneClassifier

    texts = [str(t) for t in corpus.data.texts]
    started = time.perf_counter()
    tuned = FineTuneClassifier(encoder, epochs=2, learning_rate=5e-5, batch_size=32, device="cpu").fit(
        [texts[i] for i in train], [str(v) for v in corpus.data.y[train]]
    )
    rows = np.concatenate([train, corpus.test])
    x = np.zeros((len(corpus.data), encoder.dim), dtype=np.float32)
    x[rows] = tuned.embed([texts[i] for i in rows])
    embed_s = time.perf_counter() - started
    base = run_top_probability(replace(corpus, embeddings=x), train, config)
    # What a retrain with fine-tuning costs: tuning + re-embedding what it needs, then the head.
    return Scored(base.pred, base.score, embed_s + base.train_s, base.infer_s)


def run_encoder(corpus: Corpus, train: NDArray[np.int64], config: TrainingConfig, *, embedder: Any) -> Scored:
    """The default learner on another frozen encoder's embeddings (cached; rows it needs only)."""
    texts = [str(t) for t in corpus.data.texts]
    rows = np.concatenate([train, corpus.test])
    vectors = embedder.embed([texts[i] for i in rows])
    x = np.zeros((len(corpus.data), vectors.shape[1]), dtype=np.float32)
    x[rows] = vectors
    return run_top_probability(replace(corpus, embeddings=x), train, config)


def encoder_cost(encoder: Any, texts: Sequence[str]) -> dict[str, Any]:
    """Milliseconds per title of `encoder.encode` on this machine (after one warm-up batch)."""
    encoder.encode(list(texts[:32]))
    started = time.perf_counter()
    encoder.encode(list(texts))
    return {"dim": int(encoder.dim), "ms_per_item": 1000.0 * (time.perf_counter() - started) / len(texts)}


CONFIGS: Mapping[str, Config] = {
    "wave1": run_wave1,
    "default": run_default,
    "top_probability": run_top_probability,
    "tfidf_lr": run_tfidf_lr,
    "knn_agreement": run_knn_agreement,
    "label_memory": run_label_memory,
    "hierarchy": run_hierarchy,
    "price_bin": run_price_bin,
    "no_brand_token": run_no_brand_token,
    "committee": run_committee,
}


# Costly candidates run on random labels up to 3,200, one seed: enough to see whether they pay.
LIMITED = {"finetune": 3200, "encoder": 3200}


def _limited(config: str) -> int | None:
    return LIMITED.get(config.split(":")[0])


# ------------------------------------------------------------------------------------------- label sets


def random_labels(corpus: Corpus, budget: int | None, seed: int) -> NDArray[np.int64]:
    if budget is None or budget >= len(corpus.pool):
        return corpus.pool
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(corpus.pool, size=budget, replace=False)).astype(np.int64)


def margin_label_sets(
    corpus: Corpus,
    config: TrainingConfig,
    seed: int,
    schedule: Sequence[tuple[int, int]] = MARGIN_SCHEDULE,
    seed_labels: int = MARGIN_SEED_LABELS,
    random_share: float = 0.0,
) -> dict[int, NDArray[np.int64]]:
    """Labels picked by margin sampling with `config`'s learner: {budget: pool rows} per `schedule` entry
    ((budget, labels per round), increasing), starting from `seed_labels` random ones; with
    ``random_share``, that share of each round is drawn uniformly from the unlabelled pool first."""
    strategy = get_strategy("margin")
    rng = np.random.default_rng(seed)
    texts = [str(t) for t in corpus.data.texts]
    inputs = config.features.model_inputs(corpus.embeddings[corpus.pool], [texts[i] for i in corpus.pool])
    y = corpus.data.y[corpus.pool]
    labelled = np.zeros(len(corpus.pool), dtype=bool)
    labelled[rng.choice(len(corpus.pool), size=seed_labels, replace=False)] = True
    out: dict[int, NDArray[np.int64]] = {}
    for budget, step in schedule:
        while labelled.sum() < budget:
            head = fit_head(inputs[labelled], [str(v) for v in y[labelled]], config)
            candidates = np.flatnonzero(~labelled)
            proba = head.predict_proba(inputs[candidates])
            n = int(min(step, budget - labelled.sum()))
            uniform = rng.choice(len(candidates), size=round(n * random_share), replace=False)
            rest = np.setdiff1d(np.arange(len(candidates)), uniform)
            picked = rest[strategy(proba[rest], n - len(uniform), rng=rng)]
            labelled[candidates[np.concatenate([uniform, picked])]] = True
            print(
                f"  {corpus.name} margin (uniform share {random_share:.2f}): {int(labelled.sum())} labels",
                flush=True,
            )
        out[budget] = np.sort(corpus.pool[labelled]).astype(np.int64)
    return out


# ---------------------------------------------------------------------------------------------- metrics


def metrics(corpus: Corpus, scored: Scored) -> dict[str, Any]:
    """The benchmark's figures for one configuration's output on the test split."""
    y = corpus.data.y[corpus.test]
    coverage, risk = selective_curve(scored.score, scored.pred == y)
    keep = np.unique(np.linspace(0, len(coverage) - 1, 60).round().astype(int))
    return {
        "accuracy": float((scored.pred == y).mean()),
        "macro_f1": macro_f1(y, scored.pred, len(corpus.data.classes)),
        "oracle_coverage_95": curve_coverage_at(coverage, risk, TARGET),
        "aurc": curve_area(coverage, risk),
        "train_s": scored.train_s,
        "infer_ms_per_item": 1000.0 * scored.infer_s / len(y),
        "curve": {"coverage": coverage[keep].round(4).tolist(), "risk": risk[keep].round(4).tolist()},
    }


# ---------------------------------------------------------------------------------------------- running


def _key(catalog: str, sampling: str, budget: int | None, config: str, seed: int = 0) -> str:
    return f"{catalog}/{sampling}/{budget or 'all'}/{config}/{seed}"


def _read_cells(path: Path) -> dict[str, dict[str, Any]]:
    if not path.exists():
        return {}
    cells = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            cells[row["key"]] = row
    return cells


def run(
    settings: Settings,
    catalogs: Sequence[str],
    data_dir: Path,
    out: Path,
    configs: Mapping[str, Config],
    random_seeds: int,
) -> dict[str, dict[str, Any]]:
    """Every (catalog, sampling, budget, seed, configuration) cell not yet in ``cells.jsonl``."""
    out.mkdir(parents=True, exist_ok=True)
    path = _cells_path(out)
    cells = _read_cells(path)
    config = training_config(settings.learner, device="cpu")
    base_seed = settings.learner.seed
    for name in catalogs:
        corpus = load_corpus(settings, name, data_dir)
        print(
            f"{name}: {len(corpus.data)} items, pool {len(corpus.pool)}, test {len(corpus.test)}", flush=True
        )
        plan: list[tuple[str, int | None, int]] = []
        for budget in BUDGETS:
            whole = budget is None or budget >= len(corpus.pool)
            plan += [("random", budget, base_seed + k) for k in range(1 if whole else random_seeds)]
        plan += [(sampling, budget, base_seed) for sampling in PICKED for budget, _ in MARGIN_SCHEDULE]

        def wanted(sampling: str, budget: int | None, seed: int, config_name: str, name: str = name) -> bool:
            limit = _limited(config_name)
            if limit is not None and (
                sampling != "random" or budget is None or budget > limit or seed != base_seed
            ):
                return False
            return _key(name, sampling, budget, config_name, seed) not in cells

        picked_sets: dict[str, dict[int, NDArray[np.int64]]] = {}
        for sampling, share in PICKED.items():
            if any(wanted(s, b, k, c) for s, b, k in plan if s == sampling for c in configs):
                picked_sets[sampling] = margin_label_sets(corpus, config, base_seed, random_share=share)
        for sampling, budget, seed in plan:
            for config_name, run_config in configs.items():
                if not wanted(sampling, budget, seed, config_name):
                    continue
                rows = (
                    picked_sets[sampling][int(budget or 0)]
                    if sampling in PICKED
                    else random_labels(corpus, budget, seed)
                )
                scored = run_config(corpus, rows, config)
                key = _key(name, sampling, budget, config_name, seed)
                row = {"key": key, "n_labels": len(rows), **metrics(corpus, scored)}
                cells[key] = row
                with path.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
                print(
                    f"  {key}: accuracy {row['accuracy']:.3f}, "
                    f"oracle coverage {row['oracle_coverage_95']:.3f}, aurc {row['aurc']:.4f}, "
                    f"train {row['train_s']:.1f} s",
                    flush=True,
                )
    return cells


def summarize(
    cells: Mapping[str, Mapping[str, Any]],
    catalogs: Sequence[str],
    settings: Settings,
    command: str,
    encoders: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """summary.json: per catalog, sampling, budget and configuration, the mean over label seeds."""
    fields = (
        "n_labels",
        "accuracy",
        "macro_f1",
        "oracle_coverage_95",
        "aurc",
        "train_s",
        "infer_ms_per_item",
    )
    groups: dict[tuple[str, str, str, str], list[Mapping[str, Any]]] = {}
    for key, row in cells.items():
        catalog, sampling, budget, config, _seed = key.split("/")
        groups.setdefault((catalog, sampling, budget, config), []).append(row)
    per_catalog: dict[str, Any] = {name: {} for name in catalogs}
    for (catalog, sampling, budget, config), rows in groups.items():
        if catalog not in per_catalog:
            continue
        cell: dict[str, Any] = {f: float(np.mean([r[f] for r in rows])) for f in fields}
        cell["n_labels"] = int(cell["n_labels"])
        cell["seeds"] = len(rows)
        coverage = [r["oracle_coverage_95"] for r in rows]
        cell["oracle_coverage_95_range"] = [min(coverage), max(coverage)]
        per_catalog[catalog].setdefault(sampling, {}).setdefault(budget, {})[config] = cell
    learner = settings.learner
    default_targets: dict[str, Any] = {}
    for name in catalogs:
        at = per_catalog[name].get("random", {}).get(str(CURVE_BUDGET), {}).get("default")
        if at is None:
            continue
        checks = {
            metric: {"target": target, "measured": at[metric], "met": at[metric] >= target}
            for metric, target in TARGETS.get(name, {}).items()
        }
        for sampling, check in (("margin", "al_ranks_as_well"), ("loop_mix", "loop_ranks_as_well")):
            picked_at = per_catalog[name].get(sampling, {}).get(str(CURVE_BUDGET), {}).get("default")
            if picked_at is not None:
                checks[check] = {
                    "target": f"{sampling} oracle_coverage_95 >= random",
                    "measured": {
                        sampling: picked_at["oracle_coverage_95"],
                        "random": at["oracle_coverage_95"],
                    },
                    "met": picked_at["oracle_coverage_95"] >= at["oracle_coverage_95"],
                }
        default_targets[name] = checks
    return {
        "benchmark": "learner: accuracy and confidence ranking by label budget",
        "command": command,
        "created_at": datetime.now(UTC).isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "target_accuracy": TARGET,
        "default": {
            "config": "default",
            "settings": {
                "encoder": learner.encoder,
                "features": learner.features,
                "ngram_dims": learner.ngram_dims,
                "ngram_weight": learner.ngram_weight,
                "sublinear_tf": learner.sublinear_tf,
                "brand_token": learner.brand_token,
                "acceptance_score": learner.acceptance_score,
                "head": learner.head.model_dump(),
            },
            "targets_at_3200_random": default_targets,
        },
        "encoders": dict(encoders or {}),
        "catalogs": per_catalog,
    }


def _config_order(config: str) -> tuple[int, str]:
    names = list(CONFIGS)
    return (names.index(config) if config in names else len(names), config)


def write_readme(summary: Mapping[str, Any], out: Path) -> None:
    lines = [
        "# Learner benchmark",
        "",
        "Generated by `experiments/bench_learner.py`; numbers from `summary.json`. Command:",
        "",
        f"    {summary['command']}",
        "",
        "Cells this command did not run are read back from `cells.jsonl` (resumable): an earlier run of the "
        "same script measured them, train times on that run's machine.",
        "",
        f"Machine: {summary['machine']}, CPU. Test split of the project's group split; oracle coverage at "
        f"{summary['target_accuracy']:.0%}; AURC lower is better; train_s includes the head inputs.",
        "",
        "![risk-coverage curves at 3,200 random labels](risk_coverage.png)",
        "",
    ]
    for name, block in summary["catalogs"].items():
        lines += [f"## {name}", ""]
        for sampling in ("random", *PICKED):
            budgets = block.get(sampling, {})
            if not budgets:
                continue
            lines += [
                f"### {sampling} labels",
                "",
                "| labels | configuration | seeds | accuracy | macro-F1 | oracle coverage 95% (min-max) "
                "| AURC | train s | infer ms/item |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            for budget in sorted(budgets, key=lambda b: math.inf if b == "all" else int(b)):
                for config in sorted(budgets[budget], key=_config_order):
                    row = budgets[budget][config]
                    mark = "**" if config == "default" else ""
                    low, high = row["oracle_coverage_95_range"]
                    lines.append(
                        f"| {row['n_labels']:,} | {mark}{config}{mark} | {row['seeds']} | "
                        f"{row['accuracy']:.3f} | "
                        f"{row['macro_f1']:.3f} | {row['oracle_coverage_95']:.3f} ({low:.2f}-{high:.2f}) | "
                        f"{row['aurc']:.4f} | {row['train_s']:.1f} | {row['infer_ms_per_item']:.3f} |"
                    )
            lines.append("")
    if summary.get("encoders"):
        lines += ["## Encoder cost on this machine", "", "| encoder | dim | ms per title |", "|---|---|---|"]
        lines += [f"| {k} | {v['dim']} | {v['ms_per_item']:.2f} |" for k, v in summary["encoders"].items()]
        lines.append("")
    lines += ["## The default against the targets (3,200 random labels)", ""]
    for name, checks in summary["default"]["targets_at_3200_random"].items():
        for metric, check in checks.items():
            measured = check["measured"]
            shown = (
                ", ".join(f"{k} {v:.3f}" for k, v in measured.items())
                if isinstance(measured, dict)
                else f"{measured:.3f}"
            )
            verdict = "met" if check["met"] else "MISSED"
            lines.append(f"- {name} {metric}: measured {shown}, target {check['target']}: {verdict}")
    lines += ["", "What the numbers mean and what was kept: [FINDINGS.md](FINDINGS.md).", ""]
    (out / "README.md").write_text("\n".join(lines) + "\n")


def plot(cells: Mapping[str, Mapping[str, Any]], catalogs: Sequence[str], path: Path, command: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(catalogs), figsize=(6 * len(catalogs), 4.5), squeeze=False)
    for ax, name in zip(axes[0], catalogs, strict=True):
        for config in CURVE_CONFIGS:
            row = cells.get(_key(name, "random", CURVE_BUDGET, config, 0))
            if row is None:
                continue
            ax.plot(
                row["curve"]["coverage"], row["curve"]["risk"], label=f"{config} (AURC {row['aurc']:.3f})"
            )
        ax.axhline(1 - TARGET, color="grey", linestyle=":", linewidth=1, label="risk 5%")
        ax.set_title(f"{name}: {CURVE_BUDGET:,} random labels, test split")
        ax.set_xlabel("coverage (share auto-accepted, most confident first)")
        ax.set_ylabel("selective risk (error among accepted)")
        ax.set_ylim(0, 0.35)
        ax.legend(fontsize=8)
    fig.suptitle(command, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalogs", nargs="+", default=list(CATALOGS), choices=list(CATALOGS))
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument(
        "--configs", nargs="+", default=[*CONFIGS, "finetune"], choices=[*CONFIGS, "finetune"]
    )
    parser.add_argument("--random-seeds", type=int, default=3, help="label draws per random budget below all")
    parser.add_argument(
        "--extra-encoder",
        type=Path,
        action="append",
        default=[],
        help="a local Hugging Face / sentence-transformers model folder to compare as a frozen encoder",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--fresh", action="store_true", help="forget finished cells and run everything")
    args = parser.parse_args(argv)
    for name in args.catalogs:
        if not catalog_file(args.data_dir, name).exists():
            print(
                f"error: {catalog_file(args.data_dir, name)} not found (see --data-dir)",
                file=sys.stderr,
            )
            return 2
    for folder in args.extra_encoder:
        if not (folder / "config.json").is_file():
            print(f"error: {folder} is not a model folder (no config.json)", file=sys.stderr)
            return 2
    if args.random_seeds < 1:
        print(f"error: --random-seeds must be >= 1, got {args.random_seeds}", file=sys.stderr)
        return 2
    import torch

    from learner.cache import EmbeddingCache
    from learner.encoder import HFEncoder, encoder_from

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    if args.fresh and _cells_path(args.out).exists():
        _cells_path(args.out).unlink()
    settings = load_settings(None)
    learner = settings.learner
    command = " ".join(
        [".venv/bin/python -m experiments.bench_learner", *(shlex.quote(a) for a in (argv or sys.argv[1:]))]
    )

    def encoder(name: str) -> HFEncoder:
        return encoder_from(learner.model_copy(update={"device": "cpu"}), name)

    configs: dict[str, Config] = {name: CONFIGS[name] for name in args.configs if name in CONFIGS}
    default_encoder = encoder(learner.encoder)
    if "finetune" in args.configs:
        configs["finetune"] = functools.partial(run_finetune, encoder=default_encoder)
    sample = [p.title for p in load_catalog(catalog_file(args.data_dir, args.catalogs[0])).products[:256]]
    # The cost of an encoder measured by an earlier run (its cells are kept too) stays in the table.
    previous = args.out / "summary.json"
    encoders = dict(json.loads(previous.read_text()).get("encoders", {})) if previous.exists() else {}
    encoders[learner.encoder] = encoder_cost(default_encoder, sample)
    caches = []
    for folder in args.extra_encoder:
        extra = encoder(str(folder))
        encoders[folder.name] = encoder_cost(extra, sample)
        cache = EmbeddingCache(settings.cache_dir, extra)
        caches.append(cache)
        configs[f"encoder:{folder.name}"] = functools.partial(run_encoder, embedder=cache)
    try:
        cells = run(settings, args.catalogs, args.data_dir, args.out, configs, args.random_seeds)
    finally:
        for cache in caches:
            cache.close()
    summary = summarize(cells, args.catalogs, settings, command, encoders)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_readme(summary, args.out)
    plot(cells, args.catalogs, args.out / "risk_coverage.png", command)
    print(json.dumps(summary["default"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
