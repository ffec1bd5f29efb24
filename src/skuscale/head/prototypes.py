"""Cosine prototype scores per SKU: enrol a SKU from a few images, no retraining."""

from __future__ import annotations

import numpy as np

from skuscale._base import BaseEstimator, check_X, check_X_y, l2_normalize


class PrototypeHead(BaseEstimator):
    """Nearest-class-mean classifier on the unit sphere.

    Each SKU is represented by the normalised mean of its normalised embeddings
    (Mensink et al., "Distance-Based Image Classification", TPAMI 2013; the cosine
    form follows Snell et al., "Prototypical Networks", NeurIPS 2017).

    Parameters
    ----------
    scale : float
        Multiplier turning cosine similarities into logits.

    Attributes
    ----------
    classes_ : ndarray of str, shape (k,)
    prototypes_ : ndarray of float32, shape (k, d)
        Unit-norm class directions.
    counts_ : ndarray of int64, shape (k,)
        Images behind each prototype.
    resultant_norms_ : ndarray of float32, shape (k,)
        Norm of the sum of each class's unit embeddings, so that enrolling more
        images updates a prototype exactly.
    n_features_in_ : int
    """

    def __init__(self, *, scale: float = 16.0):
        self.scale = scale

    def fit(self, X, y) -> PrototypeHead:
        X, y = check_X_y(X, y)
        classes, idx, counts = np.unique(y.astype(str), return_inverse=True, return_counts=True)
        Xn = l2_normalize(X)
        sums = np.zeros((classes.size, X.shape[1]), dtype=np.float64)
        np.add.at(sums, idx, Xn)
        self.classes_ = classes
        self.prototypes_ = l2_normalize(sums.astype(np.float32))
        self.resultant_norms_ = np.linalg.norm(sums, axis=1).astype(np.float32)
        self.counts_ = counts.astype(np.int64)
        self.n_features_in_ = int(X.shape[1])
        return self

    def similarities(self, X) -> np.ndarray:
        """Cosine similarity (n, k) of each embedding to each prototype."""
        self._check_fitted()
        X = check_X(X, n_features=self.n_features_in_)
        return l2_normalize(X) @ self.prototypes_.T

    def decision_function(self, X) -> np.ndarray:
        return self.scale * self.similarities(X)

    def predict(self, X) -> np.ndarray:
        self._check_fitted()
        return self.classes_[self.similarities(X).argmax(axis=1)]

    def add_class(self, sku: str, X) -> PrototypeHead:
        """Enrol ``sku`` from embeddings ``X``; an existing SKU's prototype is updated."""
        self._check_fitted()
        X = check_X(X, n_features=self.n_features_in_)
        Xn = l2_normalize(X)
        hit = np.flatnonzero(self.classes_ == sku)
        if hit.size:
            i = int(hit[0])
            total = self.prototypes_[i] * self.resultant_norms_[i] + Xn.sum(axis=0)
            self.prototypes_[i] = l2_normalize(total[None])[0]
            self.resultant_norms_[i] = np.linalg.norm(total)
            self.counts_[i] += X.shape[0]
        else:
            total = Xn.sum(axis=0, keepdims=True)
            self.classes_ = np.append(self.classes_, sku)
            self.prototypes_ = np.vstack([self.prototypes_, l2_normalize(total)])
            self.resultant_norms_ = np.append(self.resultant_norms_, np.linalg.norm(total)).astype(np.float32)
            self.counts_ = np.append(self.counts_, X.shape[0]).astype(np.int64)
        return self
