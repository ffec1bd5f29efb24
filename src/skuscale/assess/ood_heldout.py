"""Check 5: does the OOD stage flag products it has never seen?

Simulates unknown products the way the build does (:mod:`skuscale.training`):
each fold holds out ~5% of the SKUs, refits the head and the detector without
them, sets the detector's threshold so that it flags the target share of known
held-out images, and counts how many images of the held-out SKUs it flags.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType

import numpy as np

from skuscale._base import check_X_y
from skuscale.assess.base import Check, CheckResult, register, verdict
from skuscale.ood import DETECTORS, auroc, detection_rate, detector_name, threshold_at_flag_rate
from skuscale.training import TrainingConfig, _make_fitted_detector, blocked_folds, sku_holdout_groups


def heldout_sku_detection(
    X, y, *, calibration_rows=None, detectors: Sequence[str] = ("prototype",), temperature: float = 1.0,
    folds: int = 8, holdout_fraction: float = 0.05, flag_rate: float = 0.05, n_known_folds: int = 5,
    config: TrainingConfig | None = None, init=None, seed: int = 0, candidates: Sequence[str] | None = None,
) -> dict:
    """Detection rate of held-out SKUs per detector, pooled over folds.

    Parameters
    ----------
    X, y : embeddings (n, d) and SKU labels
    calibration_rows : bool mask, optional
        Rows whose known-SKU images are the in-distribution test (validation images
        when there are any); default all rows.
    detectors : names in :data:`skuscale.ood.DETECTORS`
    temperature : float
        Softmax temperature for logit-based detectors.
    folds, holdout_fraction : int, float
        Folds, each holding out ``max(1, round(holdout_fraction * n_skus))`` SKUs.
    flag_rate : float
        Share of known held-out images the threshold flags.
    n_known_folds : int
        Contiguous folds over the calibration rows; fold ``g % n_known_folds`` is
        the known test set of SKU fold ``g``.
    config : TrainingConfig, optional
        Head settings.
    init : LinearHead, optional
        Warm start for the heads.
    candidates : sequence of str, optional
        The only SKUs that may be held out (a fine-tuned bundle's sentinel SKUs);
        default every SKU with calibration rows.

    Returns
    -------
    dict
        ``groups`` (held-out SKUs per fold) and ``detectors``: per name
        ``detection_rate``, ``auroc``, ``threshold``, ``known_flag_rate``,
        ``per_fold`` and ``per_sku`` detection rates.
    """
    cfg = config or TrainingConfig()
    X, y = check_X_y(X, y)
    y = y.astype(str)
    calib = np.ones(y.size, bool) if calibration_rows is None else np.asarray(calibration_rows, bool)
    rng = np.random.default_rng(seed)
    known_fold = np.full(y.size, -1)
    known_fold[calib] = blocked_folds(y[calib], n_known_folds, rng)
    groups = sku_holdout_groups(np.unique(y[calib]), folds, holdout_fraction, rng, candidates=candidates,
                                n_skus=None if candidates is None else np.unique(y).size)
    if not groups:
        raise ValueError("too few SKUs to hold any out (need at least three)" if candidates is None else
                         "none of the sentinel SKUs has calibration images here")
    known: dict[str, list[np.ndarray]] = {d: [] for d in detectors}
    unknown: dict[str, list[np.ndarray]] = {d: [] for d in detectors}
    unknown_labels: list[np.ndarray] = []
    fold_ids: list[np.ndarray] = []
    for g, held in enumerate(groups):
        is_unknown = np.isin(y, held)
        known_test = (known_fold == g % n_known_folds) & ~is_unknown
        fit_rows = ~is_unknown & ~known_test
        if not known_test.any() or len(np.unique(y[fit_rows])) < 2:
            continue
        head = cfg.make_head().fit(X[fit_rows], y[fit_rows], init=init)
        unknown_labels.append(y[is_unknown])
        fold_ids.append(np.full(int(is_unknown.sum()), g))
        for name in detectors:
            det = _make_fitted_detector(name, head, temperature, X[fit_rows], y[fit_rows])
            known[name].append(det.score_samples(X[known_test]))
            unknown[name].append(det.score_samples(X[is_unknown]))
    if not unknown_labels:
        raise ValueError("no fold had both known and held-out images")
    labels, fold_of = np.concatenate(unknown_labels), np.concatenate(fold_ids)
    results = {}
    for name in detectors:
        ks, us = np.concatenate(known[name]), np.concatenate(unknown[name])
        thr = threshold_at_flag_rate(ks, flag_rate)
        flagged = us > thr
        results[name] = {
            "detection_rate": detection_rate(us, thr),
            "auroc": auroc(ks, us),
            "threshold": float(thr),
            "known_flag_rate": detection_rate(ks, thr),
            "per_fold": {int(g): float(flagged[fold_of == g].mean()) for g in np.unique(fold_of)},
            "per_sku": {str(s): float(flagged[labels == s].mean()) for s in np.unique(labels)},
        }
    return {"groups": groups, "detectors": results, "n_unknown_images": int(labels.size),
            "n_known_images": int(sum(a.size for a in known[detectors[0]]))}


def ood_basis(bundle) -> str | None:
    """What the bundle's held-out SKUs are to its backbone.

    ``"frozen"`` (ImageNet features: every SKU is new to the backbone),
    ``"sentinels"`` (fine-tuned, with sentinel SKUs kept out of fine-tuning),
    ``"sentinels_late_join"`` (as ``"sentinels"``, but they joined fine-tuning at the
    end; the backbone from before is in the bundle for this check),
    ``"finetuned_on_heldout"`` (fine-tuned on every SKU), or None for a bundle
    built from an embedding file.
    """
    recorded = bundle.metadata.get("training", {}).get("ood_basis")
    if recorded is not None:
        return recorded
    if not bundle.backbone.get("name"):
        return None
    # Bundles from before the basis was recorded.
    return "finetuned_on_heldout" if bundle.backbone.get("finetuned") else "frozen"


def assess_ood(result: dict, *, bundle_detector: str, min_detection: float = 0.70) -> CheckResult:
    """Check 5 on the output of :func:`heldout_sku_detection`."""
    main = result["detectors"][bundle_detector]
    rate = main["detection_rate"]
    status = verdict(rate, min_detection, "min")
    best = max(result["detectors"], key=lambda n: result["detectors"][n]["detection_rate"])
    actions: list[str] = []
    if status == "fail":
        missed = sorted(main["per_sku"].items(), key=lambda kv: kv[1])[:8]
        actions.append("Held-out SKUs that mostly pass as known products: "
                       + ", ".join(f"{s} ({r:.0%} flagged)" for s, r in missed))
        if best != bundle_detector and result["detectors"][best]["detection_rate"] > rate:
            actions.append(f"Switch the OOD detector to {best} (detects "
                           f"{result['detectors'][best]['detection_rate']:.0%} here)")
        actions.append("Do not auto-accept on this bundle without a review loop: route low-confidence items to "
                       "'verify' (raise the accept thresholds) until the backbone separates unseen products better "
                       "(fine-tune it on in-store photos, or use a stronger backbone)")
    summary = (f"the {bundle_detector} detector flags {rate:.1%} of images of held-out SKUs at a "
               f"{main['known_flag_rate']:.1%} false-flag rate on known images ({len(result['groups'])} folds"
               + (f" over {len(result['sentinels'])} sentinel SKUs never seen by fine-tuning"
                  + (", on the backbone from before they joined it)" if result.get("pre_join_backbone") else ")")
                  if result.get("sentinels") else ")"))
    return OodHeldoutCheck().result(status, value=rate, threshold=float(min_detection), summary=summary,
                                    details={**result, "bundle_detector": bundle_detector, "best_detector": best},
                                    actions=actions)


@register
class OodHeldoutCheck(Check):
    name = "ood_heldout"
    number = 5
    title = "OOD calibration on held-out SKUs"
    measure = "share of held-out-SKU images flagged unknown at the bundle's known-image flag rate"
    direction = "min"
    unit = "share"
    defaults = MappingProxyType(
        {"min_detection": 0.70, "folds": 8, "holdout_fraction": 0.05, "compare_detectors": True}
    )

    def missing_inputs(self, ctx):
        if ctx.model is None or ctx.train_X is None:
            return "needs the bundle's model and training embeddings"
        if ctx.bundle is not None and ood_basis(ctx.bundle) == "finetuned_on_heldout":
            return ("needs SKUs the backbone was not fine-tuned on: this bundle's backbone was fine-tuned on every "
                    "SKU, and held-out SKUs it was trained on are flagged far more often than products it has never "
                    "seen, so they are no test (docs/accuracy.md). Rebuild without `--ood-sentinels 0`: by default "
                    "`skuscale build` keeps 10% of the SKUs out of fine-tuning as sentinels")
        late = ctx.bundle is not None and ood_basis(ctx.bundle) == "sentinels_late_join"
        if late and ctx.pre_join_embeddings is None:
            edge = ctx.bundle.metadata.get("edge")
            where = (f"an edge export leaves it out: assess the bundle it was exported from ({edge['source_bundle']})"
                     if edge and edge.get("dropped") else "assess from image manifests, not an embedding file")
            return ("needs the images embedded by the bundle's backbone from before its sentinel SKUs joined "
                    f"fine-tuning ({where}): the final backbone has seen the sentinels, so they are no unknown "
                    "products to it")
        return None

    def run(self, ctx, params) -> CheckResult:
        name = detector_name(ctx.model.detector)
        names = list(DETECTORS) if params["compare_detectors"] else [name]
        basis = ood_basis(ctx.bundle) if ctx.bundle is not None else None
        train_X, val_X = ctx.train_X, ctx.val_X
        temperature, init = ctx.model.temperature, ctx.model.head
        if basis == "sentinels_late_join":
            # The final backbone has seen the sentinels: simulate on the one from before, as the build did.
            pre = ctx.memo("pre_join_embeddings", ctx.pre_join_embeddings)
            train_X, val_X = pre["train"], pre.get("val")
            temperature = ctx.bundle.metadata.get("build", {}).get("ood_temperature") or temperature
            init = None
        if ctx.has_val:
            X = np.concatenate([train_X, val_X])
            y = np.concatenate([ctx.train_y, ctx.val_y])
            calib = np.r_[np.zeros(len(ctx.train_y), bool), np.ones(len(ctx.val_y), bool)]
        else:
            X, y, calib = train_X, ctx.train_y, None
        sentinels = None
        if basis in ("sentinels", "sentinels_late_join"):
            sentinels = ctx.bundle.metadata["training"]["ood_sentinels"]
            ctx.say(f"holding out the bundle's {len(sentinels)} sentinel SKUs (never seen by fine-tuning"
                    + (" before the late join)" if basis == "sentinels_late_join" else ")"))
        else:
            ctx.say(f"holding out {params['holdout_fraction']:.0%} of SKUs over {params['folds']} folds")
        result = heldout_sku_detection(
            X, y, calibration_rows=calib, detectors=names, temperature=temperature,
            folds=int(params["folds"]), holdout_fraction=float(params["holdout_fraction"]),
            flag_rate=ctx.ood_flag_rate, config=ctx.training_config, init=init, seed=ctx.seed,
            candidates=sentinels,
        )
        result["sentinels"] = sentinels
        result["pre_join_backbone"] = basis == "sentinels_late_join"
        return assess_ood(result, bundle_detector=name, min_detection=params["min_detection"])

    def figures(self, result):
        from skuscale.assess.plots import bar_figure

        dets = result.details["detectors"]
        names = list(dets)
        colors = ["#2e86c1" if n == result.details["bundle_detector"] else "#95a5a6" for n in names]
        fig = bar_figure(names, [dets[n]["detection_rate"] for n in names], colors=colors,
                         ylabel="held-out-SKU images flagged", title="Detection of held-out SKUs (blue: bundle's)",
                         hline=result.threshold, ylim=(0, 1), rotate=0)
        return [("Held-out-SKU detection per detector", fig)]
