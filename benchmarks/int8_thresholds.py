"""Thresholds after INT8: keep the fp32 ones, re-fit by cross-fitting, or raise them by a margin.

Usage::

    python benchmarks/int8_thresholds.py --bundle BUNDLE [--data ../shared/grocery-store]
        [--int8-backbone PATH] [--cache-dir DIR] [--out out/bench_int8_thresholds.json]

``BUNDLE`` must be built on the training (and reference) images only, so that the
validation images are new to it (``skuscale build --train train.csv --reference
reference.csv``). On the validation images, with the INT8 backbone (quantised here on 2
training images per SKU, as ``export --int8`` does, unless ``--int8-backbone`` is given),
the script scores:

* ``fp32``: the bundle as built;
* ``int8_fp32_thresholds``: INT8 embeddings, fp32 thresholds (``export --keep-thresholds``);
* ``int8_crossfit_refit``: the bundle's own fitting (same config, folds and seed) re-run with
  every held-out row predicted from its INT8 embedding (temperature, OOD cut-off and
  thresholds re-fitted; heads still trained on fp32 embeddings);
* ``int8_margin_qQ``: :func:`skuscale.edge.quantize.refit_thresholds` with quantile ``Q``,
  the movement measured on 10 training images per SKU (``export --int8``'s default is 0.9).

Each row: top-1, automation, auto-accept precision, accepted and wrongly accepted counts.
Only the train, reference and val splits are read.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from skuscale.build import default_cache_dir
from skuscale.bundle import Bundle
from skuscale.data import load_dataset
from skuscale.edge.export import spread_sample
from skuscale.edge.quantize import quantize_backbone, refit_thresholds
from skuscale.embed.cache import EmbeddingCache
from skuscale.embed.onnx_embedder import OnnxEmbedder
from skuscale.embed.pipeline import embed_paths
from skuscale.routing import ACCEPT
from skuscale.training import TrainingConfig, fit_recognition_model

QUANTILES = (0.8, 0.9, 0.95, 0.99)


def score(model, X: np.ndarray, y: np.ndarray) -> dict:
    a = model.decide_arrays(X)
    correct = np.asarray(model.skus)[a["sku_index"]] == y
    accepted = a["band"] == ACCEPT
    return {
        "top1": float(correct.mean()),
        "automation": float(accepted.mean()),
        "auto_precision": float(correct[accepted].mean()) if accepted.any() else None,
        "n_accepted": int(accepted.sum()),
        "n_wrong_accepted": int((accepted & ~correct).sum()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True, type=Path)
    ap.add_argument("--data", type=Path, default=Path("../shared/grocery-store"))
    ap.add_argument("--int8-backbone", type=Path)
    ap.add_argument("--cache-dir", type=Path)
    ap.add_argument("--out", type=Path, default=Path("out/bench_int8_thresholds.json"))
    args = ap.parse_args()
    started = time.perf_counter()
    bundle = Bundle.load(args.bundle)
    if (bundle.metadata.get("training") or {}).get("val"):
        raise SystemExit("the bundle was built with --val: its validation images are not new to it")
    train, ref, val = (load_dataset(args.data / f"{s}.csv") for s in ("train", "reference", "val"))
    ref = ref.subset(np.flatnonzero(np.isin(ref.labels, bundle.skus)))
    cache = EmbeddingCache(args.cache_dir or default_cache_dir())
    fp32_path = args.bundle / bundle.backbone["onnx"]
    with tempfile.TemporaryDirectory() as work:
        int8_path = args.int8_backbone
        if int8_path is None:
            int8_path = quantize_backbone(fp32_path, Path(work) / "int8.onnx", spread_sample(train, 2),
                                          bundle.preprocessing)
        e32, e8 = OnnxEmbedder(fp32_path, bundle.preprocessing), OnnxEmbedder(int8_path, bundle.preprocessing)
        E = {(name, tag): embed_paths(ds.paths, e, cache=cache)
             for name, ds in (("train", train), ("reference", ref), ("val", val))
             for tag, e in (("32", e32), ("8", e8))}
    model, yv = bundle.model, val.labels.astype(str)
    n_seen = int(bundle.seen_in_training([p.read_bytes() for p in val.paths]).sum())
    rows = {"fp32": score(model, E["val", "32"], yv), "int8_fp32_thresholds": score(model, E["val", "8"], yv)}

    cfg = dict(bundle.metadata["training"]["config"])
    cfg["detectors"] = tuple(cfg["detectors"])
    X32 = np.concatenate([E["train", "32"], E["reference", "32"]])
    X8 = np.concatenate([E["train", "8"], E["reference", "8"]])
    y = np.concatenate([train.labels, ref.labels]).astype(str)
    calib = np.arange(y.size) < len(train)
    cats = {**ref.categories(), **train.categories()}
    refit8, _ = fit_recognition_model(X32, y, sku_to_category=cats, calibration_rows=calib,
                                      config=TrainingConfig(**cfg), X_heldout=X8,
                                      ood_skus=bundle.metadata["training"].get("ood_sentinels") or None)
    rows["int8_crossfit_refit"] = {**score(refit8, E["val", "8"], yv), "temperature": refit8.temperature,
                                   "raised": int((refit8.router.sku_threshold_vector()
                                                   > model.router.sku_threshold_vector()).sum()),
                                   "lowered": int((refit8.router.sku_threshold_vector()
                                                   < model.router.sku_threshold_vector()).sum())}

    index = {p: i for i, p in enumerate(train.paths)}
    rows_m = np.array([index[p] for p in spread_sample(train, 10)])
    for q in QUANTILES:
        refitted, record = refit_thresholds(model, E["train", "32"][rows_m], E["train", "8"][rows_m], quantile=q)
        rows[f"int8_margin_q{q:g}"] = {**score(refitted, E["val", "8"], yv), "margin": record["sku_margin"]["margin"],
                                       "n_near": record["sku_margin"]["n_near"]}

    doc = {"bundle": str(args.bundle), "preprocessing": bundle.preprocessing.to_dict(), "n_val": len(val),
           "n_val_seen_in_training": n_seen, "n_margin_images": int(rows_m.size),
           "rows": rows, "seconds": time.perf_counter() - started}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2))
    print(f"{'':24s} {'top-1':>7s} {'auto':>7s} {'prec':>7s} {'acc':>5s} {'wrong':>5s}")
    for name, r in rows.items():
        prec = "-" if r["auto_precision"] is None else f"{r['auto_precision']:.1%}"
        print(f"{name:24s} {r['top1']:7.1%} {r['automation']:7.1%} {prec:>7s} {r['n_accepted']:5d} "
              f"{r['n_wrong_accepted']:5d}")


if __name__ == "__main__":
    main()
