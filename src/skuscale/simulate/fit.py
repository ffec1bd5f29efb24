"""Estimate the simulator's parameters from a real (or simulated) embedded dataset.

The estimators invert the generative model of :mod:`skuscale.simulate.catalogue`:

* **within-SKU spread.** For ``n`` unit vectors around a centroid at expected
  cosine ``c``, the squared length of their mean is ``c**2 + (1 - c**2)/n`` in
  expectation, so ``c**2 = (R**2 - 1/n) / (1 - 1/n)`` (the resultant-length
  estimator of directional statistics, Mardia & Jupp, "Directional Statistics",
  2000, ch. 10) and ``within_spread = sqrt(1/c**2 - 1)``;
* **centroid similarities.** The mean vectors ``m_i`` satisfy
  ``E[m_i . m_j] = c_i c_j cos(mu_i, mu_j)``, so dividing the dot products of the
  observed means by ``c_i c_j`` removes the sampling noise; the family and
  background similarities are the means of that matrix inside and across
  families (families = categories when the data has them, else groups of SKUs
  linked above ``link_similarity``);
* **Zipf exponent.** Least squares of ``log count`` on ``log rank`` over the SKUs
  whose count is strictly between the floor and the ceiling;
* **dimension.** The participation ratio ``(sum l)**2 / sum l**2`` of the
  eigenvalues of the pooled within-SKU covariance (Gao et al., "A theory of
  multineuronal dimensionality", 2017), the effective number of directions
  the images vary in.
"""

from __future__ import annotations

import numpy as np

from skuscale._base import l2_normalize
from skuscale.data.embeddings import EmbeddingDataset
from skuscale.simulate.catalogue import SimulatorParams


def estimate_zipf_exponent(counts) -> float:
    """Zipf exponent of a count vector (0 for a balanced one); see the module docstring."""
    counts = np.sort(np.asarray(counts, dtype=np.float64))[::-1]
    if counts.size < 3 or counts[0] <= 0:
        return 0.0
    rank = np.arange(1, counts.size + 1, dtype=np.float64)
    inside = (counts > counts.min()) & (counts < counts.max())
    # Keep the top SKU as the anchor of the law: the ceiling is its count.
    inside[0] = True
    if inside.sum() < 3:
        return 0.0
    slope = np.polyfit(np.log(rank[inside]), np.log(counts[inside]), 1)[0]
    return float(max(-slope, 0.0))


def participation_ratio(eigenvalues) -> float:
    lam = np.clip(np.asarray(eigenvalues, dtype=np.float64), 0, None)
    return float(lam.sum() ** 2 / (lam ** 2).sum()) if lam.sum() > 0 else 0.0


def _group_by_links(S: np.ndarray, threshold: float) -> np.ndarray:
    """Connected components of the graph ``S > threshold`` (union-find)."""
    parent = np.arange(S.shape[0])

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(threshold < S, 1)), strict=True):
        ri, rj = find(int(i)), find(int(j))
        if ri != rj:
            parent[ri] = rj
    return np.array([find(i) for i in range(S.shape[0])])


def catalogue_statistics(X, y, *, families=None, link_similarity: float = 0.9) -> dict:
    """The statistics the simulator and the forecast use, for embeddings ``X`` and SKUs ``y``.

    Parameters
    ----------
    X : array (n, d)
    y : array (n,)
    families : mapping SKU -> family label, optional
        E.g. the category. Without it, SKUs whose noise-corrected centroid cosine
        exceeds ``link_similarity`` are linked into families.

    Returns
    -------
    dict
        ``skus, counts, cos_to_centroid, within_spread, centroid_similarity (k, k),
        family (k,), family_similarity, background_similarity, family_size,
        nearest_similarity (k,), zipf_exponent, dim_participation``.
    """
    X = l2_normalize(np.asarray(X, dtype=np.float64))
    y = np.asarray(y).astype(str)
    skus, idx, counts = np.unique(y, return_inverse=True, return_counts=True)
    if skus.size < 2:
        raise ValueError("need at least two SKUs")
    sums = np.zeros((skus.size, X.shape[1]))
    np.add.at(sums, idx, X)
    means = sums / counts[:, None]
    r2 = (means ** 2).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        c2 = np.where(counts > 1, (r2 - 1.0 / counts) / (1.0 - 1.0 / counts), np.nan)
    pooled_c2 = float(np.clip(np.nansum(c2 * (counts - 1)) / max(np.sum((counts - 1)[~np.isnan(c2)]), 1), 1e-6, 1.0))
    c2 = np.where(np.isnan(c2), pooled_c2, np.clip(c2, 1e-6, 1.0))
    c = np.sqrt(c2)
    S = (means @ means.T) / np.outer(c, c)
    np.fill_diagonal(S, 1.0)
    S = np.clip(S, -1.0, 1.0)
    if families is not None:
        labels = np.array([str(families.get(s, s)) for s in skus])
        _, family = np.unique(labels, return_inverse=True)
    else:
        family = _group_by_links(S, link_similarity)
    same = family[:, None] == family[None, :]
    off = ~np.eye(skus.size, dtype=bool)
    fam_pairs, bg_pairs = same & off, ~same
    resid = X - (sums / np.linalg.norm(sums, axis=1, keepdims=True))[idx] * np.sqrt(pooled_c2)
    # (sum l)^2 / sum l^2 = tr(C)^2 / ||C||_F^2: no eigendecomposition needed.
    gram = resid @ resid.T if resid.shape[0] < resid.shape[1] else resid.T @ resid
    nearest = np.where(off, S, -np.inf).max(axis=1)
    _, fam_sizes = np.unique(family, return_counts=True)
    return {
        "skus": skus.tolist(),
        "counts": counts,
        "cos_to_centroid": float(np.sqrt(pooled_c2)),
        "within_spread": float(np.sqrt(max(1.0 / pooled_c2 - 1.0, 0.0))),
        "centroid_similarity": S,
        "family": family,
        "family_similarity": float(S[fam_pairs].mean()) if fam_pairs.any() else None,
        "background_similarity": float(S[bg_pairs].mean()) if bg_pairs.any() else None,
        "family_size": float(fam_sizes.mean()),
        "nearest_similarity": nearest,
        "zipf_exponent": estimate_zipf_exponent(counts),
        "dim_participation": float(np.trace(gram) ** 2 / max((gram ** 2).sum(), 1e-300)),
    }


def data_families(data: EmbeddingDataset, families: str = "auto") -> dict[str, str] | None:
    """SKU -> family label: ``"meta"`` (a simulator's own record), ``"category"``, ``"links"`` (None)
    or ``"auto"`` (meta, else category, else links)."""
    if families not in ("auto", "meta", "category", "links"):
        raise ValueError(f"families must be auto, meta, category or links, got {families!r}")
    if families in ("auto", "meta") and "family" in data.meta:
        fam = data.meta["family"]
        if isinstance(fam, dict):
            return {str(s): str(f) for s, f in fam.items()}
    if families in ("auto", "category"):
        return data.categories() or None
    return None


def _proxy_val_top1(data: EmbeddingDataset) -> float:
    from skuscale.forecast.measure import exact_top1_curve, similarity_table

    train, val = data.part("train"), data.part("val")
    table = similarity_table(train.X, train.sku, val.X, val.sku)
    return float(exact_top1_curve(table.beaten_by(), table.n_skus, [table.n_skus])[0])


def match_val_top1(params: SimulatorParams, target: float, *, seeds: int = 3, steps: int = 14) -> SimulatorParams:
    """``params`` with ``within_spread`` set (by bisection) so the proxy's top-1 on ``val`` equals ``target``.

    Real validation photos come from other shooting sessions and real image noise
    is anisotropic, so a simulator with the training split's isotropic spread is far
    too easy; the spread is the knob that absorbs both. The proxy is the forecast's
    whitened nearest-class-mean classifier (:mod:`skuscale.forecast.measure`).
    """
    from skuscale.simulate.catalogue import simulate_catalogue

    def top1(spread: float) -> float:
        return float(np.mean([_proxy_val_top1(simulate_catalogue(params.replace(within_spread=spread, seed=s)))
                              for s in range(seeds)]))

    lo, hi = 0.0, max(4.0 * params.within_spread, 1.0)
    while top1(hi) > target and hi < 64:
        hi *= 2
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if top1(mid) > target else (lo, mid)
    return params.replace(within_spread=0.5 * (lo + hi))


def fit_simulator_params(data: EmbeddingDataset, *, split: str = "train", families: str = "auto",
                         match_accuracy: bool = False, **overrides) -> SimulatorParams:
    """Simulator parameters whose statistics match ``data`` (its ``split`` rows).

    The dimension is the participation ratio of the within-SKU scatter (at least
    8); counts, families, similarities and spread are estimated as in the module
    docstring (``families`` as in :func:`data_families`). With ``match_accuracy``
    and ``val`` rows, the spread is then set so the simulated catalogue (at the
    data's size) is as hard for the forecast's proxy as the real one
    (:func:`match_val_top1`). ``overrides`` (e.g. ``n_skus=2000``) replace fitted
    values last.
    """
    part = data.part(split) if data.split is not None else data
    cats = part.categories()
    stats = catalogue_statistics(part.X, part.sku, families=data_families(data, families))
    val_counts = np.unique(data.part("val").sku, return_counts=True)[1] if data.split is not None else []
    counts = stats["counts"]
    fam = stats["family_similarity"]
    bg = max(stats["background_similarity"] or 0.0, 0.0)
    fam = bg if fam is None else min(max(fam, bg), 0.99)
    n_skus = len(stats["skus"])
    params = {
        "n_skus": n_skus,
        "dim": int(max(8, round(stats["dim_participation"]))),
        "n_categories": max(1, len(set(cats.values()))) if cats else max(1, n_skus // 20),
        "family_size": max(1.0, stats["family_size"]),
        "family_similarity": float(fam),
        "background_similarity": float(bg),
        "within_spread": stats["within_spread"],
        "zipf_exponent": stats["zipf_exponent"],
        "max_train": int(counts.max()),
        "min_train": int(counts.min()),
        "val_per_sku": int(np.median(val_counts)) if len(val_counts) else 0,
    }
    fitted = SimulatorParams(**params)
    if match_accuracy and data.split is not None and len(data.part("val")):
        fitted = match_val_top1(fitted.replace(val_per_sku=max(fitted.val_per_sku, 1)), _proxy_val_top1(data))
    return fitted.replace(**overrides)
