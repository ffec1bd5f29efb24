"""INT8 backbones (static QDQ quantisation calibrated on real images) and what they cost per SKU.

Quantisation error is not spread evenly: SKUs with few training images sit closer
to their neighbours' decision boundaries, so the same embedding perturbation flips
more of their predictions. :func:`int8_impact` therefore reports every SKU, the
bottom sample-count decile against the top one, and flags each SKU that loses more
than ``flag_points`` points.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from skuscale.data.preprocess import Preprocessing
from skuscale.routing import ACCEPT, UNKNOWN

#: Points of top-1, automation or auto-accept precision a SKU may lose before it is flagged.
FLAG_POINTS = 5.0


class ImageCalibrationReader(CalibrationDataReader):
    """An ONNX Runtime ``CalibrationDataReader`` over real, preprocessed images.

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

    def __len__(self) -> int:
        return len(self.paths)


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
        Node names kept in fp32 (the mitigation for sensitive layers).
    calibrate_method : {"minmax", "percentile", "entropy"}
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
) -> dict[str, Any]:
    """Per-SKU cost of an INT8 backbone: the same decision stack on fp32 and INT8 embeddings.

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
    a8 = model.decide_arrays(X_int8)
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


def verify_thresholds(impact: Mapping[str, Any], target_precision: float, *, tolerance: float = 0.005) -> dict:
    """Check that the fp32-fitted thresholds still hold on INT8 embeddings.

    Passes when the INT8 auto-accept precision is at least ``min(target, fp32 precision) - tolerance``:
    the thresholds are then kept; otherwise they should be re-fitted on INT8 held-out
    predictions (rebuild with the INT8 backbone) before deploying.
    """
    o = impact["overall"]
    p32, p8 = o["auto_precision_fp32"], o["auto_precision_int8"]
    if p8 is None:
        passed, needed = o["automation_int8"] in (None, 0.0), None
    else:
        needed = min(float(target_precision), p32 if p32 is not None else float(target_precision)) - tolerance
        passed = p8 >= needed
    return {
        "method": "verified",
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
