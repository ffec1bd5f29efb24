"""Check 7: calibration of the confidence the bundle reports (ECE and a reliability diagram)."""

from __future__ import annotations

from types import MappingProxyType

import numpy as np

from skuscale.assess.base import Check, CheckResult, register, verdict
from skuscale.metrics import ece_sampling_floor, expected_calibration_error, reliability_curve


def _nan_to_none(values) -> list[float | None]:
    return [None if not np.isfinite(v) else float(v) for v in values]


def assess_calibration(confidence, correct, *, max_ece: float = 0.05, n_bins: int = 15,
                       source: str = "") -> CheckResult:
    """Check 7: top-label ECE with ``n_bins`` equal-width bins (Guo et al., ICML 2017).

    Parameters
    ----------
    confidence : calibrated top-1 probability per held-out image
    correct : whether the top-1 SKU was right
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    ece = expected_calibration_error(confidence, correct, n_bins)
    curve = reliability_curve(confidence, correct, n_bins)
    status = verdict(ece, max_ece, "max")
    gap = float(confidence.mean() - correct.mean())
    direction = "over" if gap > 0 else "under"
    # Binned ECE is biased upwards on few images; say how much of it sampling alone explains.
    floor = ece_sampling_floor(confidence, n_bins=n_bins)
    actions = []
    if status == "fail" and ece <= floor["p95"]:
        actions.append(f"A perfectly calibrated model would show ECE {floor['mean']:.3f} on {confidence.size} images "
                       f"(95th percentile {floor['p95']:.3f}): this ECE cannot be told from sampling noise. Measure "
                       "on more held-out photos before changing the calibration")
    elif status == "fail":
        count, acc, conf = curve["count"], curve["accuracy"], curve["confidence"]
        used = np.flatnonzero(count > 0)
        worst = used[np.argsort(-(count[used] * np.abs(acc[used] - conf[used])))[:3]]
        bins = ", ".join(f"[{curve['bin_edges'][b]:.2f}, {curve['bin_edges'][b + 1]:.2f}): confidence "
                         f"{conf[b]:.2f} vs accuracy {acc[b]:.2f} (n={count[b]})" for b in worst)
        actions.append(f"The model is {direction}confident by {abs(gap):.1%} on average; the worst bins are {bins}")
        actions.append("Refit the temperature on held-out photos from other shooting sessions (build with --val, "
                       "with more validation images per SKU); until then treat confidence as a ranking, and rely on "
                       "the per-SKU accept thresholds, not on the raw probability")
    summary = (f"ECE {ece:.4f} over {confidence.size} held-out images ({direction}confident by {abs(gap):.1%}; "
               f"perfect calibration would show {floor['mean']:.3f} on this many)")
    details = {"source": source, "ece": ece, "n_bins": n_bins, "n": int(confidence.size),
               "ece_floor": floor["mean"], "ece_floor_p95": floor["p95"],
               "mean_confidence": float(confidence.mean()), "accuracy": float(correct.mean()),
               "reliability": {"bin_edges": curve["bin_edges"].tolist(), "count": curve["count"].tolist(),
                               "accuracy": _nan_to_none(curve["accuracy"]),
                               "confidence": _nan_to_none(curve["confidence"])}}
    return CalibrationCheck().result(status, value=ece, threshold=float(max_ece), summary=summary, details=details,
                                     actions=actions)


@register
class CalibrationCheck(Check):
    name = "calibration"
    number = 7
    title = "Calibration"
    measure = "expected calibration error of the calibrated top-1 confidence on held-out predictions"
    direction = "max"
    unit = "ECE"
    defaults = MappingProxyType({"max_ece": 0.05, "n_bins": 15})

    def missing_inputs(self, ctx):
        if ctx.model is None or ctx.train_X is None:
            return "needs the bundle's model and training embeddings"
        return None

    def run(self, ctx, params) -> CheckResult:
        h = ctx.heldout()
        return assess_calibration(h.confidence, h.correct, max_ece=params["max_ece"], n_bins=int(params["n_bins"]),
                                  source=h.source)

    def figures(self, result):
        from skuscale.assess.plots import reliability_figure

        return [("Reliability diagram", reliability_figure(result.details["reliability"]))]
