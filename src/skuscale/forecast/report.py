"""Forecast report: JSON first, then a self-contained HTML page with the curve plot."""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path

SIMULATED_BANNER = (
    '<p class="banner">SIMULATED DATA: these numbers come from a simulated embedding catalogue '
    "(skuscale simulate), not from photos.</p>"
)


def figure_png_base64(fig) -> str:
    """A matplotlib figure as a base64 PNG (closes the figure)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def plot_curve(result: dict, *, extra_points: list[dict] | None = None, title: str | None = None):
    """Measured sub-catalogue means, the fitted top-1 curve with its band, and automation.

    ``extra_points``: ``{"size", "top1", "label"}`` markers (e.g. a measured rollout).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = result["curve"]
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    ax.fill_between(curve["size"], curve["top1_lo"], curve["top1_hi"], color="tab:blue", alpha=0.18,
                    label="top-1 forecast, 10-90% band")
    ax.plot(curve["size"], curve["top1"], color="tab:blue", label="top-1 forecast (competitor-hazard model)")
    ax.plot(curve["size"], curve["automation"], color="tab:green", ls="--",
            label=f"automation at {result['target_precision']:.2f} precision (forecast)")
    means = result["measured_mean"]
    ax.scatter([m["size"] for m in means], [m["top1"] for m in means], color="tab:blue", zorder=3,
               label="top-1 measured (nested sub-catalogues)")
    ax.scatter([m["size"] for m in means], [m["automation"] for m in means], color="tab:green", marker="s",
               zorder=3, label="automation measured")
    for point in extra_points or []:
        ax.scatter([point["size"]], [point["top1"]], marker="*", s=160, zorder=4, label=point["label"])
    ax.axvline(result["to"], color="grey", lw=0.8, ls=":")
    ax.axvline(result["fit_max_size"], color="grey", lw=0.8, ls="-.")
    ax.set_xscale("log")
    ax.set_xlabel("catalogue size (SKUs)")
    ax.set_ylabel("share of images")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    sim = " [SIMULATED]" if result.get("simulated") else ""
    ax.set_title((title or "accuracy against catalogue size") + sim, fontsize=10)
    return fig


PAGE_STYLE = """
body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.banner{background:#fff3cd;border:1px solid #e0c060;padding:8px;font-weight:bold}
img{max-width:100%}
"""


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def render_html(result: dict) -> str:
    """The forecast page (plots embedded as PNG data URIs)."""
    at = result["at_target"]
    loss = result["attribution"]["loss"]
    png = figure_png_base64(plot_curve(result))
    rows = "".join(
        f"<tr><td>{m['size']}</td><td>{_pct(m['top1'])}</td><td>{_pct(m['automation'])}</td>"
        f"<td>{m['ece']:.3f}</td></tr>" for m in result["measured_mean"]
    )
    stats = result["statistics"]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>skuscale forecast</title>
<style>{PAGE_STYLE}</style></head><body>
<h1>Accuracy forecast at {result['to']} SKUs</h1>
{SIMULATED_BANNER if result.get('simulated') else ''}
<p>Data: {html.escape(str(result['source']))}: {result['n_skus']} SKUs, {result['n_eval_images']} evaluation images
({result['evaluation']}).
Proxy classifier: {html.escape(result['proxy']['classifier'])}. Model fitted on sub-catalogues of at most
{result['fit_max_size']} SKUs; extrapolation ×{result['extrapolation_factor']:.2f}.</p>
<table><tr><th>at {result['to']} SKUs</th><th>forecast</th><th>10-90% band</th></tr>
<tr><td>top-1</td><td>{_pct(at['top1'])}</td><td>{_pct(at['top1_lo'])} – {_pct(at['top1_hi'])}</td></tr>
<tr><td>automation at {result['target_precision']:.2f} precision</td><td>{_pct(at['automation'])}</td><td></td></tr>
<tr><td>ECE</td><td>{at['ece']:.3f}</td><td></td></tr></table>
<h2>Where the loss comes from at {result['to']} SKUs</h2>
<table><tr><th>axis</th><th>top-1 points lost</th></tr>
<tr><td>similarity (crowding, near-duplicates)</td><td>{100 * loss['similarity']:.1f}</td></tr>
<tr><td>imbalance (against SKUs with more than the median {result['attribution']['median_train_count']:.0f} images)
</td>
<td>{100 * loss['imbalance']:.1f}</td></tr>
<tr><td>unknown products (share of traffic)</td><td>{100 * loss['unknowns']:.1f}</td></tr></table>
<p><b>Dominant axis: {result['dominant_axis']}</b></p>
<img id="curve" alt="accuracy against catalogue size" src="data:image/png;base64,{png}">
<h2>Measured on nested sub-catalogues (mean over draws)</h2>
<table><tr><th>SKUs</th><th>top-1</th><th>automation</th><th>ECE</th></tr>{rows}</table>
<h2>Data statistics</h2>
<table><tr><th>statistic</th><th>value</th></tr>
<tr><td>within-SKU cosine to centroid</td><td>{stats['cos_to_centroid']:.3f}</td></tr>
<tr><td>background centroid similarity</td><td>{stats['background_similarity']:.3f}</td></tr>
<tr><td>nearest-centroid similarity (10/50/90%)</td><td>{' / '.join(
        f"{v:.3f}" for v in stats['nearest_centroid_similarity_quantiles'].values())}</td></tr>
<tr><td>share of SKUs with a near-duplicate (&gt; 0.9)</td><td>{_pct(stats['near_duplicate_share'])}</td></tr>
<tr><td>Zipf exponent of training counts</td><td>{stats['zipf_exponent']:.2f}</td></tr>
<tr><td>effective dimension (participation ratio)</td><td>{stats['dim_participation']:.1f}</td></tr></table>
</body></html>"""


def write_report(result: dict, out: str | os.PathLike) -> dict[str, Path]:
    """Write ``forecast.json`` and ``forecast.html`` into folder ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "forecast.json", "html": out / "forecast.html"}
    paths["json"].write_text(json.dumps(result, indent=2))
    paths["html"].write_text(render_html(result))
    return paths
