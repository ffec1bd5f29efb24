"""Per-SKU auto-accept thresholds with hierarchical backoff.

Two rules are available (``method`` of :func:`fit_thresholds`):

* ``"shrinkage"`` (default): a hierarchical estimate of the precision of the
  accepted set, with the calibrated confidence as the prior. For a threshold
  ``t`` and a group with ``n_t`` rows at or above ``t`` of which ``c_t`` are
  correct::

      p_global(t) = (c_t + k * m_t) / (n_t + k)        m_t = mean confidence of all rows >= t
      p_cat(t)    = (c_t + k * p_global(t)) / (n_t + k)
      p_sku(t)    = (c_t + k * p_cat(t)) / (n_t + k)

  (``k = prior_strength``, each line with that group's own counts). A group's
  threshold is the smallest observed confidence ``t`` whose Beta posterior,
  ``Beta(c_t + k * prior, n_t - c_t + k * (1 - prior))``, has its lower
  ``1 - confidence_level`` quantile at or above the target (at
  ``confidence_level=0.5``, the posterior mean ``p(t)`` itself). Selecting on a
  lower credible bound rather than the mean keeps the search over many
  thresholds and SKUs from rewarding lucky streaks.
  Temperature-scaled confidences are the prior because they are already an
  estimate of precision; a SKU's own held-out errors pull its estimate down and
  its threshold up, in proportion to how much evidence it has. A group with
  fewer than ``min_support`` rows backs off to its parent's threshold (SKU ->
  category -> global) unless its own estimate demands a stricter one. This is
  empirical-Bayes shrinkage in the sense of Efron & Morris (1975); it gives
  useful thresholds on a few hundred held-out rows, where certification needs
  more than 160 error-free rows per group.
* ``"clopper_pearson"``: the certification rule below, with a statistical
  margin: sound but very conservative on small data.

The Clopper-Pearson rule
------------------------

A prediction of SKU ``k`` is auto-accepted when its calibrated confidence is at
least ``threshold_for(k)``. Thresholds are fitted on held-out predictions so that
the *precision of the accepted predictions* of each SKU meets a target (default
0.99), with a statistical margin for small counts.

The rule
--------
Each *group* of held-out rows (all rows predicted as one SKU, all rows predicted
within one category, or all rows) is summarised, for every observed confidence
``t``, by ``n_t`` (rows with confidence ``>= t``) and ``c_t`` (correct ones among
them). With the one-sided Clopper-Pearson bounds at ``confidence_level``:

* ``t`` is **certified** when ``LB(c_t, n_t) >= target``;
* ``t`` is **refuted** when ``UB(c_t, n_t) < target``, i.e. the group's own
  rows show, with that confidence, that accepting at ``t`` misses the target.

Levels are fitted top-down (global, then category, then SKU):

1. A group with at least ``min_support`` rows that certifies some threshold uses
   the smallest certified one (source: its own level).
2. Otherwise it *backs off* to its parent's threshold ``p`` (SKU -> its category
   -> global; a SKU without a category, or whose category is not known, goes
   straight to global). The group's own rows still act as a veto: the threshold
   is raised to the smallest candidate ``t >= p`` (``p`` itself or one of the
   group's confidences above ``p``) that is not refuted. If ``p`` itself is not
   refuted the source is the parent's; if it had to be raised the source is the
   group's own level; if every candidate is refuted (the group's most confident
   rows are wrong), the group gets :data:`NEVER_ACCEPT` from its own evidence.
3. The global group has no parent: without certification it gets
   :data:`NEVER_ACCEPT`.

So a SKU whose own predictions show errors is never given a looser threshold than
its own rows allow: a well-supported SKU that cannot reach the target because of
its errors at high confidence is never accepted, and never inherits a looser
category threshold. A SKU with too little evidence to certify anything, but
nothing contradicting its parent, inherits the parent's threshold.

With the defaults (``target_precision=0.99``, ``confidence_level=0.8``) a group
needs at least 161 rows, all correct, above a threshold to certify it
(``0.2 ** (1 / 161) >= 0.99``), and a single error among fewer than 23 rows
refutes it (``0.8 ** (1 / 22) < 0.99``). Most SKUs therefore inherit their
category's threshold, raised where their own errors demand it.

Choosing the smallest certified threshold among many candidates is not corrected
for multiple comparisons (Geifman & El-Yaniv, 2017, use a union bound over a
binary search); ``confidence_level`` is a margin, not a formal guarantee.

References
----------
.. [1] C. J. Clopper and E. S. Pearson, "The use of confidence or fiducial limits
   illustrated in the case of the binomial", Biometrika 26(4), 1934.
.. [2] Y. Geifman and R. El-Yaniv, "Selective Classification for Deep Neural
   Networks", NeurIPS 2017.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "NEVER_ACCEPT",
    "SOURCES",
    "ThresholdTable",
    "fit_thresholds",
    "precision_lower_bound",
    "precision_upper_bound",
]

#: Threshold meaning "never auto-accept": above any probability, and JSON-able.
NEVER_ACCEPT = 1.01

# Most candidate thresholds the shrinkage rule evaluates per group.
_MAX_GRID = 1024

#: Threshold-fitting rules.
METHODS = ("shrinkage", "clopper_pearson")

#: Levels a threshold can come from.
SOURCES = ("sku", "category", "global")

# Tolerated overshoot of a probability above 1 (float32 rounding); such values are clipped.
_PROB_TOL = 1e-6


def _check_level(confidence_level: float) -> float:
    level = float(confidence_level)
    if not 0.5 <= level < 1.0:
        raise ValueError(f"confidence_level must be in [0.5, 1), got {confidence_level!r}")
    return level


def precision_lower_bound(n_correct, n, confidence_level: float = 0.8) -> np.ndarray:
    """One-sided Clopper-Pearson lower bound on a precision ``n_correct / n``.

    ``P(precision >= bound) >= confidence_level``; 0 when ``n_correct == 0``.
    Vectorised over ``n_correct`` and ``n`` (``n >= 1``).
    """
    from scipy.special import betaincinv

    level = _check_level(confidence_level)
    c = np.asarray(n_correct, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    if (n < 1).any() or (c < 0).any() or (c > n).any():
        raise ValueError("need 0 <= n_correct <= n and n >= 1")
    safe_c = np.where(c > 0, c, 1.0)
    lb = betaincinv(safe_c, n - c + 1.0, 1.0 - level)
    return np.where(c > 0, lb, 0.0)


def precision_upper_bound(n_correct, n, confidence_level: float = 0.8) -> np.ndarray:
    """One-sided Clopper-Pearson upper bound on a precision ``n_correct / n``.

    ``P(precision <= bound) >= confidence_level``; 1 when ``n_correct == n``.
    """
    from scipy.special import betaincinv

    level = _check_level(confidence_level)
    c = np.asarray(n_correct, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    if (n < 1).any() or (c < 0).any() or (c > n).any():
        raise ValueError("need 0 <= n_correct <= n and n >= 1")
    safe_b = np.where(c < n, n - c, 1.0)
    ub = betaincinv(c + 1.0, safe_b, level)
    return np.where(c < n, ub, 1.0)


@dataclass
class ThresholdTable:
    """Fitted auto-accept thresholds, JSON round-trippable.

    Attributes
    ----------
    per_sku : dict[str, float]
        Threshold of every catalogue entry passed as ``skus`` to
        :func:`fit_thresholds`; :data:`NEVER_ACCEPT` means never auto-accept.
    source : dict[str, str]
        Level each SKU's threshold came from: ``"sku"``, ``"category"`` or
        ``"global"`` (see the module docstring for the rule).
    per_category : dict[str, float]
        Threshold of each category named in ``sku_to_category``.
    category_source : dict[str, str]
        ``"category"`` or ``"global"`` for each category.
    global_ : float
        Threshold fitted on all rows; used for unknown SKUs.
    support : dict[str, int]
        Held-out rows predicted as each SKU.
    target_precision, min_support, confidence_level
        The fitting parameters.
    """

    per_sku: dict[str, float]
    source: dict[str, str]
    per_category: dict[str, float]
    global_: float
    target_precision: float
    min_support: int
    confidence_level: float = 0.8
    method: str = "shrinkage"
    prior_strength: float = 20.0
    category_source: dict[str, str] = field(default_factory=dict)
    support: dict[str, int] = field(default_factory=dict)

    def threshold_for(self, sku: str) -> float:
        """Threshold of ``sku``; an SKU not in the table gets the global threshold."""
        return float(self.per_sku.get(sku, self.global_))

    def thresholds_for(self, skus: Iterable[str]) -> np.ndarray:
        """Vector of :meth:`threshold_for` over ``skus`` (float64)."""
        return np.array([self.threshold_for(s) for s in skus], dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (all thresholds are finite floats)."""
        return {
            "per_sku": {str(k): float(v) for k, v in self.per_sku.items()},
            "source": {str(k): str(v) for k, v in self.source.items()},
            "per_category": {str(k): float(v) for k, v in self.per_category.items()},
            "category_source": {str(k): str(v) for k, v in self.category_source.items()},
            "global": float(self.global_),
            "support": {str(k): int(v) for k, v in self.support.items()},
            "target_precision": float(self.target_precision),
            "min_support": int(self.min_support),
            "confidence_level": float(self.confidence_level),
            "method": self.method,
            "prior_strength": float(self.prior_strength),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ThresholdTable:
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(
                per_sku={str(k): float(v) for k, v in d["per_sku"].items()},
                source={str(k): str(v) for k, v in d["source"].items()},
                per_category={str(k): float(v) for k, v in d["per_category"].items()},
                category_source={str(k): str(v) for k, v in d.get("category_source", {}).items()},
                global_=float(d["global"]),
                support={str(k): int(v) for k, v in d.get("support", {}).items()},
                target_precision=float(d["target_precision"]),
                min_support=int(d["min_support"]),
                confidence_level=float(d.get("confidence_level", 0.8)),
                method=str(d.get("method", "clopper_pearson")),
                prior_strength=float(d.get("prior_strength", 20.0)),
            )
        except (KeyError, AttributeError, TypeError) as exc:
            raise ValueError(f"not a ThresholdTable dict: {exc}") from exc


class _Group:
    """Cumulative counts of one group of rows at each distinct confidence."""

    def __init__(self, conf: np.ndarray, correct: np.ndarray):
        order = np.argsort(-conf, kind="stable")
        c_sorted = conf[order]
        hits = np.cumsum(correct[order])
        # last position of each run of equal confidences (descending order)
        last = np.flatnonzero(np.append(c_sorted[1:] != c_sorted[:-1], True))
        self.size = int(conf.shape[0])
        self.t = c_sorted[last]  # distinct confidences, descending
        self.n = last + 1  # rows with confidence >= t
        self.c = hits[last]  # correct rows with confidence >= t

    def certified(self, target: float, level: float, min_support: int) -> float | None:
        """Smallest certified threshold, or None (also when support is too low)."""
        if self.size < min_support or self.size == 0:
            return None
        ok = np.flatnonzero(precision_lower_bound(self.c, self.n, level) >= target)
        return float(self.t[ok[-1]]) if ok.size else None

    def veto(self, parent: float, target: float, level: float) -> tuple[float, bool]:
        """Smallest non-refuted threshold ``>= parent``; returns (threshold, raised)."""
        cand = np.flatnonzero(self.t >= parent)  # descending t; the last is the loosest
        if cand.size == 0:
            return parent, False  # no own rows would be accepted at the parent threshold
        ub = precision_upper_bound(self.c[cand], self.n[cand], level)
        ok = np.flatnonzero(ub >= target)
        if ok.size == 0:
            return NEVER_ACCEPT, True
        i = ok[-1]
        if i == cand.size - 1:
            return parent, False
        return float(self.t[cand[i]]), True


def _split_groups(
    conf: np.ndarray, corr: np.ndarray, label: np.ndarray, n_labels: int
) -> list[_Group | None]:
    """One :class:`_Group` per label value ``0..n_labels-1`` (None when it has no rows)."""
    order = np.argsort(label, kind="stable")
    bounds = np.searchsorted(label[order], np.arange(n_labels + 1))
    out: list[_Group | None] = []
    for j in range(n_labels):
        idx = order[bounds[j] : bounds[j + 1]]
        out.append(_Group(conf[idx], corr[idx]) if idx.size else None)
    return out


def _resolve(
    group: _Group | None,
    parent: float | None,
    parent_source: str,
    own_source: str,
    target: float,
    level: float,
    min_support: int,
) -> tuple[float, str]:
    if group is not None:
        cert = group.certified(target, level, min_support)
        if cert is not None:
            return cert, own_source
    if parent is None:
        return NEVER_ACCEPT, own_source
    if group is None:
        return parent, parent_source
    thr, raised = group.veto(parent, target, level)
    return thr, (own_source if raised else parent_source)


def fit_thresholds(
    confidence,
    predicted,
    correct,
    *,
    skus: Iterable[str],
    sku_to_category: Mapping[str, str] | None = None,
    target_precision: float = 0.99,
    min_support: int = 20,
    confidence_level: float = 0.8,
    method: str = "shrinkage",
    prior_strength: float = 20.0,
    sample_weight=None,
) -> ThresholdTable:
    """Fit per-SKU auto-accept thresholds on held-out predictions.

    Parameters
    ----------
    confidence : array-like of float, shape (n,)
        Calibrated top-1 probability of each held-out prediction, in ``[0, 1]``.
    predicted : array-like of str, shape (n,)
        Predicted SKU of each row; every value must be in ``skus``.
    correct : array-like of bool, shape (n,)
        Whether the prediction was right (rows of unknown products: False).
    skus : iterable of str
        The catalogue; every entry gets a threshold, even with no predictions. With
        no rows at all (``n == 0``, e.g. no row reaches a category test) every
        threshold is "never accept".
    sku_to_category : mapping, optional
        SKU -> category, possibly partial or empty. Empty means SKUs back off
        straight to the global threshold (use this for category-level routing,
        with ``predicted`` the predicted category and ``skus`` the categories).
    target_precision : float
        Required precision of the accepted predictions, in ``(0, 1)``.
    min_support : int
        Minimum rows a SKU / category group needs to use its own certified
        threshold; smaller groups back off (their rows can still veto).
    confidence_level : float
        One-sided confidence of the Clopper-Pearson bounds, in ``[0.5, 1)``.
    method : {"shrinkage", "clopper_pearson"}
        The rule (see the module docstring).
    prior_strength : float
        Pseudo-count ``k`` of the shrinkage rule.
    sample_weight : array-like of float, shape (n,), optional
        Weight of each row in the counts (``method="shrinkage"`` only), e.g. to give
        simulated unknown products the share of traffic they are expected to have.
        Group sizes compared with ``min_support`` are weighted too.

    Returns
    -------
    ThresholdTable

    Notes
    -----
    Candidate thresholds are the observed confidences; a row is accepted when
    ``confidence >= threshold``. The certification / backoff / veto rule is
    described in the module docstring.
    """
    conf = np.asarray(confidence)
    if conf.ndim != 1:
        raise ValueError(f"confidence must be 1-D, got shape {conf.shape}")
    if not np.issubdtype(conf.dtype, np.number) or conf.dtype == bool:
        raise ValueError(f"confidence must be numeric, got dtype {conf.dtype}")
    conf = conf.astype(np.float64, copy=False)
    n = conf.shape[0]
    if not np.isfinite(conf).all() or (n and (conf.min() < 0.0 or conf.max() > 1.0 + _PROB_TOL)):
        raise ValueError("confidence must be finite and in [0, 1]")
    conf = np.minimum(conf, 1.0)  # float32 sums of probabilities may overshoot 1 by an ulp
    pred = np.asarray(predicted)
    if pred.shape != (n,):
        raise ValueError(f"predicted must be 1-D with {n} entries, got shape {pred.shape}")
    corr = np.asarray(correct)
    if corr.shape != (n,):
        raise ValueError(f"correct must be 1-D with {n} entries, got shape {corr.shape}")
    if corr.dtype != bool:
        if not np.issubdtype(corr.dtype, np.number) or not np.isin(corr, (0, 1)).all():
            raise ValueError(f"correct must be boolean (or 0/1), got dtype {corr.dtype}")
        corr = corr.astype(bool)
    if isinstance(skus, str):
        raise ValueError("skus must be a list of SKU names, not a single string")
    sku_list = [str(s) for s in skus]
    if len(set(sku_list)) != len(sku_list):
        raise ValueError("skus contains duplicates")
    target = float(target_precision)
    if not 0.0 < target < 1.0:
        raise ValueError(f"target_precision must be in (0, 1), got {target_precision!r}")
    if (
        isinstance(min_support, bool)
        or not isinstance(min_support, int | np.integer)
        or min_support < 1
    ):
        raise ValueError(f"min_support must be a positive integer, got {min_support!r}")
    min_support = int(min_support)
    level = _check_level(confidence_level)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not prior_strength > 0:
        raise ValueError(f"prior_strength must be positive, got {prior_strength!r}")
    cat_of = {str(k): str(v) for k, v in (sku_to_category or {}).items()}
    weight = np.ones(n)
    if sample_weight is not None:
        weight = np.asarray(sample_weight, dtype=np.float64)
        if weight.shape != (n,) or not np.isfinite(weight).all() or (weight < 0).any():
            raise ValueError(f"sample_weight must be {n} finite non-negative numbers")
        if method != "shrinkage" and not np.all(weight == 1.0):
            raise ValueError("sample_weight needs method='shrinkage' (Clopper-Pearson bounds count whole rows)")

    pred = pred.astype(str)
    uniq, inv = np.unique(pred, return_inverse=True)
    unknown = sorted(set(uniq.tolist()) - set(sku_list))
    if unknown:
        raise ValueError(
            f"{len(unknown)} predicted label(s) are not in skus, e.g. {unknown[:5]}; "
            "pass the full catalogue (and labels as str)"
        )

    categories = sorted(set(cat_of.values()))
    cat_pos = {c: j for j, c in enumerate(categories)}
    uniq_cat = np.array(
        [cat_pos[cat_of[u]] if u in cat_of else -1 for u in uniq.tolist()], dtype=np.int64
    )
    by_sku = dict(zip(uniq.tolist(), _split_groups(conf, corr, inv, uniq.size), strict=True))
    row_cat = uniq_cat[inv] if n else np.zeros(0, dtype=np.int64)
    cat_groups = _split_groups(conf, corr, row_cat + 1, len(categories) + 1)[1:]
    by_cat = dict(zip(categories, cat_groups, strict=True))

    if method == "shrinkage":
        return _fit_shrinkage(
            conf, corr, pred, sku_list, cat_of, target, min_support, float(prior_strength), level, weight
        )

    g_thr, _ = _resolve(
        _Group(conf, corr) if n else None, None, "global", "global", target, level, min_support
    )
    per_category, category_source = {}, {}
    for c in categories:
        per_category[c], category_source[c] = _resolve(
            by_cat.get(c), g_thr, "global", "category", target, level, min_support
        )
    per_sku, source, support = {}, {}, {}
    for s in sku_list:
        cat = cat_of.get(s)
        if cat is not None:
            parent, parent_source = per_category[cat], category_source[cat]
        else:
            parent, parent_source = g_thr, "global"
        group = by_sku.get(s)
        per_sku[s], source[s] = _resolve(
            group, parent, parent_source, "sku", target, level, min_support
        )
        support[s] = group.size if group is not None else 0

    return ThresholdTable(
        per_sku=per_sku,
        source=source,
        per_category=per_category,
        global_=g_thr,
        target_precision=target,
        min_support=min_support,
        confidence_level=level,
        category_source=category_source,
        support=support,
    )


def _counts_at(
    conf: np.ndarray, corr: np.ndarray, grid: np.ndarray, weight: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted rows with confidence >= each grid value, and weighted correct rows among them."""
    order = np.argsort(conf)
    sorted_conf = conf[order]
    w = weight[order]
    total_suffix = np.concatenate([np.cumsum(w[::-1])[::-1], [0.0]])
    correct_suffix = np.concatenate([np.cumsum((w * corr[order])[::-1])[::-1], [0.0]])
    start = np.searchsorted(sorted_conf, grid, side="left")
    return total_suffix[start], correct_suffix[start]


def _beta_lower(a: np.ndarray, b: np.ndarray, level: float) -> np.ndarray:
    """Lower ``1 - level`` quantile of Beta(a, b); at ``level == 0.5`` the posterior mean."""
    if level == 0.5:
        return a / np.maximum(a + b, 1e-12)
    from scipy.stats import beta

    return beta.ppf(1.0 - level, np.maximum(a, 1e-9), np.maximum(b, 1e-9))


def _smallest_meeting(grid: np.ndarray, estimate: np.ndarray, has_rows: np.ndarray, target: float) -> float:
    ok = np.flatnonzero((estimate >= target) & has_rows)
    return float(grid[ok].min()) if ok.size else NEVER_ACCEPT


def _fit_shrinkage(
    conf: np.ndarray,
    corr: np.ndarray,
    pred: np.ndarray,
    sku_list: list[str],
    cat_of: dict[str, str],
    target: float,
    min_support: int,
    k: float,
    level: float,
    weight: np.ndarray,
) -> ThresholdTable:
    grid = np.unique(conf)
    if grid.size > _MAX_GRID:
        # Candidate thresholds at confidence quantiles: every value is still an observed
        # confidence, and large catalogues don't pay a Beta quantile per row per SKU.
        grid = np.unique(np.quantile(conf, np.linspace(0.0, 1.0, _MAX_GRID), method="inverted_cdf"))
    if grid.size == 0:
        never = dict.fromkeys(sku_list, NEVER_ACCEPT)
        cats = sorted(set(cat_of.values()))
        return ThresholdTable(
            per_sku=never, source=dict.fromkeys(sku_list, "global"),
            per_category=dict.fromkeys(cats, NEVER_ACCEPT), global_=NEVER_ACCEPT,
            target_precision=target, min_support=min_support, confidence_level=level,
            method="shrinkage", prior_strength=k, category_source=dict.fromkeys(cats, "global"),
            support=dict.fromkeys(sku_list, 0),
        )
    n_all, c_all = _counts_at(conf, corr, grid, weight)
    order = np.argsort(conf)
    conf_suffix = np.concatenate([np.cumsum((weight * conf)[order][::-1])[::-1], [0.0]])
    mean_conf = conf_suffix[np.searchsorted(conf[order], grid)] / np.maximum(n_all, 1e-12)
    p_global = (c_all + k * mean_conf) / (n_all + k)
    g_bound = _beta_lower(c_all + k * mean_conf, (n_all - c_all) + k * (1.0 - mean_conf), level)
    g_thr = _smallest_meeting(grid, g_bound, n_all > 0, target)

    def level_threshold(rows: np.ndarray, prior: np.ndarray, parent_thr: float, parent_source: str, own: str):
        n, c = _counts_at(conf[rows], corr[rows], grid, weight[rows])
        estimate = (c + k * prior) / (n + k)
        # Pick t on a lower credible bound, not the mean: taking the smallest of many
        # noisy estimates that clear the target would otherwise favour lucky streaks.
        bound = _beta_lower(c + k * prior, (n - c) + k * (1.0 - prior), level)
        own_thr = _smallest_meeting(grid, bound, np.ones_like(n, bool), target)
        if weight[rows].sum() >= min_support:
            return own_thr, own, estimate
        if own_thr > parent_thr:
            return own_thr, own, estimate
        return parent_thr, parent_source, estimate

    categories = sorted(set(cat_of.values()))
    per_category, category_source, cat_estimate = {}, {}, {}
    row_cat = np.array([cat_of.get(p, "") for p in pred.tolist()], dtype=object)
    for cat in categories:
        rows = row_cat == cat
        per_category[cat], category_source[cat], cat_estimate[cat] = level_threshold(
            rows, p_global, g_thr, "global", "category"
        )
    per_sku, source, support = {}, {}, {}
    for sku in sku_list:
        rows = pred == sku
        cat = cat_of.get(sku)
        if cat is not None:
            prior, parent_thr, parent_source = cat_estimate[cat], per_category[cat], category_source[cat]
        else:
            prior, parent_thr, parent_source = p_global, g_thr, "global"
        per_sku[sku], source[sku], _ = level_threshold(rows, prior, parent_thr, parent_source, "sku")
        support[sku] = int(rows.sum())
    return ThresholdTable(
        per_sku=per_sku, source=source, per_category=per_category, global_=g_thr,
        target_precision=target, min_support=min_support, confidence_level=level,
        method="shrinkage", prior_strength=k, category_source=category_source, support=support,
    )
