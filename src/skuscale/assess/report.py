"""Run the registered checks, relate them (coupled risks, tail view) and write the report.

The report is data first: :func:`run_assessment` returns a JSON-able dict, written
to ``report.json``; :mod:`skuscale.assess.html` renders the same dict as
``report.html``.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from skuscale import __version__
from skuscale.assess.base import ERROR, FAIL, PASS, SKIPPED, CheckResult, registered_checks
from skuscale.assess.config import AssessConfig
from skuscale.assess.context import AssessmentContext
from skuscale.assess.sample_balance import decile_skus
from skuscale.metrics import expected_calibration_error

#: Why two checks near their limits at the same time are worse than either alone.
COUPLINGS: dict[frozenset[str], str] = {
    frozenset({"catalogue_change", "memory_headroom"}): (
        "New SKUs arrive quickly and every SKU adds class-table bytes: the lowest device tier runs out of memory "
        "within a few quarters of catalogue growth."
    ),
    frozenset({"sample_balance", "visual_similarity"}): (
        "Imbalance and near-duplicates together: when look-alike SKUs sit in the tail, the head has the fewest "
        "images exactly where it needs the most to tell them apart."
    ),
    frozenset({"catalogue_change", "ood_heldout"}): (
        "Products change often and the OOD stage misses unseen products: new products will be accepted as "
        "their nearest look-alike."
    ),
    frozenset({"visual_similarity", "ood_heldout"}): (
        "A crowded embedding space: an unseen product lands close to a known one and is not flagged."
    ),
    frozenset({"visual_similarity", "class_spread"}): (
        "Near-duplicate pairs pull the worst SKUs down: the accuracy spread comes from confusions inside those pairs."
    ),
    frozenset({"sample_balance", "class_spread"}): (
        "The accuracy spread follows the sample counts: tail SKUs are the ones recognised worst."
    ),
    frozenset({"sample_balance", "calibration"}): (
        "Calibration fitted mostly on head SKUs: confidence on tail SKUs is the least trustworthy."
    ),
    frozenset({"class_spread", "calibration"}): (
        "One global temperature cannot be right for SKUs that are recognised this differently; per-SKU "
        "thresholds carry the load."
    ),
    frozenset({"catalogue_change", "sample_balance"}): (
        "New SKUs enter with few images: a fast-changing catalogue keeps refilling the tail."
    ),
}
GENERIC_COUPLING = ("Both are close to their limits at once: one change (more SKUs, fewer images, a new device) "
                    "can push both over together.")


def proximity(result: CheckResult, margin: float) -> str | None:
    """``"failing"``, ``"near"`` (within ``margin`` of the threshold, relative) or None.

    For a ``max`` check, near means ``value >= (1 - margin) * threshold``; for a
    ``min`` check, ``value <= (1 + margin) * threshold``. Skipped and errored
    checks have no proximity.
    """
    if result.status == FAIL:
        return "failing"
    if result.status != PASS or result.value is None or result.threshold is None:
        return None
    if not math.isfinite(result.value):
        return None
    if result.direction == "max":
        return "near" if result.value >= (1 - margin) * result.threshold else None
    return "near" if result.value <= (1 + margin) * result.threshold else None


def coupled_risks(results: list[CheckResult], *, margin: float = 0.2, train_counts=None) -> list[dict[str, Any]]:
    """Pairs of checks that are both near (or past) their thresholds, with why that matters.

    For sample balance with visual similarity, the evidence lists the close pairs
    that involve bottom-decile SKUs.
    """
    close = {r.check: (r, p) for r in results if (p := proximity(r, margin))}
    risks = []
    for a, b in itertools.combinations(sorted(close, key=lambda n: close[n][0].number), 2):
        (ra, pa), (rb, pb) = close[a], close[b]
        risk: dict[str, Any] = {
            "checks": [a, b],
            "titles": [ra.title, rb.title],
            "states": [pa, pb],
            "values": [ra.value, rb.value],
            "thresholds": [ra.threshold, rb.threshold],
            "why": COUPLINGS.get(frozenset({a, b}), GENERIC_COUPLING),
        }
        if {a, b} == {"sample_balance", "visual_similarity"} and train_counts:
            _, tail = decile_skus(train_counts)
            sim = ra if a == "visual_similarity" else rb
            tail_pairs = [f"{p['sku_a']} / {p['sku_b']}" for p in sim.details.get("pairs", [])
                          if p["closer_than_spread"] and (p["sku_a"] in tail or p["sku_b"] in tail)]
            risk["tail_pairs"] = tail_pairs
            if tail_pairs:
                risk["why"] += " Close pairs with a bottom-decile SKU: " + ", ".join(tail_pairs[:10])
        risks.append(risk)
    return risks


def tail_view(y_true, y_pred, confidence, train_counts, *, n_bins: int = 15) -> dict[str, Any]:
    """Per-SKU accuracy and calibration for the top and bottom deciles by training count.

    Deciles are taken among the SKUs that have held-out predictions. Each group
    gets its SKU rows (training count, held-out images, top-1, mean confidence,
    confidence minus accuracy) and aggregates over its images (top-1 and ECE).
    """
    y_true, y_pred = np.asarray(y_true).astype(str), np.asarray(y_pred).astype(str)
    confidence = np.asarray(confidence, dtype=np.float64)
    counts = {s: c for s, c in train_counts.items() if (y_true == s).any()}
    top, bottom = decile_skus(counts)
    groups = {}
    for label, skus in (("top", top), ("bottom", bottom)):
        rows = []
        for s in skus:
            m = y_true == s
            acc, conf = float((y_pred[m] == s).mean()), float(confidence[m].mean())
            rows.append({"sku": s, "n_train": int(counts[s]), "n_eval": int(m.sum()), "top1": acc,
                         "mean_confidence": conf, "gap": conf - acc})
        m = np.isin(y_true, skus)
        correct = y_pred[m] == y_true[m]
        groups[label] = {"skus": rows, "top1": float(correct.mean()),
                         "ece": float(expected_calibration_error(confidence[m], correct, n_bins)),
                         "n_eval": int(m.sum())}
    groups["top1_gap"] = groups["top"]["top1"] - groups["bottom"]["top1"]
    # Deciles are taken among the SKUs that have held-out images.
    groups["n_skus"] = len(counts)
    return groups


def _run_one(check, ctx: AssessmentContext, config: AssessConfig) -> CheckResult:
    started = time.perf_counter()
    try:
        # Inside the try too: a plugin's input test can fail like its run.
        reason = check.missing_inputs(ctx)
        if reason:
            result = check.result(SKIPPED, summary=f"skipped: {reason}")
        else:
            result = check.run(ctx, config.params_for(check))
    except Exception as exc:  # one broken check must not lose the others
        result = check.result(ERROR, summary=f"{type(exc).__name__}: {exc}",
                              details={"traceback": traceback.format_exc(limit=8)})
    result.seconds = time.perf_counter() - started
    return result


def run_assessment(ctx: AssessmentContext, config: AssessConfig | None = None, *,
                   inputs: dict[str, Any] | None = None,
                   on_result: Callable[[CheckResult], None] | None = None) -> dict[str, Any]:
    """Run every registered check on ``ctx`` and assemble the report.

    Parameters
    ----------
    ctx : AssessmentContext
    config : AssessConfig, optional
    inputs : dict, optional
        Recorded as the report's ``inputs`` (paths, device, ...).
    on_result : callable, optional
        Called with each :class:`CheckResult` as soon as it is done (progress output).

    Returns
    -------
    dict
        ``verdict`` (``"go"``/``"no-go"``), ``exit_code`` (0 or 1), ``checks``,
        ``coupled_risks``, ``tail_view``, ``actions``, ``notes``, timings.
    """
    config = config or AssessConfig()
    started = time.perf_counter()
    results = []
    for check in registered_checks():
        ctx.say(f"check {check.number}: {check.title}")
        result = _run_one(check, ctx, config)
        results.append(result)
        if on_result is not None:
            on_result(result)
    tail: dict[str, Any]
    try:
        if ctx.model is None or ctx.train_X is None or not ctx.train_counts:
            raise ValueError("needs the bundle's model and training embeddings")
        h = ctx.heldout()
        tail = {"source": h.source, **tail_view(h.y_true, h.y_pred, h.confidence, ctx.train_counts)}
    except Exception as exc:  # the tail view is evidence, not a check: report why it is missing
        tail = {"error": f"{type(exc).__name__}: {exc}"}
    failed = [r for r in results if r.failed]
    report = {
        "skuscale_version": __version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "verdict": "no-go" if failed else "go",
        "exit_code": 1 if failed else 0,
        "inputs": inputs or {},
        "notes": list(ctx.notes),
        "heldout_source": ctx._heldout.source if ctx._heldout is not None else None,
        "config": {"checks": {c.name: config.params_for(c) for c in registered_checks()},
                   "coupled_risks": {"margin": config.coupled_margin}, "seed": config.seed},
        "checks": [r.to_dict() for r in results],
        "coupled_risks": coupled_risks(results, margin=config.coupled_margin, train_counts=ctx.train_counts),
        "tail_view": tail,
        "quantization": _quantization(ctx),
        "actions": [{"check": r.check, "title": r.title, "action": a} for r in results for a in r.actions],
        "counts": {s: sum(r.status == s for r in results) for s in (PASS, FAIL, SKIPPED, ERROR)},
        "seconds": time.perf_counter() - started,
    }
    return report


def _quantization(ctx) -> dict[str, Any] | None:
    """The fp32-vs-INT8 per-SKU impact recorded by ``skuscale export --int8``, when assessing such a bundle."""
    if ctx.bundle is None or not ctx.bundle.metadata.get("quantization"):
        return None
    from skuscale.edge.quantize import quantization_section

    try:
        return quantization_section(ctx.bundle)
    except (KeyError, TypeError) as exc:
        return {"error": f"quantization record unreadable: {exc!r}"}


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars made plain, dates as ISO strings and non-finite floats as None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dt.date | Path):
        return str(value)
    return value


def write_report(report: dict[str, Any], out: str | os.PathLike, *, figures: bool = True) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` into ``out``; returns their paths."""
    from skuscale.assess.html import render_html

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = jsonable(report)
    json_path, html_path = out / "report.json", out / "report.html"
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False), encoding="utf-8")
    os.replace(tmp, json_path)
    tmp = html_path.with_suffix(".html.tmp")
    tmp.write_text(render_html(data, figures=figures), encoding="utf-8")
    os.replace(tmp, html_path)
    return json_path, html_path
