"""Hand-computed tests for calibration and selective-prediction metrics."""

import numpy as np
import pytest

from skuscale.metrics import (
    confidence_bins,
    coverage_at_threshold,
    ece_sampling_floor,
    expected_calibration_error,
    negative_log_likelihood,
    per_class_accuracy,
    per_class_spread_floor,
    precision_at_threshold,
    reliability_curve,
    top_k_accuracy,
)


def test_ece_hand_computed():
    conf = [0.1, 0.3, 0.35, 0.9, 1.0]
    correct = [False, True, False, True, True]
    # bin [0, .5): conf mean 0.25, acc 1/3; bin [.5, 1]: conf mean 0.95, acc 1
    expected = 3 / 5 * abs(1 / 3 - 0.25) + 2 / 5 * abs(1 - 0.95)
    assert expected_calibration_error(conf, correct, n_bins=2) == pytest.approx(expected)
    assert expected == pytest.approx(0.07)


def test_ece_single_bin_is_gap_of_means():
    conf = np.array([0.2, 0.6, 0.7])
    correct = np.array([1, 0, 0])
    assert expected_calibration_error(conf, correct, n_bins=1) == pytest.approx(0.5 - 1 / 3)


def test_perfect_calibration_is_zero():
    conf = np.repeat([0.25, 0.8, 1.0, 0.0], [4, 10, 3, 2])
    correct = np.concatenate([[1, 0, 0, 0], [1] * 8 + [0] * 2, [1, 1, 1], [0, 0]]).astype(bool)
    assert expected_calibration_error(conf, correct) == pytest.approx(0.0, abs=1e-12)


def test_edges_one_and_zero():
    curve = reliability_curve([0.0, 1.0, 1.0], [False, True, False], n_bins=15)
    assert curve["count"][0] == 1
    assert curve["count"][-1] == 2
    assert curve["count"].sum() == 3
    assert curve["accuracy"][-1] == 0.5
    assert curve["confidence"][-1] == 1.0
    assert expected_calibration_error([1.0, 1.0], [True, True]) == 0.0
    assert expected_calibration_error([0.0], [False]) == 0.0
    assert expected_calibration_error([1.0], [False]) == 1.0
    np.testing.assert_array_equal(confidence_bins([0.0, 0.5, 0.999, 1.0], 2), [0, 1, 1, 1])


def test_reliability_curve_shapes_and_empty_bins():
    curve = reliability_curve([0.05, 0.95], [True, False], n_bins=10)
    np.testing.assert_allclose(curve["bin_edges"], np.linspace(0, 1, 11))
    assert curve["count"].tolist() == [1, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    assert np.isnan(curve["accuracy"][1:9]).all()
    assert curve["accuracy"][0] == 1.0 and curve["accuracy"][9] == 0.0
    assert curve["confidence"][9] == pytest.approx(0.95)


@pytest.mark.parametrize(
    "conf, correct, kwargs, match",
    [
        ([0.5, 1.2], [1, 0], {}, r"\[0, 1\]"),
        ([0.5, -0.1], [1, 0], {}, r"\[0, 1\]"),
        ([0.5, np.nan], [1, 0], {}, "NaN"),
        ([0.5, 0.4], [1], {}, "2 entries"),
        ([0.5, 0.4], [1, 2], {}, "boolean"),
        ([], [], {}, "empty"),
        ([[0.5]], [1], {}, "1-D"),
        ([0.5], [1], {"n_bins": 0}, "n_bins"),
    ],
)
def test_ece_validation(conf, correct, kwargs, match):
    with pytest.raises(ValueError, match=match):
        expected_calibration_error(conf, correct, **kwargs)


def test_per_class_accuracy_only_true_classes():
    y_true = ["a", "a", "b", "b", "b", "c"]
    y_pred = ["a", "b", "b", "b", "a", "z"]
    acc = per_class_accuracy(y_true, y_pred)
    assert acc == {"a": 0.5, "b": pytest.approx(2 / 3), "c": 0.0}
    assert list(acc) == ["a", "b", "c"]
    assert per_class_accuracy([1, 2, 2], [1, 2, 1]) == {"1": 1.0, "2": 0.5}
    # heads return str labels: int truths must still match them
    assert per_class_accuracy(np.array([1, 2, 2]), np.array(["1", "2", "2"])) == {"1": 1.0, "2": 1.0}
    with pytest.raises(ValueError, match="equal length"):
        per_class_accuracy(["a"], ["a", "b"])


def test_precision_and_coverage_at_threshold():
    conf = [0.9, 0.8, 0.7, 0.6]
    correct = [True, False, True, True]
    assert precision_at_threshold(conf, correct, 0.7) == pytest.approx(2 / 3)
    assert precision_at_threshold(conf, correct, 0.9) == 1.0
    assert np.isnan(precision_at_threshold(conf, correct, 0.95))
    assert coverage_at_threshold(conf, 0.7) == 0.75
    # per-row thresholds (e.g. per-SKU): accept rows 0 and 3 only
    per_row = [0.85, 0.9, 0.75, 0.5]
    assert precision_at_threshold(conf, correct, per_row) == 1.0
    assert coverage_at_threshold(conf, per_row) == 0.5
    with pytest.raises(ValueError, match="threshold"):
        precision_at_threshold(conf, correct, [0.5, 0.5])


def test_nll_and_top_k():
    probs = np.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    assert negative_log_likelihood(probs, [0, 2]) == pytest.approx(-np.log(0.5))
    assert np.isfinite(negative_log_likelihood(probs, [2, 2]))
    with pytest.raises(ValueError, match="logits"):
        negative_log_likelihood(np.array([[5.0, -3.0]]), [0])
    # tie in row 0 goes to the lower index
    assert top_k_accuracy(probs, [0, 2], k=1) == 1.0
    assert top_k_accuracy(probs, [1, 1], k=1) == 0.0
    assert top_k_accuracy(probs, [1, 1], k=2) == 1.0
    with pytest.raises(ValueError, match="k must"):
        top_k_accuracy(probs, [0, 0], k=0)
    with pytest.raises(ValueError, match="integer"):
        top_k_accuracy(probs, ["a", "b"])


def test_float32_overshoot_is_clipped():
    conf = np.array([np.nextafter(np.float32(1), np.float32(2)), 0.5], dtype=np.float32)
    assert conf[0] > 1.0
    curve = reliability_curve(conf, [True, True], n_bins=4)
    assert curve["count"][-1] == 1 and curve["confidence"][-1] == 1.0
    assert precision_at_threshold(conf, [True, False], 1.0) == 1.0


def test_ece_floor_one_image_known_answer():
    # One image at confidence c: ECE = |outcome - c|, whose mean is 2c(1 - c).
    floor = ece_sampling_floor([0.8], draws=4000, seed=1)
    assert floor["n"] == 1
    assert floor["mean"] == pytest.approx(2 * 0.8 * 0.2, abs=0.01)


def test_ece_floor_certain_predictions_have_no_floor():
    assert ece_sampling_floor(np.ones(50))["mean"] == 0.0


def test_ece_floor_shrinks_with_sample_size_and_is_reproducible():
    conf = np.random.default_rng(0).uniform(0.5, 1.0, 300)
    small, large = ece_sampling_floor(conf, 300), ece_sampling_floor(conf, 3000)
    assert large["mean"] < small["mean"] / 2  # roughly 1 / sqrt(n)
    assert small["p95"] > small["mean"]
    assert ece_sampling_floor(conf, 300, seed=3) == ece_sampling_floor(conf, 300, seed=3)


@pytest.mark.parametrize("kwargs, match", [({"n": 0}, "n must"), ({"draws": 0}, "draws"), ({"n_bins": 0}, "n_bins"),
                                           ({"n": 2.5}, "n must")])
def test_ece_floor_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ece_sampling_floor([0.5, 0.9], **kwargs)


def test_spread_floor_known_answers():
    # One image per class at accuracy 0.5: each class is 0 or 1, so the spread is about 50 pp.
    assert per_class_spread_floor(np.ones(2000, int), 0.5, draws=50)["mean_pp"] == pytest.approx(50, abs=1)
    # Certain classes do not scatter.
    assert per_class_spread_floor([3, 7, 9], 1.0)["mean_pp"] == 0.0
    # Many images per class: about the binomial standard error, sqrt(p (1 - p) / n).
    big = per_class_spread_floor(np.full(400, 100), 0.8, draws=50)
    assert big["mean_pp"] == pytest.approx(100 * np.sqrt(0.8 * 0.2 / 100), rel=0.05)
    assert big["p95_pp"] >= big["mean_pp"]


@pytest.mark.parametrize("counts, accuracy, match", [([0, 3], 0.5, "positive"), ([], 0.5, "non-empty"),
                                                     ([1.5, 2], 0.5, "integers"), ([3], 1.5, "accuracy")])
def test_spread_floor_validation(counts, accuracy, match):
    with pytest.raises(ValueError, match=match):
        per_class_spread_floor(np.asarray(counts), accuracy)
