"""Does training the final head on the calibration photos help on sessions new to it? As JSON.

Usage::

    python benchmarks/final_head_sessions.py --bundle B [--bundle B2 ...] [--data ../shared/grocery-store]
        [--cache-dir DIR] [--out out/final_head_sessions.json]

A build trains its final head on the calibration (val) photos too (``final_on_calibration``,
on by default). ``benchmarks/accuracy.py`` cannot read that on sessions new to the head:
a SKU's val photos come from one session, so its two val halves share it. Here val's SKUs
are split at random into two groups instead. One group's photos calibrate (temperature,
OOD cut-off, thresholds) and, when the setting is on, also train the final head; the other
group's photos are routed, so their sessions are new to the head either way. Both
directions are pooled, for each bundle's own backbone and training settings (MSP detector,
two OOD folds, as in ``accuracy.py``).

What it reads is one side of the setting only: the added photos of *other* SKUs can pull
predictions toward those SKUs. Whether a SKU's own val session helps on its other
sessions (the test split's case) cannot be read from train and val. The routed SKUs have
no calibration photos, so their thresholds fall back to category and global ones, and
automation here is not comparable with ``accuracy.py``'s.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from accuracy import load_split, route_halves

from skuscale.assess.context import training_config_of
from skuscale.bundle import Bundle
from skuscale.embed.cache import EmbeddingCache
from skuscale.embed.onnx_embedder import OnnxEmbedder
from skuscale.embed.pipeline import embed_paths


def score_bundle(path: Path, data: dict, cache: EmbeddingCache | None, seed: int) -> dict:
    bundle = Bundle.load(path)
    embedder = OnnxEmbedder(path / bundle.backbone["onnx"], bundle.preprocessing)
    emb = {k: embed_paths(data[k]["paths"], embedder, cache=cache) for k in ("train", "val", "reference")}
    X_fit = np.concatenate([emb["train"], emb["reference"]])
    y_fit = np.concatenate([data["train"]["y"], data["reference"]["y"]])
    X_val, y_val = emb["val"], data["val"]["y"]
    skus = np.unique(y_val)
    order = np.random.default_rng(seed).permutation(skus.size)
    group_of = {s: int(rank % 2) for rank, s in zip(order, skus, strict=True)}
    group = np.array([group_of[s] for s in y_val])
    sentinels = bundle.metadata["training"].get("ood_sentinels") or None
    out = {}
    for final in (True, False):
        routed = route_halves(X_fit, y_fit, X_val, y_val, data["sku_to_category"], training_config_of(bundle),
                              ood_skus=sentinels, final_on_calibration=final, part=group)
        out["final_on_calibration" if final else "final_without_calibration"] = {
            "top1": routed["routed_top1"],
            **{k: routed[k] for k in ("ece", "ece_floor", "automation_rate", "auto_precision")},
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, action="append", required=True)
    parser.add_argument("--data", type=Path, default=Path("../shared/grocery-store"))
    parser.add_argument("--cache-dir", type=Path, default=None, help="embedding cache")
    parser.add_argument("--seed", type=int, default=0, help="of the split of val's SKUs into two groups")
    parser.add_argument("--out", type=Path, default=Path("out/final_head_sessions.json"))
    args = parser.parse_args()
    data = {k: load_split(args.data / f"{k}.csv") for k in ("train", "val", "reference")}
    data["sku_to_category"] = {**data["reference"]["cats"], **data["train"]["cats"], **data["val"]["cats"]}
    cache = EmbeddingCache(args.cache_dir) if args.cache_dir else None
    rows = {}
    for path in args.bundle:
        rows[path.name] = score_bundle(path, data, cache, args.seed)
        print(path.name, json.dumps(rows[path.name]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"data": str(args.data), "split_seed": args.seed, "bundles": rows}, indent=2))


if __name__ == "__main__":
    main()
