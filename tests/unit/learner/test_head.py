from __future__ import annotations

import io
import time

import numpy as np
import pytest
from modAL.uncertainty import entropy_sampling, margin_sampling, uncertainty_sampling
from numpy.typing import NDArray
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression

from learner.calibration import softmax
from learner.exceptions import NotFittedError
from learner.head import TorchHeadClassifier


def blobs(
    n: int, n_classes: int, dim: int, *, spread: float, seed: int, weights: NDArray[np.float64] | None = None
) -> tuple[NDArray[np.float32], NDArray[np.str_]]:
    """Gaussian blobs around random centres, labelled with category-path strings."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim))
    y = rng.choice(n_classes, size=n, p=weights)
    X = centres[y] + rng.normal(scale=spread, size=(n, dim))
    labels = np.array([f"Home > Category {c:02d}" for c in range(n_classes)])
    return X.astype(np.float32), labels[y]


@pytest.fixture(scope="module")
def split() -> tuple[NDArray[np.float32], NDArray[np.str_], NDArray[np.float32], NDArray[np.str_]]:
    X, y = blobs(3000, 8, 32, spread=2.6, seed=0)
    return X[:2000], y[:2000], X[2000:], y[2000:]


@pytest.fixture(scope="module")
def fitted(
    split: tuple[NDArray[np.float32], NDArray[np.str_], NDArray[np.float32], NDArray[np.str_]],
) -> TorchHeadClassifier:
    X, y, _, _ = split
    return TorchHeadClassifier(device="cpu").fit(X, y)


def test_classes_are_sorted_labels_and_predictions_use_them(fitted: TorchHeadClassifier) -> None:
    assert list(fitted.classes_) == sorted(f"Home > Category {c:02d}" for c in range(8))
    assert fitted.n_features_in_ == 32
    assert fitted.predict(np.zeros((3, 32), dtype=np.float32)).dtype.kind == "U"


@pytest.mark.parametrize(
    ("params", "allowed_gap"),
    [({}, 0.03), ({"hidden_dim": 32, "epochs": 20, "batch_size": 500, "learning_rate": 3e-3}, 0.05)],
)
def test_accuracy_matches_sklearn_logistic_regression(
    split: tuple[NDArray[np.float32], NDArray[np.str_], NDArray[np.float32], NDArray[np.str_]],
    params: dict[str, float],
    allowed_gap: float,
) -> None:
    X, y, X_test, y_test = split
    reference = LogisticRegression(max_iter=2000).fit(X, y)
    reference_acc = float((reference.predict(X_test) == y_test).mean())
    head = TorchHeadClassifier(device="cpu", **params).fit(X, y)  # type: ignore[arg-type]
    acc = float((head.predict(X_test) == y_test).mean())
    # The blobs overlap, so this is a real comparison, not two perfect scores.
    assert 0.6 < reference_acc < 0.95
    assert acc >= reference_acc - allowed_gap


def test_proba_is_softmax_of_logits(
    fitted: TorchHeadClassifier, split: tuple[NDArray[np.float32], ...]
) -> None:
    X_test = split[2]
    logits = fitted.logits(X_test)
    proba = fitted.predict_proba(X_test)
    assert logits.shape == proba.shape == (len(X_test), 8)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(proba, softmax(logits), atol=0)
    np.testing.assert_array_equal(fitted.predict(X_test), fitted.classes_[proba.argmax(axis=1)])


@pytest.mark.parametrize("params", [{}, {"hidden_dim": 16, "epochs": 3, "batch_size": 64}])
def test_fixed_seed_is_deterministic(split: tuple[NDArray[np.float32], ...], params: dict[str, int]) -> None:
    X, y = split[0][:600], split[1][:600]
    a = TorchHeadClassifier(device="cpu", seed=7, **params).fit(X, y)  # type: ignore[arg-type]
    b = TorchHeadClassifier(device="cpu", seed=7, **params).fit(X, y)  # type: ignore[arg-type]
    np.testing.assert_array_equal(a.logits(split[2]), b.logits(split[2]))


def test_seed_matters_for_the_mlp(split: tuple[NDArray[np.float32], ...]) -> None:
    X, y = split[0][:600], split[1][:600]
    a = TorchHeadClassifier(device="cpu", seed=1, hidden_dim=16, epochs=2).fit(X, y)
    b = TorchHeadClassifier(device="cpu", seed=2, hidden_dim=16, epochs=2).fit(X, y)
    assert not np.allclose(a.logits(split[2]), b.logits(split[2]))


def test_balanced_class_weight_lifts_minority_recall() -> None:
    weights = np.array([0.9, 0.07, 0.03])
    X, y = blobs(4000, 3, 8, spread=1.8, seed=3, weights=weights)
    X_test, y_test = blobs(4000, 3, 8, spread=1.8, seed=3, weights=np.full(3, 1 / 3))
    # Same centres (same seed), balanced test set: recall of the two minority classes.
    minority = y_test != "Home > Category 00"

    def minority_recall(class_weight: str) -> float:
        head = TorchHeadClassifier(device="cpu", class_weight=class_weight).fit(X, y)  # type: ignore[arg-type]
        return float((head.predict(X_test[minority]) == y_test[minority]).mean())

    assert minority_recall("balanced") > minority_recall("none") + 0.03


def test_state_round_trip_gives_identical_probabilities(
    fitted: TorchHeadClassifier, split: tuple[NDArray[np.float32], ...]
) -> None:
    state = fitted.get_state()
    # Plain values and arrays only: loadable without pickle.
    buffer = io.BytesIO()
    np.savez(buffer, **state["tensors"])
    buffer.seek(0)
    with np.load(buffer, allow_pickle=False) as npz:
        tensors = {k: npz[k] for k in npz.files}
    assert set(tensors) == {"mean", "scale", "layers.0.weight", "layers.0.bias"}
    rebuilt = TorchHeadClassifier.from_state({**state, "tensors": tensors})
    np.testing.assert_array_equal(rebuilt.predict_proba(split[2]), fitted.predict_proba(split[2]))
    assert rebuilt.get_params() == fitted.get_params()
    np.testing.assert_array_equal(rebuilt.classes_, fitted.classes_)


def test_state_of_the_mlp_round_trips(split: tuple[NDArray[np.float32], ...]) -> None:
    head = TorchHeadClassifier(device="cpu", hidden_dim=8, epochs=2).fit(split[0][:500], split[1][:500])
    rebuilt = TorchHeadClassifier.from_state(head.get_state(), device="cpu")
    np.testing.assert_array_equal(rebuilt.logits(split[2]), head.logits(split[2]))


def test_modal_strategies_work_on_the_head(
    fitted: TorchHeadClassifier, split: tuple[NDArray[np.float32], ...]
) -> None:
    pool = split[2][:300]
    proba = np.sort(fitted.predict_proba(pool), axis=1)
    margins = proba[:, -1] - proba[:, -2]
    picked = margin_sampling(fitted, pool, n_instances=5)
    idx = picked[0] if isinstance(picked, tuple) else picked
    assert set(np.asarray(idx).tolist()) == set(np.argsort(margins)[:5].tolist())
    for strategy in (uncertainty_sampling, entropy_sampling):
        chosen = strategy(fitted, pool, n_instances=3)
        assert len(chosen[0] if isinstance(chosen, tuple) else chosen) == 3


def test_sklearn_clone_and_params() -> None:
    head = TorchHeadClassifier(hidden_dim=4, seed=3)
    copy = clone(head)
    assert copy is not head
    assert copy.get_params() == head.get_params()
    assert "hidden_dim=4" in repr(head)
    with pytest.raises(ValueError, match="unknown parameter"):
        head.set_params(hidden=3)


def test_unfitted_use_raises_not_fitted() -> None:
    head = TorchHeadClassifier()
    X = np.zeros((2, 4), dtype=np.float32)
    for call in (head.predict_proba, head.predict, head.logits):
        with pytest.raises(NotFittedError):
            call(X)
    with pytest.raises(NotFittedError):
        head.get_state()


def test_bad_inputs_are_rejected(fitted: TorchHeadClassifier) -> None:
    X = np.ones((4, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="at least 2 classes"):
        TorchHeadClassifier().fit(X, ["a"] * 4)
    with pytest.raises(ValueError, match="one label per row"):
        TorchHeadClassifier().fit(X, ["a", "b"])
    with pytest.raises(ValueError, match="NaN"):
        TorchHeadClassifier().fit(np.full((4, 3), np.nan), ["a", "b", "a", "b"])
    with pytest.raises(ValueError, match="32"):
        fitted.logits(X)
    with pytest.raises(ValueError, match="class_weight"):
        TorchHeadClassifier(class_weight="auto").fit(X, ["a", "b", "a", "b"])  # type: ignore[arg-type]


def test_tuple_labels_are_supported() -> None:
    X, y = blobs(200, 3, 4, spread=0.5, seed=1)
    paths = [tuple(label.split(" > ")) for label in y]
    head = TorchHeadClassifier(device="cpu").fit(X, paths)
    assert head.classes_[0] == ("Home", "Category 00")
    assert head.predict(X[:1])[0] == paths[0]


@pytest.mark.slow
def test_linear_head_fits_20k_embeddings_quickly() -> None:
    """20,000 x 384 with 46 classes, the shape of a real catalog: L-BFGS needs few full passes."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(46, 384))
    y = rng.integers(0, 46, size=22_000)
    X = centres[y] + rng.normal(scale=4.0, size=(22_000, 384))
    X /= np.linalg.norm(X, axis=1, keepdims=True)  # unit vectors, like the encoder's output
    X = X.astype(np.float32)
    started = time.perf_counter()
    head = TorchHeadClassifier(device="cpu").fit(X[:20_000], y[:20_000])
    seconds = time.perf_counter() - started
    accuracy = float((head.predict(X[20_000:]) == y[20_000:]).mean())
    assert head.n_iter_ < 100
    assert accuracy > 0.8
    # Generous bound for a loaded 2-core CI box; it is ~1 s when the machine is idle.
    assert seconds < 30, f"fit took {seconds:.1f}s"


@pytest.mark.parametrize("weight_decay", [1e-3, 1e-2])
def test_objective_is_sklearn_logistic_regression(weight_decay: float) -> None:
    """Same data, same penalty (C = 1 / (weight_decay * n)): the same model, not just similar accuracy."""
    X, y = blobs(600, 4, 10, spread=2.0, seed=5)
    X = X * 0.05 + 0.3  # off-centre, small-scale features like embeddings: standardisation is internal
    head = TorchHeadClassifier(device="cpu", weight_decay=weight_decay, class_weight="none").fit(X, y)
    reference = LogisticRegression(C=1 / (weight_decay * len(X)), tol=1e-8, max_iter=10_000).fit(X, y)
    np.testing.assert_allclose(head.predict_proba(X), reference.predict_proba(X), atol=2e-3)


def _sparse_hybrid(n: int, seed: int) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """A dense block (like an embedding) beside mostly-zero columns (like hashed n-grams)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 5, size=n)
    dense = rng.normal(size=(n, 6)) + y[:, None] * 0.1
    ngrams = np.zeros((n, 200))
    for row, label in enumerate(y):
        ngrams[row, rng.choice(200, size=4, replace=False)] = rng.normal(size=4)
        if rng.random() < 0.5:  # a class-specific "word", on half the rows: not separable
            ngrams[row, 40 * label + rng.integers(0, 40)] = 1.0
    return np.hstack([dense, ngrams]).astype(np.float32), y


@pytest.mark.parametrize("weight_decay", [1e-3, 1e-2])
def test_sparse_inputs_fit_the_same_model_as_the_dense_ones(weight_decay: float) -> None:
    """CSR inputs take another route through the objective (raw-space weights, split columns); the
    objective, the fitted weights and the probabilities are those of the dense route."""
    from scipy import sparse

    X, y = _sparse_hybrid(800, seed=3)
    params = {"device": "cpu", "weight_decay": weight_decay, "epochs": 200}
    dense = TorchHeadClassifier(**params).fit(X, y)  # type: ignore[arg-type]
    csr = sparse.csr_matrix(X)
    fast = TorchHeadClassifier(**params).fit(csr, y)  # type: ignore[arg-type]
    assert fast.loss_ == pytest.approx(dense.loss_, rel=1e-4)
    np.testing.assert_allclose(fast.predict_proba(X), dense.predict_proba(X), atol=2e-4)
    np.testing.assert_allclose(fast.predict_proba(csr), fast.predict_proba(X), atol=1e-6)
    reference = dense.get_state()["tensors"]
    for name, value in fast.get_state()["tensors"].items():
        np.testing.assert_allclose(value, reference[name], atol=5e-3, err_msg=name)


def test_sparse_inputs_to_the_mlp_and_bad_sparse_inputs() -> None:
    from scipy import sparse

    X, y = _sparse_hybrid(300, seed=4)
    mlp = TorchHeadClassifier(device="cpu", hidden_dim=8, epochs=5).fit(sparse.csr_matrix(X), y)
    assert mlp.predict_proba(X).shape == (300, 5)
    bad = sparse.csr_matrix(X)
    bad.data[0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        TorchHeadClassifier().fit(bad, y)
    with pytest.raises(ValueError, match="no rows"):
        TorchHeadClassifier().fit(sparse.csr_matrix((0, 206), dtype=np.float32), [])


def test_a_warm_start_begins_where_the_initial_head_ends() -> None:
    from scipy import sparse

    X, y = _sparse_hybrid(900, seed=6)
    first = TorchHeadClassifier(device="cpu", weight_decay=1e-3).fit(X[:800], y[:800])
    # One more iteration from the same head on the same data cannot be worse than where it ended.
    again = TorchHeadClassifier(device="cpu", weight_decay=1e-3, epochs=1).fit(X[:800], y[:800], init=first)
    assert again.loss_ <= first.loss_ + 1e-7
    np.testing.assert_allclose(again.predict_proba(X), first.predict_proba(X), atol=0.02)
    # More labels (another standardisation): a few iterations from the old head reach the cold fit.
    cold = TorchHeadClassifier(device="cpu", weight_decay=1e-3).fit(X, y)
    warm = TorchHeadClassifier(device="cpu", weight_decay=1e-3, epochs=10).fit(
        sparse.csr_matrix(X), y, init=first
    )
    assert warm.n_iter_ <= 10
    assert warm.loss_ <= cold.loss_ * 1.001
    with pytest.raises(ValueError, match="same classes"):
        TorchHeadClassifier().fit(X[y < 4], y[y < 4], init=first)
    with pytest.raises(ValueError, match="linear"):
        TorchHeadClassifier(hidden_dim=4).fit(X, y, init=first)
