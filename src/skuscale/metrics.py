"""Calibration and selective-prediction metrics over held-out predictions.

All functions take plain arrays and return Python floats / dicts, so results can
go straight into JSON reports.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "coverage_at_threshold",
    "ece_sampling_floor",
    "expected_calibration_error",
    "negative_log_likelihood",
    "per_class_accuracy",
    "per_class_spread_floor",
    "precision_at_threshold",
    "reliability_curve",
    "top_k_accuracy",
]


# Tolerated overshoot of a probability above 1 (float32 rounding); such values are clipped.
_PROB_TOL = 1e-6


def _check_confidence(confidence, *, name: str = "confidence") -> np.ndarray:
    c = np.asarray(confidence)
    if c.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {c.shape}")
    if c.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if not np.issubdtype(c.dtype, np.number) or c.dtype == bool:
        raise ValueError(f"{name} must be numeric, got dtype {c.dtype}")
    c = c.astype(np.float64, copy=False)
    if not np.isfinite(c).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if c.min() < 0.0 or c.max() > 1.0 + _PROB_TOL:
        raise ValueError(f"{name} must lie in [0, 1], got values in [{c.min()}, {c.max()}]")
    return np.minimum(c, 1.0)  # float32 rounding may overshoot 1 by an ulp


def _check_correct(correct, n: int, *, name: str = "correct") -> np.ndarray:
    k = np.asarray(correct)
    if k.ndim != 1 or k.shape[0] != n:
        raise ValueError(f"{name} must be 1-D with {n} entries, got shape {k.shape}")
    if k.dtype != bool:
        if not np.issubdtype(k.dtype, np.number) or not np.isin(k, (0, 1)).all():
            raise ValueError(f"{name} must be boolean (or 0/1), got dtype {k.dtype}")
        k = k.astype(bool)
    return k


def _check_n_bins(n_bins) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    return int(n_bins)


def _check_probs_labels(probs, y_idx) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] == 0:
        raise ValueError(f"probs must be a non-empty 2-D (n, k) array, got shape {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError("probs contains NaN or infinite values")
    y = np.asarray(y_idx)
    if y.ndim != 1 or y.shape[0] != p.shape[0]:
        raise ValueError(f"y_idx must be 1-D with {p.shape[0]} entries, got shape {y.shape}")
    if y.dtype == bool or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y_idx must hold integer column indices, got dtype {y.dtype}")
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"y_idx must lie in [0, {p.shape[1] - 1}]")
    return p, y.astype(np.int64)


def confidence_bins(confidence, n_bins: int = 15) -> np.ndarray:
    """Equal-width bin index of each confidence on ``[0, 1]``.

    Bin ``b`` is ``[b / n_bins, (b + 1) / n_bins)``, except that the last bin is
    closed, so a confidence of exactly 1.0 falls in bin ``n_bins - 1`` and 0.0 in
    bin 0. Computed as ``min(floor(confidence * n_bins), n_bins - 1)``.
    """
    c = _check_confidence(confidence)
    n_bins = _check_n_bins(n_bins)
    return np.minimum(np.floor(c * n_bins).astype(np.int64), n_bins - 1)


def reliability_curve(confidence, correct, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per-bin counts, accuracy and mean confidence (a reliability diagram).

    Parameters
    ----------
    confidence : array-like, shape (n,)
        Top-label confidence in ``[0, 1]``.
    correct : array-like of bool, shape (n,)
        Whether the top label was right.
    n_bins : int
        Number of equal-width bins (see :func:`confidence_bins` for the edges).

    Returns
    -------
    dict
        ``"bin_edges"`` (n_bins + 1,), ``"count"`` (n_bins,) int, ``"accuracy"``
        and ``"confidence"`` (n_bins,) float, NaN for empty bins.

    References
    ----------
    .. [1] A. Niculescu-Mizil and R. Caruana, "Predicting Good Probabilities with
       Supervised Learning", ICML 2005.
    """
    c = _check_confidence(confidence)
    k = _check_correct(correct, c.shape[0])
    n_bins = _check_n_bins(n_bins)
    b = confidence_bins(c, n_bins)
    count = np.bincount(b, minlength=n_bins)
    hits = np.bincount(b, weights=k.astype(np.float64), minlength=n_bins)
    conf_sum = np.bincount(b, weights=c, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.where(count > 0, hits / count, np.nan)
        mean_conf = np.where(count > 0, conf_sum / count, np.nan)
    return {
        "bin_edges": np.linspace(0.0, 1.0, n_bins + 1),
        "count": count.astype(np.int64),
        "accuracy": accuracy,
        "confidence": mean_conf,
    }


def expected_calibration_error(confidence, correct, n_bins: int = 15) -> float:
    """Top-label expected calibration error with equal-width bins.

    ``ECE = sum_b (n_b / n) * |acc_b - conf_b|`` over non-empty bins, where
    ``acc_b`` is the accuracy and ``conf_b`` the mean confidence in bin ``b``
    (bin edges as in :func:`confidence_bins`).

    References
    ----------
    .. [1] M. P. Naeini, G. F. Cooper and M. Hauskrecht, "Obtaining Well
       Calibrated Probabilities Using Bayesian Binning", AAAI 2015.
    .. [2] C. Guo, G. Pleiss, Y. Sun and K. Q. Weinberger, "On Calibration of
       Modern Neural Networks", ICML 2017.
    """
    curve = reliability_curve(confidence, correct, n_bins)
    count = curve["count"]
    used = count > 0
    gaps = np.abs(curve["accuracy"][used] - curve["confidence"][used])
    return float(np.sum(count[used] * gaps) / count.sum())


def ece_sampling_floor(confidence, n: int | None = None, *, n_bins: int = 15, draws: int = 200,
                       seed: int = 0) -> dict[str, float]:
    """ECE that a perfectly calibrated model with these confidences shows on ``n`` images.

    ECE is biased upwards on small samples: even when every confidence is exactly the
    probability of being right, the binned accuracy scatters around it. This draws
    ``n`` confidences from ``confidence`` (all of them, in order, when ``n`` is None),
    draws each outcome as Bernoulli(confidence), and measures the ECE, ``draws`` times.
    An observed ECE near this floor cannot be told from perfect calibration on that
    many images.

    Parameters
    ----------
    confidence : array-like of float, shape (m,)
        Calibrated top-1 confidences (their distribution sets the floor).
    n : int, optional
        Sample size to evaluate at (default ``m``).
    n_bins, draws, seed : int
        Bins of the ECE; simulated samples; random seed.

    Returns
    -------
    dict
        ``mean`` and ``p95`` of the simulated ECE, and ``n``.

    References
    ----------
    .. [1] J. Vaicenavicius et al., "Evaluating model calibration in classification",
       AISTATS 2019 (sampling bias of binned calibration estimators).
    """
    c = _check_confidence(confidence)
    n_bins = _check_n_bins(n_bins)
    size = c.size if n is None else n
    for name, value in (("n", size), ("draws", draws)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    rng = np.random.default_rng(seed)
    values = np.empty(int(draws))
    for i in range(int(draws)):
        sample = c if n is None else rng.choice(c, int(size))
        values[i] = expected_calibration_error(sample, rng.random(sample.size) < sample, n_bins)
    return {"mean": float(values.mean()), "p95": float(np.quantile(values, 0.95)), "n": int(size)}


def per_class_spread_floor(counts, accuracy: float, *, draws: int = 500, seed: int = 0) -> dict[str, float]:
    """Spread of per-class accuracy that sampling alone gives when every class is equally accurate.

    With ``counts[k]`` evaluation images of class ``k`` and the same true accuracy
    ``accuracy`` for every class, each class's measured accuracy is Binomial(counts[k],
    accuracy) / counts[k]. Their population standard deviation, averaged over ``draws``
    simulations, is the floor below which a measured spread says nothing about real
    differences between classes.

    Parameters
    ----------
    counts : array-like of int
        Evaluation images per class (each at least 1).
    accuracy : float
        The common accuracy, in ``[0, 1]`` (e.g. the overall top-1).
    draws, seed : int

    Returns
    -------
    dict
        ``mean_pp`` and ``p95_pp``: the simulated standard deviation, in percentage points.
    """
    n = np.asarray(counts)
    if n.ndim != 1 or n.size == 0 or not np.issubdtype(n.dtype, np.integer) or (n < 1).any():
        raise ValueError("counts must be a non-empty 1-D array of positive integers")
    if not 0.0 <= float(accuracy) <= 1.0:
        raise ValueError(f"accuracy must be in [0, 1], got {accuracy!r}")
    if isinstance(draws, bool) or not isinstance(draws, int | np.integer) or draws < 1:
        raise ValueError(f"draws must be a positive integer, got {draws!r}")
    rng = np.random.default_rng(seed)
    spreads = (rng.binomial(n, float(accuracy), size=(int(draws), n.size)) / n).std(axis=1) * 100
    return {"mean_pp": float(spreads.mean()), "p95_pp": float(np.quantile(spreads, 0.95))}


def per_class_accuracy(y_true, y_pred) -> dict[str, float]:
    """Accuracy (recall) of each class present in ``y_true``, keyed by ``str(class)``.

    Classes that appear only in ``y_pred`` are not reported. Labels are compared as
    str, as the heads return them (``1`` and ``"1"`` are the same SKU); keys are in
    sorted order of those strings.
    """
    t = np.asarray(y_true).astype(str)
    p = np.asarray(y_pred).astype(str)
    if t.ndim != 1 or p.shape != t.shape:
        raise ValueError(
            f"y_true and y_pred must be 1-D of equal length, got {t.shape} and {p.shape}"
        )
    if t.shape[0] == 0:
        raise ValueError("y_true is empty")
    classes, inv = np.unique(t, return_inverse=True)
    hits = np.bincount(inv, weights=(t == p).astype(np.float64), minlength=classes.size)
    count = np.bincount(inv, minlength=classes.size)
    return {str(c): float(h / n) for c, h, n in zip(classes, hits, count, strict=True)}


def _accepted(c: np.ndarray, threshold) -> np.ndarray:
    thr = np.asarray(threshold, dtype=np.float64)
    if thr.ndim not in (0, 1) or (thr.ndim == 1 and thr.shape[0] != c.shape[0]):
        raise ValueError(
            f"threshold must be a scalar or 1-D with {c.shape[0]} entries, got shape {thr.shape}"
        )
    if np.isnan(thr).any():
        raise ValueError("threshold contains NaN")
    return c >= thr


def precision_at_threshold(confidence, correct, threshold) -> float:
    """Precision of the predictions accepted by ``confidence >= threshold``.

    ``threshold`` may be a scalar or a per-row array (e.g. the per-SKU threshold
    of each row's predicted SKU). Returns NaN when nothing is accepted.
    """
    c = _check_confidence(confidence)
    k = _check_correct(correct, c.shape[0])
    acc = _accepted(c, threshold)
    n = int(acc.sum())
    return float(k[acc].sum() / n) if n else float("nan")


def coverage_at_threshold(confidence, threshold) -> float:
    """Fraction of rows accepted by ``confidence >= threshold`` (scalar or per-row)."""
    c = _check_confidence(confidence)
    return float(_accepted(c, threshold).mean())


def negative_log_likelihood(probs, y_idx, sample_weight=None) -> float:
    """Mean ``-log p[i, y_i]`` (probabilities floored at 1e-300 to stay finite)."""
    p, y = _check_probs_labels(probs, y_idx)
    if p.min() < 0.0 or p.max() > 1.0 + _PROB_TOL:
        raise ValueError(f"probs must lie in [0, 1] (pass probabilities, not logits), got [{p.min()}, {p.max()}]")
    w = None
    if sample_weight is not None:
        w = np.asarray(sample_weight, dtype=np.float64)
        if w.shape != y.shape or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError(
                f"sample_weight must be {y.shape[0]} finite non-negative weights "
                "with a positive sum"
            )
    per_row = -np.log(np.maximum(p[np.arange(p.shape[0]), y], 1e-300))
    return float(np.average(per_row, weights=w))


def top_k_accuracy(probs, y_idx, k: int = 5) -> float:
    """Fraction of rows whose true index is among the ``k`` highest scores.

    Ties are broken toward the lower column index (stable sort on ``-probs``),
    as in :meth:`skuscale.routing.Router.route_arrays`.
    """
    p, y = _check_probs_labels(probs, y_idx)
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    top = np.argsort(-p, axis=1, kind="stable")[:, : int(k)]
    return float((top == y[:, None]).any(axis=1).mean())
