"""Render a report dict as one self-contained HTML file (inline CSS, plots as base64 PNG)."""

from __future__ import annotations

import json
from html import escape
from typing import Any

from skuscale.assess.base import CHECKS, CheckResult, registered_checks

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222;
padding:0 1rem;line-height:1.4}
h1{margin-bottom:.2rem}h2{border-bottom:2px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}td,th{border:1px solid #ddd;padding:.25rem .5rem;
text-align:left;vertical-align:top}th{background:#f4f6f7}.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:.1rem .5rem;border-radius:.3rem;color:#fff;font-weight:600;font-size:.85rem}
.pass,.go{background:#1e8449}.fail,.no-go{background:#c0392b}.skipped{background:#7f8c8d}.error{background:#8e44ad}
.verdict{font-size:1.4rem}.muted{color:#666;font-size:.9rem}img{max-width:100%;height:auto;display:block;
margin:.5rem 0}.side{display:flex;gap:1rem;flex-wrap:wrap}.side>div{flex:1;min-width:320px}
pre{background:#f8f9f9;padding:.5rem;overflow:auto;max-height:300px;font-size:.8rem}
li{margin:.2rem 0}
"""


def fmt_value(value: Any, unit: str) -> str:
    """A check's value as people read it (shares as percentages, ECE to 4 places, ...)."""
    if value is None:
        return "-"
    if unit == "share":
        return f"{value:.1%}"
    if unit == "pp":
        return f"{value:.1f} pp"
    if unit == "ECE":
        return f"{value:.4f}"
    if unit == "ratio":
        return f"{value:.2f}"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def fmt_threshold(result: dict[str, Any]) -> str:
    if result.get("threshold") is None:
        return "-"
    sign = "≤" if result["direction"] == "max" else "≥"
    return f"{sign} {fmt_value(result['threshold'], result['unit'])}"


def _badge(status: str) -> str:
    return f'<span class="badge {escape(status)}">{escape(status)}</span>'


def _table(header: list[str], rows: list[list[Any]], numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{escape(str(c))}</td>' if i in numeric else f"<td>{escape(str(c))}</td>"
                         for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(caption: str, fig) -> str:
    from skuscale.assess.plots import png_base64

    return (f'<figure><img alt="{escape(caption)}" src="data:image/png;base64,{png_base64(fig)}">'
            f'<figcaption class="muted">{escape(caption)}</figcaption></figure>')


def _figures(result: dict[str, Any]) -> str:
    check = CHECKS.get(result["check"])
    if check is None or result["status"] not in ("pass", "fail"):
        return ""
    try:
        figs = check.figures(CheckResult(**result))
        return "".join(_img(caption, fig) for caption, fig in figs)
    except Exception as exc:  # a plot must not cost the report
        return f'<p class="muted">plot unavailable: {escape(type(exc).__name__)}: {escape(str(exc))}</p>'


def _check_extras(result: dict[str, Any], params: dict[str, Any] | None = None) -> str:
    """Evidence tables specific to a check; ``params`` are the check's parameters from the report's config."""
    d, name = result.get("details") or {}, result["check"]
    params = params or {}
    if result["status"] not in ("pass", "fail"):
        return ""
    if name == "visual_similarity":
        rows = [[p["sku_a"], p["sku_b"], f"{p['distance']:.3f}", p["category_a"] or "", p["category_b"] or "",
                 p["recommendation"]] for p in d["pairs"]]
        fraction = params.get("bottom_fraction")
        share = f" (bottom {fraction:.0%})" if isinstance(fraction, int | float) else ""
        return (f"<p>The {d['n_listed']} closest of {d['n_pairs']} SKU pairs{share}:</p>"
                + _table(["SKU", "SKU", "distance", "category", "category", "recommendation"], rows, {2}))
    if name == "memory_headroom":
        fp = d["footprint"]
        mib = 1024 * 1024
        rows = [["weights", f"{fp['weights_bytes'] / mib:.2f}"],
                ["peak activations (batch 1)", f"{fp['activation_peak_bytes'] / mib:.2f}"],
                *[[f"class tables: {k}", f"{v / mib:.3f}"] for k, v in fp["class_table_parts"].items()],
                ["total", f"{fp['total_bytes'] / mib:.2f}"]]
        tiers = [[t["name"], f"{t['memory_mb']:g}", f"{t['headroom']:.1%}", t["max_skus_at_min_headroom"], t["note"]]
                 for t in d["tiers"]]
        return (_table(["component", "MiB"], rows, {1})
                + f"<p>Per SKU: {fp['per_sku_bytes'] / 1024:.1f} KiB of class tables.</p>"
                + _table(["tier", "MiB for the model", "headroom", "max SKUs at min headroom", "note"], tiers,
                         {1, 2, 3}))
    if name == "catalogue_change":
        rows = [[f"{q['months'][0]} to {q['months'][-1]}", q["skus_changed"], f"{q['share']:.1%}"]
                for q in d["quarters"]]
        return _table(["quarter", "SKUs changed", "share of catalogue"], rows, {1, 2})
    if name == "ood_heldout":
        rows = [[n, f"{v['detection_rate']:.1%}", f"{v['auroc']:.3f}", f"{v['known_flag_rate']:.1%}"]
                for n, v in d["detectors"].items()]
        return (_table(["detector", "held-out-SKU detection", "AUROC", "known flagged"], rows, {1, 2, 3})
                + "<p class='muted'>Held-out SKU groups: " + escape("; ".join(", ".join(g) for g in d["groups"]))
                + "</p>")
    if name == "class_spread":
        rows = [[r["sku"], f"{r['top1']:.0%}", r["n_eval"], r["n_train"], ", ".join(r["confused_with"])]
                for r in d["lowest"]]
        return (f"<p class='muted'>Predictions: {escape(d['source'])}</p>"
                + _table(["lowest SKUs", "top-1", "held-out images", "training images", "confused with"], rows,
                         {1, 2, 3}))
    if name == "calibration":
        return f"<p class='muted'>Predictions: {escape(d['source'])}</p>"
    return ""


def _no_actions(counts: dict[str, int]) -> str:
    """The Actions section's text when no check proposed one."""
    if counts.get("error"):
        return (f"No actions proposed, but {counts['error']} check(s) raised an error and measured nothing: "
                "see the checks above.")
    if counts.get("fail"):
        return "No actions proposed by the failing checks: see the checks above."
    return "None: every check that ran passed."


def _tail_section(tail: dict[str, Any]) -> str:
    if "error" in tail:
        return f"<p>Tail view unavailable: {escape(tail['error'])}</p>"
    from skuscale.assess.plots import tail_figure

    parts = []
    for label in ("top", "bottom"):
        g = tail[label]
        rows = [[r["sku"], r["n_train"], r["n_eval"], f"{r['top1']:.0%}", f"{r['mean_confidence']:.2f}",
                 f"{r['gap']:+.2f}"] for r in g["skus"]]
        parts.append(f"<div><h3>{label} decile by training images</h3><p>top-1 {g['top1']:.1%}, ECE "
                     f"{g['ece']:.4f} over {g['n_eval']} held-out images</p>"
                     + _table(["SKU", "train", "held-out", "top-1", "confidence", "conf − acc"], rows,
                              {1, 2, 3, 4, 5}) + "</div>")
    try:
        fig = _img("Top and bottom decile, per SKU", tail_figure(tail))
    except Exception as exc:  # a plot must not cost the report
        fig = f'<p class="muted">plot unavailable: {escape(str(exc))}</p>'
    return (f"<p class='muted'>Predictions: {escape(tail['source'])}. Deciles of the {tail['n_skus']} SKUs with "
            "held-out images. Top-1 gap between the deciles: "
            f"{tail['top1_gap']:+.1%}.</p><div class='side'>" + "".join(parts) + "</div>" + fig)


def _thresholds_note(th: Any, pct) -> str:
    """What ``export --int8`` did to the thresholds and what it measured, for an INT8 bundle."""
    if not isinstance(th, dict):
        return ""
    refit = th.get("refit")
    if refit and refit.get("applied") is False:
        text = (f"Thresholds: the fp32 ones, kept because they pass on INT8 (a re-fit would have raised them by "
                f"{refit['sku_margin']['margin']:.2f} log-odds).")
    elif refit:
        text = (f"Thresholds re-fitted for INT8: raised by {refit['sku_margin']['margin']:.2f} log-odds "
                f"({refit['n_raised']} SKUs), the {refit['sku_margin']['quantile']:g} quantile of the INT8 "
                f"confidence movement near the thresholds on {refit['n_images']} calibration images.")
    else:
        text = "Thresholds: the fp32 ones, kept."
    if "passed" in th:
        text += (f" Verification {'passed' if th['passed'] else 'FAILED'}: INT8 auto-accept precision "
                 f"{pct(th.get('auto_precision_int8'))}, required {pct(th.get('required_auto_precision'))}.")
    out = f"<p>{escape(text)}</p>"
    ev = th.get("evaluation")
    if isinstance(ev, dict):
        labels = (("fp32", "fp32"), ("int8_fp32_thresholds", "INT8, fp32 thresholds"), ("int8", "INT8, shipped"))
        rows = "".join(
            f"<tr><th>{label}</th><td class='num'>{pct(ev[key].get('automation'))}</td>"
            f"<td class='num'>{pct(ev[key].get('auto_precision'))}</td></tr>"
            for key, label in labels if isinstance(ev.get(key), dict)
        )
        out += ("<table><thead><tr><th>evaluation images</th><th>automation</th><th>auto-accept precision</th>"
                f"</tr></thead><tbody>{rows}</tbody></table>")
    return out


def _quantization_section(q: dict[str, Any] | None) -> str:
    if not q:
        return ""
    if "error" in q:
        return f"<h2>Quantisation (INT8)</h2><p>{escape(q['error'])}</p>"

    def pct(v):
        return "-" if v is None else f"{v:.1%}"

    def pts(v):
        return "-" if v is None else f"{v:+.1f}"

    o = q["overall"]
    overall = "".join(
        f"<tr><th>{label}</th><td class='num'>{pct(o.get(key + '_fp32'))}</td>"
        f"<td class='num'>{pct(o.get(key + '_int8'))}</td>"
        f"<td class='num'>{pts(o.get(key + '_change_points'))}</td></tr>"
        for label, key in (("top-1", "top1"), ("automation", "automation"), ("auto-accept precision", "auto_precision"))
    )
    deciles = "".join(
        f"<tr><th>{escape(name)} decile by training images ({escape(', '.join(d['skus']))})</th>"
        f"<td class='num'>{pct(d['mean_top1_fp32'])}</td><td class='num'>{pct(d['mean_top1_int8'])}</td>"
        f"<td class='num'>{pts(d['top1_change_points'])}</td></tr>"
        for name, d in q["deciles"].items()
    )
    rows = "".join(
        f"<tr{' class=flag' if r['flagged'] else ''}><td>{escape(r['sku'])}</td><td class='num'>{r['n']}</td>"
        f"<td class='num'>{r['train_count']}</td><td class='num'>{pct(r['top1_fp32'])}</td>"
        f"<td class='num'>{pct(r['top1_int8'])}</td><td class='num'>{pts(r['top1_change_points'])}</td>"
        f"<td class='num'>{pts(r['automation_change_points'])}</td><td>{escape(', '.join(r['flag_reasons']))}</td></tr>"
        for r in q["per_sku"]
    )
    flagged = ", ".join(q["flagged"]) or "none"
    return (
        "<h2>Quantisation (INT8)</h2>"
        f"<p>{escape(str(q['method']))}; SKUs losing more than {q['flag_points']} points: {escape(flagged)}.</p>"
        + _thresholds_note(q.get("thresholds"), pct) +
        "<table><thead><tr><th></th><th>fp32</th><th>INT8</th><th>change (points)</th></tr></thead>"
        f"<tbody>{overall}{deciles}</tbody></table>"
        "<details><summary>per SKU (worst top-1 change first)</summary><table><thead><tr><th>SKU</th><th>images</th>"
        "<th>training images</th><th>top-1 fp32</th><th>top-1 INT8</th><th>top-1 change</th>"
        f"<th>automation change</th><th>flags</th></tr></thead><tbody>{rows}</tbody></table></details>"
    )


def render_html(report: dict[str, Any], *, figures: bool = True) -> str:
    """The report as a single HTML document with no external references."""
    registered_checks()  # make sure every check class is registered (their figures are drawn here)
    checks = report["checks"]
    summary_rows = "".join(
        f"<tr><td class='num'>{c['number']}</td><td><a href='#{escape(c['check'])}'>{escape(c['title'])}</a></td>"
        f"<td class='num'>{escape(fmt_value(c['value'], c['unit']))}</td>"
        f"<td class='num'>{escape(fmt_threshold(c))}</td><td>{_badge(c['status'])}</td>"
        f"<td>{escape(c['summary'])}</td></tr>"
        for c in checks
    )
    actions = "".join(f"<li><b>{escape(a['title'])}:</b> {escape(a['action'])}</li>" for a in report["actions"])
    risks = "".join(
        f"<li><b>{escape(r['titles'][0])}</b> ({escape(r['states'][0])}) + <b>{escape(r['titles'][1])}</b> "
        f"({escape(r['states'][1])}): {escape(r['why'])}</li>"
        for r in report["coupled_risks"]
    )
    sections = []
    for c in checks:
        acts = "".join(f"<li>{escape(a)}</li>" for a in c["actions"])
        details = json.dumps(c["details"], indent=1)
        if len(details) > 60_000:
            details = details[:60_000] + "\n..."
        sections.append(
            f"<section id='{escape(c['check'])}'><h2>{c['number']}. {escape(c['title'])} {_badge(c['status'])}</h2>"
            f"<p>{escape(c['summary'])}</p><p class='muted'>value {escape(fmt_value(c['value'], c['unit']))}, "
            f"threshold {escape(fmt_threshold(c))}, {c['seconds']:.1f} s</p>"
            + (f"<h3>Actions</h3><ul>{acts}</ul>" if acts else "")
            + _check_extras(c, report.get("config", {}).get("checks", {}).get(c["check"]))
            + (_figures(c) if figures else "")
            + f"<details><summary>data</summary><pre>{escape(details)}</pre></details></section>"
        )
    inputs = "".join(f"<tr><th>{escape(str(k))}</th><td>{escape(str(v))}</td></tr>"
                     for k, v in report.get("inputs", {}).items())
    notes = "".join(f"<li>{escape(n)}</li>" for n in report.get("notes", []))
    verdict = report["verdict"]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>skuscale readiness: {escape(verdict)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>
<body>
<h1>Readiness assessment</h1>
<p class="verdict"><span class="badge {escape(verdict)}">{escape(verdict)}</span>
{report['counts']['pass']} passed, {report['counts']['fail']} failed, {report['counts']['error']} errors,
{report['counts']['skipped']} skipped</p>
<p class="muted">skuscale {escape(str(report['skuscale_version']))}, {escape(str(report['created']))},
{report.get('seconds_total', report['seconds']):.1f} s</p>
<table>{inputs}</table>
{f"<ul>{notes}</ul>" if notes else ""}
<h2>Checks</h2>
<table><thead><tr><th>#</th><th>check</th><th>value</th><th>threshold</th><th>verdict</th><th>summary</th></tr>
</thead><tbody>{summary_rows}</tbody></table>
<h2>Actions</h2>{f"<ul>{actions}</ul>" if actions else f"<p>{escape(_no_actions(report['counts']))}</p>"}
<h2>Coupled risks</h2>
<p class="muted">Pairs of checks that are both within {report['config']['coupled_risks']['margin']:.0%} of their
thresholds (or past them) at the same time.</p>
{f"<ul>{risks}</ul>" if risks else "<p>None.</p>"}
<h2>Tail view</h2>{_tail_section(report['tail_view'])}
{_quantization_section(report.get('quantization'))}
{''.join(sections)}
</body></html>
"""
