"""The readiness report shows the fp32-vs-INT8 per-SKU table of an INT8 bundle."""

from __future__ import annotations

from types import SimpleNamespace

from skuscale.assess.html import _quantization_section
from skuscale.assess.report import _quantization


def _row(sku, top1_fp32, top1_int8, flagged):
    return {"sku": sku, "n": 5, "train_count": 20, "top1_fp32": top1_fp32, "top1_int8": top1_int8,
            "top1_change_points": round((top1_int8 - top1_fp32) * 100, 4), "automation_fp32": 0.2,
            "automation_int8": 0.2, "automation_change_points": 0.0, "auto_precision_fp32": 1.0,
            "auto_precision_int8": 1.0, "auto_precision_change_points": 0.0, "flagged": flagged,
            "flag_reasons": ["top-1 -20.0 pts"] if flagged else []}


RECORD = {
    "method": "onnxruntime quantize_static, QDQ",
    "calibration": {"images": 10},
    "evaluation": {"images": 10},
    "thresholds": {"method": "verified", "ok": True},
    "impact": {
        "overall": {"top1_fp32": 0.9, "top1_int8": 0.88, "top1_change_points": -2.0},
        "deciles": {"bottom": {"skus": ["tail-a"], "mean_top1_fp32": 0.8, "mean_top1_int8": 0.6,
                               "top1_change_points": -20.0},
                    "top": {"skus": ["head-a"], "mean_top1_fp32": 1.0, "mean_top1_int8": 1.0,
                            "top1_change_points": 0.0}},
        "flagged": ["tail-a"],
        "flag_points": 5.0,
        "per_sku": [_row("head-a", 1.0, 1.0, False), _row("tail-a", 0.8, 0.6, True)],
    },
}


def test_fp32_bundle_has_no_quantization_section():
    ctx = SimpleNamespace(bundle=SimpleNamespace(metadata={}))
    assert _quantization(ctx) is None
    assert _quantization_section(None) == ""


def test_int8_bundle_shows_the_per_sku_table_with_the_tail_first():
    ctx = SimpleNamespace(bundle=SimpleNamespace(metadata={"quantization": RECORD}))
    section = _quantization(ctx)
    assert section["flagged"] == ["tail-a"]
    assert [r["sku"] for r in section["per_sku"]] == ["tail-a", "head-a"]  # worst top-1 change first
    html = _quantization_section(section)
    assert "Quantisation (INT8)" in html and "tail-a" in html
    assert html.index("tail-a</td>") < html.index("head-a</td>")
    assert "-20.0" in html


def test_unreadable_record_is_reported_not_raised():
    ctx = SimpleNamespace(bundle=SimpleNamespace(metadata={"quantization": {"method": "x"}}))
    section = _quantization(ctx)
    assert "error" in section
    assert "unreadable" in _quantization_section(section)


def test_refitted_thresholds_are_shown_with_before_and_after():
    refit = {"method": "int8_margin", "n_images": 810, "n_raised": 81,
             "sku_margin": {"margin": 1.01, "quantile": 0.9, "window": 1.0, "n": 810, "n_near": 170, "basis": "near"}}
    thresholds = {"method": "int8_margin", "passed": True, "auto_precision_int8": 0.977,
                  "required_auto_precision": 0.961, "refit": refit,
                  "evaluation": {"fp32": {"automation": 0.199, "auto_precision": 0.966},
                                 "int8_fp32_thresholds": {"automation": 0.206, "auto_precision": 0.984},
                                 "int8": {"automation": 0.149, "auto_precision": 0.977}}}
    ctx = SimpleNamespace(bundle=SimpleNamespace(metadata={"quantization": {**RECORD, "thresholds": thresholds}}))
    html = _quantization_section(_quantization(ctx))
    assert "raised by 1.01 log-odds (81 SKUs)" in html
    assert "INT8, fp32 thresholds" in html and "20.6%" in html and "14.9%" in html
    assert "Verification passed" in html
    kept = _quantization_section(_quantization(SimpleNamespace(bundle=SimpleNamespace(metadata={"quantization": {
        **RECORD, "thresholds": {"method": "kept", "passed": False, "auto_precision_int8": 0.95,
                                 "required_auto_precision": 0.965, "refit": None}}}))))
    assert "fp32 ones, kept" in kept and "Verification FAILED" in kept
