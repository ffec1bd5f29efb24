"""Tiny synthetic embedding sets shared by the OOD tests."""

from __future__ import annotations

import numpy as np

N_FEATURES = 16
N_CLASSES = 3


def clusters(
    seed: int = 0, n_per_class: int = 20, noise: float = 0.3
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Three Gaussian clusters in 16-d plus a far cluster.

    Returns ``X_train, y_train, X_test, y_test, X_far``: train and test come from
    the same three clusters (centres ``3 * e_0``, ``3 * e_1``, ``3 * e_2``), the far
    cluster is centred at ``3 * e_8``, a direction no class uses.
    """
    rng = np.random.default_rng(seed)
    centres = 3.0 * np.eye(N_FEATURES)[:N_CLASSES]

    def draw(centre: np.ndarray, n: int) -> np.ndarray:
        return (centre + noise * rng.standard_normal((n, N_FEATURES))).astype(np.float32)

    X_train = np.vstack([draw(c, n_per_class) for c in centres])
    y_train = np.repeat(np.array(["sku_a", "sku_b", "sku_c"]), n_per_class)
    X_test = np.vstack([draw(c, 8) for c in centres])
    y_test = np.repeat(np.array(["sku_a", "sku_b", "sku_c"]), 8)
    X_far = draw(3.0 * np.eye(N_FEATURES)[8], 12)
    return X_train, y_train, X_test, y_test, X_far
