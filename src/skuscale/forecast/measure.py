"""Nested sub-catalogue measurements with the nearest-class-mean proxy classifier.

Fitting the real head thousands of times is too slow, so the forecast measures a
cheap, faithful proxy: the cosine nearest-class-mean classifier (Mensink et al.,
TPAMI 2013) in a space whitened by the pooled within-SKU covariance, shrunk
towards a multiple of the identity (:class:`Whitener`). That is a linear
classifier of the same family as Fisher's discriminant; on the Grocery Store
embeddings it lands within a few points of the bundle's logistic-regression
head, where the plain cosine prototype is 8 points below. Its score
for a SKU does not depend on which other SKUs are in the catalogue, so one
similarity matrix (evaluation images x SKUs) answers every sub-catalogue by
selecting columns, and the average top-1 over *all* sub-catalogues of a size has
a closed form (:func:`exact_top1_curve`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import solve_triangular
from scipy.special import gammaln

from skuscale._base import l2_normalize, softmax
from skuscale.head.calibration import TemperatureScaler
from skuscale.metrics import expected_calibration_error


class Whitener:
    """Centre and whiten unit-norm embeddings by the pooled within-SKU covariance.

    ``C = (1 - shrinkage) S_w + shrinkage * tr(S_w)/d * I`` (fixed-ratio shrinkage
    in the spirit of Ledoit & Wolf, J. Multivariate Anal. 2004), then
    ``x -> (x/|x| - mean) C^{-1/2}``.
    """

    def __init__(self, *, shrinkage: float = 0.1):
        self.shrinkage = shrinkage

    def fit(self, X, y) -> Whitener:
        if not 0.0 < self.shrinkage <= 1.0:
            raise ValueError(f"shrinkage must be in (0, 1], got {self.shrinkage!r}")
        X = l2_normalize(np.asarray(X, dtype=np.float64))
        _, idx = np.unique(np.asarray(y).astype(str), return_inverse=True)
        means = np.zeros((idx.max() + 1, X.shape[1]))
        np.add.at(means, idx, X)
        means /= np.bincount(idx)[:, None]
        R = X - means[idx]
        C = R.T @ R / max(len(R), 1)
        C = (1 - self.shrinkage) * C + self.shrinkage * max(np.trace(C) / C.shape[0], 1e-12) * np.eye(C.shape[0])
        # Any W with W W^T = C^-1 gives the same inner products; the Cholesky factor is the cheapest.
        lower = np.linalg.cholesky(C)
        self.mean_ = X.mean(axis=0)
        self.components_ = solve_triangular(lower, np.eye(C.shape[0]), lower=True).T
        return self

    def transform(self, X) -> np.ndarray:
        return (l2_normalize(np.asarray(X, dtype=np.float64)) - self.mean_) @ self.components_


@dataclass
class SimilarityTable:
    """Cosine similarity of evaluation images to every SKU's prototype.

    Attributes
    ----------
    S : ndarray (n, k)
    y : ndarray of int (n,)
        Column of each image's true SKU.
    skus : ndarray of str (k,)
    train_counts : ndarray of int (k,)
        Training images behind each prototype.
    leave_one_out : bool
        True when the images are the training images themselves, each scored
        against its own SKU's prototype without it.
    """

    S: np.ndarray
    y: np.ndarray
    skus: np.ndarray
    train_counts: np.ndarray
    leave_one_out: bool = False

    @property
    def n_skus(self) -> int:
        return int(self.skus.size)

    def beaten_by(self) -> np.ndarray:
        """Per image, how many other SKUs score at least as high as its own."""
        own = self.S[np.arange(self.S.shape[0]), self.y]
        return (own[:, None] <= self.S).sum(axis=1) - 1

    def subset(self, columns: np.ndarray) -> SimilarityTable:
        columns = np.asarray(columns)
        remap = np.full(self.n_skus, -1)
        remap[columns] = np.arange(columns.size)
        rows = remap[self.y] >= 0
        return SimilarityTable(
            S=self.S[np.ix_(rows, columns)], y=remap[self.y[rows]], skus=self.skus[columns],
            train_counts=self.train_counts[columns], leave_one_out=self.leave_one_out,
        )


def similarity_table(X_train, y_train, X_eval=None, y_eval=None, *, shrinkage: float | None = 0.1
                     ) -> SimilarityTable:
    """Build the proxy's :class:`SimilarityTable`.

    The space is whitened on the training rows (:class:`Whitener`; ``shrinkage=None``
    keeps the raw cosine). Without evaluation rows, every training image is
    scored leave-one-out (its SKU's prototype is recomputed without it; SKUs with
    one image cannot be). Evaluation images of SKUs absent from training are dropped.
    """
    yt = np.asarray(y_train).astype(str)
    if shrinkage is not None:
        whitener = Whitener(shrinkage=shrinkage).fit(X_train, yt)
        X_train = whitener.transform(X_train)
        X_eval = None if X_eval is None else whitener.transform(X_eval)
    Xt = l2_normalize(np.asarray(X_train, dtype=np.float64))
    skus, idx, counts = np.unique(yt, return_inverse=True, return_counts=True)
    sums = np.zeros((skus.size, Xt.shape[1]))
    np.add.at(sums, idx, Xt)
    protos = l2_normalize(sums)
    if X_eval is None:
        S = Xt @ protos.T
        own_sum = sums[idx] - Xt
        norm = np.linalg.norm(own_sum, axis=1)
        keep = counts[idx] > 1
        S[np.arange(len(yt)), idx] = np.where(keep, (Xt * own_sum).sum(1) / np.maximum(norm, 1e-12), -np.inf)
        return SimilarityTable(S=S[keep].astype(np.float32), y=idx[keep], skus=skus, train_counts=counts,
                               leave_one_out=True)
    Xe = l2_normalize(np.asarray(X_eval, dtype=np.float64))
    ye = np.asarray(y_eval).astype(str)
    known = np.isin(ye, skus)
    S = (Xe[known] @ protos.T).astype(np.float32)
    return SimilarityTable(S=S, y=np.searchsorted(skus, ye[known]), skus=skus, train_counts=counts)


def _log_comb(n, k):
    return gammaln(np.asarray(n) + 1.0) - gammaln(np.asarray(k) + 1.0) - gammaln(np.asarray(n) - np.asarray(k) + 1.0)


def exact_top1_curve(beaten: np.ndarray, n_skus: int, sizes) -> np.ndarray:
    """Mean top-1 over all sub-catalogues of each size that contain the image's SKU.

    An image whose SKU is beaten by ``b`` of the other ``K - 1`` SKUs is correct in
    a random sub-catalogue of size ``k`` when none of the ``k - 1`` drawn
    competitors is among them: probability ``C(K-1-b, k-1) / C(K-1, k-1)``
    (hypergeometric).
    """
    beaten = np.asarray(beaten, dtype=np.float64)
    out = []
    for k in np.asarray(sizes, dtype=np.int64):
        m = k - 1
        free = n_skus - 1 - beaten
        with np.errstate(invalid="ignore"):
            p = np.where(free >= m, np.exp(_log_comb(np.maximum(free, m), m) - _log_comb(n_skus - 1, m)), 0.0)
        out.append(float(p.mean()))
    return np.array(out)


def automation_at_precision(confidence: np.ndarray, correct: np.ndarray, target: float = 0.99) -> float:
    """Largest share of images acceptable by one global confidence threshold at ``target`` precision.

    The threshold is the oracle one on these images (an upper bound for any
    threshold set elsewhere).
    """
    if confidence.size == 0:
        return float("nan")
    order = np.argsort(-confidence, kind="stable")
    hits = np.cumsum(correct[order])
    precision = hits / np.arange(1, order.size + 1)
    # Only cut where the confidence changes, so tied images go together.
    conf_sorted = confidence[order]
    boundary = np.append(conf_sorted[1:] < conf_sorted[:-1], True)
    ok = np.flatnonzero((precision >= target) & boundary)
    return float((ok[-1] + 1) / order.size) if ok.size else 0.0


def fit_scale(table: SimilarityTable) -> float:
    """Softmax scale (inverse temperature) of the proxy's cosine logits, by temperature scaling (Guo et al. 2017)."""
    scaler = TemperatureScaler().fit(table.S.astype(np.float64), table.y)
    return float(1.0 / scaler.temperature_)


def measure_subcatalogues(
    table: SimilarityTable,
    sizes,
    *,
    repeats: int = 5,
    target_precision: float = 0.99,
    scale: float | None = None,
    seed: int = 0,
) -> list[dict]:
    """Top-1, automation at ``target_precision`` and ECE on nested random sub-catalogues.

    Each repeat draws one random order of the SKUs; the sub-catalogue of size
    ``k`` is its first ``k`` SKUs, so the sizes of a repeat are nested. The
    confidence is the softmax of the cosine scores times ``scale`` (fitted on the
    whole table when not given).

    Returns
    -------
    list of dict
        One row per (size, repeat): ``size, repeat, n_images, top1, automation, ece``.
    """
    rng = np.random.default_rng(seed)
    scale = fit_scale(table) if scale is None else scale
    rows = []
    for r in range(repeats):
        order = rng.permutation(table.n_skus)
        for k in sizes:
            sub = table.subset(order[:k])
            if sub.S.shape[0] == 0:
                continue
            probs = softmax(scale * sub.S.astype(np.float64))
            pred = probs.argmax(1)
            conf = probs[np.arange(pred.size), pred]
            correct = pred == sub.y
            rows.append({
                "size": int(k), "repeat": r, "n_images": int(pred.size),
                "top1": float(correct.mean()),
                "automation": automation_at_precision(conf, correct, target_precision),
                "ece": float(expected_calibration_error(conf, correct)),
            })
    return rows
