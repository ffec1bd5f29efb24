"""Post-hoc probability calibration of classifier logits.

Calibrated probabilities are what the confidence bands are built on: a per-SKU
threshold of 0.9 only means "90 % sure" when the probabilities are calibrated.
"""

from __future__ import annotations

import math

import numpy as np

from skuscale._base import BaseEstimator, softmax

#: Search interval for the temperature; the optimum is clamped to it.
TEMPERATURE_BOUNDS = (1e-2, 1e2)


def check_logits(logits, *, name: str = "logits") -> np.ndarray:
    """Validate a finite 2-D ``(n_samples, n_classes)`` logit matrix, return float64."""
    arr = np.asarray(logits)
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D (n_samples, n_classes) array, got shape {arr.shape}"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{name} must be real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def check_label_indices(
    y_idx, n_samples: int, n_classes: int, *, name: str = "y_idx"
) -> np.ndarray:
    """Validate integer labels indexing the columns of an ``(n, n_classes)`` matrix."""
    y = np.asarray(y_idx)
    if y.ndim != 1 or y.shape[0] != n_samples:
        raise ValueError(f"{name} must be 1-D with {n_samples} entries, got shape {y.shape}")
    if y.dtype == bool or not np.issubdtype(y.dtype, np.integer):
        whole = np.issubdtype(y.dtype, np.floating) and np.isfinite(y).all()
        if whole and (y == np.round(y)).all():
            y = y.astype(np.int64)
        else:
            raise ValueError(
                f"{name} must hold integer column indices into the logits, got dtype {y.dtype}; "
                "map SKU labels to indices first (e.g. np.searchsorted(head.classes_, y))"
            )
    y = y.astype(np.int64, copy=False)
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(
            f"{name} must lie in [0, {n_classes - 1}], got values in [{y.min()}, {y.max()}]"
        )
    return y


def check_sample_weight(sample_weight, n_samples: int) -> np.ndarray | None:
    """Validate optional non-negative sample weights with a positive sum."""
    if sample_weight is None:
        return None
    w = np.asarray(sample_weight, dtype=np.float64)
    if w.ndim != 1 or w.shape[0] != n_samples:
        raise ValueError(f"sample_weight must be 1-D with {n_samples} entries, got shape {w.shape}")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("sample_weight must be finite and non-negative")
    if w.sum() <= 0:
        raise ValueError("sample_weight must have a positive sum")
    return w


def _nll(logits: np.ndarray, y: np.ndarray, temperature: float, w: np.ndarray | None) -> float:
    """Mean negative log-likelihood of ``softmax(logits / temperature)`` (float64)."""
    z = logits / temperature
    m = z.max(axis=1)
    lse = m + np.log(np.exp(z - m[:, None]).sum(axis=1))
    per_row = lse - z[np.arange(z.shape[0]), y]
    return float(np.average(per_row, weights=w))


class TemperatureScaler(BaseEstimator):
    """Temperature scaling: one scalar ``T > 0`` with ``p = softmax(logits / T)``.

    ``T`` minimises the negative log-likelihood of held-out labels. ``T > 1``
    softens over-confident logits, ``T < 1`` sharpens under-confident ones; the
    arg-max (and so accuracy) never changes.

    Parameters
    ----------
    max_iter : int
        Iteration cap of the bounded scalar search.

    Attributes
    ----------
    temperature_ : float
        Fitted temperature, clamped to :data:`TEMPERATURE_BOUNDS`.
    nll_before_ : float
        Mean held-out NLL at ``T = 1``.
    nll_after_ : float
        Mean held-out NLL at ``temperature_``; never larger than ``nll_before_``.

    Notes
    -----
    The NLL is convex in ``1/T``, hence unimodal in ``log T``; ``fit`` runs the
    deterministic bounded Brent search of :func:`scipy.optimize.minimize_scalar`
    over ``log T`` in float64. If the search ends at a point worse than ``T = 1``
    (possible only within its tolerance), ``T = 1`` is kept.

    References
    ----------
    .. [1] C. Guo, G. Pleiss, Y. Sun and K. Q. Weinberger, "On Calibration of
       Modern Neural Networks", ICML 2017.
    """

    def __init__(self, *, max_iter: int = 100):
        self.max_iter = max_iter

    def fit(self, logits, y_idx, sample_weight=None) -> TemperatureScaler:
        """Fit ``T`` on held-out logits.

        Parameters
        ----------
        logits : array-like, shape (n, k)
            Uncalibrated logits (e.g. ``LinearHead.decision_function``).
        y_idx : array-like of int, shape (n,)
            True labels as column indices into ``logits``.
        sample_weight : array-like, shape (n,), optional
            Non-negative row weights for the NLL.

        Returns
        -------
        self
        """
        from scipy.optimize import minimize_scalar

        if not isinstance(self.max_iter, int | np.integer) or self.max_iter < 1:
            raise ValueError(f"max_iter must be a positive integer, got {self.max_iter!r}")
        z = check_logits(logits)
        y = check_label_indices(y_idx, z.shape[0], z.shape[1])
        w = check_sample_weight(sample_weight, z.shape[0])

        lo, hi = (math.log(b) for b in TEMPERATURE_BOUNDS)
        res = minimize_scalar(
            lambda log_t: _nll(z, y, math.exp(log_t), w),
            bounds=(lo, hi),
            method="bounded",
            options={"maxiter": int(self.max_iter), "xatol": 1e-6},
        )
        temperature = float(math.exp(float(res.x)))
        nll_before = _nll(z, y, 1.0, w)
        nll_after = _nll(z, y, temperature, w)
        if not nll_after <= nll_before:
            temperature, nll_after = 1.0, nll_before
        self.temperature_ = temperature
        self.nll_before_ = nll_before
        self.nll_after_ = nll_after
        return self

    def transform(self, logits) -> np.ndarray:
        """Calibrated probabilities ``softmax(logits / temperature_)``, float64 (n, k)."""
        self._check_fitted()
        return softmax(check_logits(logits) / self.temperature_, axis=1)

    def fit_transform(self, logits, y_idx, sample_weight=None) -> np.ndarray:
        """:meth:`fit` then :meth:`transform` on the same logits."""
        return self.fit(logits, y_idx, sample_weight=sample_weight).transform(logits)
