"""Evaluation and thresholding helpers for OOD scores (higher = more OOD).

All helpers take plain 1-D score arrays, so they work with any detector, and use
only numpy.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def _check_scores(scores: Any, name: str) -> np.ndarray:
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of scores, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def auroc(scores_known: Any, scores_unknown: Any) -> float:
    """Area under the ROC curve for separating unknown from known samples.

    Equals the probability that a randomly drawn unknown sample scores higher than
    a randomly drawn known one, ties counting 1/2 (the Mann-Whitney U statistic
    divided by ``n_known * n_unknown``), computed exactly from average ranks.

    Parameters
    ----------
    scores_known : array-like of shape (n_known,)
        OOD scores of in-distribution samples.
    scores_unknown : array-like of shape (n_unknown,)
        OOD scores of out-of-distribution samples.

    Returns
    -------
    float
        1.0 for perfect separation, 0.5 for chance, 0.0 for perfectly reversed.

    Raises
    ------
    ValueError
        If either array is empty, not 1-D or not finite.

    References
    ----------
    .. [1] Hanley & McNeil, "The meaning and use of the area under a receiver
       operating characteristic (ROC) curve", Radiology 143(1), 1982.
    """
    known = _check_scores(scores_known, "scores_known")
    unknown = _check_scores(scores_unknown, "scores_unknown")
    both = np.concatenate([known, unknown])
    _, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    # 1-based average rank of each distinct value: ties share the mean of their ranks.
    avg_rank = np.cumsum(counts) - (counts - 1) / 2.0
    ranks = avg_rank[inverse.reshape(-1)]
    n_k, n_u = known.size, unknown.size
    u_stat = ranks[n_k:].sum() - n_u * (n_u + 1) / 2.0
    return float(u_stat / (n_k * n_u))


def threshold_at_flag_rate(scores_known: Any, flag_rate: float = 0.05) -> float:
    """Threshold that flags (about) ``flag_rate`` of the known samples.

    Convention: a sample is **flagged as OOD when its score is strictly greater
    than the threshold** (``score > t``).

    The threshold is an order statistic of ``scores_known``: with the scores
    sorted ascending as ``s[0] <= ... <= s[n-1]`` and ``m = floor(flag_rate * n)``,
    ``t = s[n - 1 - m]``. Hence at most ``m`` known scores exceed ``t`` (exactly
    ``m`` when there are no ties at ``t``), i.e. the empirical flag rate on the
    known scores is ``<= flag_rate`` and as close to it as the sample allows. This
    is ``np.quantile(scores_known, 1 - m / n, method="inverted_cdf")`` up to
    floating point.

    Parameters
    ----------
    scores_known : array-like of shape (n_known,)
        OOD scores of in-distribution (e.g. held-out validation) samples.
    flag_rate : float, default 0.05
        Target share of known samples to flag, in ``[0, 1]``. ``0`` returns the
        largest known score (nothing known is flagged); ``1`` returns a value just
        below the smallest known score (everything known is flagged).

    Returns
    -------
    float
        The threshold ``t``, always finite.

    Raises
    ------
    ValueError
        If ``flag_rate`` is outside ``[0, 1]`` or the scores are malformed.
    """
    known = _check_scores(scores_known, "scores_known")
    rate = float(flag_rate)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"flag_rate must be in [0, 1], got {flag_rate!r}")
    n = known.size
    # The small epsilon keeps e.g. 0.29 * 100 = 28.999999999999996 at 29.
    m = min(n, math.floor(rate * n + 1e-9))
    s = np.sort(known)
    if m == n:
        return float(np.nextafter(s[0], -np.inf))
    return float(s[n - 1 - m])


def detection_rate(scores: Any, threshold: float) -> float:
    """Share of scores strictly greater than ``threshold`` (the flagged share).

    On unknown samples this is the detection rate (true positive rate); on known
    samples it is the false flag rate (false positive rate).

    Parameters
    ----------
    scores : array-like of shape (n,)
        OOD scores.
    threshold : float
        Threshold, e.g. from :func:`threshold_at_flag_rate`.

    Returns
    -------
    float
        ``mean(scores > threshold)`` in ``[0, 1]``.
    """
    arr = _check_scores(scores, "scores")
    return float(np.mean(arr > float(threshold)))
