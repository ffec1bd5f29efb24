"""``skuscale forecast``: accuracy, automation and calibration against catalogue size.

Steps (see ``docs/forecast.md``):

1. score the evaluation images (``val`` rows, else leave-one-out on ``train``) with
   the whitened nearest-class-mean proxy (:mod:`skuscale.forecast.measure`);
2. measure top-1, automation at the precision target and ECE on nested random
   sub-catalogues from about 10% to 100% of the SKUs (or up to ``fit_max_size``),
   with repeated draws;
3. fit the competitor-hazard model (:mod:`skuscale.forecast.model`) to the beat
   counts of the images in random sub-catalogues of ``fit_max_size`` SKUs and
   extrapolate top-1 to ``N`` SKUs; automation follows the top-1 curve through a
   power link fitted on the measurements, capped at ``top1 / target_precision`` (at
   that precision no more images can be accepted than are right); the band is a
   bootstrap over SKUs;
4. attribute the loss at ``N`` to similarity, imbalance and unknown products
   (similarity and imbalance add up to the top-1 loss).
"""

from __future__ import annotations

import math

import numpy as np

from skuscale.data.embeddings import EmbeddingDataset
from skuscale.forecast.measure import SimilarityTable, fit_scale, measure_subcatalogues, similarity_table
from skuscale.forecast.model import fit_hazard_model

AXES = ("similarity", "imbalance", "unknowns")


def size_grid(k_max: int, *, start_fraction: float = 0.1, steps: int = 8) -> list[int]:
    """Catalogue sizes from about ``start_fraction * k_max`` to ``k_max`` (at least 2), geometric."""
    lo = max(2, round(start_fraction * k_max))
    if k_max <= lo:
        return [int(k_max)]
    grid = np.unique(np.round(np.geomspace(lo, k_max, steps)).astype(int))
    return [int(k) for k in grid]


def pooled_beat_counts(table: SimilarityTable, size: int, *, draws: int, rng: np.random.Generator):
    """Beat counts of every image in ``draws`` random sub-catalogues of ``size`` SKUs, and each image's SKU."""
    if size >= table.n_skus:
        return table.beaten_by(), table.skus[table.y]
    counts, owners = [], []
    for _ in range(draws):
        sub = table.subset(rng.choice(table.n_skus, size=size, replace=False))
        counts.append(sub.beaten_by())
        owners.append(sub.skus[sub.y])
    return np.concatenate(counts), np.concatenate(owners)


def _bootstrap_top1(beaten, owners, size, grid, *, n_boot, rng, components, init):
    skus, inv = np.unique(owners, return_inverse=True)
    members = [np.flatnonzero(inv == i) for i in range(skus.size)]
    curves = []
    for _ in range(n_boot):
        pick = rng.integers(0, skus.size, skus.size)
        rows = np.concatenate([members[i] for i in pick])
        curves.append(fit_hazard_model(beaten[rows], size, components=components, init=init).top1(grid))
    return np.array(curves)


def _power_link(top1_measured, y_measured, floor=1e-4):
    """Least-squares ``log y = log A + g log top1``; returns (A, g)."""
    t = np.log(np.clip(top1_measured, floor, 1.0))
    v = np.log(np.clip(y_measured, floor, 1.0))
    if np.ptp(t) < 1e-9:
        return float(np.exp(v.mean())), 0.0
    g, loga = np.polyfit(t, v, 1)
    return float(np.exp(loga)), float(max(g, 0.0))


def automation_from_top1(top1, A: float, g: float, target_precision: float) -> np.ndarray:
    """``A * top1**g`` through the power link, capped at ``top1 / target_precision``.

    An accepted set with precision ``target_precision`` holds ``target_precision *
    automation`` correct images out of the ``top1`` that are correct at all, so
    automation cannot exceed ``top1 / target_precision``; the empirical link knows
    nothing of that and can cross the bound when it extrapolates.
    """
    top1 = np.asarray(top1, dtype=np.float64)
    return np.clip(np.minimum(A * top1 ** g, top1 / target_precision), 0.0, 1.0)


def attribute_loss(top1: float, top1_well_sampled: float) -> tuple[float, float]:
    """``(similarity, imbalance)`` loss of a top-1 forecast; they add up to ``1 - top1``.

    ``imbalance`` is how much lower the forecast for all images is than for the SKUs with
    more training images than the median; ``similarity`` is the rest of the loss. When
    the well-sampled SKUs forecast lower than all images (no imbalance penalty), the
    whole loss is similarity: no component can exceed the total.
    """
    total = max(1.0 - top1, 0.0)
    imbalance = min(max(top1_well_sampled - top1, 0.0), total)
    return total - imbalance, imbalance


def forecast(
    data: EmbeddingDataset,
    to: int,
    *,
    fit_max_size: int | None = None,
    repeats: int = 5,
    fit_draws: int = 40,
    target_precision: float = 0.99,
    unknown_share: float | None = None,
    n_boot: int = 30,
    components: int = 2,
    shrinkage: float | None = 0.1,
    seed: int = 0,
) -> dict:
    """Forecast top-1, automation and ECE at ``to`` SKUs from ``data``'s training rows.

    Parameters
    ----------
    data : EmbeddingDataset
        ``train`` rows fit the proxy; ``val`` rows, when present, are the images it
        is scored on (else leave-one-out on ``train``).
    to : int
        Catalogue size to forecast.
    fit_max_size : int, optional
        Largest sub-catalogue the model may be fitted on (default: all SKUs).
    repeats : int
        Draws of the nested sub-catalogue sequence.
    fit_draws : int
        Random sub-catalogues of ``fit_max_size`` SKUs whose beat counts are pooled.
    unknown_share : float, optional
        Expected share of images of products outside the catalogue at deployment;
        default: what a simulated file's parameters imply, else 0.
    n_boot : int
        Bootstrap fits (over SKUs) for the uncertainty band (10th-90th percentile).

    Returns
    -------
    dict
        JSON-ready: ``simulated, n_skus, to, fit_max_size, proxy, statistics,
        measured (rows), measured_mean, curve {size, top1, top1_lo, top1_hi,
        automation, ...}, at_target {...}, model, attribution, dominant_axis``.
    """
    from skuscale.simulate.fit import catalogue_statistics

    if to < 2:
        raise ValueError("--to must be at least 2 SKUs")
    if not 0 < target_precision <= 1:
        raise ValueError(f"target_precision must be in (0, 1], got {target_precision!r}")
    rng = np.random.default_rng(seed)
    train = data.part("train") if data.split is not None else data
    val = data.part("val") if data.split is not None else None
    if val is not None and len(val) == 0:
        val = None
    table = similarity_table(train.X, train.sku, None if val is None else val.X,
                             None if val is None else val.sku, shrinkage=shrinkage)
    K = table.n_skus
    if K < 3:
        raise ValueError("the forecast needs at least 3 SKUs with evaluation images")
    fit_size = K if fit_max_size is None else int(min(max(fit_max_size, 3), K))
    sizes = size_grid(fit_size)
    scale = fit_scale(table if fit_size >= K else table.subset(rng.choice(K, fit_size, replace=False)))
    rows = measure_subcatalogues(table, sizes, repeats=repeats, target_precision=target_precision, scale=scale,
                                 seed=seed)
    measured_mean = {}
    for k in sizes:
        r = [x for x in rows if x["size"] == k]
        measured_mean[k] = {m: float(np.nanmean([x[m] for x in r])) for m in ("top1", "automation", "ece")}

    beaten, owners = pooled_beat_counts(table, fit_size, draws=fit_draws, rng=rng)
    model = fit_hazard_model(beaten, fit_size, components=components)
    grid = sorted(set(size_grid(max(to, K), start_fraction=2 / max(to, K), steps=30)) | set(sizes) | {to, K})
    top1 = model.top1(grid)
    boot = _bootstrap_top1(beaten, owners, fit_size, grid, n_boot=n_boot, rng=rng, components=components,
                           init=model)
    lo, hi = np.percentile(boot, [10, 90], axis=0)

    m_sizes = np.array(sizes)
    m_top1 = model.top1(m_sizes)
    A, g = _power_link(m_top1, np.array([measured_mean[k]["automation"] for k in sizes]))
    automation = automation_from_top1(top1, A, g, target_precision)
    ece_fit = np.polyfit(np.log(m_sizes), [measured_mean[k]["ece"] for k in sizes], 1) if len(sizes) > 1 \
        else np.array([0.0, measured_mean[sizes[0]]["ece"]])
    ece = np.clip(np.polyval(ece_fit, np.log(grid)), 0, 1)

    # Imbalance: the loss if every SKU did as well as those with more training images than the median.
    counts_of = dict(zip(table.skus.tolist(), table.train_counts.tolist(), strict=True))
    owner_counts = np.array([counts_of[s] for s in owners])
    median = float(np.median(table.train_counts))
    head = owner_counts > median
    tail = ~head
    top1_to = float(model.top1([to])[0])
    top1_head_to = top1_to
    if tail.any() and head.any() and np.unique(table.train_counts).size > 1:
        top1_head_to = float(fit_hazard_model(beaten[head], fit_size, components=components).top1([to])[0])
    similarity_loss, imbalance_loss = attribute_loss(top1_to, top1_head_to)
    if unknown_share is None:
        params = data.meta.get("params", {}) if data.simulated else {}
        rate, months = params.get("new_sku_monthly_rate", 0.0), params.get("months", 0.0)
        n_new = params.get("n_skus", 0) * rate * months
        unknown_share = n_new / (params.get("n_skus", 0) + n_new) if n_new else 0.0
    losses = {
        "similarity": similarity_loss,
        "imbalance": imbalance_loss,
        "unknowns": float(unknown_share),
    }
    stats = catalogue_statistics(train.X, train.sku)
    nearest = stats["nearest_similarity"]
    at = grid.index(to)
    return {
        "simulated": data.simulated,
        "source": data.source,
        "n_skus": K,
        "n_eval_images": int(table.S.shape[0]),
        "evaluation": "leave-one-out on train" if table.leave_one_out else "val rows",
        "to": int(to),
        "fit_max_size": fit_size,
        "target_precision": target_precision,
        "proxy": {"classifier": "whitened cosine nearest-class-mean" if shrinkage else "cosine nearest-class-mean",
                  "shrinkage": shrinkage, "softmax_scale": scale},
        "statistics": {
            "within_spread": stats["within_spread"],
            "cos_to_centroid": stats["cos_to_centroid"],
            "background_similarity": stats["background_similarity"],
            "nearest_centroid_similarity_quantiles": {
                q: float(np.quantile(nearest, float(q))) for q in ("0.1", "0.5", "0.9")},
            "near_duplicate_share": float((nearest > 0.9).mean()),
            "zipf_exponent": stats["zipf_exponent"],
            "train_count_quantiles": {q: float(np.quantile(stats["counts"], float(q))) for q in ("0", "0.5", "1")},
            "dim_participation": stats["dim_participation"],
        },
        "measured": rows,
        "measured_mean": [{"size": k, **v} for k, v in measured_mean.items()],
        "model": {**model.to_dict(), "automation_link": {"A": A, "gamma": g, "cap": "top1 / target_precision"},
                  "ece_loglinear": [float(c) for c in ece_fit]},
        "curve": {
            "size": [int(k) for k in grid],
            "top1": top1.tolist(), "top1_lo": lo.tolist(), "top1_hi": hi.tolist(),
            "automation": automation.tolist(),
            "automation_lo": automation_from_top1(lo, A, g, target_precision).tolist(),
            "automation_hi": automation_from_top1(hi, A, g, target_precision).tolist(),
            "ece": ece.tolist(),
        },
        "at_target": {
            "top1": top1_to, "top1_lo": float(lo[at]), "top1_hi": float(hi[at]),
            "automation": float(automation[at]), "ece": float(ece[at]),
            "top1_with_unknowns": top1_to * (1 - unknown_share),
        },
        "attribution": {"loss": losses, "unknown_share": float(unknown_share), "median_train_count": median,
                        "top1_well_sampled": top1_head_to},
        "dominant_axis": max(AXES, key=lambda a: losses[a]),
        "extrapolation_factor": float(to / fit_size),
        "warning": None if math.isfinite(top1_to) else "model did not converge",
    }


def pilot_subset(data: EmbeddingDataset, n_skus: int, *, seed: int = 0) -> EmbeddingDataset:
    """The rows of ``n_skus`` SKUs drawn at random from ``data``'s training SKUs (a pilot catalogue)."""
    train_skus = np.unique((data.part("train") if data.split is not None else data).sku)
    if n_skus >= train_skus.size:
        return data
    keep = np.random.default_rng(seed).choice(train_skus, size=n_skus, replace=False)
    return data.select(np.isin(data.sku, keep))
