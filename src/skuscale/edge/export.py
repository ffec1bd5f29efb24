"""``skuscale export``: a bundle in, an edge bundle out (one-graph pipeline, optionally INT8).

The output is a normal bundle (``Bundle.load`` verifies it) with ``pipeline.onnx``
beside it: backbone, head, temperature, OOD score and routing in one graph. With
``int8`` the backbone is statically quantised (QDQ) on real calibration images, the
fp32 thresholds are verified on INT8 embeddings of the evaluation images and, when they
fail (or always, with ``thresholds="refit"``), raised by the confidence movement INT8
causes on calibration images (:func:`skuscale.edge.quantize.refit_thresholds`); the
per-SKU impact table is stored under ``quantization`` in ``bundle.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from skuscale.bundle import Bundle
from skuscale.data import Dataset, load_dataset
from skuscale.exceptions import SkuscaleError

PIPELINE_CHECK_IMAGES = 16
#: Agreement the exported graph must reach with the Python stack on the check images.
MIN_CHECK_AGREEMENT = 0.99
MAX_CONFIDENCE_DIFF = 1e-4


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def spread_sample(ds: Dataset, per_sku: int) -> list[Path]:
    """Up to ``per_sku`` images of every SKU, evenly spaced within each SKU's rows."""
    out = []
    for sku in ds.skus:
        rows = np.flatnonzero(ds.labels == sku)
        take = rows[np.linspace(0, rows.size - 1, min(per_sku, rows.size)).round().astype(int)]
        out.extend(ds.paths[i] for i in sorted(set(take.tolist())))
    return out


def _recorded_manifest(bundle: Bundle, key: str) -> Path | None:
    value = (bundle.metadata.get("training") or {}).get(key)
    if value and Path(value).exists():  # a manifest or an image folder
        return Path(value)
    return None


def _is_recorded(bundle: Bundle, path: Path) -> bool:
    """Whether ``path`` is the training or validation manifest recorded in ``bundle``."""
    recorded = [_recorded_manifest(bundle, key) for key in ("train", "val")]
    return any(r is not None and r.resolve() == path.resolve() for r in recorded)


def catalogue_only(ds: Dataset, bundle: Bundle) -> tuple[Dataset, list[str]]:
    """The items of ``ds`` whose SKU is in ``bundle``'s catalogue, and the SKUs left out (sorted).

    A bundle's recorded training manifest still lists the SKUs its build dropped with
    ``--exclude-sku`` (``metadata["training"]["excluded_skus"]``): re-read by the export,
    their photos must not calibrate the INT8 ranges or score the comparison.
    """
    left_out = sorted(set(ds.skus) - set(bundle.skus))
    return ds.exclude_skus(left_out), left_out


def _load_manifest(path: Path, bundle: Bundle, *, recorded: bool) -> tuple[Dataset, list[str]]:
    """A manifest as given, or (``recorded``: the bundle's own) kept to the bundle's catalogue."""
    ds = load_dataset(path)
    if not recorded:
        return ds, []
    ds, left_out = catalogue_only(ds, bundle)
    if len(ds) == 0:
        raise SkuscaleError(f"{path}, the manifest recorded in bundle.json, has no images of the bundle's SKUs")
    return ds, left_out


def _auto_decision(kept: dict, refit: dict | None) -> str:
    """What ``--thresholds auto`` decided, from the verification of the fp32 thresholds on INT8."""
    def pct(value) -> str:
        return "-" if value is None else f"{100 * value:.1f}%"

    p8, needed = kept["auto_precision_int8"], kept["required_auto_precision"]
    if kept["passed"]:
        how = "INT8 accepts nothing" if p8 is None else f"auto-accept precision {pct(p8)} >= {pct(needed)} required"
        return f"the fp32 thresholds hold on INT8 ({how}): keeping them"
    margin = f" by +{refit['sku_margin']['margin']:.2f} log-odds" if refit else ""
    return (f"the fp32 thresholds fail on INT8 (auto-accept precision {pct(p8)} < {pct(needed)} required): "
            f"re-fitting them{margin}")


def check_pipeline(bundle: Bundle, pipeline_path: Path, backbone_path: Path, paths: Sequence[Path]) -> dict:
    """Run the one-graph pipeline and the Python stack (same backbone file) on ``paths``; returns the agreement."""
    from skuscale.data.images import load_image
    from skuscale.data.preprocess import preprocess_batch
    from skuscale.edge.pipeline import PipelineRunner, agreement, python_outputs
    from skuscale.embed.onnx_embedder import OnnxEmbedder

    batch = preprocess_batch([load_image(p) for p in paths], bundle.preprocessing)
    graph_out = PipelineRunner(pipeline_path).run(batch)
    X = OnnxEmbedder(backbone_path, bundle.preprocessing).embed_batch(batch)
    return agreement(graph_out, python_outputs(bundle.model, X))


def export_bundle(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    int8: bool = False,
    calibration: str | os.PathLike | None = None,
    evaluation: str | os.PathLike | None = None,
    calibration_per_sku: int = 2,
    exclude_nodes: Sequence[str] = (),
    keep_thresholds: bool = False,
    thresholds_policy: str = "auto",
    margin_per_sku: int = 10,
    margin_quantile: float | None = None,
    cache_dir: str | os.PathLike | None = None,
    step: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Write an edge bundle to ``out``; returns the export report (also stored in ``bundle.json``).

    Parameters
    ----------
    src : path
        A bundle folder.
    out : path
        Output bundle folder; replaced atomically on success.
    int8 : bool
        Quantise the backbone (static, QDQ, per-channel INT8 weights).
    calibration : path, optional
        Manifest of calibration images; default: the bundle's training manifest.
        ``calibration_per_sku`` images of every SKU are used.
    evaluation : path, optional
        Manifest of the pipeline check images (up to :data:`PIPELINE_CHECK_IMAGES`) and,
        with ``int8``, of the per-SKU fp32 vs INT8 comparison; default: the bundle's
        validation manifest, else the calibration manifest (the bundle's training
        manifest). The export refuses to run when none of them is readable.
    exclude_nodes : sequence of str
        Backbone nodes kept in fp32, named as in the graph ONNX Runtime's
        ``quant_pre_process`` leaves (unknown names are refused).
    keep_thresholds : bool
        Shorthand for ``thresholds_policy="keep"``.
    thresholds_policy : {"auto", "refit", "keep"}
        ``"auto"`` ships the fp32 thresholds when they pass the verification on INT8
        embeddings of the evaluation images and re-fits them otherwise; ``"refit"``
        always re-fits; ``"keep"`` ships the fp32 thresholds (still verified). The
        re-fit margin is conservative: on a fine-tuned backbone it cut automation
        from 34% to 12% where the fp32 thresholds already kept 100% precision.
    margin_per_sku : int
        Images per SKU of the calibration manifest on which the INT8 confidence
        movement is measured for the threshold re-fit (no labels are used).
    margin_quantile : float, optional
        Quantile of that movement added to the thresholds (default
        :data:`skuscale.edge.quantize.MARGIN_QUANTILE`).
    cache_dir : path, optional
        Embedding cache (default :func:`skuscale.build.default_cache_dir`).
    step : callable, optional
        Called with a message as each stage starts.

    Raises
    ------
    SkuscaleError
        When the bundle is invalid, a manifest is missing (no check images: pass
        ``evaluation``), a node of ``exclude_nodes`` is not in the backbone, or the
        exported graph disagrees with the Python stack on the check images.
    """
    from skuscale.build import default_cache_dir
    from skuscale.edge.pipeline import PIPELINE_FILE, SUPPORTED_DETECTORS, export_pipeline
    from skuscale.embed.cache import EmbeddingCache

    say = step or (lambda message: None)
    started = time.perf_counter()
    from skuscale.build import check_out_folder, replace_folder

    src, out = Path(src), Path(out)
    if src.resolve() == out.resolve():
        raise SkuscaleError("--out must differ from the source bundle")
    out = check_out_folder(out)
    bundle = Bundle.load(src)
    if not bundle.backbone.get("onnx"):
        raise SkuscaleError(f"bundle {src} has no image backbone (built from embeddings); nothing to export")
    detector = type(bundle.model.detector).__name__
    if detector not in SUPPORTED_DETECTORS:
        raise SkuscaleError(
            f"bundle {src} uses the {detector} OOD detector, which the one-graph export does not support "
            f"(supported: {', '.join(sorted(SUPPORTED_DETECTORS.values()))})"
        )
    if margin_per_sku < 1:
        raise SkuscaleError(f"margin_per_sku must be at least 1, got {margin_per_sku}")
    if keep_thresholds and thresholds_policy not in ("auto", "keep"):
        raise ValueError(f"keep_thresholds contradicts thresholds_policy={thresholds_policy!r}")
    if bundle.backbone.get("precision", "fp32") != "fp32" and int8:
        raise SkuscaleError(f"bundle {src} is already quantised ({bundle.backbone['precision']})")
    # The bundle's own training / validation manifests (re-read from bundle.json, or passed in again,
    # as `skuscale build --device` does) are kept to its catalogue; other manifests are used as given.
    if calibration:
        cal_manifest = Path(calibration)
        cal_recorded = _is_recorded(bundle, cal_manifest)
    else:
        cal_manifest, cal_recorded = _recorded_manifest(bundle, "train"), True
    if int8 and cal_manifest is None:
        raise SkuscaleError("no calibration images: pass --calibration MANIFEST (the bundle's training manifest "
                            "is not readable from here)")
    if evaluation:
        eval_manifest = Path(evaluation)
        eval_recorded = _is_recorded(bundle, eval_manifest)
    elif (recorded_val := _recorded_manifest(bundle, "val")) is not None:
        eval_manifest, eval_recorded = recorded_val, True
    else:
        eval_manifest, eval_recorded = cal_manifest, cal_recorded
    if eval_manifest is None:
        # Without images the graph could not be checked against the Python stack; refuse rather than ship it unchecked.
        raise SkuscaleError(
            f"no images to check the exported pipeline on: pass --eval MANIFEST (the bundle's validation and "
            f"training manifests are not readable from here; the export checks the graph against the Python "
            f"stack on up to {PIPELINE_CHECK_IMAGES} of its images)")

    from skuscale.build import staging_folder_for

    staging = staging_folder_for(out)  # a new, uniquely named folder: never one of the user's
    backbone = dict(bundle.backbone)
    metadata = dict(bundle.metadata)
    report: dict[str, Any] = {"source": str(src), "int8": bool(int8)}
    try:
        shutil.copytree(src, staging, dirs_exist_ok=True)
        fp32_backbone = src / bundle.backbone["onnx"]
        edge_backbone = staging / bundle.backbone["onnx"]
        eval_ds, eval_left_out = _load_manifest(eval_manifest, bundle, recorded=eval_recorded)
        if len(eval_ds) == 0:
            raise SkuscaleError(f"{eval_manifest} has no images to check the exported pipeline on; "
                                "pass --eval MANIFEST")
        edge_model = bundle.model
        if int8:
            from skuscale.edge.quantize import (
                MARGIN_QUANTILE,
                int8_impact,
                quantize_backbone,
                refit_thresholds,
                verify_thresholds,
            )
            from skuscale.embed.onnx_embedder import OnnxEmbedder
            from skuscale.embed.pipeline import embed_paths

            cal_ds, cal_left_out = _load_manifest(cal_manifest, bundle, recorded=cal_recorded)
            cal_paths = spread_sample(cal_ds, calibration_per_sku)
            say(f"quantising the backbone on {len(cal_paths)} calibration images"
                + (f" (left out, not in the bundle: {', '.join(cal_left_out)})" if cal_left_out else ""))
            quantize_backbone(fp32_backbone, edge_backbone, cal_paths, bundle.preprocessing,
                              exclude_nodes=exclude_nodes)
            cache = EmbeddingCache(cache_dir or default_cache_dir())
            emb32 = OnnxEmbedder(fp32_backbone, bundle.preprocessing)
            emb8 = OnnxEmbedder(edge_backbone, bundle.preprocessing)
            policy = "keep" if keep_thresholds else thresholds_policy
            if policy not in ("auto", "refit", "keep"):
                raise ValueError(f"thresholds_policy must be 'auto', 'refit' or 'keep', got {policy!r}")
            refit = None
            refit_model = None
            if policy != "keep":
                margin_paths = spread_sample(cal_ds, margin_per_sku)
                say(f"re-fitting the thresholds on the INT8 confidence movement of {len(margin_paths)} "
                    "calibration images" if policy == "refit" else
                    f"measuring the INT8 confidence movement of {len(margin_paths)} calibration images "
                    "(the re-fit margin, applied only if the fp32 thresholds fail on INT8)")
                refit_model, refit = refit_thresholds(
                    bundle.model, embed_paths(margin_paths, emb32, cache=cache),
                    embed_paths(margin_paths, emb8, cache=cache),
                    quantile=MARGIN_QUANTILE if margin_quantile is None else margin_quantile)
                refit["images"] = {"manifest": str(cal_manifest), "per_sku": margin_per_sku}
            say(f"comparing fp32 and INT8 on {len(eval_ds)} images of {eval_manifest}"
                + (f" (left out, not in the bundle: {', '.join(eval_left_out)})" if eval_left_out else "")
                + (": measuring whether the fp32 thresholds hold on INT8" if policy == "auto" else ""))
            X32 = embed_paths(eval_ds.paths, emb32, cache=cache)
            X8 = embed_paths(eval_ds.paths, emb8, cache=cache)
            counts = (bundle.metadata.get("training") or {}).get("train_counts")
            target = float((bundle.metadata.get("targets") or {}).get("auto_precision", 0.99))
            impact = int8_impact(bundle.model, X32, X8, eval_ds.labels, train_counts=counts)
            thresholds = verify_thresholds(impact, target, method="kept")
            kept = impact["overall"]
            if policy == "auto":
                say(_auto_decision(thresholds, refit))
            if policy == "refit" or (policy == "auto" and not thresholds["passed"]):
                edge_model = refit_model
                impact = int8_impact(bundle.model, X32, X8, eval_ds.labels, train_counts=counts,
                                     model_int8=edge_model)
                thresholds = verify_thresholds(impact, target, method="int8_margin")
            else:
                refit = None if refit is None else {**refit, "applied": False}
            thresholds["policy"] = policy
            seen = int(bundle.seen_in_training([p.read_bytes() for p in eval_ds.paths]).sum())
            keys = ("top1", "automation", "auto_precision")
            o = impact["overall"]
            thresholds["evaluation"] = {
                "fp32": {k: o[f"{k}_fp32"] for k in keys},
                "int8_fp32_thresholds": {k: kept[f"{k}_int8"] for k in keys},
                "int8": {k: o[f"{k}_int8"] for k in keys},
            }
            thresholds["refit"] = refit
            metadata["quantization"] = {
                "method": "onnxruntime quantize_static, QDQ, per-channel QInt8 weights, QUInt8 activations, MinMax",
                "calibration": {"manifest": str(cal_manifest), "n_images": len(cal_paths),
                                "per_sku": calibration_per_sku, "skus_left_out": cal_left_out},
                "excluded_nodes": list(exclude_nodes),
                "evaluation": {"manifest": str(eval_manifest), "n_images": len(eval_ds),
                               "n_seen_in_training": seen, "skus_left_out": eval_left_out},
                "fp32_backbone_sha256": _sha256(fp32_backbone),
                "thresholds": thresholds,
                "impact": impact,
            }
            backbone["precision"] = "int8"
            report["quantization"] = metadata["quantization"]
        # The pre-join backbone only serves check 5 of `skuscale assess`; a device does not carry it.
        pre_join = backbone.pop("pre_join_onnx", None)
        backbone.pop("pre_join_export_max_abs_diff", None)
        if pre_join:
            (staging / pre_join).unlink(missing_ok=True)
        edge = Bundle(model=edge_model, preprocessing=bundle.preprocessing, backbone=backbone, metadata=metadata,
                      training_digests=bundle.training_digests, digest_trained=bundle.digest_trained)
        say("exporting the one-graph pipeline")
        pipeline_path = export_pipeline(edge, staging / PIPELINE_FILE, backbone_path=edge_backbone)
        check_paths = eval_ds.paths[:: max(1, len(eval_ds) // PIPELINE_CHECK_IMAGES)][:PIPELINE_CHECK_IMAGES]
        say(f"checking the pipeline against Python on {len(check_paths)} images of {eval_manifest}")
        check = check_pipeline(edge, pipeline_path, edge_backbone, check_paths)
        check["manifest"] = str(eval_manifest)
        if (check["band_agreement"] < MIN_CHECK_AGREEMENT or check["sku_agreement"] < MIN_CHECK_AGREEMENT
                or check["max_confidence_diff"] > MAX_CONFIDENCE_DIFF):
            raise SkuscaleError(f"the exported pipeline disagrees with the Python stack: {check}")
        metadata["edge"] = {
            "pipeline": PIPELINE_FILE,
            "pipeline_sha256": _sha256(pipeline_path),
            "pipeline_bytes": pipeline_path.stat().st_size,
            "pipeline_check": check,
            "source_bundle_manifest_sha256": json.loads((src / "bundle.json").read_text()).get("manifest_sha256"),
            "source_bundle": str(src),
            "dropped": [pre_join] if pre_join else [],
        }
        report["pipeline_check"] = check
        edge.save(staging)
        replace_folder(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    report["out"] = str(out)
    report["files"] = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}
    report["seconds"] = time.perf_counter() - started
    return report
