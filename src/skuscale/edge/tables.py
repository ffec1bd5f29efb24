"""Class tables that scale: reduced dimension (PCA), fp16/int8 storage, FAISS top-k above a size.

A catalogue of 100k SKUs at 1280-d float32 is 512 MB per table (head weights, and
again for the prototypes of a prototype OOD detector), more than a smart cart has.
:class:`ClassTable` stores ``k`` rows of scores ``s_j(x) = <x, w_j> + b_j`` compactly:

* **dimension**: rows and queries are projected on the top ``dim`` principal axes of
  the (L2-normalised) training embeddings. With the centring folded into the bias,
  ``<x, w> + b ~= <(x - mu) V, V^T w> + (b + <mu, w>)`` (Jolliffe, *Principal Component
  Analysis*, 2002).
* **precision**: ``fp16`` rows, or ``int8`` rows with one float32 scale per row
  (symmetric per-row quantisation, as for per-channel weights in Jacob et al., CVPR 2018).
* **search**: exact scores (dequantised in blocks, so no float32 copy of the table
  is ever held) up to ``approximate_above`` rows (default 10,000); above it a FAISS inverted-file index
  with scalar-quantised codes (``IndexIVFScalarQuantizer``, inner product; Jégou,
  Douze & Schmid, TPAMI 2011; Johnson, Douze & Jégou, "Billion-scale similarity search
  with GPUs", 2019) that *is* the table: its codes replace the rows.

:class:`ScalableDecisionStage` puts a head table, an optional prototype table, the
temperature and the router's thresholds together: head + OOD + routing at catalogue
sizes where the dense numpy stack no longer fits. With approximate search the
softmax (and an ``msp`` or ``energy`` OOD score) is taken over the ``candidates``
best logits, which drops the (tiny) mass of the rest of the catalogue. The stage
computes the ``prototype``, ``msp`` and ``energy`` OOD scores; the router's OOD
threshold was fitted on the bundle's own detector, so a model with another detector
(``mahalanobis``, ``knn``) is refused rather than routed on a score it was not fitted for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from skuscale._base import l2_normalize, logsumexp
from skuscale.exceptions import SkuscaleError
from skuscale.routing import ACCEPT, TOP_K, UNKNOWN, VERIFY

TABLE_PRECISIONS = ("fp32", "fp16", "int8")
#: OOD scores :class:`ScalableDecisionStage` computes (detector registry names).
STAGE_DETECTORS = ("prototype", "msp", "energy")
_BYTES = {"fp32": 4, "fp16": 2, "int8": 1}
_BLOCK_ROWS = 8192


def pca_basis(X: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(d,)`` and the top ``dim`` principal axes ``(d, dim)`` of L2-normalised rows of ``X``."""
    Xn = l2_normalize(X).astype(np.float64)
    if not 1 <= dim <= Xn.shape[1]:
        raise ValueError(f"dim must be in [1, {Xn.shape[1]}], got {dim}")
    mean = Xn.mean(axis=0)
    _, _, vt = np.linalg.svd(Xn - mean, full_matrices=False)
    if vt.shape[0] < dim:
        raise ValueError(f"dim={dim} exceeds the {vt.shape[0]} axes {Xn.shape[0]} embeddings can span")
    return mean.astype(np.float32), np.ascontiguousarray(vt[:dim].T, dtype=np.float32)


def table_bytes(n_rows: int, dim: int, precision: str, *, approximate: bool = False, nlist: int = 0) -> int:
    """Bytes of one stored table: rows, per-row bias (and int8 scale), plus FAISS ids and centroids."""
    if precision not in TABLE_PRECISIONS:
        raise ValueError(f"precision must be one of {TABLE_PRECISIONS}, got {precision!r}")
    if approximate:
        # SQ codes of dim+1 (bias column) values, 8-byte ids in the inverted lists, fp32 centroids.
        code = (dim + 1) * _BYTES[precision] if precision != "fp32" else (dim + 1) * 4
        return int(n_rows * (code + 8) + nlist * (dim + 1) * 4)
    per_row = dim * _BYTES[precision] + 4 + (4 if precision == "int8" else 0)
    return int(n_rows * per_row)


class ClassTable:
    """Scores ``<x, w_j> + b_j`` for many rows, stored compactly (see the module docstring).

    Parameters
    ----------
    dim : int, optional
        Projected dimension; None keeps the input dimension (no projection).
    precision : {"fp32", "fp16", "int8"}
    approximate_above : int
        Use FAISS when the table has more rows than this.
    nlist : int, optional
        Inverted lists of the FAISS index (default ``4 * sqrt(k)``).
    nprobe : int
        Lists visited per query (at 100k rows and the default ``nlist``, 128 lists find the
        exact best row for about 92% of real queries; see docs/edge.md).

    Attributes
    ----------
    mean_, components_ : ndarray or None
        PCA centre (d,) and axes (d, dim).
    rows_ : ndarray or None
        Stored rows (k, dim) in ``precision`` (None when FAISS holds them).
    scales_ : ndarray or None
        Per-row int8 scales.
    bias_ : ndarray (k,) float32
        Bias with the PCA centring folded in.
    index_ : faiss.Index or None
    n_rows_, dim_ : int
    """

    def __init__(self, *, dim: int | None = None, precision: str = "fp32", approximate_above: int = 10000,
                 nlist: int | None = None, nprobe: int = 128):
        self.dim = dim
        self.precision = precision
        self.approximate_above = approximate_above
        self.nlist = nlist
        self.nprobe = nprobe

    def fit(self, W: np.ndarray, b: np.ndarray | None = None, *, basis: tuple[np.ndarray, np.ndarray] | None = None,
            train_rows: np.ndarray | None = None) -> ClassTable:
        """Store rows ``W`` (k, d) and bias ``b`` (k,).

        ``basis`` is a ``(mean, components)`` pair from :func:`pca_basis`, required when
        ``dim`` is set (share one basis between a head and a prototype table).
        ``train_rows`` (optional) are extra vectors to train the FAISS quantiser on.
        """
        if self.precision not in TABLE_PRECISIONS:
            raise ValueError(f"precision must be one of {TABLE_PRECISIONS}, got {self.precision!r}")
        W = np.asarray(W, dtype=np.float32)
        k, d = W.shape
        b = np.zeros(k, np.float32) if b is None else np.asarray(b, dtype=np.float32)
        if self.dim is not None and self.dim != d:
            if basis is None:
                raise ValueError("a reduced dim needs basis=(mean, components) from pca_basis")
            self.mean_, self.components_ = basis
            if self.components_.shape != (d, self.dim):
                raise ValueError(f"basis has shape {self.components_.shape}, expected {(d, self.dim)}")
            b = b + W @ self.mean_
            W = W @ self.components_
        else:
            self.mean_, self.components_ = None, None
        self.n_rows_, self.dim_ = k, W.shape[1]
        self.bias_ = b.astype(np.float32)
        self.scales_, self.rows_, self.index_ = None, None, None
        if k > self.approximate_above:
            self.index_ = self._build_index(W, self.bias_, train_rows)
        elif self.precision == "int8":
            self.scales_ = np.maximum(np.abs(W).max(axis=1), 1e-12).astype(np.float32) / 127.0
            self.rows_ = np.clip(np.rint(W / self.scales_[:, None]), -127, 127).astype(np.int8)
        else:
            self.rows_ = W.astype(np.float16 if self.precision == "fp16" else np.float32)
        return self

    def _build_index(self, W: np.ndarray, b: np.ndarray, train_rows: np.ndarray | None):
        import faiss

        augmented = np.ascontiguousarray(np.hstack([W, b[:, None]]), dtype=np.float32)
        nlist = self.nlist or max(1, int(4 * np.sqrt(W.shape[0])))
        quantizer = faiss.IndexFlatIP(augmented.shape[1])
        qtype = {"fp32": faiss.ScalarQuantizer.QT_fp16, "fp16": faiss.ScalarQuantizer.QT_fp16,
                 "int8": faiss.ScalarQuantizer.QT_8bit}[self.precision]
        if self.precision == "fp32":
            index = faiss.IndexIVFFlat(quantizer, augmented.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexIVFScalarQuantizer(quantizer, augmented.shape[1], nlist, qtype,
                                                  faiss.METRIC_INNER_PRODUCT)
        index.train(augmented if train_rows is None else np.vstack([augmented, train_rows]).astype(np.float32))
        index.add(augmented)
        index.nprobe = self.nprobe
        self._quantizer = quantizer  # keep the quantiser alive alongside the index
        self.nlist_ = nlist
        return index

    @property
    def approximate(self) -> bool:
        return self.index_ is not None

    def project(self, X: np.ndarray) -> np.ndarray:
        """Queries in table space: L2-normalised, centred and projected when a basis is set."""
        Xn = l2_normalize(X)
        if self.components_ is None:
            return Xn
        return (Xn - self.mean_) @ self.components_

    def basis_nbytes(self) -> int:
        """Bytes of the PCA basis (axes and centre; 0 without one)."""
        return 0 if self.components_ is None else int(self.components_.nbytes + self.mean_.nbytes)

    def nbytes(self, *, include_basis: bool = True) -> int:
        """Bytes held by the table (rows, scales, bias, FAISS codes/ids/centroids, and the PCA basis
        unless ``include_basis`` is False, for a basis shared with another table)."""
        basis = self.basis_nbytes() if include_basis else 0
        if self.index_ is not None:
            return table_bytes(self.n_rows_, self.dim_, self.precision, approximate=True, nlist=self.nlist_) + basis
        return int(self.rows_.nbytes + self.bias_.nbytes + (0 if self.scales_ is None else self.scales_.nbytes)
                   + basis)

    def scores(self, Z: np.ndarray) -> np.ndarray:
        """Exact scores (n, k) of projected queries ``Z`` (blockwise dequantisation)."""
        if self.rows_ is None:
            raise ValueError("an approximate table has no dense scores; use topk")
        out = np.empty((Z.shape[0], self.n_rows_), dtype=np.float32)
        for start in range(0, self.n_rows_, _BLOCK_ROWS):
            block = self.rows_[start : start + _BLOCK_ROWS].astype(np.float32)
            if self.scales_ is not None:
                block *= self.scales_[start : start + _BLOCK_ROWS, None]
            out[:, start : start + block.shape[0]] = Z @ block.T
        return out + self.bias_

    def topk(self, Z: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Best ``k`` scores and row indices (n, k), descending; exact or FAISS."""
        k = min(int(k), self.n_rows_)
        if self.index_ is None:
            s = self.scores(Z)
            idx = np.argpartition(-s, k - 1, axis=1)[:, :k] if k < s.shape[1] else np.tile(np.arange(s.shape[1]),
                                                                                          (s.shape[0], 1))
            part = np.take_along_axis(s, idx, axis=1)
            order = np.argsort(-part, axis=1, kind="stable")
            return np.take_along_axis(part, order, axis=1), np.take_along_axis(idx, order, axis=1)
        query = np.ascontiguousarray(np.hstack([Z, np.ones((Z.shape[0], 1), np.float32)]), dtype=np.float32)
        scores, idx = self.index_.search(query, k)
        return scores.astype(np.float32), idx.astype(np.int64)


@dataclass
class ScalableDecisionStage:
    """Head + OOD + routing over :class:`ClassTable` s, for catalogues too big for the dense stack.

    Attributes
    ----------
    head : ClassTable
        Rows ``coef_``, bias ``intercept_ - tau * log_prior_`` of the linear head.
    prototypes : ClassTable or None
        Prototype rows for the prototype-cosine OOD score (``ood_detector="prototype"``).
    temperature : float
    sku_thresholds : ndarray (k,)
    ood_threshold : float
        Fitted on the scores of ``ood_detector``.
    candidates : int
        Logits kept for the softmax when the head table is approximate.
    ood_detector : {"prototype", "msp", "energy"}, optional
        The OOD score: ``1 - max cos`` to the prototypes, ``-max softmax(logits / T_ood)``
        or ``-T_ood * logsumexp(logits / T_ood)`` of the head's logits. Default:
        ``"prototype"`` with a prototype table, else ``"msp"``.
    ood_temperature : float, optional
        ``T_ood`` of ``msp`` / ``energy`` (default ``temperature``).
    """

    head: ClassTable
    prototypes: ClassTable | None
    temperature: float
    sku_thresholds: np.ndarray
    ood_threshold: float
    candidates: int = 64
    ood_detector: str | None = None
    ood_temperature: float | None = None

    def __post_init__(self) -> None:
        kind = self.ood_detector or ("prototype" if self.prototypes is not None else "msp")
        if kind not in STAGE_DETECTORS:
            raise ValueError(f"ood_detector must be one of {STAGE_DETECTORS}, got {self.ood_detector!r}")
        if (kind == "prototype") != (self.prototypes is not None):
            raise ValueError("a prototype table goes with ood_detector='prototype', and only with it")
        if self.ood_temperature is not None and not float(self.ood_temperature) > 0.0:
            raise ValueError(f"ood_temperature must be positive, got {self.ood_temperature!r}")
        self.ood_detector = kind

    @classmethod
    def from_model(cls, model, *, dim: int | None = None, precision: str = "fp32", approximate_above: int = 10000,
                   basis_embeddings: np.ndarray | None = None, nprobe: int = 128,
                   ood_nprobe: int = 32) -> ScalableDecisionStage:
        """Compact tables of a :class:`~skuscale.model.RecognitionModel` (``basis_embeddings`` for PCA).

        ``nprobe`` lists are searched in the head table and ``ood_nprobe`` in the prototype
        table (its best match only sets the OOD score, so a near-best match costs little).

        Raises
        ------
        SkuscaleError
            When the model's OOD detector is not one the stage computes: ``prototype``,
            or ``msp`` / ``energy`` on the model's own head (at the detector's own
            temperature). The router's OOD threshold was fitted on that detector's
            scores; another score would put images in the wrong bands.
        """
        head = model.head
        detector = model.detector
        kind = _stage_detector(detector, head)
        bias = head.intercept_ - (head.tau * head.log_prior_ if head.long_tail == "logit_adjust" else 0.0)
        basis = pca_basis(basis_embeddings, dim) if dim is not None else None
        opts = {"dim": dim, "precision": precision, "approximate_above": approximate_above, "nprobe": nprobe}
        head_table = ClassTable(**opts).fit(head.coef_, bias, basis=basis)
        proto_table, ood_temperature = None, None
        if kind == "prototype":
            proto_table = ClassTable(**{**opts, "nprobe": ood_nprobe}).fit(detector.prototypes_, None, basis=basis)
        else:
            ood_temperature = float(detector.temperature)
        return cls(head=head_table, prototypes=proto_table, temperature=float(model.temperature),
                   sku_thresholds=model.router.sku_threshold_vector(), ood_threshold=float(model.router.ood_threshold),
                   ood_detector=kind, ood_temperature=ood_temperature)

    def nbytes(self) -> int:
        """Bytes of the class tables (head, prototypes, per-SKU thresholds as float32).

        A PCA basis the head and prototype tables share (as :meth:`from_model` builds them)
        is held, and counted, once.
        """
        protos = 0
        if self.prototypes is not None:
            shared = (self.prototypes.components_ is not None and self.head.components_ is not None
                      and np.shares_memory(self.prototypes.components_, self.head.components_)
                      and np.shares_memory(self.prototypes.mean_, self.head.mean_))
            protos = self.prototypes.nbytes(include_basis=not shared)
        return self.head.nbytes() + protos + 4 * self.sku_thresholds.size

    def decide(self, X: np.ndarray, top_k: int = TOP_K) -> dict[str, np.ndarray]:
        """``band``, ``sku_index``, ``confidence``, ``ood_score``, ``topk_index``, ``topk_score``."""
        Z = self.head.project(X)
        if self.head.approximate:
            logits, idx = self.head.topk(Z, self.candidates)
        else:
            logits = self.head.scores(Z)
            idx = None
        z = logits / np.float32(self.temperature)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        probs = z / z.sum(axis=1, keepdims=True)
        kk = min(top_k, probs.shape[1])
        order = np.argsort(-probs, axis=1, kind="stable")[:, :kk]
        topk_score = np.take_along_axis(probs, order, axis=1)
        topk_index = order if idx is None else np.take_along_axis(idx, order, axis=1)
        sku = topk_index[:, 0]
        conf = topk_score[:, 0].astype(np.float64)
        if self.prototypes is not None:
            best, _ = self.prototypes.topk(self.prototypes.project(X), 1)
            ood = (1.0 - best[:, 0].astype(np.float64)).astype(np.float32)
        else:
            # As MaxSoftmaxDetector / EnergyDetector: float64 logits over the detector's temperature.
            t_ood = float(self.temperature if self.ood_temperature is None else self.ood_temperature)
            scaled = logits.astype(np.float64) / t_ood
            top = scaled.max(axis=1)
            lse = logsumexp(scaled, axis=1)
            score = -t_ood * lse if self.ood_detector == "energy" else -np.exp(top - lse)
            ood = score.astype(np.float32)
        band = np.where(ood.astype(np.float64) > self.ood_threshold, UNKNOWN,
                        np.where(conf >= self.sku_thresholds[sku], ACCEPT, VERIFY)).astype(np.int8)
        return {"band": band, "sku_index": sku.astype(np.int64), "confidence": conf, "ood_score": ood,
                "topk_index": topk_index.astype(np.int64), "topk_score": topk_score}


def _stage_detector(detector, head) -> str:
    """The :data:`STAGE_DETECTORS` name of ``detector``, or a :class:`SkuscaleError` saying why the stage cannot."""
    from skuscale.edge.pipeline import SUPPORTED_DETECTORS, detector_scores_head

    name = type(detector).__name__
    kind = SUPPORTED_DETECTORS.get(name)
    if kind == "prototype":
        if getattr(detector, "prototypes_", None) is None:
            raise SkuscaleError("the model's PrototypeCosineDetector is not fitted (no prototypes_)")
        return kind
    if kind in ("msp", "energy"):
        if detector_scores_head(detector, head):
            return kind
        raise SkuscaleError(
            f"the model's {name} scores a head other than the model's own; ScalableDecisionStage computes "
            "msp and energy scores from the head table only")
    raise SkuscaleError(
        f"ScalableDecisionStage computes the {', '.join(STAGE_DETECTORS)} OOD scores; the model uses {name}, "
        "whose scores its router's OOD threshold was fitted on. Routing on another score would put images in "
        "the wrong bands: rebuild the bundle with one of those detectors, or use the dense stack "
        "(RecognitionModel.decide_arrays) or the one-graph pipeline")


def describe(stage: ScalableDecisionStage) -> dict[str, Any]:
    """JSON-able summary of a stage's table settings and sizes."""
    return {
        "n_skus": stage.head.n_rows_,
        "dim": stage.head.dim_,
        "precision": stage.head.precision,
        "approximate": stage.head.approximate,
        "ood_detector": stage.ood_detector,
        "table_bytes": stage.nbytes(),
    }
