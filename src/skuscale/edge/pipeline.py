"""The whole decision pipeline as one ONNX graph: backbone, head, temperature, OOD, routing.

A device then needs only ONNX Runtime plus image decode and resize. The graph is the
bundle's ``backbone.onnx`` composed (``onnx.compose.merge_models``) with a decision
graph built from the bundle's constants with ``onnx.helper``, reproducing
:meth:`skuscale.model.RecognitionModel.decide_arrays` operation by operation:

* ``Xn = X / max(||X||, 1e-12)``; ``logits = Xn W^T + b - tau * log_prior`` (float32);
* ``P = softmax(logits / T)`` (float32); ``TopK(P, 5)`` gives candidates, SKU and confidence;
* the OOD score in float64 (then rounded to float32, as the Python stack does);
* ``band = 2 if ood > ood_threshold else 0 if conf >= thr[sku] else 1`` in float64;
* category probabilities ``P @ M`` (float64) and their thresholds, as in
  :class:`skuscale.routing.Router`.

Supported OOD detectors: ``msp``, ``energy``, ``prototype``, ``mahalanobis`` and ``knn``
(cosine form only; its whole training bank goes into the graph).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from skuscale.exceptions import SkuscaleError
from skuscale.routing import TOP_K

PIPELINE_FILE = "pipeline.onnx"
#: Graph outputs, in order.
PIPELINE_OUTPUTS = (
    "band",
    "sku_index",
    "confidence",
    "ood_score",
    "topk_index",
    "topk_score",
    "category_index",
    "category_confidence",
)
#: Detector class name -> registry name, for the detectors the graph can express.
SUPPORTED_DETECTORS = {
    "MaxSoftmaxDetector": "msp",
    "EnergyDetector": "energy",
    "PrototypeCosineDetector": "prototype",
    "MahalanobisDetector": "mahalanobis",
    "KNNCosineDetector": "knn",
}
_EPS = 1e-12


class _GraphBuilder:
    """Small helper collecting nodes and initialisers with unique names."""

    def __init__(self, opset: int, prefix: str = "decision/"):
        from onnx import helper

        self.helper = helper
        self.opset = opset
        self.prefix = prefix
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._n = 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{self.prefix}{hint}_{self._n}"

    def const(self, value: np.ndarray, hint: str = "c") -> str:
        from onnx import numpy_helper

        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.array(value, order="C"), name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], hint: str | None = None, n_out: int = 1, **attrs) -> Any:
        outs = [self.name(hint or op_type.lower()) for _ in range(n_out)]
        self.nodes.append(self.helper.make_node(op_type, list(inputs), outs, name=self.name(op_type), **attrs))
        return outs[0] if n_out == 1 else outs

    def reduce(self, op_type: str, x: str, axis: int = 1, keepdims: int = 1) -> str:
        # ReduceSum takes axes as an input from opset 13, the other reductions from opset 18.
        if op_type == "ReduceSum" or self.opset >= 18:
            return self.op(op_type, [x, self.const(np.array([axis], np.int64), "axes")], keepdims=keepdims)
        return self.op(op_type, [x], axes=[axis], keepdims=keepdims)

    def cast(self, x: str, to: int) -> str:
        return self.op("Cast", [x], to=to)

    def l2_normalize(self, x: str) -> str:
        norm = self.op("Sqrt", [self.reduce("ReduceSum", self.op("Mul", [x, x]))])
        return self.op("Div", [x, self.op("Max", [norm, self.const(np.array(_EPS, np.float32), "eps")])])

    def identity(self, x: str, out: str) -> str:
        self.nodes.append(self.helper.make_node("Identity", [x], [out], name=self.name("out")))
        return out


def _head_logits(g: _GraphBuilder, head, xn: str) -> str:
    """Logits of a fitted :class:`~skuscale.head.linear.LinearHead` on normalised embeddings (float32)."""
    logits = g.op("Add", [g.op("MatMul", [xn, g.const(np.ascontiguousarray(head.coef_.T, np.float32), "W")]),
                          g.const(head.intercept_.astype(np.float32), "b")])
    if head.long_tail == "logit_adjust":
        adjust = (np.float32(head.tau) * head.log_prior_.astype(np.float32)).astype(np.float32)
        logits = g.op("Sub", [logits, g.const(adjust, "tau_log_prior")])
    return logits


def detector_scores_head(detector, head) -> bool:
    """Whether a logit detector (``msp``, ``energy``) scores the logits of ``head`` itself.

    True when its ``head_`` is ``head`` or has the same weights, bias, prior and
    long-tail adjustment (a loaded bundle holds two equal copies).
    """
    other = getattr(detector, "head_", None)
    if other is None:
        return False
    return other is head or (
        other.coef_.shape == head.coef_.shape and np.array_equal(other.coef_, head.coef_)
        and np.array_equal(other.intercept_, head.intercept_)
        and np.array_equal(other.log_prior_, head.log_prior_)
        and other.long_tail == head.long_tail and other.tau == head.tau
    )


def _ood_score(g: _GraphBuilder, detector, x: str, xn: str, model_logits: tuple[Any, str]) -> str:
    """The detector's score as float64 (n,), mirroring its ``score_samples``."""
    from onnx import TensorProto

    kind = SUPPORTED_DETECTORS.get(type(detector).__name__)
    if kind is None:
        raise SkuscaleError(
            f"the one-graph export supports the {', '.join(sorted(SUPPORTED_DETECTORS.values()))} OOD detectors; "
            f"this bundle uses {type(detector).__name__}. Rebuild it with one of those detectors."
        )
    dbl = TensorProto.DOUBLE
    if kind in ("msp", "energy"):
        head, shared_logits = model_logits
        logits = shared_logits if detector_scores_head(detector, head) else _head_logits(g, detector.head_, xn)
        temperature = g.const(np.array(float(detector.temperature), np.float64), "det_T")
        scaled = g.op("Div", [g.cast(logits, dbl), temperature])
        if kind == "msp":
            return g.op("Neg", [g.reduce("ReduceMax", g.op("Softmax", [scaled], axis=1), keepdims=0)])
        top = g.reduce("ReduceMax", scaled)
        lse = g.op("Add", [g.op("Log", [g.reduce("ReduceSum", g.op("Exp", [g.op("Sub", [scaled, top])]))]), top])
        energy = g.op("Mul", [g.op("Neg", [temperature]), lse])
        return g.op("Squeeze", [energy, g.const(np.array([1], np.int64), "axes")])
    if kind == "knn":
        if not detector.normalize:
            raise SkuscaleError("the one-graph export supports the k-NN detector only with normalize=True")
        k = int(detector.k)
        sims = g.op("MatMul", [xn, g.const(np.ascontiguousarray(detector.bank_.T, np.float32), "bank")])
        values, _ = g.op("TopK", [sims, g.const(np.array([k], np.int64), "k")], n_out=2, axis=1, largest=1,
                         sorted=1)
        kth = g.op("Gather", [values, g.const(np.array(k - 1, np.int64), "kth")], axis=1)
        return g.op("Sub", [g.const(np.array(1.0, np.float64), "one"), g.cast(kth, dbl)])
    if kind == "prototype":
        sims = g.op("MatMul", [xn, g.const(np.ascontiguousarray(detector.prototypes_.T, np.float32), "protos")])
        best = g.cast(g.reduce("ReduceMax", sims, keepdims=0), dbl)
        return g.op("Sub", [g.const(np.array(1.0, np.float64), "one"), best])
    # Mahalanobis: min_c (x - mu_c)^T P (x - mu_c), expanded as in MahalanobisDetector.
    xd = g.cast(xn if detector.normalize else x, dbl)
    P = detector.precision_.astype(np.float64)
    M = detector.means_.astype(np.float64)
    xp = g.op("MatMul", [xd, g.const(P, "precision")])
    quad = g.reduce("ReduceSum", g.op("Mul", [xp, xd]))
    cross = g.op("MatMul", [xp, g.const(np.ascontiguousarray(M.T), "means")])
    mean_terms = g.const(((M @ P) * M).sum(axis=1), "mean_quad")
    sq = g.op("Add", [g.op("Sub", [quad, g.op("Mul", [g.const(np.array(2.0, np.float64), "two"), cross])]),
                      mean_terms])
    sq = g.op("Max", [sq, g.const(np.array(0.0, np.float64), "zero")])
    return g.reduce("ReduceMin", sq, keepdims=0)


def build_decision_graph(model, *, dim: int, opset: int = 17, ir_version: int = 8, top_k: int = TOP_K,
                         input_name: str = "embedding"):
    """The decision stack of a :class:`~skuscale.model.RecognitionModel` as an ONNX model.

    Parameters
    ----------
    model : RecognitionModel
    dim : int
        Embedding dimension (the backbone's output width).
    opset, ir_version : int
        Must match the backbone's so the two graphs can be merged.
    top_k : int
        Candidates output per image (capped at the catalogue size).
    input_name : str
        Name of the embedding input.

    Returns
    -------
    onnx.ModelProto
        ``embedding (n, dim) float32`` -> :data:`PIPELINE_OUTPUTS`.
    """
    from onnx import TensorProto, helper

    head = model.head
    head._check_fitted()
    if head.n_features_in_ != dim:
        raise SkuscaleError(f"the head expects {head.n_features_in_}-d embeddings, the backbone gives {dim}")
    router = model.router
    if list(router.skus) != model.skus:
        raise SkuscaleError("the router's SKU order differs from the head's; the bundle is inconsistent")
    g = _GraphBuilder(opset)
    dbl, i64 = TensorProto.DOUBLE, TensorProto.INT64
    x = input_name
    xn = g.l2_normalize(x)
    logits = _head_logits(g, head, xn)
    # Python divides float32 logits by the temperature rounded to float32 (NEP 50 weak scalars).
    probs = g.op("Softmax", [g.op("Div", [logits, g.const(np.array(model.temperature, np.float32), "T")])], axis=1)
    kk = min(int(top_k), len(model.skus))
    topk_score, topk_index = g.op("TopK", [probs, g.const(np.array([kk], np.int64), "k")], n_out=2,
                                  axis=1, largest=1, sorted=1)
    first = g.const(np.array([0], np.int64), "zero_idx")
    sku_index = g.op("Squeeze", [g.op("Gather", [topk_index, first], axis=1), g.const(np.array([1], np.int64), "ax")])
    confidence = g.op("Squeeze", [g.op("Gather", [topk_score, first], axis=1), g.const(np.array([1], np.int64), "ax")])

    # The Python stack rounds OOD scores to float32 before routing.
    ood32 = g.cast(_ood_score(g, model.detector, x, xn, (head, logits)), TensorProto.FLOAT)
    ood_d = g.cast(ood32, dbl)
    unknown = g.op("Greater", [ood_d, g.const(np.array(router.ood_threshold, np.float64), "ood_thr")])
    thr = g.op("Gather", [g.const(router.sku_threshold_vector().astype(np.float64), "sku_thr"), sku_index], axis=0)
    accept = g.op("GreaterOrEqual", [g.cast(confidence, dbl), thr])
    code = {v: g.const(np.array(v, np.int64), f"band{v}") for v in (0, 1, 2)}
    band = g.op("Where", [unknown, code[2], g.op("Where", [accept, code[0], code[1]])])

    M = router.category_matrix()
    if M.shape[1]:
        cat_probs = g.op("MatMul", [g.cast(probs, dbl), g.const(M.astype(np.float64), "cat_matrix")])
        cat_idx = g.op("ArgMax", [cat_probs], axis=1, keepdims=1, select_last_index=0)
        cat_conf = g.op("Squeeze", [g.op("GatherElements", [cat_probs, cat_idx], axis=1),
                                    g.const(np.array([1], np.int64), "ax")])
        cat_idx = g.op("Squeeze", [cat_idx, g.const(np.array([1], np.int64), "ax")])
        cat_thr = g.op("Gather", [g.const(router.category_threshold_vector().astype(np.float64), "cat_thr"),
                                  cat_idx], axis=0)
        filled = g.op("And", [g.op("Not", [g.op("Equal", [band, code[0]])]),
                              g.op("GreaterOrEqual", [cat_conf, cat_thr])])
        cat_index = g.op("Where", [filled, cat_idx, g.const(np.array(-1, np.int64), "minus1")])
        cat_confidence = g.op("Where", [filled, cat_conf, g.const(np.array(np.nan, np.float64), "nan")])
    else:
        zeros = g.op("Mul", [sku_index, g.const(np.array(0, np.int64), "zero")])
        cat_index = g.op("Sub", [zeros, g.const(np.array(1, np.int64), "one")])
        cat_confidence = g.op("Div", [g.cast(zeros, dbl), g.const(np.array(0.0, np.float64), "zero")])

    for src, name in zip((band, sku_index, confidence, ood32, topk_index, topk_score, cat_index, cat_confidence),
                         PIPELINE_OUTPUTS, strict=True):
        g.identity(src, name)
    n = "batch"
    outputs = [
        helper.make_tensor_value_info("band", i64, [n]),
        helper.make_tensor_value_info("sku_index", i64, [n]),
        helper.make_tensor_value_info("confidence", TensorProto.FLOAT, [n]),
        helper.make_tensor_value_info("ood_score", TensorProto.FLOAT, [n]),
        helper.make_tensor_value_info("topk_index", i64, [n, kk]),
        helper.make_tensor_value_info("topk_score", TensorProto.FLOAT, [n, kk]),
        helper.make_tensor_value_info("category_index", i64, [n]),
        helper.make_tensor_value_info("category_confidence", dbl, [n]),
    ]
    graph = helper.make_graph(
        g.nodes, "skuscale-decision", [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, dim])], outputs,
        initializer=g.initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version,
                             producer_name="skuscale")


def _catalogue_metadata(model) -> dict[str, str]:
    return {
        "skuscale.skus": json.dumps(model.skus),
        "skuscale.categories": json.dumps(model.router.categories()),
        "skuscale.bands": json.dumps(["accept", "verify", "unknown"]),
    }


def build_pipeline_graph(bundle, *, backbone_path: str | os.PathLike | None = None, top_k: int = TOP_K):
    """Backbone + decision stack of ``bundle`` as one ONNX model.

    Parameters
    ----------
    bundle : Bundle
        A loaded bundle (its ``backbone.onnx`` is read from ``bundle.root``).
    backbone_path : path, optional
        Another backbone file to compose instead (an INT8 one, say); it must map
        ``image`` to the same embedding width.
    top_k : int
        Candidates per image.

    Returns
    -------
    onnx.ModelProto
        ``image (n, 3, H, W) float32`` -> :data:`PIPELINE_OUTPUTS`; the SKU and category
        names are in the model's metadata (``skuscale.skus``, ``skuscale.categories``).
    """
    import onnx
    from onnx import compose

    if backbone_path is None:
        if bundle.root is None:
            raise SkuscaleError("bundle has no folder; load or save it first")
        backbone_path = Path(bundle.root) / bundle.backbone["onnx"]
    backbone = onnx.load(str(backbone_path))
    opset = next((o.version for o in backbone.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise SkuscaleError(f"{backbone_path} declares no default ONNX opset")
    out_name = backbone.graph.output[0].name
    dim = backbone.graph.output[0].type.tensor_type.shape.dim[1].dim_value or int(bundle.backbone["dim"])
    decision = build_decision_graph(bundle.model, dim=dim, opset=opset, ir_version=backbone.ir_version, top_k=top_k,
                                    input_name=out_name)
    # Other opset domains (com.microsoft in a QDQ model) must be declared on both sides.
    extra = [o for o in backbone.opset_import if o.domain not in ("", "ai.onnx")]
    for o in extra:
        decision.opset_import.append(onnx.helper.make_opsetid(o.domain, o.version))
    merged = compose.merge_models(backbone, decision, io_map=[(out_name, out_name)])
    merged.producer_name = "skuscale"
    del merged.metadata_props[:]
    for key, value in _catalogue_metadata(bundle.model).items():
        merged.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    return merged


def export_pipeline(bundle, path: str | os.PathLike, *, backbone_path: str | os.PathLike | None = None,
                    top_k: int = TOP_K) -> Path:
    """Write :func:`build_pipeline_graph` to ``path`` (checked with ``onnx.checker``)."""
    import onnx

    model = build_pipeline_graph(bundle, backbone_path=backbone_path, top_k=top_k)
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, path)
    return path


class PipelineRunner:
    """Runs an exported one-graph pipeline with ONNX Runtime (no skuscale model objects needed).

    Parameters
    ----------
    path : path
        A file written by :func:`export_pipeline`.
    threads : int, optional
        ONNX Runtime intra-op threads.

    Attributes
    ----------
    skus, categories : list of str
        Names behind ``sku_index``/``topk_index`` and ``category_index``, read from the graph's metadata.
    """

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None):
        from skuscale.embed.onnx_embedder import make_session

        self.path = Path(path)
        self.session = make_session(self.path, threads=threads)
        meta = self.session.get_modelmeta().custom_metadata_map
        self.skus = json.loads(meta.get("skuscale.skus", "[]"))
        self.categories = json.loads(meta.get("skuscale.categories", "[]"))
        self.input_name = self.session.get_inputs()[0].name

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs (see :data:`PIPELINE_OUTPUTS`) for a preprocessed batch ``(n, 3, H, W)``.

        Raises
        ------
        ValueError
            When ``batch`` is not numeric or holds NaN or infinite values (the graph
            would route them to arbitrary bands without complaint).
        """
        arr = np.asarray(batch)
        if not np.issubdtype(arr.dtype, np.number) or arr.dtype == bool:
            raise ValueError(f"batch must be a numeric array, got dtype {arr.dtype}")
        arr = np.ascontiguousarray(arr, np.float32)
        if not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).reshape(arr.shape[0], -1).any(axis=1).sum())
            raise ValueError(f"batch contains NaN or infinite values (in {bad} of {arr.shape[0]} images, as "
                             "float32); pass preprocessed images as bundle.json['preprocessing'] describes")
        values = self.session.run(list(PIPELINE_OUTPUTS), {self.input_name: arr})
        return dict(zip(PIPELINE_OUTPUTS, values, strict=True))

    def run_all(self, batches) -> dict[str, np.ndarray]:
        """:meth:`run` over an iterable of batches, outputs concatenated."""
        parts = [self.run(b) for b in batches]
        if not parts:
            raise ValueError("no batches")
        return {k: np.concatenate([p[k] for p in parts]) for k in PIPELINE_OUTPUTS}


def agreement(graph_out: dict[str, np.ndarray], python_out: dict[str, np.ndarray]) -> dict[str, Any]:
    """How closely one-graph outputs match :meth:`RecognitionModel.decide_arrays` on the same images.

    Returns
    -------
    dict
        ``n``, ``band_agreement``, ``sku_agreement``, ``topk_agreement`` (shares in [0, 1]),
        ``max_confidence_diff``, ``max_ood_score_diff``, ``max_topk_score_diff`` and
        ``category_agreement``.
    """
    n = int(python_out["band"].shape[0])
    band = graph_out["band"].astype(np.int64) == python_out["band"].astype(np.int64)
    sku = graph_out["sku_index"] == python_out["sku_index"]
    topk = (graph_out["topk_index"] == python_out["topk_index"]).all(axis=1)
    return {
        "n": n,
        "band_agreement": float(band.mean()),
        "sku_agreement": float(sku.mean()),
        "topk_agreement": float(topk.mean()),
        "category_agreement": float((graph_out["category_index"] == python_out["category_index"]).mean()),
        "max_confidence_diff": float(np.abs(graph_out["confidence"].astype(np.float64)
                                            - python_out["confidence"]).max()),
        "max_ood_score_diff": float(np.abs(graph_out["ood_score"].astype(np.float64)
                                           - python_out["ood_score"]).max()),
        "max_topk_score_diff": float(np.abs(graph_out["topk_score"].astype(np.float64)
                                            - python_out["topk_score"]).max()),
    }


def python_outputs(model, X) -> dict[str, np.ndarray]:
    """:meth:`RecognitionModel.decide_arrays` plus the float32 OOD scores, for :func:`agreement`."""
    out = dict(model.decide_arrays(X))
    out["ood_score"] = model.ood_scores(X)
    return out
