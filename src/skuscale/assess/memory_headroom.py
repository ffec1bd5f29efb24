"""Check 4: edge memory headroom of the bundle on the lowest tier of a device profile.

The arithmetic is in :mod:`skuscale.assess.footprint`.
"""

from __future__ import annotations

from types import MappingProxyType

from skuscale.assess.base import Check, CheckResult, register, verdict
from skuscale.assess.footprint import MIB, Footprint
from skuscale.assess.profiles import DeviceProfile


def assess_headroom(footprint: Footprint, profile: DeviceProfile, *, min_headroom: float = 0.20) -> CheckResult:
    """Check 4: ``(M - footprint) / M`` on the profile's lowest tier against ``min_headroom``."""
    tiers = []
    for tier in profile.tiers:
        budget = tier.memory_bytes
        tiers.append({
            "name": tier.name, "memory_mb": tier.memory_mb, "note": tier.note,
            "headroom": footprint.headroom(budget),
            "max_skus_at_min_headroom": footprint.max_skus(budget, min_headroom),
        })
    lowest = profile.lowest_tier
    headroom = footprint.headroom(lowest.memory_bytes)
    status = verdict(headroom, min_headroom, "min")
    total_mb = footprint.total_bytes / MIB
    actions: list[str] = []
    if status == "fail":
        fits = footprint.max_skus(lowest.memory_bytes, min_headroom)
        parts = footprint.class_table_parts
        biggest = max(parts, key=parts.get)
        actions.append(
            f"{lowest.name} ({lowest.memory_mb:g} MiB) needs a smaller model: at {footprint.per_sku_bytes / 1024:.1f} "
            f"KiB of class tables per SKU it holds at most {fits} SKUs with {min_headroom:.0%} headroom"
            + (f" (now {footprint.n_skus})" if fits is not None else "")
        )
        actions.append(
            f"Shrink the largest parts: backbone weights {footprint.weights_bytes / MIB:.1f} MiB (INT8 quantisation "
            f"or a smaller backbone), activations {footprint.activation_peak_bytes / MIB:.1f} MiB (smaller input "
            f"size), class tables {footprint.class_table_bytes / MIB:.2f} MiB (largest: {biggest}; a smaller head, "
            "INT8 tables or a detector that keeps no per-image state)"
        )
    summary = (f"footprint {total_mb:.1f} MiB on {profile.name}/{lowest.name} ({lowest.memory_mb:g} MiB for the "
               f"model): headroom {headroom:.1%}")
    details = {"profile": profile.name, "profile_source": profile.source, "lowest_tier": lowest.name,
               "footprint": footprint.to_dict(), "tiers": tiers, "min_headroom": min_headroom}
    return MemoryHeadroomCheck().result(status, value=headroom, threshold=float(min_headroom), summary=summary,
                                        details=details, actions=actions)


@register
class MemoryHeadroomCheck(Check):
    name = "memory_headroom"
    number = 4
    title = "Edge memory headroom"
    measure = "free share of the lowest device tier's model memory after weights, activations and class tables"
    direction = "min"
    unit = "share"
    defaults = MappingProxyType({"min_headroom": 0.20})

    def missing_inputs(self, ctx):
        if ctx.device_profile is None:
            return "no --device profile given"
        if ctx.bundle is None or ctx.bundle.root is None:
            return "no bundle folder to measure"
        if not ctx.bundle.backbone.get("onnx"):
            return "the bundle has no ONNX image backbone to measure"
        try:
            import onnx  # noqa: F401
        except ImportError:
            return "needs the onnx package to measure the backbone (pip install 'skuscale[edge]')"
        return None

    def run(self, ctx, params) -> CheckResult:
        from skuscale.assess.footprint import bundle_footprint

        footprint = ctx.memo("footprint", lambda: bundle_footprint(ctx.bundle))
        return assess_headroom(footprint, ctx.device_profile, **params)

    def figures(self, result):
        from skuscale.assess.plots import footprint_figure

        return [("Footprint against each tier's memory", footprint_figure(result.details))]
