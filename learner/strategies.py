"""Active-learning query strategies: which unlabelled pool items to send to annotators next.

Scoring functions map a probability matrix to one usefulness score per item (higher = more worth a
human label). Strategies turn probabilities (and, for `batch_diverse`, embeddings) into the indices of
the items to query. Everything here is a pure function of its inputs and the given random generator.

The scores follow modAL's measures (`modAL.uncertainty.classifier_uncertainty`, `classifier_margin`,
`classifier_entropy`) with one convention: modAL's margin is "smaller = more uncertain", ours is
``1 - margin`` so that every score ranks the same way.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from types import MappingProxyType
from typing import Protocol

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import entr

from learner.calibration import check_proba
from learner.exceptions import PoolExhausted

__all__ = [
    "STRATEGIES",
    "Strategy",
    "batch_diverse_sampling",
    "entropy",
    "entropy_sampling",
    "get_strategy",
    "least_confidence",
    "least_confidence_sampling",
    "margin",
    "margin_sampling",
    "random_sampling",
    "select_top",
    "strategy_names",
]


# --------------------------------------------------------------------------------------------- scores


def least_confidence(proba: ArrayLike) -> NDArray[np.float64]:
    """``1 - max_c p_c``: how likely the predicted class is wrong.

    Parameters
    ----------
    proba : array_like, shape (n_pool, n_classes)

    Returns
    -------
    ndarray of float64, shape (n_pool,)
        In ``[0, 1 - 1/n_classes]``; higher = more uncertain.
    """
    p = check_proba(proba)
    out: NDArray[np.float64] = 1.0 - p.max(axis=1, initial=0.0)
    return out


def margin(proba: ArrayLike) -> NDArray[np.float64]:
    """``1 - (p_top1 - p_top2)``: near 1 when the two best classes are nearly tied.

    With a single class there is no runner-up; the margin is taken as 0 (score 1), as modAL does.

    Parameters
    ----------
    proba : array_like, shape (n_pool, n_classes)

    Returns
    -------
    ndarray of float64, shape (n_pool,)
        In ``[0, 1]``; higher = more uncertain.
    """
    p = check_proba(proba)
    if p.shape[1] == 1:
        return np.ones(p.shape[0], dtype=np.float64)
    # A partial sort is O(n_classes) per row where a full sort would be O(n_classes log n_classes).
    part = np.partition(-p, 1, axis=1)
    out: NDArray[np.float64] = 1.0 - (part[:, 1] - part[:, 0])
    return out


def entropy(proba: ArrayLike) -> NDArray[np.float64]:
    """Shannon entropy ``-sum_c p_c log p_c`` in nats, with ``0 log 0 = 0``.

    Parameters
    ----------
    proba : array_like, shape (n_pool, n_classes)

    Returns
    -------
    ndarray of float64, shape (n_pool,)
        In ``[0, log n_classes]``; higher = more uncertain.
    """
    p = check_proba(proba)
    # scipy's entr is exactly -p log p with the 0 log 0 = 0 limit, without a log(0) warning.
    out: NDArray[np.float64] = entr(p).sum(axis=1)
    return out


# --------------------------------------------------------------------------------------------- selection


def _check_n(n: int) -> int:
    if isinstance(n, bool):
        raise TypeError(f"n must be an integer, got {n!r}")
    n = operator.index(n)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return n


def select_top(scores: ArrayLike, n: int, *, rng: np.random.Generator) -> NDArray[np.intp]:
    """Indices of the ``n`` highest scores, ties broken uniformly at random by ``rng``.

    Parameters
    ----------
    scores : array_like, shape (n_pool,)
        Finite usefulness scores, higher = better.
    n : int
        Number of indices to return, ``0 <= n <= n_pool``.
    rng : numpy.random.Generator
        Consumed even when there are no ties, so results depend only on the seed, not on the data.

    Returns
    -------
    ndarray of intp, shape (n,)
        Distinct indices into ``scores``, best first.

    Raises
    ------
    PoolExhausted
        If ``n > n_pool``.
    ValueError
        If ``n < 0`` or ``scores`` is not a finite 1-D array.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D (n_pool,), got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        i = int(np.argmax(~np.isfinite(s)))
        raise ValueError(f"scores must be finite; index {i} is {s[i]}")
    n = _check_n(n)
    if n > s.shape[0]:
        raise PoolExhausted(available=s.shape[0], requested=n)
    # lexsort sorts by the last key first: score descending, then a random key among equal scores.
    order = np.lexsort((rng.random(s.shape[0]), -s))
    out: NDArray[np.intp] = order[:n].astype(np.intp)
    return out


# --------------------------------------------------------------------------------------------- strategies


class Strategy(Protocol):
    """A query strategy: which pool items to label next.

    Parameters
    ----------
    proba : array_like, shape (n_pool, n_classes)
        Current model's (ideally calibrated) probabilities for the unlabelled pool.
    n : int
        Batch size, ``0 <= n <= n_pool``.
    rng : numpy.random.Generator
        Sole source of randomness (tie-breaking, random sampling).
    features : array_like, shape (n_pool, d), optional
        Pool embeddings; required by diversity-aware strategies, ignored by the others.
    labeled_features : array_like, shape (n_labeled, d), optional
        Embeddings of already-labelled items; ``None`` or empty means a cold start.

    Returns
    -------
    ndarray of intp, shape (n,)
        Distinct indices into the pool, most useful first.

    Raises
    ------
    PoolExhausted
        If ``n > n_pool``.
    """

    def __call__(
        self,
        proba: ArrayLike,
        n: int,
        *,
        rng: np.random.Generator,
        features: ArrayLike | None = None,
        labeled_features: ArrayLike | None = None,
    ) -> NDArray[np.intp]: ...


def random_sampling(
    proba: ArrayLike,
    n: int,
    *,
    rng: np.random.Generator,
    features: ArrayLike | None = None,
    labeled_features: ArrayLike | None = None,
) -> NDArray[np.intp]:
    """Uniformly random batch without replacement: the passive-learning baseline. See `Strategy`."""
    p = check_proba(proba)
    n = _check_n(n)
    if n > p.shape[0]:
        raise PoolExhausted(available=p.shape[0], requested=n)
    out: NDArray[np.intp] = rng.choice(p.shape[0], size=n, replace=False).astype(np.intp)
    return out


def least_confidence_sampling(
    proba: ArrayLike,
    n: int,
    *,
    rng: np.random.Generator,
    features: ArrayLike | None = None,
    labeled_features: ArrayLike | None = None,
) -> NDArray[np.intp]:
    """Top-``n`` items by `least_confidence`. See `Strategy`."""
    return select_top(least_confidence(proba), n, rng=rng)


def margin_sampling(
    proba: ArrayLike,
    n: int,
    *,
    rng: np.random.Generator,
    features: ArrayLike | None = None,
    labeled_features: ArrayLike | None = None,
) -> NDArray[np.intp]:
    """Top-``n`` items by `margin` (smallest top-1/top-2 gap). See `Strategy`."""
    return select_top(margin(proba), n, rng=rng)


def entropy_sampling(
    proba: ArrayLike,
    n: int,
    *,
    rng: np.random.Generator,
    features: ArrayLike | None = None,
    labeled_features: ArrayLike | None = None,
) -> NDArray[np.intp]:
    """Top-``n`` items by `entropy`. See `Strategy`."""
    return select_top(entropy(proba), n, rng=rng)


class _LabeledSetShim:
    """The two attributes `modAL.batch.ranked_batch` reads from a learner.

    Going through a real `ActiveLearner` would refit an estimator (and its `teach` breaks on
    scikit-learn >= 1.8); ranked batch only needs the labelled feature matrix.
    """

    on_transformed = False

    def __init__(self, x_training: NDArray[np.float64]) -> None:
        self.X_training = x_training


def _check_features(f: NDArray[np.float64], n_rows: int | None, name: str) -> NDArray[np.float64]:
    if f.ndim != 2 or (n_rows is not None and f.shape[0] != n_rows):
        rows = "n" if n_rows is None else str(n_rows)
        raise ValueError(f"{name} must have shape ({rows}, d), got {f.shape}")
    if not np.all(np.isfinite(f)):
        row, col = np.argwhere(~np.isfinite(f))[0]
        raise ValueError(f"{name} must be finite; row {row}, column {col} is {f[row, col]}")
    return f


def batch_diverse_sampling(
    proba: ArrayLike,
    n: int,
    *,
    rng: np.random.Generator,
    features: ArrayLike | None = None,
    labeled_features: ArrayLike | None = None,
) -> NDArray[np.intp]:
    """Ranked batch-mode sampling (Cardoso et al., 2017) via `modAL.batch.ranked_batch`.

    Items are picked one at a time, each maximising
    ``alpha * (1 - 1 / (1 + d_min)) + (1 - alpha) * least_confidence`` where ``d_min`` is the Euclidean
    distance to the nearest labelled-or-already-picked item and ``alpha = |U| / (|U| + |L|)``, so a
    batch does not spend its budget on near-duplicates of one uncertain region.

    Two deviations from calling modAL directly, both to keep the `Strategy` contract:

    * cold start (no labelled items): modAL seeds the batch with the pool item of least mean distance
      but leaves it selectable, so it can be returned twice; here the seed is removed from the pool
      before ranking the rest.
    * ties: modAL takes the first maximum; the pool is shuffled by ``rng`` first so ties are random.

    Cost is O(n * n_pool * (n_labeled + n) * d) time; a cold start also builds the full
    (n_pool, n_pool) distance matrix, so keep cold-start pools to a few tens of thousands of items.

    Parameters
    ----------
    proba : array_like, shape (n_pool, n_classes)
    n : int
    rng : numpy.random.Generator
    features : array_like, shape (n_pool, d)
        Required.
    labeled_features : array_like, shape (n_labeled, d), optional

    Returns
    -------
    ndarray of intp, shape (n,)
        Distinct pool indices in ranked order.

    Raises
    ------
    ValueError
        If ``features`` is missing or its shape does not match ``proba`` / ``labeled_features``.
    PoolExhausted
        If ``n > n_pool``.
    """
    p = check_proba(proba)
    n_pool = p.shape[0]
    if features is None:
        raise ValueError(
            "strategy 'batch_diverse' needs features=(n_pool, d) pool embeddings to measure diversity; "
            "pass the encoder embeddings of the pool, or pick an uncertainty-only strategy"
        )
    x = _check_features(np.asarray(features, dtype=np.float64), n_pool, "features")
    labeled: NDArray[np.float64] | None = None
    if labeled_features is not None:
        lab = np.asarray(labeled_features, dtype=np.float64)
        # An empty labelled set arrives as shape (0,), (0, d) or [] depending on the caller.
        if lab.size > 0:
            labeled = _check_features(lab, None, "labeled_features")
            if labeled.shape[1] != x.shape[1]:
                raise ValueError(
                    f"labeled_features has dimension {labeled.shape[1]}, features has {x.shape[1]}"
                )
    n = _check_n(n)
    if n > n_pool:
        raise PoolExhausted(available=n_pool, requested=n)
    if n == 0:
        # modAL's cold start always returns its seed item, even for an empty request.
        return np.empty(0, dtype=np.intp)

    # Imported here: modAL pulls in torch, which costs seconds that the other strategies should not pay.
    from modAL.batch import ranked_batch, select_cold_start_instance

    perm = rng.permutation(n_pool)
    xs, scores = x[perm], least_confidence(p)[perm]
    picked: list[int] = []
    if labeled is None:
        seed, _ = select_cold_start_instance(xs, metric="euclidean", n_jobs=None)
        seed = int(seed)
        picked.append(seed)
        labeled = xs[[seed]]
        rest = np.delete(np.arange(n_pool), seed)
    else:
        rest = np.arange(n_pool)
    if n > len(picked):
        ranked, _ = ranked_batch(
            _LabeledSetShim(labeled),
            unlabeled=xs[rest],
            uncertainty_scores=scores[rest],
            n_instances=n - len(picked),
            metric="euclidean",
            n_jobs=None,
        )
        picked.extend(int(i) for i in rest[np.asarray(ranked, dtype=np.intp)])
    out: NDArray[np.intp] = perm[np.asarray(picked, dtype=np.intp)].astype(np.intp)
    return out


# --------------------------------------------------------------------------------------------- registry

STRATEGIES: Mapping[str, Strategy] = MappingProxyType(
    {
        "random": random_sampling,
        "least_confidence": least_confidence_sampling,
        "margin": margin_sampling,
        "entropy": entropy_sampling,
        "batch_diverse": batch_diverse_sampling,
    }
)


def strategy_names() -> tuple[str, ...]:
    """Registered strategy names, in registration order."""
    return tuple(STRATEGIES)


def get_strategy(name: str) -> Strategy:
    """Look a strategy up by its configuration name.

    Raises
    ------
    ValueError
        If ``name`` is not registered; the message lists the valid names.
    """
    try:
        return STRATEGIES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown query strategy {name!r}; valid names: {', '.join(strategy_names())}"
        ) from None
