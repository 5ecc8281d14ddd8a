"""Classifier head trained on frozen sentence embeddings, in torch, scikit-learn style.

The default (``hidden_dim=0``) is L2-regularised multinomial logistic regression, fitted full-batch
with L-BFGS on standardised features: the problem is convex and smooth, so a quasi-Newton method
converges in a few dozen passes over the data where minibatch SGD needs thousands of steps (20,000 x
384 embeddings, 46 classes: ~10 iterations, ~1 s on one CPU thread). With ``hidden_dim > 0`` a
one-hidden-layer MLP is trained with minibatch Adam.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from torch import nn
from torch.nn import functional

from learner.calibration import softmax
from learner.device import resolve_device
from learner.exceptions import NotFittedError

ClassWeight = Literal["balanced", "none"]
Optimizer = Literal["auto", "lbfgs", "adam"]

_PARAM_NAMES = (
    "hidden_dim",
    "epochs",
    "learning_rate",
    "weight_decay",
    "batch_size",
    "class_weight",
    "device",
    "seed",
    "optimizer",
)
# Rows per inference chunk: bounds peak memory on huge pools without slowing small ones.
_PREDICT_CHUNK = 65_536
# Features whose spread is below this are constant for all practical purposes; scaling them up by
# 1/std would only amplify float noise.
_MIN_SCALE = 1e-6


class _HeadNet(nn.Module):
    """Standardise, then linear layer or one-hidden-layer MLP."""

    mean: torch.Tensor  # (n_features,) buffer
    scale: torch.Tensor  # (n_features,) buffer

    def __init__(self, n_features: int, n_classes: int, hidden_dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("scale", torch.ones(n_features))
        if hidden_dim > 0:
            self.layers: nn.Sequential = nn.Sequential(
                nn.Linear(n_features, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, n_classes)
            )
        else:
            self.layers = nn.Sequential(nn.Linear(n_features, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers((x - self.mean) / self.scale)  # type: ignore[no-any-return]

    def penalty(self) -> torch.Tensor:
        """Sum of squared weights as seen by the raw embeddings (biases are not shrunk, as in sklearn).

        The first layer acts on standardised inputs, so its raw-space weights are ``W / scale``.
        Penalising those makes `weight_decay` mean the same as an L2 penalty on a model of the raw
        embeddings (sklearn's ``C = 1 / (weight_decay * n)``); the standardisation only preconditions
        the optimiser.
        """
        linears = [layer for layer in self.layers if isinstance(layer, nn.Linear)]
        total = (linears[0].weight / self.scale).square().sum()
        for layer in linears[1:]:
            total = total + layer.weight.square().sum()
        return total


class _SparseMatmul(torch.autograd.Function):
    """``a @ w`` for a fixed sparse CSR matrix ``a``; the backward pass multiplies by a stored CSR copy
    of ``a.T`` (torch's own backward through a CSR product was ~20x slower than the dense product)."""

    @staticmethod
    def forward(ctx: Any, w: torch.Tensor, a: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:
        ctx.a_t = a_t
        return a @ w

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return ctx.a_t @ grad, None, None


class _SplitColumns:
    """Sparse full-batch inputs as a dense block of their mostly-nonzero columns and a CSR block of
    the rest, for the linear head's L-BFGS objective.

    Hybrid head inputs are ~13% nonzero (a dense 384-d embedding beside 4,096 hashed n-gram columns
    holding ~200 entries a row): fitting on them this way takes ~3x less time than on the dense
    matrix (20,000 bigbasket labels: experiments/results/bench_retrain.json).
    """

    # A column with at most this share of nonzeros goes to the CSR block.
    SPARSE_COLUMN = 0.3

    def __init__(self, csr: Any, device: torch.device) -> None:
        n, d = csr.shape
        per_column = np.bincount(csr.indices, minlength=d)
        is_sparse = per_column <= self.SPARSE_COLUMN * n
        csc = csr.tocsc()
        dense_cols, sparse_cols = np.flatnonzero(~is_sparse), np.flatnonzero(is_sparse)
        block = csc[:, sparse_cols].tocsr()
        self.dense = torch.from_numpy(np.ascontiguousarray(csc[:, dense_cols].toarray())).to(device)
        self.dense_cols = torch.from_numpy(dense_cols).to(device)
        self.sparse_cols = torch.from_numpy(sparse_cols).to(device)
        self.sparse = _torch_csr(block, device)
        self.sparse_t = _torch_csr(block.T.tocsr(), device)

    def matmul(self, weight: torch.Tensor) -> torch.Tensor:
        """``x @ weight.T`` for ``weight`` (k, d)."""
        out = self.dense @ weight[:, self.dense_cols].T
        product: torch.Tensor = _SparseMatmul.apply(  # type: ignore[no-untyped-call]
            weight[:, self.sparse_cols].T.contiguous(), self.sparse, self.sparse_t
        )
        return out + product


def start_mismatch(
    init: TorchHeadClassifier, hidden_dim: int, classes: ArrayLike, n_features: int
) -> str | None:
    """Why the fitted head `init` cannot start a fit of a head with `hidden_dim`, these sorted
    `classes` and `n_features` inputs; None when it can."""
    if hidden_dim != 0 or init.hidden_dim != 0:
        return "only a linear head starts from another (hidden_dim 0 for both)"
    wanted = list(np.asarray(classes))
    if init.n_features_in_ != n_features or list(init.classes_) != wanted:
        return (
            f"the initial head has {init.n_features_in_} features and {len(init.classes_)} classes; "
            f"this fit has {n_features} and {len(wanted)} (the same classes, in order, are needed)"
        )
    return None


def _start_from(net: _HeadNet, init: TorchHeadClassifier) -> None:
    """Set `net` (standardisation already fitted) to compute what `init` computes."""
    source = init._require_fitted()
    first, target = source.layers[0], net.layers[0]
    assert isinstance(first, nn.Linear)
    assert isinstance(target, nn.Linear)
    with torch.no_grad():
        raw = first.weight / source.scale  # the weights on the raw inputs
        bias = first.bias - raw @ source.mean
        raw, bias = raw.to(target.weight.device), bias.to(target.weight.device)
        target.weight.copy_(raw * net.scale)
        target.bias.copy_(bias + raw @ net.mean)


def _torch_csr(matrix: Any, device: torch.device) -> torch.Tensor:
    with warnings.catch_warnings():
        # "Sparse CSR tensor support is in beta": the two products used here are stable.
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            torch.from_numpy(matrix.indptr.astype(np.int64)),
            torch.from_numpy(matrix.indices.astype(np.int64)),
            torch.from_numpy(matrix.data.astype(np.float32)),
            size=matrix.shape,
            check_invariants=False,
        ).to(device)


def _column_moments(csr: Any) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Column means and standard deviations of a CSR matrix, without densifying it."""
    n, d = csr.shape
    values = csr.data.astype(np.float64)
    mean = np.bincount(csr.indices, weights=values, minlength=d) / n
    square = np.bincount(csr.indices, weights=values * values, minlength=d) / n
    return mean, np.sqrt(np.maximum(square - mean * mean, 0.0))


class TorchHeadClassifier:
    """Softmax classifier on embeddings: `fit`, `predict_proba`, `predict`, `logits`.

    Parameters
    ----------
    hidden_dim : int
        0 for a linear (softmax-regression) head, else the width of one hidden GELU layer.
    epochs : int
        L-BFGS: maximum iterations (it stops earlier once converged). Adam: passes over the data.
    learning_rate : float
        Adam step size. L-BFGS picks its own steps by line search and ignores it.
    weight_decay : float
        L2 penalty: the objective is ``mean weighted cross-entropy + weight_decay / 2 * ||W||^2``, with
        W the weights applied to the raw embeddings (equivalent to scikit-learn's
        ``C = 1 / (weight_decay * n)``). Inputs are standardised internally, but only to precondition
        the optimiser: that does not change what the penalty means.
    batch_size : int
        Adam minibatch size (L-BFGS always uses the full batch).
    class_weight : {"balanced", "none"}
        "balanced" weights each class by ``n / (n_classes * count)``, as scikit-learn does.
    device : str
        "auto", "cpu", "cuda", "cuda:N" or "mps".
    seed : int
        Seeds initialisation and shuffling; a fixed seed gives identical weights on one machine.
    optimizer : {"auto", "lbfgs", "adam"}
        "auto" = L-BFGS for the linear head, Adam for the MLP.

    Attributes
    ----------
    classes_ : (n_classes,) ndarray, sorted labels; column j of `predict_proba` is ``classes_[j]``
    n_features_in_ : int
    n_iter_ : int, optimizer iterations (L-BFGS) or epochs (Adam) run
    warm_started_ : bool, whether the fit started from an `init` head
    loss_ : float, final training objective
    """

    def __init__(
        self,
        *,
        hidden_dim: int = 0,
        epochs: int = 200,
        learning_rate: float = 0.01,
        weight_decay: float = 1e-4,
        batch_size: int = 512,
        class_weight: ClassWeight = "balanced",
        device: str = "auto",
        seed: int = 0,
        optimizer: Optimizer = "auto",
    ) -> None:
        self.hidden_dim = hidden_dim
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.class_weight = class_weight
        self.device = device
        self.seed = seed
        self.optimizer = optimizer

    # -- scikit-learn protocol -------------------------------------------------------------------------

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _PARAM_NAMES}

    def set_params(self, **params: Any) -> TorchHeadClassifier:
        for name, value in params.items():
            if name not in _PARAM_NAMES:
                raise ValueError(f"unknown parameter {name!r}; expected one of {', '.join(_PARAM_NAMES)}")
            setattr(self, name, value)
        return self

    def _check_params(self) -> None:
        if self.hidden_dim < 0:
            raise ValueError(f"hidden_dim must be >= 0, got {self.hidden_dim}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if not self.learning_rate > 0 or self.weight_decay < 0:
            raise ValueError(
                f"need learning_rate > 0 and weight_decay >= 0, got {self.learning_rate}, {self.weight_decay}"
            )
        if self.class_weight not in ("balanced", "none"):
            raise ValueError(f"class_weight must be 'balanced' or 'none', got {self.class_weight!r}")
        if self.optimizer not in ("auto", "lbfgs", "adam"):
            raise ValueError(f"optimizer must be 'auto', 'lbfgs' or 'adam', got {self.optimizer!r}")

    def fit(
        self, X: ArrayLike, y: Sequence[Hashable] | ArrayLike, *, init: TorchHeadClassifier | None = None
    ) -> TorchHeadClassifier:
        """Train on embeddings.

        Parameters
        ----------
        X : (n, n_features) embeddings (dense, or a scipy sparse matrix)
        y : (n,) labels of any sortable hashable type
        init : a fitted linear head with the same classes and input width: L-BFGS starts from the
            function it computes (re-expressed in this fit's standardisation) instead of from zero

        Returns
        -------
        self
        """
        self._check_params()
        sparse_input = _is_sparse(X)
        features: Any = _as_sparse_features(X) if sparse_input else _as_features(X)
        labels = _as_labels(y)
        if labels.ndim != 1 or len(labels) != features.shape[0]:
            raise ValueError(
                f"y must be 1-D with one label per row of X: X {features.shape}, y {labels.shape}"
            )
        classes, y_idx = np.unique(labels, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(f"need at least 2 classes to fit, got {len(classes)}")
        if init is not None:
            init._require_fitted()
            mismatch = start_mismatch(init, self.hidden_dim, classes, features.shape[1])
            if mismatch is not None:
                raise ValueError(mismatch)

        device = resolve_device(self.device)
        n, d = features.shape
        k = len(classes)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = _HeadNet(d, k, self.hidden_dim)
        use_lbfgs = self.optimizer == "lbfgs" or (self.optimizer == "auto" and self.hidden_dim == 0)
        split: _SplitColumns | None = None
        if sparse_input:
            mean, scale = _column_moments(features)
            if use_lbfgs and self.hidden_dim == 0:
                split = _SplitColumns(features, device)
            else:
                features = np.asarray(features.toarray(), dtype=np.float32)
        else:
            mean = features.mean(axis=0, dtype=np.float64)
            scale = features.std(axis=0, dtype=np.float64)
        scale[scale < _MIN_SCALE] = 1.0
        net.mean.copy_(torch.from_numpy(mean.astype(np.float32)))
        net.scale.copy_(torch.from_numpy(scale.astype(np.float32)))
        net.to(device)

        x = torch.from_numpy(features).to(device) if split is None else torch.empty(0)
        target = torch.from_numpy(y_idx.astype(np.int64)).to(device)
        weight = None
        if self.class_weight == "balanced":
            counts = np.bincount(y_idx, minlength=k)
            weight = torch.from_numpy((n / (k * counts)).astype(np.float32)).to(device)

        net.train()
        if use_lbfgs:
            self.n_iter_, self.loss_ = self._fit_lbfgs(net, x, target, weight, split, init)
        else:
            self.n_iter_, self.loss_ = self._fit_adam(net, x, target, weight)
        net.eval()
        self.warm_started_ = init is not None
        self.model_ = net
        self.classes_ = classes
        self.n_features_in_ = d
        return self

    def _objective(
        self,
        net: _HeadNet,
        x: torch.Tensor,
        target: torch.Tensor,
        weight: torch.Tensor | None,
        *,
        standardized: bool = False,
    ) -> torch.Tensor:
        logits = net.layers(x) if standardized else net(x)
        loss = functional.cross_entropy(logits, target, weight=weight)
        if self.weight_decay > 0:
            loss = loss + 0.5 * self.weight_decay * net.penalty()
        return loss

    def _fit_lbfgs(
        self,
        net: _HeadNet,
        x: torch.Tensor,
        target: torch.Tensor,
        weight: torch.Tensor | None,
        split: _SplitColumns | None,
        init: TorchHeadClassifier | None = None,
    ) -> tuple[int, float]:
        if init is not None:
            _start_from(net, init)
        elif self.hidden_dim == 0:
            # Convex problem: start at zero so the result does not depend on the seed at all.
            with torch.no_grad():
                for p in net.layers.parameters():
                    p.zero_()
        opt = torch.optim.LBFGS(
            list(net.layers.parameters()),
            lr=1.0,
            max_iter=self.epochs,
            history_size=10,
            tolerance_grad=1e-5,
            tolerance_change=1e-9,
            line_search_fn="strong_wolfe",
        )

        objective: Callable[[], torch.Tensor]
        if split is not None:
            # Sparse inputs: centring would make them dense, so the objective is computed on the raw
            # inputs with the raw-space weights instead (the same function of the same parameters).
            linear = net.layers[0]
            assert isinstance(linear, nn.Linear)

            def sparse_objective() -> torch.Tensor:
                raw = linear.weight / net.scale
                logits = split.matmul(raw) + (linear.bias - raw @ net.mean)
                loss = functional.cross_entropy(logits, target, weight=weight)
                if self.weight_decay > 0:
                    loss = loss + 0.5 * self.weight_decay * raw.square().sum()
                return loss

            objective = sparse_objective
        else:
            # Full batch: standardise once (the same tensor `net(x)` computes at every evaluation).
            with torch.no_grad():
                xs = (x - net.mean) / net.scale

            def dense_objective() -> torch.Tensor:
                return self._objective(net, xs, target, weight, standardized=True)

            objective = dense_objective

        def closure() -> float:
            opt.zero_grad()
            loss = objective()
            loss.backward()  # type: ignore[no-untyped-call]
            return float(loss.detach())

        opt.step(closure)  # type: ignore[no-untyped-call]
        n_iter = int(opt.state[opt.param_groups[0]["params"][0]].get("n_iter", 0))
        with torch.no_grad():
            final = float(objective())
        return n_iter, final

    def _fit_adam(
        self, net: _HeadNet, x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None
    ) -> tuple[int, float]:
        opt = torch.optim.Adam(net.layers.parameters(), lr=self.learning_rate)
        generator = torch.Generator().manual_seed(self.seed)
        n = len(x)
        batch = min(self.batch_size, n)
        for _ in range(self.epochs):
            order = torch.randperm(n, generator=generator).to(x.device)
            for start in range(0, n, batch):
                idx = order[start : start + batch]
                opt.zero_grad()
                self._objective(net, x[idx], target[idx], weight).backward()  # type: ignore[no-untyped-call]
                opt.step()
        with torch.no_grad():
            final = float(self._objective(net, x, target, weight))
        return self.epochs, final

    def _require_fitted(self) -> _HeadNet:
        model: _HeadNet | None = getattr(self, "model_", None)
        if model is None:
            raise NotFittedError("TorchHeadClassifier is not fitted yet; call fit(X, y) first")
        return model

    def logits(self, X: ArrayLike) -> NDArray[np.float64]:
        """Raw (uncalibrated) class scores, for temperature scaling.

        Parameters
        ----------
        X : (n, n_features)

        Returns
        -------
        (n, n_classes) float64
        """
        model = self._require_fitted()
        sparse_input = _is_sparse(X)
        features: Any = (
            _as_sparse_features(X, allow_empty=True) if sparse_input else _as_features(X, allow_empty=True)
        )
        if features.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {features.shape[1]} features; the head was fitted on {self.n_features_in_}"
            )
        device = model.mean.device
        out = np.empty((features.shape[0], len(self.classes_)), dtype=np.float64)
        with torch.inference_mode():
            for start in range(0, features.shape[0], _PREDICT_CHUNK):
                rows = features[start : start + _PREDICT_CHUNK]
                if sparse_input:
                    rows = np.asarray(rows.toarray(), dtype=np.float32)
                chunk = torch.from_numpy(rows).to(device)
                out[start : start + len(chunk)] = model(chunk).cpu().numpy()
        return out

    def predict_proba(self, X: ArrayLike) -> NDArray[np.float64]:
        """(n, n_features) -> (n, n_classes) softmax probabilities, columns ordered as `classes_`."""
        return softmax(self.logits(X))

    def predict(self, X: ArrayLike) -> NDArray[Any]:
        """(n, n_features) -> (n,) most probable labels."""
        logits = self.logits(X)
        return self.classes_[np.argmax(logits, axis=1)]  # type: ignore[no-any-return]

    # -- persistence ------------------------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        """Everything needed to rebuild the fitted head, as plain Python values and numpy arrays.

        Returns
        -------
        dict with "params" (constructor arguments), "classes" (n_classes,), "n_features" (int),
        "n_iter", "loss" and "tensors" (name -> ndarray: standardisation "mean"/"scale" and layer
        weights)
        """
        model = self._require_fitted()
        return {
            "params": self.get_params(),
            "classes": np.asarray(self.classes_).copy(),
            "n_features": int(self.n_features_in_),
            "n_iter": int(self.n_iter_),
            "warm_started": bool(self.warm_started_),
            "loss": float(self.loss_),
            "tensors": {name: t.detach().cpu().numpy().copy() for name, t in model.state_dict().items()},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], *, device: str | None = None) -> TorchHeadClassifier:
        """Rebuild a fitted head from `get_state` output.

        Parameters
        ----------
        state : dict from `get_state`
        device : str, optional
            Where to run it; defaults to the saved setting. Pass "auto" to load a head trained on a GPU
            box on a CPU-only server.
        """
        params = dict(state["params"])
        if device is not None:
            params["device"] = device
        head = cls(**params)
        classes = np.asarray(state["classes"])
        n_features = int(state["n_features"])
        net = _HeadNet(n_features, len(classes), int(params.get("hidden_dim", 0)))
        tensors = {name: torch.from_numpy(np.array(arr)) for name, arr in state["tensors"].items()}
        try:
            net.load_state_dict(tensors, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"head state does not match its parameters: {exc}") from exc
        net.to(resolve_device(head.device)).eval()
        head.model_ = net
        head.classes_ = classes
        head.n_features_in_ = n_features
        head.n_iter_ = int(state.get("n_iter", 0))
        head.warm_started_ = bool(state.get("warm_started", False))
        head.loss_ = float(state.get("loss", math.nan))
        return head

    def __repr__(self) -> str:
        changed = {k: v for k, v in self.get_params().items() if v != _DEFAULTS[k]}
        return f"TorchHeadClassifier({', '.join(f'{k}={v!r}' for k, v in changed.items())})"


_DEFAULTS = TorchHeadClassifier().get_params()


def _as_features(X: ArrayLike, *, allow_empty: bool = False) -> NDArray[np.float32]:
    features = np.ascontiguousarray(X, dtype=np.float32)
    if features.ndim != 2:
        raise ValueError(f"X must be 2-D (n, n_features), got shape {features.shape}")
    if not allow_empty and len(features) == 0:
        raise ValueError("X has no rows")
    if not np.isfinite(features).all():
        raise ValueError("X contains NaN or infinite values")
    return features


def _is_sparse(X: Any) -> bool:
    from scipy import sparse

    return bool(sparse.issparse(X))


def _as_sparse_features(X: Any, *, allow_empty: bool = False) -> Any:
    """A scipy sparse `X` as float32 CSR, checked as `_as_features` checks dense ones."""
    features = X.tocsr().astype(np.float32)
    if features.ndim != 2:
        raise ValueError(f"X must be 2-D (n, n_features), got shape {features.shape}")
    if not allow_empty and features.shape[0] == 0:
        raise ValueError("X has no rows")
    if not np.isfinite(features.data).all():
        raise ValueError("X contains NaN or infinite values")
    return features


def _as_labels(y: Sequence[Hashable] | ArrayLike) -> NDArray[Any]:
    labels = np.asarray(y)
    if labels.ndim > 1 and isinstance(y, Sequence):
        # Tuple labels (e.g. category paths) would otherwise become a 2-D array.
        labels = np.empty(len(y), dtype=object)
        labels[:] = list(y)
    return labels
