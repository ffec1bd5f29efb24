"""Turn calibrated SKU probabilities and OOD scores into confidence bands.

Every prediction gets one of three bands:

* ``"accept"``: in-distribution and at least as confident as the predicted
  SKU's threshold (auto-accept);
* ``"verify"``: in-distribution but below the threshold (a person checks it,
  helped by the top-5 candidates and, when confident, the category);
* ``"unknown"``: the OOD score says the product is probably not in the
  catalogue. The top-1 SKU is still reported; consumers must use the band.

The arithmetic (:meth:`Router.route_arrays`) is deliberately small so that an
ONNX graph can reproduce it exactly from the constants :meth:`Router.sku_threshold_vector`,
:meth:`Router.category_matrix` and :meth:`Router.category_threshold_vector`::

    order      = stable argsort of -P along axis 1 (ties -> lower column), first 5
    sku_idx    = order[:, 0];  conf = P[i, sku_idx]
    band       = 2 if ood > ood_threshold
                 else 0 if conf >= sku_thr[sku_idx]
                 else 1
    C          = P @ M                      # (n, m) category probabilities
    cat_idx    = argmax(C, axis=1)          # first maximum -> lower index
    cat_conf   = C[i, cat_idx]
    cat_filled = (band != 0) & (cat_conf >= cat_thr[cat_idx])

All of it runs in float64 (``P`` is cast first). ONNX ``TopK`` and ``ArgMax``
break ties toward the lower index too.

Categories: the probability of category ``c`` is the sum of the probabilities
of the SKUs mapped to ``c``. SKUs without a category contribute to no category
and are never reported as one; categories are ordered by name. The category
fields are filled for every non-accepted row, ``"unknown"`` included (a new
product of a known category is still worth naming), when the most probable
category reaches its threshold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from skuscale.routing.thresholds import NEVER_ACCEPT, ThresholdTable, fit_thresholds

__all__ = [
    "ACCEPT",
    "BANDS",
    "TOP_K",
    "UNKNOWN",
    "VERIFY",
    "Decision",
    "Router",
    "category_probabilities",
]

BANDS = ("accept", "verify", "unknown")
#: Band codes used by :meth:`Router.route_arrays` (indices into :data:`BANDS`).
ACCEPT, VERIFY, UNKNOWN = 0, 1, 2
#: Number of candidates reported per prediction.
TOP_K = 5

# Calibrated float32 probabilities can overshoot 1 by a rounding error.
_PROB_TOL = 1e-6


@dataclass
class Decision:
    """The routed outcome of one prediction.

    Attributes
    ----------
    band : {"accept", "verify", "unknown"}
    sku : str
        Top-1 SKU; always filled, even for ``"unknown"``: use ``band`` to act.
    confidence : float
        Calibrated probability of ``sku``.
    ood_score : float
        Out-of-distribution score (higher = more likely not in the catalogue).
    candidates : list of (str, float)
        Top-5 SKUs with calibrated probabilities, descending (ties: catalogue order).
    category, category_confidence : str or None, float or None
        Filled only when the band is not ``"accept"`` and the summed probability
        of the most probable category reaches that category's threshold.
    """

    band: str
    sku: str
    confidence: float
    ood_score: float
    candidates: list[tuple[str, float]] = field(default_factory=list)
    category: str | None = None
    category_confidence: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; candidates become ``[{"sku": ..., "score": ...}, ...]``."""
        return {
            "band": self.band,
            "sku": self.sku,
            "confidence": float(self.confidence),
            "ood_score": float(self.ood_score),
            "candidates": [{"sku": s, "score": float(p)} for s, p in self.candidates],
            "category": self.category,
            "category_confidence": (
                None if self.category_confidence is None else float(self.category_confidence)
            ),
        }


def _check_skus(skus: Sequence[str]) -> list[str]:
    if isinstance(skus, str):
        raise ValueError("skus must be a list of SKU names, not a single string")
    out = [str(s) for s in skus]
    if not out:
        raise ValueError("skus is empty")
    if len(set(out)) != len(out):
        raise ValueError("skus contains duplicates")
    return out


def _check_probs(probs, n_skus: int) -> np.ndarray:
    p = np.asarray(probs)
    if p.ndim != 2 or p.shape[1] != n_skus:
        raise ValueError(f"probs must be 2-D (n, {n_skus}) in catalogue order, got shape {p.shape}")
    if not np.issubdtype(p.dtype, np.number) or p.dtype == bool:
        raise ValueError(f"probs must be numeric, got dtype {p.dtype}")
    p = p.astype(np.float64, copy=False)
    if not np.isfinite(p).all():
        raise ValueError("probs contains NaN or infinite values")
    if p.size and (p.min() < 0.0 or p.max() > 1.0 + _PROB_TOL):
        raise ValueError(
            "probs must be calibrated probabilities in [0, 1], "
            f"got values in [{p.min()}, {p.max()}]"
        )
    return p


def _category_layout(
    skus: Sequence[str], sku_to_category: Mapping[str, str]
) -> tuple[list[str], np.ndarray]:
    cats = sorted({str(sku_to_category[s]) for s in skus if s in sku_to_category})
    pos = {c: j for j, c in enumerate(cats)}
    M = np.zeros((len(skus), len(cats)), dtype=np.float64)
    for i, s in enumerate(skus):
        if s in sku_to_category:
            M[i, pos[str(sku_to_category[s])]] = 1.0
    return cats, M


def category_probabilities(
    probs, skus: Sequence[str], sku_to_category: Mapping[str, str]
) -> tuple[list[str], np.ndarray]:
    """Category probabilities: ``probs`` summed over each category's SKUs.

    Returns the category names (sorted) and a float64 ``(n, m)`` matrix. SKUs
    without a category contribute to none, so rows need not sum to one.
    """
    skus = _check_skus(skus)
    p = _check_probs(probs, len(skus))
    cats, M = _category_layout(skus, sku_to_category)
    return cats, p @ M


@dataclass
class Router:
    """Per-SKU thresholds + OOD threshold -> :class:`Decision` bands.

    Parameters
    ----------
    skus : list of str
        Column order of the probability matrices passed to :meth:`route`.
    sku_to_category : dict[str, str]
        SKU -> category (may be partial or empty).
    sku_thresholds : ThresholdTable
        Auto-accept thresholds of the SKUs (see
        :func:`skuscale.routing.fit_thresholds`).
    category_thresholds : ThresholdTable or None
        Thresholds of the categories (a table fitted with ``skus`` = categories);
        None disables the category fields.
    ood_threshold : float
        A row is ``"unknown"`` when its OOD score is strictly greater. ``inf``
        (the default) never flags a row.
    """

    skus: list[str]
    sku_to_category: dict[str, str]
    sku_thresholds: ThresholdTable
    category_thresholds: ThresholdTable | None = None
    ood_threshold: float = math.inf

    def __post_init__(self) -> None:
        self.skus = _check_skus(self.skus)
        self.sku_to_category = {str(k): str(v) for k, v in dict(self.sku_to_category).items()}
        self.ood_threshold = float(self.ood_threshold)
        if math.isnan(self.ood_threshold) or self.ood_threshold == -math.inf:
            # -inf would flag everything, and to_dict stores only +inf (as None).
            raise ValueError(f"ood_threshold must be a number (not NaN) or +inf, got {self.ood_threshold}")
        if not isinstance(self.sku_thresholds, ThresholdTable):
            raise ValueError("sku_thresholds must be a ThresholdTable")
        if self.category_thresholds is not None and not isinstance(
            self.category_thresholds, ThresholdTable
        ):
            raise ValueError("category_thresholds must be a ThresholdTable or None")

    # -- constants of the routing arithmetic ---------------------------------

    def sku_threshold_vector(self) -> np.ndarray:
        """Auto-accept threshold of each SKU column, float64 (k,)."""
        return self.sku_thresholds.thresholds_for(self.skus)

    def categories(self) -> list[str]:
        """Categories of the catalogue SKUs, sorted (column order of :meth:`category_matrix`)."""
        return _category_layout(self.skus, self.sku_to_category)[0]

    def category_matrix(self) -> np.ndarray:
        """One-hot SKU -> category matrix, float64 (k, m); all-zero rows for uncategorised SKUs."""
        return _category_layout(self.skus, self.sku_to_category)[1]

    def category_threshold_vector(self) -> np.ndarray:
        """Threshold of each category, float64 (m,); all :data:`NEVER_ACCEPT` without a table."""
        return self._category_thresholds_for(self.categories())

    def _category_thresholds_for(self, cats: list[str]) -> np.ndarray:
        if self.category_thresholds is None:
            return np.full(len(cats), NEVER_ACCEPT, dtype=np.float64)
        return self.category_thresholds.thresholds_for(cats)

    # -- routing ---------------------------------------------------------------

    def route_arrays(self, probs, ood_scores, top_k: int = TOP_K) -> dict[str, np.ndarray]:
        """Vectorised routing (see the module docstring for the exact arithmetic).

        Parameters
        ----------
        probs : array-like, shape (n, k)
            Calibrated SKU probabilities, columns in :attr:`skus` order.
        ood_scores : array-like, shape (n,)
            OOD scores, higher = more likely unknown.
        top_k : int
            Candidates to return (capped at k).

        Returns
        -------
        dict of ndarray
            ``band`` (n,) int8 codes 0=accept 1=verify 2=unknown; ``sku_index``
            (n,) int64; ``confidence`` and ``threshold`` (n,) float64 (the applied
            SKU threshold); ``topk_index`` (n, top_k) int64 and ``topk_score``
            (n, top_k) float64; ``category_index`` (n,) int64, -1 where not filled;
            ``category_confidence`` (n,) float64, NaN where not filled.
        """
        p = _check_probs(probs, len(self.skus))
        n = p.shape[0]
        ood = np.asarray(ood_scores)
        if ood.shape != (n,):
            raise ValueError(f"ood_scores must be 1-D with {n} entries, got shape {ood.shape}")
        if not np.issubdtype(ood.dtype, np.number) or ood.dtype == bool:
            raise ValueError(f"ood_scores must be numeric, got dtype {ood.dtype}")
        ood = ood.astype(np.float64, copy=False)
        if np.isnan(ood).any():
            raise ValueError("ood_scores contains NaN")
        if isinstance(top_k, bool) or not isinstance(top_k, int | np.integer) or top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        kk = min(int(top_k), p.shape[1])

        order = np.argsort(-p, axis=1, kind="stable")[:, :kk]
        scores = np.take_along_axis(p, order, axis=1)
        sku_idx = order[:, 0]
        conf = scores[:, 0]
        thr = self.sku_threshold_vector()[sku_idx]
        band = np.where(ood > self.ood_threshold, UNKNOWN, np.where(conf >= thr, ACCEPT, VERIFY))
        band = band.astype(np.int8)

        cats, M = _category_layout(self.skus, self.sku_to_category)
        if cats:
            C = p @ M
            cat_idx = np.argmax(C, axis=1)
            cat_conf = C[np.arange(n), cat_idx]
            filled = (band != ACCEPT) & (cat_conf >= self._category_thresholds_for(cats)[cat_idx])
        else:
            cat_idx = np.zeros(n, dtype=np.int64)
            cat_conf = np.zeros(n, dtype=np.float64)
            filled = np.zeros(n, dtype=bool)
        return {
            "band": band,
            "sku_index": sku_idx.astype(np.int64),
            "confidence": conf,
            "threshold": thr,
            "topk_index": order.astype(np.int64),
            "topk_score": scores,
            "category_index": np.where(filled, cat_idx, -1).astype(np.int64),
            "category_confidence": np.where(filled, cat_conf, np.nan),
        }

    def route(self, probs, ood_scores) -> list[Decision]:
        """One :class:`Decision` per row, built from :meth:`route_arrays`."""
        a = self.route_arrays(probs, ood_scores)
        ood = np.asarray(ood_scores, dtype=np.float64)
        cats = self.categories()
        out = []
        for i in range(a["band"].shape[0]):
            ci = int(a["category_index"][i])
            out.append(
                Decision(
                    band=BANDS[int(a["band"][i])],
                    sku=self.skus[int(a["sku_index"][i])],
                    confidence=float(a["confidence"][i]),
                    ood_score=float(ood[i]),
                    candidates=[
                        (self.skus[int(j)], float(s))
                        for j, s in zip(a["topk_index"][i], a["topk_score"][i], strict=True)
                    ],
                    category=cats[ci] if ci >= 0 else None,
                    category_confidence=(
                        float(a["category_confidence"][i]) if ci >= 0 else None
                    ),
                )
            )
        return out

    # -- persistence -------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; an infinite ``ood_threshold`` is stored as None."""
        return {
            "skus": list(self.skus),
            "sku_to_category": dict(self.sku_to_category),
            "sku_thresholds": self.sku_thresholds.to_dict(),
            "category_thresholds": (
                None if self.category_thresholds is None else self.category_thresholds.to_dict()
            ),
            "ood_threshold": (
                float(self.ood_threshold) if math.isfinite(self.ood_threshold) else None
            ),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Router:
        """Inverse of :meth:`to_dict`."""
        try:
            ood = d["ood_threshold"]
            cat = d.get("category_thresholds")
            return cls(
                skus=list(d["skus"]),
                sku_to_category=dict(d["sku_to_category"]),
                sku_thresholds=ThresholdTable.from_dict(d["sku_thresholds"]),
                category_thresholds=None if cat is None else ThresholdTable.from_dict(cat),
                ood_threshold=math.inf if ood is None else float(ood),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a Router dict: {exc}") from exc

    # -- fitting -------------------------------------------------------------------

    @classmethod
    def from_heldout(
        cls,
        probs,
        y_true,
        *,
        skus: Sequence[str],
        sku_to_category: Mapping[str, str] | None = None,
        ood_scores=None,
        ood_threshold: float = math.inf,
        target_precision: float = 0.99,
        category_target_precision: float | None = None,
        min_support: int = 20,
        confidence_level: float = 0.8,
        fit_categories: bool = True,
    ) -> Router:
        """Fit SKU (and category) thresholds on held-out calibrated probabilities.

        Parameters
        ----------
        probs : array-like, shape (n, k)
            Calibrated probabilities of held-out rows, columns in ``skus`` order.
        y_true : array-like of str, shape (n,)
            True SKUs; a label not in ``skus`` marks an unknown product (its
            prediction counts as wrong; its category is right only when
            ``sku_to_category`` maps that label to the predicted category).
        ood_scores : array-like, shape (n,), optional
            With them, rows over ``ood_threshold`` are left out of the SKU fit:
            they never reach the accept test. Without them every row is fitted on.
        ood_threshold : float
            The router's OOD cut-off, with or without ``ood_scores``.
        category_target_precision : float, optional
            Target of the category thresholds; defaults to ``target_precision``.
        fit_categories : bool
            Fit ``category_thresholds`` (when any SKU has a category).

        Notes
        -----
        SKU thresholds use :func:`fit_thresholds` with the category backoff. The
        category thresholds are fitted (backing off straight to global) on the
        rows that reach the category test, i.e. those *not* auto-accepted by the
        fitted SKU thresholds (``"verify"`` and ``"unknown"`` rows), so their
        precision is that of the category claims actually made.
        """
        skus = _check_skus(skus)
        mapping = {str(k): str(v) for k, v in (sku_to_category or {}).items()}
        p = _check_probs(probs, len(skus))
        n = p.shape[0]
        if n == 0:
            raise ValueError("no held-out rows to fit thresholds on")
        y = np.asarray(y_true)
        if y.shape != (n,):
            raise ValueError(f"y_true must be 1-D with {n} entries, got shape {y.shape}")
        y = y.astype(str)
        ood_thr = float(ood_threshold)
        if ood_scores is None:
            # No scores: every row reaches the accept test; the cut-off still goes to the router.
            ood = np.full(n, -np.inf)
        else:
            ood = np.asarray(ood_scores, dtype=np.float64)
            if ood.shape != (n,) or np.isnan(ood).any():
                raise ValueError(f"ood_scores must be 1-D with {n} non-NaN entries")

        top1 = np.argsort(-p, axis=1, kind="stable")[:, 0]
        conf = np.clip(p[np.arange(n), top1], 0.0, 1.0)
        pred = np.asarray(skus, dtype=object)[top1].astype(str)
        keep = ood <= ood_thr
        sku_table = fit_thresholds(
            conf[keep],
            pred[keep],
            (pred == y)[keep],
            skus=skus,
            sku_to_category=mapping,
            target_precision=target_precision,
            min_support=min_support,
            confidence_level=confidence_level,
        )
        router = cls(
            skus=skus,
            sku_to_category=mapping,
            sku_thresholds=sku_table,
            category_thresholds=None,
            ood_threshold=ood_thr,
        )
        cats = router.categories()
        if fit_categories and cats:
            a = router.route_arrays(p, ood)
            reach = a["band"] != ACCEPT
            C = p @ router.category_matrix()
            cat_idx = np.argmax(C, axis=1)
            cat_pred = np.asarray(cats, dtype=object)[cat_idx].astype(str)
            cat_correct = np.array(
                [mapping.get(t) == c for t, c in zip(y, cat_pred, strict=True)], dtype=bool
            )
            router.category_thresholds = fit_thresholds(
                np.clip(C[np.arange(n), cat_idx], 0.0, 1.0)[reach],
                cat_pred[reach],
                cat_correct[reach],
                skus=cats,
                sku_to_category={},
                target_precision=(
                    target_precision
                    if category_target_precision is None
                    else category_target_precision
                ),
                min_support=min_support,
                confidence_level=confidence_level,
            )
        return router
