"""Common contract of the out-of-distribution (OOD) detectors.

A detector is fitted on in-distribution embeddings (and, for most detectors, their
SKU labels) and then gives every new embedding a scalar *OOD score*: the higher the
score, the less the embedding looks like anything seen during ``fit``. Turning a
score into a yes/no decision is left to a threshold, see
:func:`skuscale.ood.metrics.threshold_at_flag_rate`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Self

import numpy as np

from skuscale._base import BaseEstimator, check_X, check_X_y


class BaseDetector(BaseEstimator):
    """Base class of OOD detectors on ``(n, d)`` float32 embeddings.

    Subclasses implement ``_fit(X, y)`` (on validated float32 ``X`` and 1-D ``y``,
    or ``y=None`` when :attr:`requires_y` is false) and ``_score(X)`` (on validated
    float32 ``X`` with the fitted feature count), and expose ``n_features_in_``.

    Notes
    -----
    Scores follow one convention across all detectors: **higher means more
    out-of-distribution**. Scores of different detectors are not on a common
    scale; compare them only through rank-based metrics such as
    :func:`skuscale.ood.metrics.auroc` or thresholds fitted per detector.
    """

    #: Whether ``fit`` needs labels. Label-free detectors accept ``y=None``.
    requires_y: ClassVar[bool] = True

    def fit(self, X: Any, y: Any = None) -> Self:
        """Fit the detector on in-distribution embeddings.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            In-distribution embeddings.
        y : array-like of shape (n_samples,), optional
            SKU labels of ``X`` (str or int). Required unless the detector is
            label-free (``requires_y`` is false), in which case it is validated
            when given and otherwise ignored.

        Returns
        -------
        self : BaseDetector
            The fitted detector.

        Raises
        ------
        ValueError
            On invalid parameters, malformed ``X`` / ``y`` or missing labels.
        """
        self._validate_params()
        if y is None:
            if self.requires_y:
                raise ValueError(f"{type(self).__name__}.fit needs the labels y")
            X = check_X(X)
        else:
            X, y = check_X_y(X, y)
        self._fit(X, y)
        return self

    def score_samples(self, X: Any) -> np.ndarray:
        """OOD score of every row of ``X``; higher means more out-of-distribution.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings to score.

        Returns
        -------
        scores : ndarray of shape (n_samples,), float64
            Finite OOD scores.

        Raises
        ------
        NotFittedError
            If called before :meth:`fit`.
        ValueError
            If ``X`` is malformed or has a different feature count than in ``fit``.
        """
        self._check_fitted()
        X = check_X(X, n_features=self.n_features_in_)
        return np.asarray(self._score(X), dtype=np.float64).reshape(X.shape[0])

    # -- for subclasses -------------------------------------------------------------

    def _validate_params(self) -> None:
        """Check constructor arguments; raise ``ValueError`` on bad ones."""

    def _fit(self, X: np.ndarray, y: np.ndarray | None) -> None:
        raise NotImplementedError

    def _score(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def _check_positive(name: str, value: Any, *, integer: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is a positive (integer) number."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    if integer and not float(value).is_integer():
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
