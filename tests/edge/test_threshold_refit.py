"""Threshold re-fit after INT8: the margin arithmetic on tiny arrays, and the re-fitted model."""

from __future__ import annotations

import numpy as np
import pytest

from skuscale.routing import NEVER_ACCEPT

pytest.importorskip("onnxruntime")

from skuscale.edge.quantize import log_odds, raise_thresholds, refit_thresholds, threshold_margin

from .test_decision_graph import _model


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def test_margin_is_the_quantile_of_the_log_odds_movement_near_the_threshold():
    # Four images sit within 1 log-odds of their threshold (logit 5.5) and move by 0.1, 0.2, 0.3, 0.9;
    # the fifth (logit 0 -> 3) is far from it under fp32 and INT8 alike and must not count.
    c32 = _sigmoid([5.0, 5.0, 5.0, 5.0, 0.0])
    c8 = _sigmoid([5.1, 5.2, 5.3, 5.9, 3.0])
    thr = np.full(5, _sigmoid(5.5))
    out = threshold_margin(c32, c8, thr, thr, quantile=0.9, window=1.0)
    assert out["n_near"] == 4 and out["basis"] == "near" and out["n"] == 5
    # linear quantile of [0.1, 0.2, 0.3, 0.9] at 0.9: position 2.7 -> 0.3 + 0.7 * 0.6
    assert out["margin"] == pytest.approx(0.72, abs=1e-9)
    assert threshold_margin(c32, c8, thr, thr, quantile=1.0)["margin"] == pytest.approx(0.9, abs=1e-9)


def test_margin_counts_images_near_their_int8_threshold_and_ignores_never_accept():
    c32 = _sigmoid([0.0, 5.0])
    c8 = _sigmoid([5.2, 9.0])
    # image 0 is near only under INT8 (its INT8 top-1 has another threshold); image 1 only faces NEVER_ACCEPT
    out = threshold_margin(c32, c8, [_sigmoid(5.0), NEVER_ACCEPT], [_sigmoid(5.0), NEVER_ACCEPT], quantile=1.0)
    assert out["n_near"] == 1
    assert out["margin"] == pytest.approx(5.2, abs=1e-9)


def test_margin_falls_back_to_all_images_then_to_zero():
    c32, c8 = _sigmoid([0.0, 1.0]), _sigmoid([0.5, 1.0])
    out = threshold_margin(c32, c8, [0.9999, 0.9999], [0.9999, 0.9999], quantile=1.0)
    assert out["basis"] == "all" and out["margin"] == pytest.approx(0.5, abs=1e-9)
    empty = threshold_margin([], [], [], [])
    assert empty["basis"] == "none" and empty["margin"] == 0.0


@pytest.mark.parametrize("kwargs", [{"quantile": 0.0}, {"quantile": 1.5}, {"window": 0.0}])
def test_margin_rejects_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        threshold_margin([0.5], [0.5], [0.9], [0.9], **kwargs)


def test_margin_rejects_mismatched_arrays():
    with pytest.raises(ValueError, match="1-D arrays"):
        threshold_margin([0.5, 0.6], [0.5], [0.9], [0.9])


def test_raise_thresholds_adds_the_margin_in_log_odds():
    t = np.array([_sigmoid(2.0), _sigmoid(7.0), 0.0, NEVER_ACCEPT, 1.0])
    out = raise_thresholds(t, 1.0)
    assert out[0] == pytest.approx(_sigmoid(3.0), rel=1e-12)
    assert out[1] == pytest.approx(_sigmoid(8.0), rel=1e-12)
    assert log_odds(out[1]) - log_odds(t[1]) == pytest.approx(1.0, abs=1e-6)
    assert out[3] == NEVER_ACCEPT and out[4] == 1.0  # never-accept stays never-accept
    assert (out >= t).all()
    np.testing.assert_array_equal(raise_thresholds(t, 0.0), t)
    with pytest.raises(ValueError):
        raise_thresholds(t, -0.1)


def test_refit_raises_every_threshold_by_the_measured_margin():
    model, X = _model("msp")
    rng = np.random.default_rng(1)
    X8 = (X + rng.normal(size=X.shape) * 1.0).astype(np.float32)  # an "INT8" perturbation of the embeddings
    refitted, record = refit_thresholds(model, X, X8, quantile=0.9)

    a32, a8 = model.decide_arrays(X), model.decide_arrays(X8)
    expected = threshold_margin(a32["confidence"], a8["confidence"], a32["threshold"], a8["threshold"], quantile=0.9)
    assert record["method"] == "int8_margin"
    assert record["sku_margin"] == expected
    margin = expected["margin"]
    assert margin > 0.2

    old, new = model.router.sku_threshold_vector(), refitted.router.sku_threshold_vector()
    np.testing.assert_allclose(new, raise_thresholds(old, margin), rtol=0, atol=1e-12)
    live = old < 1.0
    assert live.any() and (new[live] > old[live]).all()
    assert record["n_raised"] == int(live.sum())
    t_old, t_new = model.router.sku_thresholds, refitted.router.sku_thresholds
    assert t_new.global_ >= t_old.global_
    assert all(t_new.per_category[c] >= t_old.per_category[c] for c in t_old.per_category)
    # category routing gets its own margin, and only goes up
    assert record["category_margin"] is not None
    np.testing.assert_allclose(refitted.router.category_threshold_vector(),
                               raise_thresholds(model.router.category_threshold_vector(),
                                                record["category_margin"]["margin"]), atol=1e-12)
    # head, temperature and detector are untouched; the source model is not modified
    assert refitted.head is model.head and refitted.temperature == model.temperature
    np.testing.assert_array_equal(model.router.sku_threshold_vector(), old)
    # fewer INT8 accepts than with the fp32 thresholds
    assert (refitted.decide_arrays(X8)["band"] == 0).sum() <= (a8["band"] == 0).sum()


def test_refit_without_perturbation_changes_nothing():
    model, X = _model("energy")
    refitted, record = refit_thresholds(model, X, X.copy())
    assert record["sku_margin"]["margin"] == 0.0 and record["n_raised"] == 0
    np.testing.assert_array_equal(refitted.router.sku_threshold_vector(), model.router.sku_threshold_vector())


def test_refit_rejects_mismatched_embeddings():
    model, X = _model("msp")
    with pytest.raises(ValueError, match="one shape"):
        refit_thresholds(model, X, X[:-1])


def test_saturated_float32_confidences_do_not_read_as_movement():
    # float32 softmax returns exactly 1.0 or the float32 just below it (1 - 2**-24) for confident images:
    # one rounding step, not a confidence movement (it read as 11 log-odds with a 1e-12 clip).
    below = float(np.nextafter(np.float32(1.0), np.float32(0.0)))
    assert log_odds(1.0) == log_odds(below) == pytest.approx(16.64, abs=0.01)
    out = threshold_margin([1.0] * 5 + [below] * 5, [below] * 5 + [1.0] * 5, [0.95] * 10, [0.95] * 10)
    assert out["basis"] == "all" and out["margin"] == 0.0
    # a real movement near the threshold still counts in full
    assert threshold_margin([_sigmoid(3.0)], [_sigmoid(3.5)], [0.95], [0.95])["margin"] == pytest.approx(0.5)


def test_reading_a_quantization_record_needs_no_onnx():
    # `skuscale assess` renders the INT8 section of a bundle through quantization_section; a device or
    # assessment machine with onnxruntime but without the `onnx` package must still read it.
    import subprocess
    import sys

    code = (
        "import sys\n"
        "sys.modules['onnx'] = None\n"  # makes `import onnx` fail, as on a machine without it
        "from types import SimpleNamespace\n"
        "from skuscale.edge.quantize import quantization_section\n"
        "row = {'sku': 'a', 'top1_change_points': -1.0}\n"
        "q = {'method': 'm', 'calibration': {}, 'evaluation': {}, 'thresholds': {'passed': True},\n"
        "     'impact': {'per_sku': [row], 'overall': {}, 'deciles': None, 'flagged': [], 'flag_points': 5.0}}\n"
        "section = quantization_section(SimpleNamespace(metadata={'quantization': q}))\n"
        "assert section['per_sku'] == [row] and section['thresholds'] == {'passed': True}\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
