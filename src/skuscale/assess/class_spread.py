"""Check 6: spread of per-SKU top-1 accuracy on held-out predictions."""

from __future__ import annotations

from types import MappingProxyType

import numpy as np

from skuscale.assess.base import Check, CheckResult, register, verdict
from skuscale.metrics import per_class_accuracy, per_class_spread_floor


def top_confusions(y_true, y_pred, sku: str) -> list[tuple[str, int]]:
    """What ``sku``'s wrongly predicted images were taken for, most frequent first."""
    wrong = (y_true == sku) & (y_pred != sku)
    labels, counts = np.unique(y_pred[wrong], return_counts=True)
    order = np.argsort(-counts, kind="stable")
    return [(str(labels[i]), int(counts[i])) for i in order]


def assess_spread(y_true, y_pred, *, max_std_pp: float = 15.0, train_counts: dict[str, int] | None = None,
                  source: str = "", worst: int = 10) -> CheckResult:
    """Check 6: population standard deviation of per-SKU top-1, in percentage points.

    Parameters
    ----------
    y_true, y_pred : held-out labels and predicted SKUs
    max_std_pp : fail above this spread
    train_counts : training images per SKU, to say which SKUs need more images
    source : how the predictions were obtained (for the report)
    worst : how many of the lowest SKUs to list
    """
    y_true, y_pred = np.asarray(y_true).astype(str), np.asarray(y_pred).astype(str)
    per_sku = per_class_accuracy(y_true, y_pred)
    values = np.array(list(per_sku.values()))
    std_pp = float(values.std() * 100)
    status = verdict(std_pp, max_std_pp, "max")
    counts = train_counts or {}
    ranked = sorted(per_sku, key=lambda s: (per_sku[s], s))
    skus, sku_counts = np.unique(y_true, return_counts=True)
    n_eval_of = dict(zip(skus.tolist(), sku_counts.tolist(), strict=True))
    low = [
        {"sku": s, "top1": per_sku[s], "n_eval": n_eval_of[s], "n_train": counts.get(s),
         "confused_with": [c for c, _ in top_confusions(y_true, y_pred, s)[:3]]}
        for s in ranked[:worst]
    ]
    # With few held-out images per SKU most of the spread is binomial noise; say how much.
    n_eval = np.array([n_eval_of[s] for s in per_sku])
    floor = per_class_spread_floor(n_eval, float((y_true == y_pred).mean()))
    actions = []
    if status == "fail" and std_pp <= floor["p95_pp"]:
        actions.append(f"If every SKU were equally accurate, {n_eval.size} SKUs with {n_eval.min()}-{n_eval.max()} "
                       f"held-out images each would show a spread of {floor['mean_pp']:.1f} pp (95th percentile "
                       f"{floor['p95_pp']:.1f}): this spread cannot be told from sampling noise. Measure on more "
                       "held-out images per SKU")
    elif status == "fail":
        for row in low:
            if row["top1"] >= values.mean():
                break
            confused = f", mostly taken for {', '.join(row['confused_with'])}" if row["confused_with"] else ""
            actions.append(f"{row['sku']}: top-1 {row['top1']:.0%} ({row['n_train']} training images{confused}): "
                           "add images from other sessions and angles, or route it by subclass with its confusers")
    hist_counts, edges = np.histogram(values, bins=10, range=(0.0, 1.0))
    summary = (f"per-SKU top-1 spread {std_pp:.1f} pp (mean {values.mean():.1%}, worst {ranked[0]} "
               f"{per_sku[ranked[0]]:.0%}) over {len(per_sku)} SKUs; sampling alone would give "
               f"{floor['mean_pp']:.1f} pp")
    details = {"source": source, "per_sku_top1": per_sku, "mean_top1": float(values.mean()),
               "micro_top1": float((y_true == y_pred).mean()), "std_pp": std_pp,
               "std_floor_pp": floor["mean_pp"], "std_floor_p95_pp": floor["p95_pp"], "lowest": low,
               "histogram": {"counts": hist_counts.tolist(), "edges": edges.tolist()}}
    return ClassSpreadCheck().result(status, value=std_pp, threshold=float(max_std_pp), summary=summary,
                                     details=details, actions=actions)


@register
class ClassSpreadCheck(Check):
    name = "class_spread"
    number = 6
    title = "Per-class accuracy spread"
    measure = "standard deviation of per-SKU top-1 on held-out predictions, in percentage points"
    direction = "max"
    unit = "pp"
    defaults = MappingProxyType({"max_std_pp": 15.0})

    def missing_inputs(self, ctx):
        if ctx.model is None or ctx.train_X is None:
            return "needs the bundle's model and training embeddings"
        return None

    def run(self, ctx, params) -> CheckResult:
        h = ctx.heldout()
        return assess_spread(h.y_true, h.y_pred, train_counts=ctx.train_counts, source=h.source, **params)

    def figures(self, result):
        from skuscale.assess.plots import histogram_figure

        h = result.details["histogram"]
        fig = histogram_figure(h["edges"], h["counts"], xlabel="per-SKU top-1", ylabel="SKUs",
                               lines={"mean": result.details["mean_top1"]})
        return [("Per-SKU top-1 accuracy", fig)]
