"""Check 1: sample balance, the ratio of the best- to the worst-covered decile of SKUs."""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import numpy as np

from skuscale.assess.base import Check, CheckResult, register, verdict


def decile_size(n_skus: int) -> int:
    """SKUs in a decile: ``ceil(n_skus / 10)``, at least one."""
    return max(1, math.ceil(n_skus / 10))


def decile_skus(counts: Mapping[str, int]) -> tuple[list[str], list[str]]:
    """The top- and bottom-decile SKUs by training count (ties broken by name).

    Each decile holds :func:`decile_size` SKUs; the top list is in descending
    count order, the bottom list in ascending order.
    """
    order = sorted(counts, key=lambda s: (counts[s], s))
    k = decile_size(len(order))
    return order[::-1][:k], order[:k]


def balance_ratio(counts: Mapping[str, int]) -> dict[str, Any]:
    """Mean count of the top-decile SKUs divided by the mean count of the bottom decile.

    Parameters
    ----------
    counts : mapping of SKU to its number of training images (at least one SKU).

    Returns
    -------
    dict
        ``ratio`` (inf when a bottom-decile SKU has no images), ``top_mean``,
        ``bottom_mean``, ``top_skus``, ``bottom_skus``.
    """
    if not counts:
        raise ValueError("no SKUs to assess")
    top, bottom = decile_skus(counts)
    top_mean = float(np.mean([counts[s] for s in top]))
    bottom_mean = float(np.mean([counts[s] for s in bottom]))
    ratio = top_mean / bottom_mean if bottom_mean > 0 else math.inf
    return {"ratio": ratio, "top_mean": top_mean, "bottom_mean": bottom_mean, "top_skus": top,
            "bottom_skus": bottom}


def images_needed(counts: Mapping[str, int], skus: list[str], top_mean: float, max_ratio: float) -> dict[str, int]:
    """Extra images each SKU needs so that ``top_mean / count <= max_ratio``."""
    target = math.ceil(top_mean / max_ratio)
    return {s: target - counts[s] for s in skus if counts[s] < target}


@register
class SampleBalanceCheck(Check):
    name = "sample_balance"
    number = 1
    title = "Sample balance"
    measure = "training images per SKU: mean of the top decile / mean of the bottom decile"
    direction = "max"
    unit = "ratio"
    defaults = MappingProxyType({"max_ratio": 10.0})

    def missing_inputs(self, ctx):
        return None if ctx.train_counts else "no training labels"

    def run(self, ctx, params) -> CheckResult:
        return assess_balance(ctx.train_counts, **params)

    def figures(self, result):
        from skuscale.assess.plots import bar_figure

        counts = result.details["counts"]
        order = sorted(counts, key=lambda s: -counts[s])
        bottom, top = set(result.details["bottom_skus"]), set(result.details["top_skus"])
        colors = ["#c0392b" if s in bottom else "#2e86c1" if s in top else "#95a5a6" for s in order]
        fig = bar_figure(order, [counts[s] for s in order], colors=colors, ylabel="training images",
                         title="Training images per SKU (blue: top decile, red: bottom decile)")
        return [("Training images per SKU", fig)]


def assess_balance(counts: Mapping[str, int], *, max_ratio: float = 10.0) -> CheckResult:
    """Check 1 on a mapping of SKU to training-image count."""
    check = SampleBalanceCheck()
    counts = {str(k): int(v) for k, v in counts.items()}
    b = balance_ratio(counts)
    status = verdict(b["ratio"], max_ratio, "max")
    values = np.array(list(counts.values()))
    details = {
        **b,
        "decile_size": decile_size(len(counts)),
        "n_skus": len(counts),
        "min": int(values.min()),
        "median": float(np.median(values)),
        "max": int(values.max()),
        "counts": counts,
    }
    actions = []
    if status == "fail":
        need = images_needed(counts, b["bottom_skus"], b["top_mean"], max_ratio)
        details["images_needed"] = need
        actions.append(
            "Collect more training images for the bottom-decile SKUs (to reach a ratio of "
            f"{max_ratio:g}): " + ", ".join(f"{s} +{n}" for s, n in sorted(need.items(), key=lambda x: -x[1]))
        )
    summary = (f"top-decile SKUs average {b['top_mean']:.1f} training images, bottom decile {b['bottom_mean']:.1f} "
               f"(ratio {b['ratio']:.2f}, limit {max_ratio:g})")
    return check.result(status, value=b["ratio"], threshold=float(max_ratio), summary=summary, details=details,
                        actions=actions)
