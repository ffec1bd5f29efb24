"""Do sentinel SKUs cost less if they join fine-tuning for its last epochs?

A default fine-tuned build keeps its sentinel SKUs out of fine-tuning, so the backbone
never learns to push the other SKUs away from them (docs/accuracy.md). This script takes
such a bundle's cached fine-tuned weights (phase A), fine-tunes them for a few more epochs
on every SKU (phase B, LP-FT from a probe on phase-A features), and scores both with the
protocol of ``benchmarks/accuracy.py``. It is a quick measurement of a late-join setting
(epochs, learning rate), not the build: phase B's OOD simulation here is optimistic, while
``skuscale build --late-join-epochs N`` simulates unknowns on phase A, where the sentinels
are still unseen. Its top-1 was within one photo of the build's on three seeds.

Usage::

    python benchmarks/sentinel_late_join.py --bundle B [--cache-dir DIR] [--epochs 2] [--lr 2.5e-4]
                                            [--data ../shared/grocery-store] [--out out/late_join.json]
    # control: the same extra epochs on a bundle fine-tuned on every SKU (--ood-sentinels 0)
    python benchmarks/sentinel_late_join.py --bundle B0 --sentinels-from B ...

The control separates the late join from the extra epochs themselves: its phase B trains
as long as the late join does, but no SKU is new to the backbone. ``--sentinels-from``
gives it the sentinel list of the sentinel build of the same seed, for the same counts.
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path

import numpy as np
import torch
from accuracy import score

from skuscale.build import finetuned_weights_path
from skuscale.bundle import Bundle
from skuscale.data import load_dataset
from skuscale.data.images import load_image
from skuscale.embed.backbone import TorchEmbedder, load_backbone
from skuscale.embed.finetune import finetune_backbone
from skuscale.embed.finetune_config import FinetuneConfig
from skuscale.embed.pipeline import embed_paths
from skuscale.training import TrainingConfig


def confusion_counts(X_fit, y_fit, X_val, y_val, sentinels) -> dict:
    pred = TrainingConfig().make_head().fit(X_fit, y_fit).predict(X_val)
    wrong, others = pred != y_val, ~np.isin(y_val, sentinels)
    return {
        "other_photos_wrong": int((others & wrong).sum()),
        "other_photos_predicted_as_sentinel": int((others & wrong & np.isin(pred, sentinels)).sum()),
        "sentinel_photos_wrong": int((~others & wrong).sum()),
        "n_sentinel_photos": int((~others).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True, help="a fine-tuned bundle built with sentinels")
    parser.add_argument("--cache-dir", type=Path, default=None, help="the cache the bundle was built with")
    parser.add_argument("--data", type=Path, default=Path("../shared/grocery-store"))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=2.5e-4)
    parser.add_argument("--out", type=Path, default=Path("out/late_join.json"))
    parser.add_argument("--sentinels-from", type=Path, default=None,
                        help="control run: count and simulate with this sentinel bundle's sentinels")
    args = parser.parse_args()

    bundle = Bundle.load(args.bundle)
    sentinels = bundle.metadata["training"].get("ood_sentinels") or []
    if args.sentinels_from:
        if sentinels:
            raise SystemExit(f"--sentinels-from is for a bundle without sentinels; {args.bundle} has them")
        sentinels = Bundle.load(args.sentinels_from).metadata["training"].get("ood_sentinels") or []
    ft = bundle.metadata["training"].get("finetune")
    if not sentinels or not ft:
        raise SystemExit(f"{args.bundle} is not a fine-tuned bundle with sentinel SKUs (or use --sentinels-from)")
    weights = finetuned_weights_path(args.cache_dir, ft["key"])
    if not weights.is_file():
        raise SystemExit(f"phase-A weights not in the cache: {weights} (pass the build's --cache-dir)")
    train, ref, val = (load_dataset(args.data / f"{k}.csv") for k in ("train", "reference", "val"))
    paths = list(train.paths) + list(ref.paths)
    labels = np.concatenate([train.labels, ref.labels]).astype(str)
    draw = np.r_[np.ones(len(train)), np.full(len(ref), ft["config"]["reference_weight"])]
    y_val = val.labels.astype(str)
    s2c, counts = train.categories(), collections.Counter(train.labels.tolist())

    net = load_backbone(bundle.backbone["name"])
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    rows = {}
    X_a = embed_paths(paths, TorchEmbedder(net), cache=None)
    X_a_val = embed_paths(val.paths, TorchEmbedder(net), cache=None)
    rows["phase_a"] = {**score(X_a, labels, X_a_val, y_val, s2c, counts, ood_skus=sentinels),
                       **confusion_counts(X_a, labels, X_a_val, y_val, sentinels)}
    started = time.perf_counter()
    probe = TrainingConfig().make_head().fit(X_a, labels)
    config = FinetuneConfig(**{**ft["config"], "epochs": args.epochs, "lr": args.lr})
    net, report = finetune_backbone(net, [load_image(p) for p in paths], labels, config=config,
                                    init_weight=probe.coef_, init_bias=probe.intercept_, classes=probe.classes_,
                                    sample_weight=draw)
    seconds = time.perf_counter() - started
    X_b = embed_paths(paths, TorchEmbedder(net), cache=None)
    X_b_val = embed_paths(val.paths, TorchEmbedder(net), cache=None)
    # The OOD simulation here uses phase-B features, which have seen the sentinels:
    # its automation is optimistic about unknowns (see the module docstring).
    rows["phase_b"] = {**score(X_b, labels, X_b_val, y_val, s2c, counts, ood_skus=sentinels),
                       **confusion_counts(X_b, labels, X_b_val, y_val, sentinels),
                       "finetune_seconds": seconds, "final_loss": report.epoch_loss[-1]}
    result = {"bundle": str(args.bundle), "control": bool(args.sentinels_from), "sentinels": sentinels,
              "epochs": args.epochs, "lr": args.lr, **rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=float))
    for name, row in rows.items():
        print(name, {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()
                     if k in ("top1", "coarse_top1", "automation_rate", "auto_precision", "other_photos_wrong",
                              "other_photos_predicted_as_sentinel", "sentinel_photos_wrong", "finetune_seconds")})


if __name__ == "__main__":
    main()
