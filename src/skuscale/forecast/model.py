"""The accuracy-versus-catalogue-size model: a competitor-hazard (beta-binomial) law.

For an image of SKU ``i``, let ``p`` be the chance that a SKU drawn at random
from the catalogue population scores at least as high as ``i`` on it. ``p`` is
where the data's own statistics meet: it is large when a near-duplicate family
member's centroid is close (centroid-distance distribution), when the image
strays far from its centroid (within-SKU spread), and when the SKU's prototype
is noisy because it has few training images (sample-count distribution). In a
catalogue of ``N`` SKUs the image is recognised when none of the ``N - 1``
competitors beats it, so

    top1(N) = E[(1 - p) ** (N - 1)].

Observed on a catalogue of ``K`` SKUs, the number of competitors that beat each
image is ``b ~ Binomial(K - 1, p)``. Modelling ``p ~ Beta(a, b)`` across images
gives a beta-binomial likelihood for the observed counts (Skellam, JRSS-B 1948)
and the closed form

    top1(N) = B(a, b + N - 1) / B(a, b),

which decays like ``N ** -a`` for large catalogues: the heavy upper tail of
``p`` (near-duplicates) sets the exponent. A two-component mixture of betas
separates the near-duplicate-prone images from the rest; its weights and
parameters are maximum-likelihood estimates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import betaln, gammaln


def _betabinom_logpmf(b: np.ndarray, n: int, a: float, c: float) -> np.ndarray:
    return gammaln(n + 1) - gammaln(b + 1) - gammaln(n - b + 1) + betaln(b + a, n - b + c) - betaln(a, c)


@dataclass
class CompetitorHazardModel:
    """Mixture of beta distributions for the per-image competitor hazard ``p``.

    Attributes
    ----------
    weights, alpha, beta : ndarray (m,)
        Mixture weights and beta parameters, one entry per component.
    n_observed : int
        Catalogue size the counts were observed at.
    log_likelihood : float
    """

    weights: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    n_observed: int
    log_likelihood: float

    def top1(self, sizes) -> np.ndarray:
        """Expected top-1 at each catalogue size (``B(a, b + N - 1) / B(a, b)`` per component)."""
        sizes = np.atleast_1d(np.asarray(sizes, dtype=np.float64))
        comp = np.exp(betaln(self.alpha[None], self.beta[None] + sizes[:, None] - 1) - betaln(self.alpha, self.beta))
        return comp @ self.weights

    def to_dict(self) -> dict:
        return {"weights": self.weights.tolist(), "alpha": self.alpha.tolist(), "beta": self.beta.tolist(),
                "n_observed": self.n_observed, "log_likelihood": self.log_likelihood}


def fit_hazard_model(beaten, n_skus: int, *, components: int = 2, sample_weight=None,
                     init: CompetitorHazardModel | None = None) -> CompetitorHazardModel:
    """Maximum-likelihood fit of the beta(-mixture) hazard model to per-image beat counts.

    Parameters
    ----------
    beaten : array of int (n,)
        Per image, how many of the other ``n_skus - 1`` SKUs beat (or tie) its own.
    n_skus : int
        Catalogue size the counts were measured at (at least 2).
    components : int
        Beta components (1 or 2).
    sample_weight : array (n,), optional
    init : CompetitorHazardModel, optional
        Start the optimiser from this fit only (used by the bootstrap).
    """
    b = np.asarray(beaten, dtype=np.float64)
    n = int(n_skus) - 1
    if n < 1 or b.size == 0:
        raise ValueError("need at least two SKUs and one image")
    if (b < 0).any() or (b > n).any():
        raise ValueError("beat counts must be in [0, n_skus - 1]")
    w = np.ones_like(b) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    values, inverse = np.unique(b, return_inverse=True)
    vw = np.bincount(inverse, weights=w)

    def unpack(theta):
        if components == 1:
            return np.array([1.0]), np.exp(theta[:1]), np.exp(theta[1:2])
        pi = 1.0 / (1.0 + np.exp(-theta[0]))
        return np.array([pi, 1 - pi]), np.exp(theta[1:3]), np.exp(theta[3:5])

    def nll(theta):
        weights, a, c = unpack(theta)
        lp = np.stack([_betabinom_logpmf(values, n, a[j], c[j]) for j in range(a.size)], axis=1)
        mix = np.log(np.maximum(np.exp(lp) @ weights, 1e-300))
        return -float(vw @ mix)

    mean = (b.mean() + 0.5) / (n + 1)
    starts = []
    if components == 1:
        starts.append(np.log([0.5, 0.5 / mean]))
    else:
        for pi0, lo, hi in ((0.0, 0.3, 3.0), (1.0, 0.2, 5.0), (-1.0, 0.5, 2.0)):
            starts.append(np.array([pi0, np.log(0.5), np.log(0.5), np.log(0.5 / (mean * lo)),
                                    np.log(0.5 / min(mean * hi, 0.9))]))
    if init is not None and init.alpha.size == components:
        w0 = init.weights[0] if components == 2 else None
        lead = [] if w0 is None else [float(np.log(np.clip(w0, 1e-4, 1 - 1e-4) / np.clip(1 - w0, 1e-4, 1)))]
        starts = [np.array(lead + np.log(init.alpha).tolist() + np.log(init.beta).tolist())]
    best = None
    for x0 in starts:
        res = minimize(nll, x0, method="L-BFGS-B", bounds=[(-8, 8)] * x0.size)
        if best is None or res.fun < best.fun:
            best = res
    weights, a, c = unpack(best.x)
    return CompetitorHazardModel(weights=weights, alpha=a, beta=c, n_observed=int(n_skus),
                                 log_likelihood=-float(best.fun))
