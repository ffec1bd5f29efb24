"""Matplotlib figures of the report (Agg backend, no display) and their PNG encoding."""

from __future__ import annotations

import base64
import io
import itertools
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
# Figures are built without pyplot: no global state, nothing to close, safe in a server.
from matplotlib.figure import Figure

BLUE, RED, GREY, ORANGE = "#2e86c1", "#c0392b", "#95a5a6", "#e67e22"


def _figure(width: float = 8.0, height: float = 3.2) -> tuple[Figure, object]:
    fig = Figure(figsize=(width, height), dpi=100)
    return fig, fig.add_subplot(1, 1, 1)


def png_base64(fig: Figure) -> str:
    """The figure as a base64 PNG (for ``<img src="data:image/png;base64,...">``)."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def bar_figure(labels: Sequence[str], values: Sequence[float], *, colors=None, ylabel: str = "", title: str = "",
               hline: float | None = None, ylim=None, rotate: int = 90) -> Figure:
    # Many rotated labels need room below the bars.
    fig, ax = _figure(max(6.0, min(16.0, 0.16 * len(labels) + 3)), 5.0 if rotate and len(labels) > 20 else 3.2)
    ax.bar(range(len(labels)), values, color=colors or BLUE)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=rotate, fontsize=6 if len(labels) > 20 else 9)
    if hline is not None:
        ax.axhline(hline, color=RED, linestyle="--", linewidth=1, label=f"threshold {hline:g}")
        ax.legend(fontsize=8)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    return fig


def histogram_figure(edges: Sequence[float], counts: Sequence[int], *, xlabel: str, ylabel: str,
                     lines: Mapping[str, float] | None = None) -> Figure:
    fig, ax = _figure()
    widths = [b - a for a, b in itertools.pairwise(edges)]
    ax.bar(edges[:-1], counts, width=widths, align="edge", color=BLUE, edgecolor="white")
    for (label, x), color in zip((lines or {}).items(), (RED, ORANGE, GREY), strict=False):
        ax.axvline(x, color=color, linestyle="--", linewidth=1.2, label=f"{label} ({x:.3f})")
    if lines:
        ax.legend(fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return fig


def stacked_bar_figure(labels: Sequence[str], series: Mapping[str, Sequence[float]], *, ylabel: str,
                       title: str = "") -> Figure:
    fig, ax = _figure()
    bottom = [0.0] * len(labels)
    for (name, values), color in zip(series.items(), (BLUE, ORANGE, RED, GREY), strict=False):
        ax.bar(range(len(labels)), values, bottom=bottom, color=color, label=name)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=45, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return fig


def footprint_figure(details: Mapping) -> Figure:
    """Stacked footprint (weights, activations, class tables) beside each tier's memory."""
    fp = details["footprint"]
    mib = 1024 * 1024
    fig, ax = _figure(7.0, 3.2)
    parts = [("weights", fp["weights_bytes"], BLUE), ("activations", fp["activation_peak_bytes"], ORANGE),
             ("class tables", fp["class_table_bytes"], RED)]
    left = 0.0
    for name, value, color in parts:
        ax.barh(0, value / mib, left=left, color=color, label=name)
        left += value / mib
    for i, tier in enumerate(details["tiers"], start=1):
        ax.barh(i, tier["memory_mb"], color=GREY)
        ax.barh(i, tier["memory_mb"] * (1 - details["min_headroom"]), color="none", edgecolor="black",
                linestyle="--")
    ax.set_yticks(range(len(details["tiers"]) + 1))
    ax.set_yticklabels(["bundle"] + [f"{t['name']} ({t['headroom']:.0%} free)" for t in details["tiers"]], fontsize=8)
    ax.set_xlabel("MiB (dashed: usable at the minimum headroom)")
    ax.legend(fontsize=8, loc="lower right")
    return fig


def reliability_figure(curve: Mapping) -> Figure:
    """Accuracy against mean confidence per bin, with the diagonal and bin counts."""
    fig = Figure(figsize=(5.0, 4.2), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    edges = curve["bin_edges"]
    width = edges[1] - edges[0]
    acc = [a if a is not None else 0.0 for a in curve["accuracy"]]
    ax.bar(edges[:-1], acc, width=width, align="edge", color=BLUE, edgecolor="white", label="accuracy")
    pts = [(c, a) for c, a in zip(curve["confidence"], curve["accuracy"], strict=True) if c is not None]
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", color=RED, markersize=4, label="bin mean confidence")
    ax.plot([0, 1], [0, 1], color=GREY, linestyle="--", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8, loc="upper left")
    return fig


def tail_figure(tail: Mapping) -> Figure:
    """Per-SKU top-1 and mean confidence of the top and bottom deciles, side by side."""
    fig = Figure(figsize=(9.0, 3.4), dpi=100)
    for i, (label, color) in enumerate((("top", BLUE), ("bottom", RED))):
        ax = fig.add_subplot(1, 2, i + 1)
        rows = tail[label]["skus"]
        xs = range(len(rows))
        ax.bar([x - 0.2 for x in xs], [r["top1"] for r in rows], width=0.4, color=color, label="top-1")
        ax.bar([x + 0.2 for x in xs], [r["mean_confidence"] for r in rows], width=0.4, color=GREY,
               label="mean confidence")
        ax.set_xticks(list(xs))
        ax.set_xticklabels([f"{r['sku']} ({r['n_train']})" for r in rows], rotation=90, fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_title(f"{label} decile by training images: top-1 {tail[label]['top1']:.0%}, "
                     f"ECE {tail[label]['ece']:.3f}", fontsize=9)
        ax.legend(fontsize=7)
    return fig
