"""Query strategies: known answers, agreement with modAL, the strategy contract, and properties."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from modAL.batch import select_cold_start_instance, uncertainty_batch_sampling
from modAL.uncertainty import classifier_entropy, classifier_margin, classifier_uncertainty
from numpy.typing import NDArray

from learner.calibration import softmax
from learner.exceptions import PoolExhausted
from learner.strategies import (
    STRATEGIES,
    batch_diverse_sampling,
    entropy,
    get_strategy,
    least_confidence,
    least_confidence_sampling,
    margin,
    select_top,
    strategy_names,
)

SCORES = [least_confidence, margin, entropy]

# Three items: confident, two-way tie, spread over three classes.
HAND = np.array(
    [
        [0.90, 0.05, 0.05],
        [0.50, 0.50, 0.00],
        [0.40, 0.30, 0.30],
    ]
)


def random_proba(rng: np.random.Generator, n: int, k: int) -> NDArray[np.float64]:
    return softmax(rng.normal(scale=2.0, size=(n, k)))


class FakeClassifier:
    """Stands in for a fitted modAL learner: fixed probabilities for a fixed pool.

    `X_training` / `on_transformed` are what `modAL.batch.ranked_batch` reads.
    """

    on_transformed = False

    def __init__(self, pool: NDArray[np.float64], proba: NDArray[np.float64], x_training: Any = None) -> None:
        self._pool = pool
        self._proba = proba
        self.X_training = x_training

    def predict_proba(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        # Look rows up rather than assume `x is pool`, so a reordered query still gets its own rows.
        rows = [int(np.flatnonzero((self._pool == r).all(axis=1))[0]) for r in x]
        return self._proba[rows]


# ------------------------------------------------------------------------------------ known answers


def test_least_confidence_known_answer() -> None:
    np.testing.assert_allclose(least_confidence(HAND), [0.10, 0.50, 0.60])
    assert list(np.argsort(-least_confidence(HAND), kind="stable")) == [2, 1, 0]


def test_margin_known_answer() -> None:
    # gaps 0.85, 0.0, 0.1 -> scores 0.15, 1.0, 0.9
    np.testing.assert_allclose(margin(HAND), [0.15, 1.0, 0.9])
    assert list(np.argsort(-margin(HAND), kind="stable")) == [1, 2, 0]


def test_entropy_known_answer_with_zero_probability() -> None:
    expected = [
        -(0.9 * np.log(0.9) + 2 * 0.05 * np.log(0.05)),
        np.log(2.0),  # the 0 entry contributes 0, not nan
        -(0.4 * np.log(0.4) + 2 * 0.3 * np.log(0.3)),
    ]
    np.testing.assert_allclose(entropy(HAND), expected)
    assert list(np.argsort(-entropy(HAND), kind="stable")) == [2, 1, 0]


def test_scores_of_a_certain_prediction_and_a_uniform_one() -> None:
    p = np.array([[1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    np.testing.assert_allclose(least_confidence(p), [0.0, 0.75])
    np.testing.assert_allclose(margin(p), [0.0, 1.0])
    np.testing.assert_allclose(entropy(p), [0.0, np.log(4.0)])


def test_single_class_follows_modal_convention() -> None:
    p = np.ones((3, 1))
    np.testing.assert_array_equal(least_confidence(p), 0.0)
    np.testing.assert_array_equal(margin(p), 1.0)  # modAL: margin 0
    np.testing.assert_array_equal(entropy(p), 0.0)


# ------------------------------------------------------------------------------------ agreement with modAL


@pytest.mark.parametrize("k", [2, 5])
def test_scores_match_modal(k: int) -> None:
    rng = np.random.default_rng(3)
    pool = rng.normal(size=(40, 4))
    proba = random_proba(rng, 40, k)
    clf = FakeClassifier(pool, proba)
    np.testing.assert_allclose(least_confidence(proba), classifier_uncertainty(clf, pool))
    # modAL's margin is "smaller = more uncertain"; ours is 1 - margin so all scores rank alike.
    np.testing.assert_allclose(margin(proba), 1.0 - classifier_margin(clf, pool))
    np.testing.assert_allclose(entropy(proba), classifier_entropy(clf, pool))
    for ours, theirs in [
        (least_confidence(proba), classifier_uncertainty(clf, pool)),
        (margin(proba), -classifier_margin(clf, pool)),
        (entropy(proba), classifier_entropy(clf, pool)),
    ]:
        assert list(np.argsort(-ours, kind="stable")) == list(np.argsort(-theirs, kind="stable"))


def test_batch_diverse_matches_modal_ranked_batch_with_labelled_data() -> None:
    rng = np.random.default_rng(7)
    pool, labeled = rng.normal(size=(60, 5)), rng.normal(size=(8, 5))
    proba = random_proba(rng, 60, 4)
    expected, _ = uncertainty_batch_sampling(FakeClassifier(pool, proba, labeled), pool, n_instances=12)
    got = batch_diverse_sampling(
        proba, 12, rng=np.random.default_rng(0), features=pool, labeled_features=labeled
    )
    # Continuous random data has no ties, so the shuffle used for tie-breaking cannot change the ranking.
    assert got.tolist() == np.asarray(expected).tolist()


@pytest.mark.parametrize("empty", [None, np.empty((0, 5)), np.empty(0), []])
def test_batch_diverse_cold_start_seeds_like_modal_and_never_repeats(empty: Any) -> None:
    rng = np.random.default_rng(11)
    pool = rng.normal(size=(25, 5))
    proba = random_proba(rng, 25, 3)
    seed, _ = select_cold_start_instance(pool, metric="euclidean", n_jobs=None)
    got = batch_diverse_sampling(
        proba, 25, rng=np.random.default_rng(1), features=pool, labeled_features=empty
    )
    assert got[0] == seed
    assert sorted(got.tolist()) == list(range(25))


def test_batch_diverse_spreads_a_batch_over_clusters() -> None:
    rng = np.random.default_rng(5)
    # Cluster A is slightly more uncertain than cluster B; both are equally far from the labelled point.
    a = rng.normal(scale=0.01, size=(10, 2))
    b = rng.normal(scale=0.01, size=(10, 2))
    b[:, 0] += 10.0
    pool = np.vstack([a, b])
    proba = np.vstack([np.tile([0.5, 0.5], (10, 1)), np.tile([0.55, 0.45], (10, 1))])
    labeled = np.array([[5.0, 10.0]])
    uncertain = least_confidence_sampling(proba, 2, rng=np.random.default_rng(0))
    diverse = batch_diverse_sampling(
        proba, 2, rng=np.random.default_rng(0), features=pool, labeled_features=labeled
    )
    assert all(i < 10 for i in uncertain)
    assert diverse[0] < 10 <= diverse[1]


def test_batch_diverse_requires_features() -> None:
    with pytest.raises(ValueError, match="features"):
        batch_diverse_sampling(HAND, 1, rng=np.random.default_rng(0))


def test_batch_diverse_rejects_mismatched_features() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"\(3, d\)"):
        batch_diverse_sampling(HAND, 1, rng=rng, features=np.zeros((4, 2)))
    with pytest.raises(ValueError, match="dimension 3"):
        batch_diverse_sampling(HAND, 1, rng=rng, features=np.zeros((3, 2)), labeled_features=np.zeros((2, 3)))


# ------------------------------------------------------------------------------------ strategy contract


def _pool(n: int = 30, k: int = 4, d: int = 3) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    rng = np.random.default_rng(42)
    return random_proba(rng, n, k), rng.normal(size=(n, d))


@pytest.mark.parametrize("name", strategy_names())
@pytest.mark.parametrize("labeled", [None, "some"])
class TestStrategyContract:
    def _call(self, name: str, labeled: str | None, proba: Any, n: int, seed: int = 0) -> NDArray[np.intp]:
        features = _pool(len(proba))[1]
        lab = np.random.default_rng(9).normal(size=(5, features.shape[1])) if labeled else None
        return get_strategy(name)(
            proba, n, rng=np.random.default_rng(seed), features=features, labeled_features=lab
        )

    @pytest.mark.parametrize("n", [0, 1, 7])
    def test_returns_n_distinct_pool_indices(self, name: str, labeled: str | None, n: int) -> None:
        proba, _ = _pool()
        idx = self._call(name, labeled, proba, n)
        assert idx.dtype == np.intp
        assert idx.shape == (n,)
        assert len(set(idx.tolist())) == n
        assert all(0 <= i < len(proba) for i in idx)

    def test_whole_pool(self, name: str, labeled: str | None) -> None:
        proba, _ = _pool()
        assert sorted(self._call(name, labeled, proba, len(proba)).tolist()) == list(range(len(proba)))

    def test_more_than_pool_raises_pool_exhausted(self, name: str, labeled: str | None) -> None:
        proba, _ = _pool()
        with pytest.raises(PoolExhausted, match=r"30 item\(s\), 31 requested") as err:
            self._call(name, labeled, proba, 31)
        assert (err.value.available, err.value.requested) == (30, 31)

    def test_negative_n_raises(self, name: str, labeled: str | None) -> None:
        proba, _ = _pool()
        with pytest.raises(ValueError, match="-1"):
            self._call(name, labeled, proba, -1)

    def test_empty_pool(self, name: str, labeled: str | None) -> None:
        proba = np.empty((0, 4))
        assert self._call(name, labeled, proba, 0).shape == (0,)
        with pytest.raises(PoolExhausted):
            self._call(name, labeled, proba, 1)

    def test_deterministic_for_a_seed(self, name: str, labeled: str | None) -> None:
        proba, _ = _pool()
        first = self._call(name, labeled, proba, 10, seed=123)
        assert first.tolist() == self._call(name, labeled, proba, 10, seed=123).tolist()

    def test_rejects_invalid_proba(self, name: str, labeled: str | None) -> None:
        proba, _ = _pool()
        proba[3, 1] += 0.5
        with pytest.raises(ValueError, match="row 3"):
            self._call(name, labeled, proba, 1)


def test_random_strategy_depends_on_seed() -> None:
    proba, _ = _pool()
    draws = {tuple(get_strategy("random")(proba, 5, rng=np.random.default_rng(s)).tolist()) for s in range(5)}
    assert len(draws) > 1


def test_uncertainty_strategies_pick_the_top_scores() -> None:
    proba, _ = _pool(200, 5)
    for name, score in [("least_confidence", least_confidence), ("margin", margin), ("entropy", entropy)]:
        idx = get_strategy(name)(proba, 10, rng=np.random.default_rng(0))
        s = score(proba)
        assert s[idx].min() >= np.delete(s, idx).max()
        assert list(idx) == list(np.argsort(-s)[:10])  # no ties in random data: a plain sort agrees


# ------------------------------------------------------------------------------------ registry


def test_registry_names() -> None:
    assert set(strategy_names()) == {"random", "least_confidence", "margin", "entropy", "batch_diverse"}
    assert tuple(STRATEGIES) == strategy_names()
    for name in strategy_names():
        assert get_strategy(name) is STRATEGIES[name]


@pytest.mark.parametrize("bad", ["entrpy", "", "Margin"])
def test_unknown_strategy_lists_valid_names(bad: str) -> None:
    with pytest.raises(ValueError, match=repr(bad)) as err:
        get_strategy(bad)
    for name in strategy_names():
        assert name in str(err.value)


def test_registry_is_read_only() -> None:
    with pytest.raises(TypeError):
        STRATEGIES["mine"] = STRATEGIES["random"]  # type: ignore[index]


# ------------------------------------------------------------------------------------ select_top


def test_select_top_known_answer() -> None:
    assert select_top([0.1, 0.9, 0.5, 0.7], 3, rng=np.random.default_rng(0)).tolist() == [1, 3, 2]


def test_select_top_edge_cases() -> None:
    rng = np.random.default_rng(0)
    assert select_top([0.3, 0.2], 0, rng=rng).shape == (0,)
    assert select_top([], 0, rng=rng).shape == (0,)
    with pytest.raises(PoolExhausted, match=r"2 item\(s\), 3 requested"):
        select_top([0.3, 0.2], 3, rng=rng)
    with pytest.raises(ValueError, match="-2"):
        select_top([0.3, 0.2], -2, rng=rng)
    with pytest.raises(ValueError, match="index 1 is nan"):
        select_top([0.3, np.nan], 1, rng=rng)
    with pytest.raises(ValueError, match="1-D"):
        select_top([[0.3, 0.2]], 1, rng=rng)
    with pytest.raises(TypeError):
        select_top([0.3, 0.2], 1.5, rng=rng)  # type: ignore[arg-type]


def test_select_top_breaks_ties_at_random() -> None:
    scores = np.array([0.2, 0.9, 0.9, 0.9, 0.1])
    firsts = Counter(int(select_top(scores, 1, rng=np.random.default_rng(s))[0]) for s in range(300))
    assert set(firsts) == {1, 2, 3}
    # Each of the three tied items should lead about 100 times; 60 is > 5 standard deviations below.
    assert min(firsts.values()) > 60
    # Ties never push a lower score ahead of a higher one.
    for s in range(20):
        assert set(select_top(scores, 3, rng=np.random.default_rng(s)).tolist()) == {1, 2, 3}


# ------------------------------------------------------------------------------------ input validation


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.array([0.5, 0.5]), r"2-D.*\(2,\)"),
        (np.array([[0.5, np.nan]]), "row 0, column 1: nan"),
        (np.array([[0.5, np.inf]]), "non-finite"),
        (np.array([[1.2, -0.2]]), r"row 0, column 1 is -0\.2"),
        (np.array([[0.5, 0.5], [0.6, 0.6]]), r"row 1 summing to 1\.2"),
        # Logits are the classic mistake; the message must show the offending sum.
        (np.array([[2.0, 1.0]]), r"row 0 summing to 3$"),
        (np.empty((3, 0)), "at least one class"),
    ],
)
def test_scores_reject_invalid_proba(score: Any, bad: NDArray[np.float64], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        score(bad)


def test_float32_softmax_rows_are_accepted() -> None:
    proba = random_proba(np.random.default_rng(0), 50, 1000).astype(np.float32)
    assert least_confidence(proba).dtype == np.float64


# ------------------------------------------------------------------------------------ properties


@st.composite
def proba_matrices(draw: st.DrawFn) -> NDArray[np.float64]:
    n = draw(st.integers(1, 12))
    k = draw(st.integers(1, 6))
    raw = draw(arrays(np.float64, (n, k), elements=st.floats(0.0, 1.0, allow_subnormal=False)))
    raw[raw.sum(axis=1) == 0] = 1.0  # an all-zero row has no distribution; make it uniform
    proba: NDArray[np.float64] = raw / raw.sum(axis=1, keepdims=True)
    return proba


@settings(max_examples=60, deadline=None)
@given(proba=proba_matrices(), data=st.data())
def test_scores_are_finite_bounded_and_permutation_equivariant(proba: NDArray[np.float64], data: Any) -> None:
    n, k = proba.shape
    rows = np.asarray(data.draw(st.permutations(range(n))), dtype=np.intp)
    cols = np.asarray(data.draw(st.permutations(range(k))), dtype=np.intp)
    bounds = {least_confidence: 1 - 1 / k, margin: 1.0, entropy: np.log(k)}
    for score in SCORES:
        s = score(proba)
        assert s.shape == (n,)
        assert np.all(np.isfinite(s))
        assert np.all(s >= -1e-12)
        assert np.all(s <= bounds[score] + 1e-9)
        # Reordering pool items reorders the scores; relabelling classes changes nothing.
        np.testing.assert_array_equal(score(proba[rows]), s[rows])
        np.testing.assert_allclose(score(proba[:, cols]), s, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    scores=arrays(np.float64, st.integers(0, 30), elements=st.sampled_from([0.0, 0.25, 0.5, 1.0, 3.0])),
    data=st.data(),
    seed=st.integers(0, 2**32 - 1),
)
def test_select_top_takes_a_best_set(scores: NDArray[np.float64], data: Any, seed: int) -> None:
    n = data.draw(st.integers(0, len(scores)))
    idx = select_top(scores, n, rng=np.random.default_rng(seed))
    assert len(set(idx.tolist())) == n
    if 0 < n < len(scores):
        assert scores[idx].min() >= np.delete(scores, idx).max()
    # Best first: the returned scores are non-increasing.
    assert np.all(np.diff(scores[idx]) <= 0)


@settings(max_examples=25, deadline=None)
@given(
    n_pool=st.integers(1, 12),
    n_labeled=st.integers(0, 3),
    seed=st.integers(0, 2**32 - 1),
    data=st.data(),
)
def test_batch_diverse_returns_distinct_indices(n_pool: int, n_labeled: int, seed: int, data: Any) -> None:
    rng = np.random.default_rng(seed)
    # Coarse integer coordinates make ties and duplicate points common, the cases modAL mishandles.
    features = rng.integers(0, 3, size=(n_pool, 2)).astype(np.float64)
    labeled = rng.integers(0, 3, size=(n_labeled, 2)).astype(np.float64)
    proba = np.tile([0.5, 0.5], (n_pool, 1))
    n = data.draw(st.integers(0, n_pool))
    idx = batch_diverse_sampling(proba, n, rng=rng, features=features, labeled_features=labeled)
    assert idx.shape == (n,)
    assert len(set(idx.tolist())) == n
