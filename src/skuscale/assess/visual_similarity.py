"""Check 2: visual similarity, SKU centroids closer together than a SKU's own photos are spread."""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import numpy as np

from skuscale._base import check_X_y, l2_normalize
from skuscale.assess.base import Check, CheckResult, register, verdict


def centroids_and_spread(X, y) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit-norm SKU centroids and each SKU's within-SKU spread, on L2-normalised embeddings.

    The centroid of SKU ``s`` is the normalised mean of its normalised embeddings.
    Its spread is the mean cosine distance ``1 - cos(x, c_s)`` of its embeddings to
    that centroid, times ``n / (n - 1)`` for ``n`` images: the centroid is fitted on the
    same images, which understates the spread by that factor (to 0 for one image). A
    SKU with one image has no spread (NaN).

    Returns
    -------
    skus : ndarray of str (k,), sorted
    centroids : ndarray (k, d)
    spread : ndarray (k,)
    """
    X, y = check_X_y(X, y)
    y = y.astype(str)
    Z = l2_normalize(X.astype(np.float64))
    skus, idx = np.unique(y, return_inverse=True)
    sums = np.zeros((skus.size, Z.shape[1]))
    np.add.at(sums, idx, Z)
    centroids = l2_normalize(sums)
    counts = np.bincount(idx, minlength=skus.size)
    dist_to_own = 1.0 - np.einsum("ij,ij->i", Z, centroids[idx])
    spread = np.full(skus.size, np.nan)
    multi = counts > 1
    spread[multi] = np.bincount(idx, weights=dist_to_own, minlength=skus.size)[multi] / (counts[multi] - 1)
    return skus, centroids, spread


def close_pairs(skus, centroids, *, bottom_fraction: float) -> tuple[list[tuple[str, str, float]], np.ndarray]:
    """The ``ceil(bottom_fraction * n_pairs)`` closest centroid pairs (cosine distance), closest first.

    Returns the pairs and every pairwise distance (upper triangle, for the histogram).
    """
    k = len(skus)
    iu, ju = np.triu_indices(k, 1)
    dist = 1.0 - np.clip((centroids @ centroids.T)[iu, ju], -1.0, 1.0)
    n_list = min(dist.size, max(1, math.ceil(bottom_fraction * dist.size))) if dist.size else 0
    order = np.argsort(dist, kind="stable")[:n_list]
    return [(str(skus[iu[o]]), str(skus[ju[o]]), float(dist[o])) for o in order], dist


MERGE, SUBCLASS, NONE = "merge", "subclass routing", "none"


def recommendation(a: str, b: str, distance: float, typical_spread: float, merge_factor: float,
                   sku_to_category: Mapping[str, str]) -> tuple[str, str]:
    """What to do about one close pair: ``(kind, text)``, kind one of merge, subclass routing, none.

    Farther apart than the typical within-SKU spread: nothing. Closer, in the same
    category and closer than ``merge_factor`` x the spread: the backbone can hardly
    tell them apart, so merge them into one recognition class (and tell them apart
    by barcode or weight, or photograph the side that differs). Otherwise route by
    subclass: accept at the parent (the shared category, or a parent class of the
    pair) and verify the SKU.
    """
    if distance >= typical_spread:
        return NONE, "none (farther apart than the typical within-SKU spread)"
    cat_a, cat_b = sku_to_category.get(a), sku_to_category.get(b)
    same = bool(cat_a) and cat_a == cat_b
    if same and distance < merge_factor * typical_spread:
        return MERGE, (f"merge into one recognition class within {cat_a} (tell them apart by barcode or weight), "
                       "or photograph the side that differs and retrain")
    parent = f"category {cat_a}" if same else f"a parent class {{{a}, {b}}}"
    return SUBCLASS, f"subclass routing: accept at {parent}, verify the SKU"


def assess_similarity(X, y, *, bottom_fraction: float = 0.05, merge_factor: float = 0.5, spread_factor: float = 1.0,
                      sku_to_category: Mapping[str, str] | None = None, max_listed: int = 12) -> CheckResult:
    """Check 2 on embeddings ``X`` (n, d) and SKU labels ``y``.

    Fails when the closest pair of SKU centroids is closer (cosine distance) than
    ``spread_factor`` x the typical (median) within-SKU spread. The closest
    ``bottom_fraction`` of pairs are listed with a recommendation each (see
    :func:`recommendation`).
    """
    if not 0 < bottom_fraction <= 1:
        raise ValueError(f"bottom_fraction must be in (0, 1], got {bottom_fraction!r}")
    skus, centroids, spread = centroids_and_spread(X, y)
    if skus.size < 2:
        raise ValueError("visual similarity needs at least two SKUs")
    if not np.isfinite(spread).any():
        raise ValueError("visual similarity needs a SKU with at least two images to measure the within-SKU spread")
    typical = float(np.nanmedian(spread)) * spread_factor
    pairs, all_dist = close_pairs(skus, centroids, bottom_fraction=bottom_fraction)
    s2c = dict(sku_to_category or {})
    spread_of = {s: (float(v) if np.isfinite(v) else None) for s, v in zip(skus.tolist(), spread, strict=True)}
    rows: list[dict[str, Any]] = [
        {"sku_a": a, "sku_b": b, "distance": d, "spread_a": spread_of[a], "spread_b": spread_of[b],
         "category_a": s2c.get(a), "category_b": s2c.get(b), "closer_than_spread": d < typical,
         **dict(zip(("action", "recommendation"), recommendation(a, b, d, typical, merge_factor, s2c),
                    strict=True))}
        for a, b, d in pairs
    ]
    closest = rows[0]["distance"]
    status = verdict(closest, typical, "min")
    flagged = [r for r in rows if r["closer_than_spread"]]
    actions = []
    for kind, advice in ((MERGE, "Merge into one recognition class (same category, nearly identical in the "
                          "embedding space; tell them apart by barcode or weight)"),
                         (SUBCLASS, "Route by subclass (accept the category or a parent class, verify the SKU)")):
        chosen = [r for r in flagged if r["action"] == kind]
        if chosen:
            listed = ", ".join(f"{r['sku_a']} / {r['sku_b']}" for r in chosen[:max_listed])
            more = f" and {len(chosen) - max_listed} more pairs (see the table)" if len(chosen) > max_listed else ""
            actions.append(f"{advice}: {listed}{more}")
    check = VisualSimilarityCheck()
    summary = (f"closest SKU pair {rows[0]['sku_a']} / {rows[0]['sku_b']} at cosine distance {closest:.3f}; "
               f"typical within-SKU spread {typical:.3f}; {len(flagged)} pair(s) closer than that")
    details = {
        "typical_within_sku_spread": typical,
        "median_within_sku_spread": float(np.median(spread)),
        "spread_factor": spread_factor,
        "n_pairs": int(all_dist.size),
        "n_listed": len(rows),
        "n_closer_than_spread": len(flagged),
        "pairs": rows,
        "distance_histogram": _histogram(all_dist),
        "within_sku_spread": spread_of,
    }
    return check.result(status, value=closest, threshold=typical, summary=summary, details=details, actions=actions)


def _histogram(values: np.ndarray, bins: int = 40) -> dict[str, list[float]]:
    counts, edges = np.histogram(values, bins=bins, range=(0.0, max(1e-9, float(values.max()))))
    return {"counts": counts.tolist(), "edges": edges.tolist()}


@register
class VisualSimilarityCheck(Check):
    name = "visual_similarity"
    number = 2
    title = "Visual similarity"
    measure = "closest cosine distance between SKU centroids vs the median within-SKU spread"
    direction = "min"
    unit = "cosine distance"
    defaults = MappingProxyType({"bottom_fraction": 0.05, "merge_factor": 0.5, "spread_factor": 1.0})

    def missing_inputs(self, ctx):
        return None if ctx.train_X is not None else "no training embeddings"

    def run(self, ctx, params) -> CheckResult:
        s2c = ctx.model.sku_to_category if ctx.model is not None else {}
        return assess_similarity(ctx.train_X, ctx.train_y, sku_to_category=s2c, **params)

    def figures(self, result):
        from skuscale.assess.plots import histogram_figure

        h = result.details["distance_histogram"]
        fig = histogram_figure(
            h["edges"], h["counts"], xlabel="cosine distance between SKU centroids", ylabel="SKU pairs",
            lines={"typical within-SKU spread": result.details["typical_within_sku_spread"],
                   f"bottom {result.details['n_listed']} pairs": result.details["pairs"][-1]["distance"]},
        )
        return [("Pairwise distances between SKU centroids", fig)]
