"""INT8 backbones (static QDQ quantisation calibrated on real images) and what they cost per SKU.

Quantisation error is not spread evenly: SKUs with few training images sit closer
to their neighbours' decision boundaries, so the same embedding perturbation flips
more of their predictions. :func:`int8_impact` therefore reports every SKU, the
bottom sample-count decile against the top one, and flags each SKU that loses more
than ``flag_points`` points.

INT8 also moves the calibrated confidence of every image a little, so an fp32-fitted
threshold lets through images whose fp32 confidence was below it. :func:`threshold_margin`
measures that movement, in log-odds, on images near their threshold, and
:func:`refit_thresholds` raises every threshold by it (see ``docs/edge.md`` for the
measurements behind the rule).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from skuscale.data.preprocess import Preprocessing
from skuscale.exceptions import SkuscaleError
from skuscale.routing import ACCEPT, NEVER_ACCEPT, UNKNOWN

#: Quantile of the INT8 confidence movement (|Δ log-odds| near the threshold) added to every threshold.
MARGIN_QUANTILE = 0.9
#: Half-width, in log-odds, of the band around a threshold whose images set the margin.
MARGIN_WINDOW = 1.0
# Probabilities are clipped to [_EPS, 1 - _EPS] before taking log-odds. The confidences are float32 softmax
# outputs: the largest float32 below 1 is 1 - 2**-24, so anything closer to 1 than that (1.0 itself, which
# float32 softmax often returns) is indistinguishable from it. A finer clip (1e-12) made one float32 step
# below 1 read as 11 log-odds of movement.
_EPS = float(np.finfo(np.float32).epsneg)

#: Points of top-1, automation or auto-accept precision a SKU may lose before it is flagged.
FLAG_POINTS = 5.0


class ImageCalibrationReader:
    """An ONNX Runtime calibration data reader over real, preprocessed images.

    It has the ``get_next`` / ``rewind`` interface of ``onnxruntime.quantization.CalibrationDataReader``
    without subclassing it: importing ONNX Runtime's quantisation tooling needs the ``onnx``
    package, which reading an INT8 bundle's records (:func:`quantization_section`) must not.

    Parameters
    ----------
    paths : sequence of path
        Image files (decoded with EXIF orientation, preprocessed as the bundle does).
    preprocessing : Preprocessing
    input_name : str
        The model's image input.
    batch_size : int
    """

    def __init__(self, paths: Sequence[str | os.PathLike], preprocessing: Preprocessing, input_name: str = "image",
                 *, batch_size: int = 16):
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise ValueError("no calibration images")
        self.preprocessing = preprocessing
        self.input_name = input_name
        self.batch_size = int(batch_size)
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        from skuscale.data.images import load_image
        from skuscale.data.preprocess import preprocess_batch

        if self._next >= len(self.paths):
            return None
        chunk = self.paths[self._next : self._next + self.batch_size]
        self._next += len(chunk)
        return {self.input_name: preprocess_batch([load_image(p) for p in chunk], self.preprocessing)}

    def rewind(self) -> None:
        self._next = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self.get_next()
        if batch is None:
            raise StopIteration
        return batch

    def __len__(self) -> int:
        return len(self.paths)


def _check_node_names(model, names: Sequence[str], *, shown: int = 8) -> None:
    """Refuse node names that are not in ``model`` (the graph ``quantize_static`` is given)."""
    present = [n.name for n in model.graph.node]
    unknown = sorted({str(n) for n in names} - set(present))
    if not unknown:
        return
    convs = [n.name for n in model.graph.node if n.op_type in ("Conv", "MatMul", "Gemm") and n.name]
    examples = (convs or [n for n in present if n])[:shown]
    raise SkuscaleError(
        f"--exclude-node: no node named {', '.join(map(repr, unknown))} in the backbone as quantised "
        f"(after ONNX Runtime's pre-processing, {len(present)} nodes); node names are those of the "
        f"pre-processed graph, for example {', '.join(examples)}"
    )


def quantize_backbone(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    calibration_paths: Sequence[str | os.PathLike],
    preprocessing: Preprocessing,
    *,
    per_channel: bool = True,
    exclude_nodes: Sequence[str] = (),
    calibrate_method: str = "minmax",
) -> Path:
    """Static INT8 quantisation (QDQ format) of an ONNX backbone.

    Weights are signed INT8 (per output channel by default), activations unsigned
    INT8 with ranges observed on ``calibration_paths``. This is post-training static
    quantisation as in Jacob et al., "Quantization and Training of Neural Networks
    for Efficient Integer-Arithmetic-Only Inference", CVPR 2018, via ONNX Runtime's
    ``quantize_static``.

    Parameters
    ----------
    src, dst : path
        fp32 model in, INT8 QDQ model out.
    calibration_paths : sequence of path
        Real images that set the activation ranges (a few per SKU is plenty).
    preprocessing : Preprocessing
    per_channel : bool
        Per-output-channel weight scales (much better than per-tensor on depthwise convs).
    exclude_nodes : sequence of str
        Node names kept in fp32 (the mitigation for sensitive layers): names of the
        graph as ONNX Runtime's ``quant_pre_process`` leaves it (it folds the exported
        ``Pad`` and constant nodes away, so some names of ``src`` no longer exist).
    calibrate_method : {"minmax", "percentile", "entropy"}

    Raises
    ------
    SkuscaleError
        When a name of ``exclude_nodes`` is not a node of the pre-processed graph
        (ONNX Runtime would silently quantise every node anyway).
    ValueError
        On an unknown ``calibrate_method``.
    """
    import tempfile

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if calibrate_method not in methods:
        raise ValueError(f"calibrate_method must be one of {sorted(methods)}, got {calibrate_method!r}")
    import onnx

    model = onnx.load(str(src))
    reader = ImageCalibrationReader(calibration_paths, preprocessing, model.graph.input[0].name)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    with tempfile.TemporaryDirectory() as work:
        # ONNX Runtime's pre-processing folds the exported explicit Pad nodes into the convolutions;
        # left in, each Pad forces a dequantise/quantise pair and INT8 runs barely faster than fp32.
        prepared = Path(work) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        if exclude_nodes:
            _check_node_names(onnx.load(str(prepared)), exclude_nodes)
        quantize_static(
            str(prepared), str(tmp), reader,
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            calibrate_method=methods[calibrate_method],
            nodes_to_exclude=list(exclude_nodes),
        )
    os.replace(tmp, dst)
    return dst


def _share(mask: np.ndarray, of: np.ndarray) -> float | None:
    return float(mask[of].mean()) if of.any() else None


def _points(before: float | None, after: float | None) -> float | None:
    if before is None or after is None:
        return None
    return round((after - before) * 100.0, 4)


def _decile_summary(rows: list[dict[str, Any]], fraction: float = 0.1) -> dict[str, Any]:
    order = sorted(rows, key=lambda r: (r["train_count"], r["sku"]))
    n = max(1, math.ceil(len(order) * fraction))

    def summary(group: list[dict[str, Any]]) -> dict[str, Any]:
        t32 = [r["top1_fp32"] for r in group if r["top1_fp32"] is not None]
        t8 = [r["top1_int8"] for r in group if r["top1_int8"] is not None]
        mean32 = float(np.mean(t32)) if t32 else None
        mean8 = float(np.mean(t8)) if t8 else None
        return {
            "skus": [r["sku"] for r in group],
            "train_count_range": [group[0]["train_count"], group[-1]["train_count"]],
            "mean_top1_fp32": mean32,
            "mean_top1_int8": mean8,
            "top1_change_points": _points(mean32, mean8),
        }

    return {"bottom": summary(order[:n]), "top": summary(order[-n:])}


def int8_impact(
    model,
    X_fp32: np.ndarray,
    X_int8: np.ndarray,
    y_true: Sequence[str],
    *,
    train_counts: Mapping[str, int] | None = None,
    flag_points: float = FLAG_POINTS,
    model_int8=None,
) -> dict[str, Any]:
    """Per-SKU cost of an INT8 backbone: the decision stack on fp32 and on INT8 embeddings.

    Parameters
    ----------
    model : RecognitionModel
    X_fp32, X_int8 : ndarray (n, d)
        Embeddings of the same images from the fp32 and the INT8 backbone.
    y_true : sequence of str
        True SKUs; labels outside the catalogue count as unknown products.
    train_counts : mapping, optional
        Training images per SKU (the bundle's ``training.train_counts``), for the deciles.
    flag_points : float
        A SKU is flagged when its top-1, automation or auto-accept precision drops by
        more than this many points.
    model_int8 : RecognitionModel, optional
        The stack that runs on the INT8 embeddings (``model`` with re-fitted
        thresholds, say); default ``model``. It must have ``model``'s catalogue.

    Returns
    -------
    dict
        ``overall`` (top-1, automation, auto-accept precision for both, band and SKU
        agreement), ``per_sku`` rows, ``deciles`` (bottom vs top by sample count) and
        ``flagged`` (SKU names).
    """
    y = np.asarray(y_true, dtype=str)
    skus = np.asarray(model.skus, dtype=str)
    a32 = model.decide_arrays(X_fp32)
    if model_int8 is not None and list(model_int8.skus) != list(model.skus):
        raise ValueError("model_int8 must have the catalogue of model")
    a8 = (model_int8 or model).decide_arrays(X_int8)
    known = np.isin(y, skus)
    counts = dict(train_counts or {})

    def stats(a: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, float | None]:
        correct = (skus[a["sku_index"]] == y) & known
        accepted = a["band"] == ACCEPT
        return {
            "top1": _share(correct, mask & known),
            "automation": _share(accepted, mask & known),
            "auto_precision": float(correct[accepted & mask].mean()) if (accepted & mask).any() else None,
            "unknown_band": _share(a["band"] == UNKNOWN, mask),
        }

    rows = []
    for sku in sorted(set(y[known])):
        mask = y == sku
        s32, s8 = stats(a32, mask), stats(a8, mask)
        row: dict[str, Any] = {"sku": str(sku), "n": int(mask.sum()), "train_count": int(counts.get(sku, 0))}
        for key in ("top1", "automation", "auto_precision"):
            row[f"{key}_fp32"], row[f"{key}_int8"] = s32[key], s8[key]
            row[f"{key}_change_points"] = _points(s32[key], s8[key])
        lost = [k for k in ("top1", "automation", "auto_precision")
                if row[f"{k}_change_points"] is not None and row[f"{k}_change_points"] < -flag_points]
        row["flagged"] = bool(lost)
        row["flag_reasons"] = lost
        rows.append(row)
    everything = np.ones(y.size, dtype=bool)
    o32, o8 = stats(a32, everything), stats(a8, everything)
    overall = {
        "n": int(y.size),
        "n_known": int(known.sum()),
        **{f"{k}_fp32": o32[k] for k in o32},
        **{f"{k}_int8": o8[k] for k in o8},
        "top1_change_points": _points(o32["top1"], o8["top1"]),
        "automation_change_points": _points(o32["automation"], o8["automation"]),
        "auto_precision_change_points": _points(o32["auto_precision"], o8["auto_precision"]),
        "band_agreement": float((a32["band"] == a8["band"]).mean()),
        "sku_agreement": float((a32["sku_index"] == a8["sku_index"]).mean()),
        "max_confidence_diff": float(np.abs(a32["confidence"] - a8["confidence"]).max()),
        "embedding_cosine_min": float(_cosines(X_fp32, X_int8).min()),
        "embedding_cosine_mean": float(_cosines(X_fp32, X_int8).mean()),
    }
    return {
        "overall": overall,
        "per_sku": rows,
        "deciles": _decile_summary(rows) if rows else None,
        "flagged": [r["sku"] for r in rows if r["flagged"]],
        "flag_points": float(flag_points),
    }


def _cosines(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    A = A / np.maximum(np.linalg.norm(A, axis=1, keepdims=True), 1e-12)
    B = B / np.maximum(np.linalg.norm(B, axis=1, keepdims=True), 1e-12)
    return (A * B).sum(axis=1)


def log_odds(p) -> np.ndarray:
    """``log(p / (1 - p))`` in float64, with ``p`` clipped to float32 resolution, ``[2**-24, 1 - 2**-24]``.

    The confidences are float32 softmax outputs, which saturate: 1.0 and the largest
    float32 below it (``1 - 2**-24``) get the same log-odds, so that a one-step rounding
    difference near 1 does not read as a large confidence movement.

    Parameters
    ----------
    p : array-like
        Probabilities.

    Returns
    -------
    ndarray
        Log-odds, finite (at most about 16.6 in absolute value).
    """
    q = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1.0 - _EPS)
    return np.log(q) - np.log1p(-q)


def threshold_margin(
    conf_fp32,
    conf_int8,
    threshold_fp32,
    threshold_int8,
    *,
    quantile: float = MARGIN_QUANTILE,
    window: float = MARGIN_WINDOW,
) -> dict[str, Any]:
    """How far INT8 moves the calibrated confidence of images near their threshold, in log-odds.

    An image is *near* when, under fp32 or under INT8, the log-odds of its top-1
    confidence is within ``window`` of the log-odds of the threshold applied to it
    (thresholds of :data:`~skuscale.routing.NEVER_ACCEPT` or above are never near).
    The margin is the ``quantile`` of ``|logit(conf_int8) - logit(conf_fp32)|`` over
    the near images (over all images when none is near; 0 without images). Log-odds,
    because the thresholds sit at 0.99-0.99999, where the same perturbation of the
    logits is a thousand times smaller in probability near 1 than near 0.9. No
    labels are used.

    Parameters
    ----------
    conf_fp32, conf_int8 : array-like (n,)
        Top-1 calibrated confidence of the same images with the fp32 and the INT8 backbone.
    threshold_fp32, threshold_int8 : array-like (n,)
        Threshold applied to each image's top-1 SKU under fp32 and under INT8 (the
        top-1 SKU may differ).
    quantile : float
        In ``(0, 1]``.
    window : float
        Half-width of the near band, log-odds, positive.

    Returns
    -------
    dict
        ``margin`` (log-odds, >= 0), ``quantile``, ``window``, ``n``, ``n_near`` and
        ``basis`` (``"near"``, ``"all"`` or ``"none"``: which images set the margin).

    Raises
    ------
    ValueError
        On arrays of different shapes, non-finite confidences, or parameters out of range.
    """
    arrays = [np.asarray(a, dtype=np.float64) for a in (conf_fp32, conf_int8, threshold_fp32, threshold_int8)]
    if arrays[0].ndim != 1 or any(a.shape != arrays[0].shape for a in arrays):
        raise ValueError(f"need four 1-D arrays of one length, got shapes {[a.shape for a in arrays]}")
    c32, c8, t32, t8 = arrays
    if not (np.isfinite(c32).all() and np.isfinite(c8).all()):
        raise ValueError("confidences must be finite")
    if not 0.0 < float(quantile) <= 1.0:
        raise ValueError(f"quantile must be in (0, 1], got {quantile!r}")
    if not float(window) > 0.0:
        raise ValueError(f"window must be positive, got {window!r}")
    l32, l8 = log_odds(c32), log_odds(c8)
    near = ((t32 < 1.0) & (np.abs(l32 - log_odds(t32)) <= window)) | (
        (t8 < 1.0) & (np.abs(l8 - log_odds(t8)) <= window))
    moved = np.abs(l8 - l32)
    if near.any():
        basis, values = "near", moved[near]
    elif moved.size:
        basis, values = "all", moved
    else:
        basis, values = "none", np.zeros(1)
    return {
        "margin": float(np.quantile(values, float(quantile))),
        "quantile": float(quantile),
        "window": float(window),
        "n": int(c32.size),
        "n_near": int(near.sum()),
        "basis": basis,
    }


def raise_thresholds(thresholds, margin: float) -> np.ndarray:
    """Thresholds moved up by ``margin`` in log-odds: ``sigmoid(logit(t) + margin)``.

    Thresholds of 1 or more (:data:`~skuscale.routing.NEVER_ACCEPT`) stay as they are;
    no threshold goes down, whatever the rounding.

    Parameters
    ----------
    thresholds : array-like
        Thresholds on calibrated confidence.
    margin : float
        Log-odds to add, ``>= 0``.

    Returns
    -------
    ndarray
        float64 thresholds, each ``>=`` its input (equal when ``margin`` is 0).

    Raises
    ------
    ValueError
        When ``margin`` is negative or not finite.
    """
    m = float(margin)
    if not (np.isfinite(m) and m >= 0.0):
        raise ValueError(f"margin must be finite and >= 0, got {margin!r}")
    t = np.asarray(thresholds, dtype=np.float64)
    if m == 0.0:
        return t.copy()
    raised = 1.0 / (1.0 + np.exp(-(log_odds(t) + m)))
    return np.where(t >= 1.0, t, np.maximum(t, raised))


def _threshold_summary(values) -> dict[str, Any]:
    v = np.asarray(list(values), dtype=np.float64)
    live = v[v < 1.0]
    return {
        "n": int(v.size),
        "n_never_accept": int((v >= NEVER_ACCEPT).sum()),
        "min": float(live.min()) if live.size else None,
        "median": float(np.median(live)) if live.size else None,
        "max": float(live.max()) if live.size else None,
        "median_log_odds": float(np.median(log_odds(live))) if live.size else None,
    }


def _raise_table(table, margin: float):
    import dataclasses

    names = list(table.per_sku)
    per_sku = dict(zip(names, raise_thresholds([table.per_sku[k] for k in names], margin).tolist(), strict=True))
    cats = list(table.per_category)
    per_category = dict(zip(cats, raise_thresholds([table.per_category[k] for k in cats], margin).tolist(),
                            strict=True))
    return dataclasses.replace(table, per_sku=per_sku, per_category=per_category,
                               global_=float(raise_thresholds([table.global_], margin)[0]))


def refit_thresholds(
    model,
    X_fp32: np.ndarray,
    X_int8: np.ndarray,
    *,
    quantile: float = MARGIN_QUANTILE,
    window: float = MARGIN_WINDOW,
):
    """Raise a model's thresholds by the confidence movement an INT8 backbone causes.

    The margin of :func:`threshold_margin` is measured on ``X_fp32`` / ``X_int8``
    (embeddings of the same images; no labels needed) and added, in log-odds, to every
    SKU threshold (per SKU, per-category backoff and global). When the model routes
    categories, its category thresholds get their own margin, measured the same way
    on the summed category probabilities. Head, temperature and OOD detector are
    unchanged.

    Parameters
    ----------
    model : RecognitionModel
        The fp32-fitted model.
    X_fp32, X_int8 : ndarray (n, d)
        Embeddings of the same images (calibration images, say) from both backbones.
    quantile, window : float
        See :func:`threshold_margin`.

    Returns
    -------
    model : RecognitionModel
        A copy with the raised thresholds.
    record : dict
        ``method`` (``"int8_margin"``), ``sku_margin`` and ``category_margin`` (the
        :func:`threshold_margin` results; the latter None without category routing),
        ``n_images``, ``n_raised``, and ``sku_thresholds_fp32`` / ``sku_thresholds_int8``
        summaries (min, median, max of the accepting thresholds, and how many never accept).

    Raises
    ------
    ValueError
        When the embedding arrays differ in shape.
    """
    import dataclasses

    X32, X8 = np.asarray(X_fp32), np.asarray(X_int8)
    if X32.shape != X8.shape or X32.ndim != 2:
        raise ValueError(f"X_fp32 and X_int8 must be (n, d) arrays of one shape, got {X32.shape} and {X8.shape}")
    router = model.router
    a32, a8 = model.decide_arrays(X32), model.decide_arrays(X8)
    sku_margin = threshold_margin(a32["confidence"], a8["confidence"], a32["threshold"], a8["threshold"],
                                  quantile=quantile, window=window)
    sku_table = _raise_table(router.sku_thresholds, sku_margin["margin"])
    category_margin, category_table = None, router.category_thresholds
    if category_table is not None and router.categories():
        cat_m, cat_thr = router.category_matrix(), router.category_threshold_vector()
        c32 = model.predict_proba(X32).astype(np.float64) @ cat_m
        c8 = model.predict_proba(X8).astype(np.float64) @ cat_m
        i32, i8 = c32.argmax(axis=1), c8.argmax(axis=1)
        category_margin = threshold_margin(
            np.minimum(c32.max(axis=1), 1.0), np.minimum(c8.max(axis=1), 1.0), cat_thr[i32], cat_thr[i8],
            quantile=quantile, window=window)
        category_table = _raise_table(category_table, category_margin["margin"])
    new_router = dataclasses.replace(router, sku_thresholds=sku_table, category_thresholds=category_table)
    before, after = router.sku_threshold_vector(), new_router.sku_threshold_vector()
    record = {
        "method": "int8_margin",
        "sku_margin": sku_margin,
        "category_margin": category_margin,
        "n_images": int(X32.shape[0]),
        "n_raised": int((after > before).sum()),
        "sku_thresholds_fp32": _threshold_summary(before),
        "sku_thresholds_int8": _threshold_summary(after),
    }
    return dataclasses.replace(model, router=new_router), record


def verify_thresholds(impact: Mapping[str, Any], target_precision: float, *, tolerance: float = 0.005,
                      method: str = "kept") -> dict:
    """Check that the INT8 bundle's thresholds keep the fp32 auto-accept precision.

    Passes when the INT8 auto-accept precision of ``impact`` (the thresholds the INT8
    bundle ships with) is at least ``min(target, fp32 precision) - tolerance``;
    otherwise the INT8 bundle should not be deployed as it is. ``method`` is recorded
    as given (``"kept"`` when the fp32 thresholds are shipped, ``"int8_margin"`` after
    :func:`refit_thresholds`; records written before the re-fit existed say ``"verified"``).

    Parameters
    ----------
    impact : mapping
        An :func:`int8_impact` result (its INT8 side run with the shipped thresholds).
    target_precision : float
        The bundle's auto-accept precision target.
    tolerance : float
        Precision (as a fraction) the INT8 bundle may lose below the requirement.
    method : str
        How the shipped thresholds were obtained (recorded as given).

    Returns
    -------
    dict
        ``method``, ``passed``, ``target_precision``, ``required_auto_precision`` (None
        when INT8 accepts nothing), ``auto_precision_fp32``, ``auto_precision_int8`` and
        ``tolerance``.
    """
    o = impact["overall"]
    p32, p8 = o["auto_precision_fp32"], o["auto_precision_int8"]
    if p8 is None:
        passed, needed = o["automation_int8"] in (None, 0.0), None
    else:
        needed = min(float(target_precision), p32 if p32 is not None else float(target_precision)) - tolerance
        passed = p8 >= needed
    return {
        "method": method,
        "passed": bool(passed),
        "target_precision": float(target_precision),
        "required_auto_precision": needed,
        "auto_precision_fp32": p32,
        "auto_precision_int8": p8,
        "tolerance": tolerance,
    }


def quantization_section(bundle) -> dict[str, Any] | None:
    """The INT8 part of a readiness report for ``bundle``, or None for an fp32 bundle.

    Returns the recorded method, calibration, threshold verification, overall fp32 vs
    INT8 numbers, the bottom/top sample-count deciles, the flagged SKUs and the per-SKU
    table (worst top-1 change first), ready to render.
    """
    q = bundle.metadata.get("quantization")
    if not q:
        return None
    impact = q["impact"]
    rows = sorted(impact["per_sku"], key=lambda r: (r["top1_change_points"] or 0.0, r["sku"]))
    return {
        "method": q["method"],
        "calibration": q["calibration"],
        "evaluation": q["evaluation"],
        "thresholds": q["thresholds"],
        "overall": impact["overall"],
        "deciles": impact["deciles"],
        "flagged": impact["flagged"],
        "flag_points": impact["flag_points"],
        "per_sku": rows,
    }
