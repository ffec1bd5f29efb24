"""The bundle behind the service: decode, embed (ONNX Runtime), route, and enrol new SKUs.

No torch here: :class:`~skuscale.bundle.Bundle` runs the backbone through
:class:`~skuscale.embed.onnx_embedder.OnnxEmbedder`.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from skuscale._base import l2_normalize
from skuscale.bundle import MANIFEST, Bundle
from skuscale.data.images import decode_image
from skuscale.data.preprocess import preprocess_image
from skuscale.ood.detectors import (
    KNNCosineDetector,
    MahalanobisDetector,
    PrototypeCosineDetector,
    _LogitDetector,
)
from skuscale.routing.router import ACCEPT, UNKNOWN, VERIFY

BAND_NAMES = {ACCEPT: "accept", VERIFY: "verify", UNKNOWN: "unknown"}
TOP_K = 5


@dataclass
class Recognition:
    """One routed prediction, ready to be stored and returned."""

    band: str
    sku: str
    confidence: float
    ood_score: float
    candidates: list[dict[str, Any]]
    category: str | None
    category_confidence: float | None


def enrol_into_model(
    model, sku: str, X_new: np.ndarray, category: str | None, *, X_all: np.ndarray | None = None,
    threshold: float | None = None, centre: np.ndarray | None = None,
) -> None:
    """Add ``sku`` to a :class:`~skuscale.model.RecognitionModel` in place, without retraining.

    The linear head gets an imprinted weight (Qi et al., CVPR 2018), the prototype head a
    new prototype, the OOD detector the new class (so the SKU does not look unknown), and
    the router a threshold: the SKU's category threshold when the category is known to
    the router, else the global one (the same back-off the build applies to SKUs with
    too few held-out predictions).

    Parameters
    ----------
    model : RecognitionModel
    sku : str
    X_new : ndarray (n, d)
        Embeddings of this enrolment.
    category : str or None
    X_all : ndarray (m, d), optional
        Every embedding ever enrolled for ``sku`` (``X_new`` included) when the SKU is
        enrolled again; imprinting replaces the class weight, prototypes accumulate.
    threshold : float, optional
        Auto-accept threshold for the SKU instead of the category/global back-off.
    centre : ndarray (d,), optional
        Mean of the bundle's class prototypes (default: of the model's current prototypes).
    """
    X_new = np.asarray(X_new, dtype=np.float32)
    X_all = X_new if X_all is None else np.asarray(X_all, dtype=np.float32)
    if centre is None:
        centre = model.prototypes.prototypes_.mean(axis=0)
    det = model.detector
    same_head = isinstance(det, _LogitDetector) and (
        det.head_ is model.head
        or (
            np.array_equal(det.head_.classes_, model.head.classes_)
            and np.allclose(det.head_.coef_, model.head.coef_)
            and np.allclose(det.head_.intercept_, model.head.intercept_)
        )
    )
    model.head.imprint(sku, X_all, centre=centre)
    model.prototypes.add_class(sku, X_new)
    if isinstance(det, _LogitDetector):
        if same_head:
            # Bundle.load gives the detector its own copy of the head; without re-pointing
            # it, the new SKU would look unknown.
            det.head_ = model.head
        else:
            det.head_.imprint(sku, X_all, centre=centre)
    elif isinstance(det, PrototypeCosineDetector | MahalanobisDetector):
        normalize = isinstance(det, PrototypeCosineDetector) or det.normalize
        rows = l2_normalize(X_all) if normalize else X_all
        centre = rows.mean(axis=0, keepdims=True)
        if isinstance(det, PrototypeCosineDetector):
            centre = l2_normalize(centre)
        attr = "prototypes_" if isinstance(det, PrototypeCosineDetector) else "means_"
        hit = np.flatnonzero(det.classes_ == sku)
        if hit.size:
            getattr(det, attr)[int(hit[0])] = centre[0]
        else:
            det.classes_ = np.append(det.classes_, sku)
            setattr(det, attr, np.vstack([getattr(det, attr), centre]).astype(np.float32))
    elif isinstance(det, KNNCosineDetector):
        rows = (l2_normalize(X_new) if det.normalize else X_new).astype(np.float32)
        det.bank_ = np.vstack([det.bank_, rows])
    router = model.router
    table = router.sku_thresholds
    if sku not in router.skus:
        router.skus.append(sku)
    if category:
        router.sku_to_category[sku] = category
        model.sku_to_category[sku] = category
    if threshold is not None:
        table.per_sku[sku] = float(threshold)
        table.source[sku] = "enrolled:configured"
    elif category and category in table.per_category:
        table.per_sku[sku] = float(table.per_category[category])
        table.source[sku] = "enrolled:category"
    else:
        table.per_sku[sku] = float(table.global_)
        table.source[sku] = "enrolled:global"
    if list(router.skus) != [str(s) for s in model.head.classes_]:
        raise RuntimeError("router and head catalogues diverged during enrolment")


class Recognizer:
    """Thread-safe wrapper of a loaded bundle for the service."""

    def __init__(self, bundle_dir: Path, *, threads: int | None = None, enrol_threshold: float | None = None):
        self.bundle = Bundle.load(bundle_dir)
        self.bundle.embedder(threads=threads)
        self.bundle_skus = list(self.bundle.skus)
        self.enrolled: dict[str, str | None] = {}
        self.enrol_threshold = enrol_threshold
        self._centre = self.model.prototypes.prototypes_.mean(axis=0)
        self._enrolled_X: dict[str, np.ndarray] = {}
        self.applied_enrolment_id = 0
        self._lock = threading.RLock()
        self.bundle_sha256 = hashlib.sha256((Path(bundle_dir) / MANIFEST).read_bytes()).hexdigest()

    @property
    def model(self):
        return self.bundle.model

    @property
    def skus(self) -> list[str]:
        return self.model.skus

    def info(self) -> dict[str, str]:
        meta = self.bundle.metadata
        return {
            "version": self.bundle_sha256[:12],
            "created": str(meta.get("created", "")),
            "package_version": str(meta.get("package_version", "")),
            "backbone": str(self.bundle.backbone.get("name", "")),
            "detector": type(self.model.detector).__name__,
            "n_skus": str(len(self.bundle_skus)),
        }

    def category_of(self, sku: str) -> str | None:
        return self.model.sku_to_category.get(sku)

    def decode(self, data: bytes, *, max_bytes: int, max_pixels: int):
        return decode_image(data, max_bytes=max_bytes, max_pixels=max_pixels)

    def embed(self, images) -> np.ndarray:
        prep = self.bundle.preprocessing
        batch = np.stack([preprocess_image(im, prep) for im in images])
        return self.bundle.embedder().embed_batch(batch)

    def recognize(self, X: np.ndarray) -> list[Recognition]:
        with self._lock:
            skus = self.skus
            cats = self.model.router.categories()
            probs = self.model.predict_proba(X)
            ood = self.model.ood_scores(X)
            a = self.model.router.route_arrays(probs, ood, top_k=TOP_K)
        out = []
        for i in range(X.shape[0]):
            ci = int(a["category_index"][i])
            out.append(
                Recognition(
                    band=BAND_NAMES[int(a["band"][i])],
                    sku=skus[int(a["sku_index"][i])],
                    confidence=float(a["confidence"][i]),
                    ood_score=float(ood[i]),
                    candidates=[
                        {"sku": skus[int(j)], "score": float(s)}
                        for j, s in zip(a["topk_index"][i], a["topk_score"][i], strict=True)
                    ],
                    category=cats[ci] if ci >= 0 else None,
                    category_confidence=float(a["category_confidence"][i]) if ci >= 0 else None,
                )
            )
        return out

    @property
    def dim(self) -> int:
        """Embedding dimension of the bundle's backbone."""
        return int(self._centre.shape[0])

    def apply_enrolment(self, enrolment_id: int, sku: str, X: np.ndarray, category: str | None) -> str | None:
        """Apply a stored enrolment, or skip it; either way it counts as applied.

        A stored enrolment may no longer fit the loaded bundle: a newer bundle may have
        been trained with the SKU in it, or with another backbone. Such an enrolment is
        skipped (the bundle's own class wins) rather than stopping the service.

        Returns
        -------
        str or None
            Why the enrolment was skipped, or None when it was applied.
        """
        with self._lock:
            X = np.asarray(X)
            reason = None
            if sku in self.bundle_skus:
                reason = "the bundle's catalogue has this SKU now"
            elif X.ndim != 2 or X.shape[1] != self.dim:
                reason = f"its embeddings have dimension {X.shape[-1]}, the bundle's backbone {self.dim}"
            if reason is None:
                self.enrol(sku, X, category, enrolment_id=enrolment_id)
            else:
                self.applied_enrolment_id = max(self.applied_enrolment_id, enrolment_id)
            return reason

    def enrol(self, sku: str, X: np.ndarray, category: str | None, *, enrolment_id: int | None = None) -> None:
        """Apply one enrolment (already persisted) to the in-memory model."""
        with self._lock:
            if sku in self.bundle_skus:
                raise ValueError(f"{sku!r} is in the bundle's catalogue already")
            category = category or self.enrolled.get(sku)
            previous = self._enrolled_X.get(sku)
            X = np.asarray(X, dtype=np.float32)
            X_all = X if previous is None else np.vstack([previous, X])
            enrol_into_model(
                self.model, sku, X, category, X_all=X_all, threshold=self.enrol_threshold, centre=self._centre
            )
            self._enrolled_X[sku] = X_all
            self.enrolled[sku] = category
            if enrolment_id is not None:
                self.applied_enrolment_id = max(self.applied_enrolment_id, enrolment_id)
