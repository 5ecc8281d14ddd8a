"""Temperature scaling and calibration diagnostics.

Also home of the input checks shared by the learner's probability-consuming modules (`check_proba`,
`check_labels`), so every entry point rejects bad arrays with the same, number-carrying messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

# Rows of float32 softmax outputs over a few thousand classes drift from 1 by ~1e-4; anything
# beyond this is a caller passing logits or unnormalised scores, not rounding.
ROW_SUM_ATOL = 1e-3

TEMPERATURE_BOUNDS = (0.05, 20.0)


def check_proba(proba: ArrayLike, *, name: str = "proba") -> NDArray[np.float64]:
    """Validate a probability matrix and return it as float64.

    Parameters
    ----------
    proba : array_like, shape (n_items, n_classes)
        Class probabilities, one row per item. ``n_items`` may be 0.

    Returns
    -------
    ndarray of float64, shape (n_items, n_classes)

    Raises
    ------
    ValueError
        If the array is not 2-D, has no class column, holds non-finite or negative values, or a row does
        not sum to 1 within ``ROW_SUM_ATOL``. The message names the first offending row and value.
    """
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_items, n_classes), got shape {p.shape}")
    if p.shape[1] == 0:
        raise ValueError(f"{name} must have at least one class column, got shape {p.shape}")
    if p.size == 0:
        return p
    bad = ~np.isfinite(p)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(
            f"{name} has {int(bad.sum())} non-finite value(s); "
            f"first at row {row}, column {col}: {p[row, col]}"
        )
    if (p < 0).any():
        row, col = np.unravel_index(int(np.argmin(p)), p.shape)
        raise ValueError(f"{name} must be >= 0; row {row}, column {col} is {p[row, col]}")
    sums = p.sum(axis=1)
    off = np.abs(sums - 1.0) > ROW_SUM_ATOL
    if off.any():
        row = int(np.argmax(off))
        raise ValueError(
            f"{name} rows must sum to 1 (±{ROW_SUM_ATOL}); {int(off.sum())} row(s) do not, "
            f"first is row {row} summing to {float(sums[row]):.6g}"
        )
    return p


def check_labels(y: ArrayLike, n_items: int, n_classes: int, *, name: str = "y") -> NDArray[np.intp]:
    """Validate integer class indices against the matrix they label.

    Parameters
    ----------
    y : array_like of int, shape (n_items,)
        Class index of each item, in ``[0, n_classes)``.
    n_items, n_classes : int
        Shape of the probability or logit matrix ``y`` belongs to.

    Returns
    -------
    ndarray of intp, shape (n_items,)

    Raises
    ------
    ValueError
        On a wrong shape, non-integer values, or an index outside ``[0, n_classes)``.
    """
    arr = np.asarray(y)
    if arr.ndim != 1 or arr.shape[0] != n_items:
        raise ValueError(f"{name} must have shape ({n_items},) to match the probabilities, got {arr.shape}")
    # Whole-number floats are accepted (a dtype accident upstream), but silently casting 2.7 -> 2
    # would corrupt every metric, so anything else non-integer is refused.
    whole = np.issubdtype(arr.dtype, np.integer) or (
        np.issubdtype(arr.dtype, np.floating) and bool(np.all(np.isfinite(arr))) and not np.any(arr % 1)
    )
    if arr.size and not whole:
        raise ValueError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    labels = arr.astype(np.intp)
    out = (labels < 0) | (labels >= n_classes)
    if out.any():
        i = int(np.argmax(out))
        raise ValueError(
            f"{name} has {int(out.sum())} class index(es) outside [0, {n_classes}); "
            f"first is {labels[i]} at position {i}"
        )
    return labels


def _check_logits(logits: ArrayLike) -> NDArray[np.float64]:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] == 0:
        raise ValueError(f"logits must be 2-D (n_items, n_classes), got shape {z.shape}")
    if not np.all(np.isfinite(z)):
        row, col = np.argwhere(~np.isfinite(z))[0]
        raise ValueError(f"logits must be finite; row {row}, column {col} is {z[row, col]}")
    return z


def softmax(logits: ArrayLike, temperature: float = 1.0) -> NDArray[np.float64]:
    """Row-wise softmax of ``logits / temperature``, stable for arbitrarily large logits.

    Parameters
    ----------
    logits : array_like, shape (n_items, n_classes)
    temperature : float
        Strictly positive. ``> 1`` softens (less confident), ``< 1`` sharpens.

    Returns
    -------
    ndarray of float64, shape (n_items, n_classes)
        Each row sums to 1.
    """
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    with np.errstate(over="ignore"):
        z = _check_logits(logits) / temperature
    if not np.all(np.isfinite(z)):  # 1e308 / 0.5: finite logits, an infinite ratio
        raise ValueError(f"logits / temperature overflow at temperature {temperature:g}")
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: NDArray[np.float64] = e / e.sum(axis=1, keepdims=True)
    return out


def _nll(logits: NDArray[np.float64], y: NDArray[np.intp], temperature: float) -> float:
    z = logits / temperature
    return float(np.mean(logsumexp(z, axis=1) - z[np.arange(len(y)), y]))


def fit_temperature(logits: ArrayLike, y: ArrayLike) -> float:
    """Fit the temperature ``T`` minimising the mean negative log-likelihood of ``softmax(logits / T)``.

    The search is over ``log T`` (the NLL is much better conditioned there) and bounded to
    ``TEMPERATURE_BOUNDS``; a result at a bound means the logits carry almost no (or a degenerate amount
    of) signal about ``y`` and should be looked at, not trusted.

    Parameters
    ----------
    logits : array_like, shape (n_items, n_classes)
        Held-out logits, never the ones the model was trained on (that would fit ``T`` to over-fitting).
    y : array_like of int, shape (n_items,)

    Returns
    -------
    float
        The fitted temperature; use it as ``softmax(logits, temperature=T)``.
    """
    z = _check_logits(logits)
    labels = check_labels(y, z.shape[0], z.shape[1])
    if z.shape[0] == 0:
        raise ValueError("fit_temperature needs at least one labelled item, got 0")
    lo, hi = np.log(TEMPERATURE_BOUNDS[0]), np.log(TEMPERATURE_BOUNDS[1])
    res = minimize_scalar(
        lambda log_t: _nll(z, labels, float(np.exp(log_t))),
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": 1e-5},
    )
    return float(np.exp(res.x))


@dataclass(frozen=True)
class ReliabilityCurve:
    """Per-bin top-label calibration statistics over equal-width confidence bins.

    Bin ``b`` holds items with confidence in ``(bin_edges[b], bin_edges[b + 1]]`` (the first bin also
    includes 0). Empty bins have ``count == 0`` and NaN ``mean_confidence`` / ``accuracy``.
    """

    bin_edges: NDArray[np.float64]  # (n_bins + 1,)
    mean_confidence: NDArray[np.float64]  # (n_bins,)
    accuracy: NDArray[np.float64]  # (n_bins,)
    count: NDArray[np.int64]  # (n_bins,)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (NaN -> None), e.g. for an MLflow artifact or a plot endpoint."""

        def clean(a: NDArray[np.float64]) -> list[float | None]:
            return [float(v) if np.isfinite(v) else None for v in a]

        return {
            "bin_edges": clean(self.bin_edges),
            "mean_confidence": clean(self.mean_confidence),
            "accuracy": clean(self.accuracy),
            "count": [int(c) for c in self.count],
        }


def _check_bins(n_bins: int) -> None:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")


def reliability_curve(proba: ArrayLike, y: ArrayLike, n_bins: int = 15) -> ReliabilityCurve:
    """Top-label reliability diagram data: per-bin mean confidence, accuracy and item count.

    Parameters
    ----------
    proba : array_like, shape (n_items, n_classes)
    y : array_like of int, shape (n_items,)
    n_bins : int
        Number of equal-width bins on [0, 1].

    Returns
    -------
    ReliabilityCurve
        Arrays of shape (n_bins,) (edges: (n_bins + 1,)).
    """
    _check_bins(n_bins)
    p = check_proba(proba)
    labels = check_labels(y, p.shape[0], p.shape[1])
    pred = np.argmax(p, axis=1)
    conf = p[np.arange(len(p)), pred]
    correct = (pred == labels).astype(np.float64)
    # (lo, hi] bins: ceil maps a confidence sitting exactly on an edge into the lower bin, as in Guo et
    # al. (2017); the clip puts confidence 0 into the first bin.
    idx = np.clip(np.ceil(conf * n_bins).astype(np.intp) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.int64)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    correct_sum = np.bincount(idx, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, conf_sum / count, np.nan)
        acc = np.where(count > 0, correct_sum / count, np.nan)
    return ReliabilityCurve(
        bin_edges=np.linspace(0.0, 1.0, n_bins + 1, dtype=np.float64),
        mean_confidence=mean_conf,
        accuracy=acc,
        count=count,
    )


def expected_calibration_error(proba: ArrayLike, y: ArrayLike, n_bins: int = 15) -> float:
    """Top-label expected calibration error with equal-width bins.

    ``ECE = sum_b (n_b / n) * |accuracy_b - mean_confidence_b|`` over non-empty bins.

    Parameters
    ----------
    proba : array_like, shape (n_items, n_classes)
    y : array_like of int, shape (n_items,)
    n_bins : int

    Returns
    -------
    float
        In [0, 1]; 0 for a perfectly calibrated (binned) model.
    """
    curve = reliability_curve(proba, y, n_bins)
    n = int(curve.count.sum())
    if n == 0:
        raise ValueError("expected_calibration_error needs at least one item, got 0")
    used = curve.count > 0
    gaps = np.abs(curve.accuracy[used] - curve.mean_confidence[used])
    return float(np.sum(curve.count[used] * gaps) / n)
