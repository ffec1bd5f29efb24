"""Post-hoc OOD detectors on embeddings, and a registry to build them by name.

Two families:

* **logit-based** (:class:`MaxSoftmaxDetector`, :class:`EnergyDetector`) score the
  logits of a linear SKU classifier (:class:`~skuscale.head.linear.LinearHead`);
* **feature-based** (:class:`MahalanobisDetector`, :class:`KNNCosineDetector`,
  :class:`PrototypeCosineDetector`) look at the embedding geometry directly.

Every detector's score is higher for more out-of-distribution inputs.
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np

from skuscale._base import BaseEstimator, check_X, l2_normalize, logsumexp, softmax
from skuscale.head.linear import LinearHead
from skuscale.ood.base import BaseDetector, _check_positive

# Largest number of similarity entries (query rows x bank rows) held at once by the
# chunked kNN search: 2**24 float32 entries = 64 MiB.
_KNN_CHUNK_ELEMENTS = 2**24


def _class_index(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted class labels (as str), per-sample class index and class counts."""
    # Labels become str before sorting, so the order is the heads' ("10" < "2").
    classes, y_idx, counts = np.unique(np.asarray(y).astype(str), return_inverse=True, return_counts=True)
    return classes, y_idx.reshape(-1), counts


def _class_means(X: np.ndarray, y_idx: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per-class mean rows (k, d) in float64, vectorised through a one-hot matmul."""
    onehot = np.zeros((counts.size, X.shape[0]), dtype=np.float64)
    onehot[y_idx, np.arange(X.shape[0])] = 1.0
    return (onehot @ X.astype(np.float64)) / counts[:, None]


# ----------------------------------------------------------------------------------
# Logit-based detectors
# ----------------------------------------------------------------------------------


class _LogitDetector(BaseDetector):
    """Shared machinery of detectors that score the logits of a :class:`LinearHead`."""

    def __init__(self, *, temperature: float = 1.0, head_C: float = 10.0):
        self.temperature = temperature
        self.head_C = head_C

    @classmethod
    def from_head(cls, head: BaseEstimator, *, temperature: float = 1.0) -> Self:
        """Build a fitted detector around an already fitted classifier head.

        Use this to score the logits of the classifier that is actually deployed
        instead of fitting a second one.

        Parameters
        ----------
        head : LinearHead
            A fitted head (any fitted :class:`~skuscale._base.BaseEstimator` with
            ``decision_function`` and ``n_features_in_``). It is stored as
            ``head_`` without copying, so later changes to it (e.g.
            :meth:`~skuscale.head.linear.LinearHead.imprint`) show in the scores.
        temperature : float, default 1.0
            Softmax temperature.

        Returns
        -------
        detector
            A fitted detector whose ``head_C`` is ``head.C`` when the head has one.

        Raises
        ------
        TypeError
            If ``head`` is not an estimator with ``decision_function``.
        NotFittedError
            If ``head`` is not fitted.
        """
        if not isinstance(head, BaseEstimator) or not hasattr(head, "decision_function"):
            raise TypeError(
                f"head must be a fitted estimator with decision_function, got {type(head)}"
            )
        head._check_fitted()
        det = cls(temperature=temperature, head_C=getattr(head, "C", 10.0))
        det._validate_params()
        det.head_ = head
        return det

    @property
    def n_features_in_(self) -> int:
        """Feature count seen by the head in ``fit``."""
        return int(self.head_.n_features_in_)

    @property
    def classes_(self) -> np.ndarray:
        """SKU labels known to the head."""
        return self.head_.classes_

    def _validate_params(self) -> None:
        _check_positive("temperature", self.temperature)
        _check_positive("head_C", self.head_C)

    def _fit(self, X: np.ndarray, y: np.ndarray | None) -> None:
        self.head_ = LinearHead(C=self.head_C).fit(X, y)

    def _scaled_logits(self, X: np.ndarray) -> np.ndarray:
        return self.head_.decision_function(X).astype(np.float64) / float(self.temperature)


class MaxSoftmaxDetector(_LogitDetector):
    """Maximum softmax probability (MSP) baseline.

    The score is ``-max_c softmax(logits / T)_c``: confident predictions get low
    scores, flat (uncertain) softmax outputs get high ones.

    Parameters
    ----------
    temperature : float, default 1.0
        Softmax temperature ``T > 0``.
    head_C : float, default 10.0
        Inverse regularisation strength of the internal :class:`LinearHead`.

    Attributes
    ----------
    head_ : LinearHead
        The classifier whose logits are scored (fitted in :meth:`fit`, or given
        to :meth:`from_head`).
    n_features_in_ : int
        Embedding dimension (read from ``head_``).
    classes_ : ndarray of str
        SKU labels (read from ``head_``).

    References
    ----------
    .. [1] Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and
       Out-of-Distribution Examples in Neural Networks", ICLR 2017.
    """

    def _score(self, X: np.ndarray) -> np.ndarray:
        return -softmax(self._scaled_logits(X), axis=1).max(axis=1)


class EnergyDetector(_LogitDetector):
    """Free-energy score of the classifier logits.

    The score is the energy ``E(x) = -T * logsumexp(logits / T)``, which is low for
    in-distribution inputs (large logits) and high for OOD inputs.

    Parameters
    ----------
    temperature : float, default 1.0
        Temperature ``T > 0``.
    head_C : float, default 10.0
        Inverse regularisation strength of the internal :class:`LinearHead`.

    Attributes
    ----------
    head_ : LinearHead
        The classifier whose logits are scored (fitted in :meth:`fit`, or given
        to :meth:`from_head`).
    n_features_in_ : int
        Embedding dimension (read from ``head_``).
    classes_ : ndarray of str
        SKU labels (read from ``head_``).

    Notes
    -----
    The logits include the head's post-hoc logit adjustment when the head uses
    ``long_tail="logit_adjust"``.

    References
    ----------
    .. [1] Liu, Wang, Owens & Li, "Energy-based Out-of-distribution Detection",
       NeurIPS 2020.
    """

    def _score(self, X: np.ndarray) -> np.ndarray:
        return -float(self.temperature) * logsumexp(self._scaled_logits(X), axis=1)


# ----------------------------------------------------------------------------------
# Feature-based detectors
# ----------------------------------------------------------------------------------


class MahalanobisDetector(BaseDetector):
    """Minimum Mahalanobis distance to class means under a shared covariance.

    Fits one mean per class and a single tied covariance of the class-centred
    embeddings; the score of ``x`` is ``min_c (x - mu_c)^T P (x - mu_c)`` with ``P``
    the precision (inverse covariance).

    Parameters
    ----------
    shrinkage : "ledoit_wolf" or float, default "ledoit_wolf"
        Covariance regularisation ``S_shrunk = (1 - a) S + a * (tr(S) / d) I``.
        ``"ledoit_wolf"`` picks ``a`` by the Ledoit-Wolf formula
        (:func:`sklearn.covariance.ledoit_wolf`); a float in ``[0, 1]`` fixes it.
        With few samples per dimension (e.g. 3000 samples of 1280-d embeddings)
        some shrinkage is needed: ``0.0`` uses the raw covariance, whose
        pseudo-inverse is taken when it is singular.
    normalize : bool, default True
        L2-normalise embeddings (in ``fit`` and scoring) before everything else.

    Attributes
    ----------
    classes_ : ndarray of str, shape (k,)
        Sorted SKU labels.
    means_ : ndarray of float32, shape (k, d)
        Class means (of the normalised embeddings when ``normalize``).
    precision_ : ndarray of float32, shape (d, d)
        Inverse of the shrunk shared covariance.
    shrinkage_ : float
        Shrinkage coefficient actually used.
    n_features_in_ : int
        Embedding dimension.

    Notes
    -----
    Distances are computed for all samples and classes at once through
    ``x^T P x - 2 x^T P mu + mu^T P mu`` in float64 (clipped at 0), without loops
    over samples.

    References
    ----------
    .. [1] Lee, Lee, Lee & Shin, "A Simple Unified Framework for Detecting
       Out-of-Distribution Samples and Adversarial Attacks", NeurIPS 2018.
    .. [2] Ledoit & Wolf, "A well-conditioned estimator for large-dimensional
       covariance matrices", Journal of Multivariate Analysis 88(2), 2004.
    """

    def __init__(self, *, shrinkage: str | float = "ledoit_wolf", normalize: bool = True):
        self.shrinkage = shrinkage
        self.normalize = normalize

    def _validate_params(self) -> None:
        if isinstance(self.shrinkage, str):
            if self.shrinkage != "ledoit_wolf":
                raise ValueError(
                    f'shrinkage must be "ledoit_wolf" or a float in [0, 1], got {self.shrinkage!r}'
                )
        elif isinstance(self.shrinkage, bool) or not isinstance(
            self.shrinkage, int | float | np.integer | np.floating
        ):
            raise ValueError(
                f'shrinkage must be "ledoit_wolf" or a float in [0, 1], got {self.shrinkage!r}'
            )
        elif not 0.0 <= float(self.shrinkage) <= 1.0:
            raise ValueError(f"shrinkage must be in [0, 1], got {self.shrinkage!r}")

    def _fit(self, X: np.ndarray, y: np.ndarray | None) -> None:
        if self.normalize:
            X = l2_normalize(X)
        classes, y_idx, counts = _class_index(y)
        means = _class_means(X, y_idx, counts)
        centred = X.astype(np.float64) - means[y_idx]
        d = X.shape[1]
        if not np.any(centred):
            raise ValueError(
                "MahalanobisDetector needs classes with at least two distinct embeddings: "
                "the within-class scatter is zero, so every distance would be 0"
            )
        if self.shrinkage == "ledoit_wolf":
            from sklearn.covariance import ledoit_wolf

            cov, shrinkage = ledoit_wolf(centred, assume_centered=True)
            shrinkage = float(shrinkage)
        else:
            shrinkage = float(self.shrinkage)
            emp = centred.T @ centred / centred.shape[0]
            mu = np.trace(emp) / d
            cov = (1.0 - shrinkage) * emp
            cov[np.diag_indices(d)] += shrinkage * mu
        try:
            # Shrinkage makes the covariance positive definite; a Cholesky-based
            # inverse is several times faster than the SVD behind pinv.
            chol_inv = np.linalg.inv(np.linalg.cholesky(cov))
            precision = chol_inv.T @ chol_inv
        except np.linalg.LinAlgError:
            precision = np.linalg.pinv(cov, hermitian=True)
        precision = (precision + precision.T) / 2.0
        self.classes_ = classes
        self.means_ = means.astype(np.float32)
        self.precision_ = precision.astype(np.float32)
        self.shrinkage_ = shrinkage
        self.n_features_in_ = int(d)

    def _score(self, X: np.ndarray) -> np.ndarray:
        return self.mahalanobis_distances(X).min(axis=1)

    def mahalanobis_distances(self, X: Any) -> np.ndarray:
        """Squared Mahalanobis distance of every row of ``X`` to every class mean.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings (normalised here when ``normalize``).

        Returns
        -------
        ndarray of float64, shape (n_samples, n_classes)
            Column ``c`` is the distance to ``means_[c]`` (class ``classes_[c]``).
        """
        self._check_fitted()
        X = check_X(X, n_features=self.n_features_in_)
        if self.normalize:
            X = l2_normalize(X)
        Xd = X.astype(np.float64)
        P = self.precision_.astype(np.float64)
        M = self.means_.astype(np.float64)
        XP = Xd @ P
        MP = M @ P
        sq = (XP * Xd).sum(axis=1)[:, None] - 2.0 * (XP @ M.T) + (MP * M).sum(axis=1)[None, :]
        return np.maximum(sq, 0.0)


class KNNCosineDetector(BaseDetector):
    """Distance to the k-th nearest training embedding (deep nearest neighbours).

    With ``normalize=True`` the score is ``1 - cos(x, b_k)``, where ``b_k`` is the
    training embedding with the k-th largest cosine similarity to ``x``.

    Parameters
    ----------
    k : int, default 10
        Which neighbour to use; must not exceed the number of training rows.
    normalize : bool, default True
        L2-normalise the training bank and the queries. ``False`` keeps raw
        embeddings and scores ``0.5 * ||x - b_k||^2`` with ``b_k`` the k-th
        nearest in Euclidean distance, which equals ``1 - cos`` for unit-norm
        inputs (the un-normalised ablation of [1]_, up to a monotone map).

    Attributes
    ----------
    bank_ : ndarray of float32, shape (n_train, d)
        Training embeddings (unit norm when ``normalize``).
    n_features_in_ : int
        Embedding dimension.

    Notes
    -----
    Labels are not used; ``fit(X)`` works without ``y``. Similarities are
    computed in chunks of query rows so that at most about 2**24 entries are
    held at once (float32 when normalising, float64 otherwise). A query that is
    itself in the bank counts as its own nearest neighbour (as in [1]_).

    References
    ----------
    .. [1] Sun, Ming, Zhu & Li, "Out-of-Distribution Detection with Deep Nearest
       Neighbors", ICML 2022.
    """

    requires_y = False

    def __init__(self, *, k: int = 10, normalize: bool = True):
        self.k = k
        self.normalize = normalize

    def _validate_params(self) -> None:
        _check_positive("k", self.k, integer=True)

    def _fit(self, X: np.ndarray, y: np.ndarray | None) -> None:
        if int(self.k) > X.shape[0]:
            raise ValueError(f"k={self.k} is larger than the {X.shape[0]} training rows")
        self.bank_ = (l2_normalize(X) if self.normalize else X).astype(np.float32)
        self.n_features_in_ = int(X.shape[1])

    def _score(self, X: np.ndarray) -> np.ndarray:
        k = int(self.k)
        bank = self.bank_
        if self.normalize:
            X = l2_normalize(X)
        else:
            # The expansion |x|^2 + |b|^2 - 2 x.b cancels badly in float32.
            X = X.astype(np.float64)
            bank = bank.astype(np.float64)
            half_sq_bank = 0.5 * np.einsum("ij,ij->i", bank, bank)
        n, n_bank = X.shape[0], bank.shape[0]
        chunk = max(1, _KNN_CHUNK_ELEMENTS // n_bank)
        out = np.empty(n, dtype=np.float64)
        for start in range(0, n, chunk):
            Xc = X[start : start + chunk]
            sims = (Xc @ bank.T).astype(np.float64, copy=False)
            if self.normalize:
                # k-th largest similarity -> k-th smallest of its negation.
                kth = -np.partition(-sims, k - 1, axis=1)[:, k - 1]
                out[start : start + chunk] = 1.0 - kth
            else:
                half_sq = (
                    0.5 * np.einsum("ij,ij->i", Xc, Xc)[:, None] + half_sq_bank[None, :] - sims
                )
                kth = np.partition(half_sq, k - 1, axis=1)[:, k - 1]
                out[start : start + chunk] = np.maximum(kth, 0.0)
        return out


class PrototypeCosineDetector(BaseDetector):
    """Cosine distance to the nearest class prototype (normalised class mean).

    The score is ``1 - max_c cos(x, p_c)`` with ``p_c`` the L2-normalised mean of
    the L2-normalised embeddings of class ``c``. Cheap, and strong when there are
    only a few dozen samples per class.

    Attributes
    ----------
    classes_ : ndarray of str, shape (k,)
        Sorted SKU labels.
    prototypes_ : ndarray of float32, shape (k, d)
        Unit-norm class prototypes.
    n_features_in_ : int
        Embedding dimension.

    References
    ----------
    .. [1] Snell, Swersky & Zemel, "Prototypical Networks for Few-shot Learning",
       NeurIPS 2017 (class prototypes).
    .. [2] Qi, Brown & Lowe, "Low-Shot Learning with Imprinted Weights", CVPR 2018
       (normalised mean embeddings as cosine classifier weights).
    """

    def __init__(self) -> None:
        pass

    def _fit(self, X: np.ndarray, y: np.ndarray | None) -> None:
        classes, y_idx, counts = _class_index(y)
        means = _class_means(l2_normalize(X), y_idx, counts)
        self.classes_ = classes
        self.prototypes_ = l2_normalize(means.astype(np.float32))
        self.n_features_in_ = int(X.shape[1])

    def _score(self, X: np.ndarray) -> np.ndarray:
        sims = l2_normalize(X) @ self.prototypes_.T
        return 1.0 - sims.max(axis=1).astype(np.float64)


# ----------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------

DETECTORS: dict[str, type[BaseDetector]] = {
    "msp": MaxSoftmaxDetector,
    "energy": EnergyDetector,
    "mahalanobis": MahalanobisDetector,
    "knn": KNNCosineDetector,
    "prototype": PrototypeCosineDetector,
}


def detector_name(detector: BaseDetector) -> str:
    """Registry name (a key of :data:`DETECTORS`) of a detector instance."""
    for name, klass in DETECTORS.items():
        if type(detector) is klass:
            return name
    raise ValueError(f"{type(detector).__name__} is not a registered OOD detector")


def make_detector(name: str, **params: Any) -> BaseDetector:
    """Build an unfitted detector from its registry name.

    Parameters
    ----------
    name : str
        One of the keys of :data:`DETECTORS`: ``"msp"``, ``"energy"``,
        ``"mahalanobis"``, ``"knn"``, ``"prototype"``.
    **params
        Constructor arguments of that detector.

    Returns
    -------
    BaseDetector
        The new, unfitted detector.

    Raises
    ------
    ValueError
        If ``name`` is unknown or ``params`` holds an argument the detector lacks;
        the message lists the valid choices.
    """
    try:
        cls = DETECTORS[name]
    except (KeyError, TypeError):
        valid = ", ".join(repr(k) for k in DETECTORS)
        raise ValueError(f"unknown OOD detector {name!r}; valid names: {valid}") from None
    allowed = cls._param_names()
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {unknown} for OOD detector {name!r}; valid parameters: {allowed}"
        )
    return cls(**params)
