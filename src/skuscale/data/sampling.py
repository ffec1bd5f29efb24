"""Class-balanced sampling of training images (numpy)."""

from __future__ import annotations

import numpy as np


def balanced_indices(labels, n: int, rng: np.random.Generator, *, weights=None) -> np.ndarray:
    """Draw ``n`` row indices so that every class is equally likely.

    A class is drawn uniformly, then a row of that class with probability
    proportional to ``weights`` (re-sampling for long-tail classes, as in Shen, Lin
    & Huang, "Relay backpropagation", ECCV 2016; Kang et al., "Decoupling
    representation and classifier for long-tailed recognition", ICLR 2020).

    Parameters
    ----------
    labels : array-like (m,)
        Class of every row.
    n : int
        Number of draws (with replacement).
    rng : numpy.random.Generator
    weights : array-like (m,), optional
        Non-negative weight of each row within its class (default 1); every class
        needs a positive total.

    Returns
    -------
    ndarray of int64, shape (n,)
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError("labels must be a non-empty 1-d array")
    if isinstance(n, bool) or int(n) != n or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    w = np.ones(labels.size) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != labels.shape or not np.all(np.isfinite(w)) or (w < 0).any():
        raise ValueError("weights must be finite, non-negative and one per label")
    classes, inverse = np.unique(labels, return_inverse=True)
    totals = np.bincount(inverse, weights=w, minlength=classes.size)
    if (totals <= 0).any():
        raise ValueError(f"classes without positive weight: {classes[totals <= 0].tolist()}")
    # Row probability = (1 / k) * w_row / total_of_its_class.
    p = w / totals[inverse] / classes.size
    return rng.choice(labels.size, size=int(n), replace=True, p=p / p.sum()).astype(np.int64)


def uniform_indices(n_rows: int, n: int, rng: np.random.Generator, *, weights=None) -> np.ndarray:
    """Draw ``n`` row indices with probability proportional to ``weights`` (default uniform)."""
    w = np.ones(n_rows) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (n_rows,) or (w < 0).any() or not w.sum() > 0:
        raise ValueError("weights must be non-negative, one per row, with a positive sum")
    return rng.choice(n_rows, size=int(n), replace=True, p=w / w.sum()).astype(np.int64)


def grouped_balanced_indices(labels, n_groups: int, group_size: int, rng: np.random.Generator, *,
                             weights=None) -> np.ndarray:
    """Draw ``n_groups`` groups of ``group_size`` rows, each group from one class.

    The class of a group is drawn uniformly and its rows with probability proportional
    to ``weights`` (with replacement), so every class is still drawn equally often, and
    consecutive groups form batches in which every row has positives of its own class:
    the "P classes x K views" batches that supervised contrastive learning needs
    (Khosla et al., "Supervised contrastive learning", NeurIPS 2020).

    Parameters
    ----------
    labels : array-like (m,)
    n_groups, group_size : int
    rng : numpy.random.Generator
    weights : array-like (m,), optional
        As in :func:`balanced_indices`.

    Returns
    -------
    ndarray of int64, shape (n_groups * group_size,)
        Group ``g`` is ``[g * group_size, (g + 1) * group_size)``.
    """
    if isinstance(group_size, bool) or int(group_size) != group_size or group_size < 1:
        raise ValueError(f"group_size must be a positive integer, got {group_size!r}")
    if isinstance(n_groups, bool) or int(n_groups) != n_groups or n_groups < 0:
        raise ValueError(f"n_groups must be a non-negative integer, got {n_groups!r}")
    labels = np.asarray(labels)
    # One balanced draw per group picks its class (and is validated the same way).
    anchors = balanced_indices(labels, int(n_groups), rng, weights=weights)
    w = np.ones(labels.size) if weights is None else np.asarray(weights, dtype=np.float64)
    classes, inverse = np.unique(labels, return_inverse=True)
    members = [np.flatnonzero(inverse == k) for k in range(classes.size)]
    within = [w[rows] / w[rows].sum() for rows in members]
    out = np.empty((int(n_groups), int(group_size)), dtype=np.int64)
    for g, anchor in enumerate(anchors):
        k = inverse[anchor]
        out[g] = rng.choice(members[k], size=int(group_size), replace=True, p=within[k])
    return out.reshape(-1)
