"""Known-answer tests for temperature scaling."""

import json

import numpy as np
import pytest

from skuscale.exceptions import NotFittedError
from skuscale.head.calibration import TEMPERATURE_BOUNDS, TemperatureScaler
from skuscale.metrics import expected_calibration_error, negative_log_likelihood


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def make_logits(true_temperature, *, n=4000, k=10, seed=0):
    """Labels drawn from softmax(u); observed logits u * T, so the right T is T."""
    rng = np.random.default_rng(seed)
    u = rng.normal(scale=2.0, size=(n, k))
    p = _softmax(u)
    y = (p.cumsum(axis=1) > rng.uniform(size=(n, 1))).argmax(axis=1)
    return u * true_temperature, y


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5, 4.0])
def test_recovers_known_temperature(true_t):
    logits, y = make_logits(true_t)
    ts = TemperatureScaler().fit(logits, y)
    assert ts.temperature_ == pytest.approx(true_t, rel=0.05)


def test_overconfident_logits_get_temperature_above_one_and_lower_ece():
    logits, y = make_logits(3.0, seed=1)
    ts = TemperatureScaler().fit(logits, y)
    assert ts.temperature_ > 1.5
    before = _softmax(logits)
    after = ts.transform(logits)
    correct = before.argmax(1) == y
    ece_before = expected_calibration_error(before.max(1), correct)
    ece_after = expected_calibration_error(after.max(1), correct)
    assert ece_after < ece_before
    assert ece_after < 0.03


def test_calibrated_logits_keep_temperature_near_one():
    logits, y = make_logits(1.0, seed=2)
    ts = TemperatureScaler().fit(logits, y)
    assert abs(ts.temperature_ - 1.0) < 0.05


@pytest.mark.parametrize("true_t", [0.4, 1.0, 3.0])
def test_nll_after_fit_never_worse(true_t):
    logits, y = make_logits(true_t, n=500, seed=3)
    ts = TemperatureScaler().fit(logits, y)
    assert ts.nll_after_ <= ts.nll_before_
    assert ts.nll_before_ == pytest.approx(negative_log_likelihood(_softmax(logits), y))
    assert ts.nll_after_ == pytest.approx(negative_log_likelihood(ts.transform(logits), y))


def test_transform_keeps_argmax_and_normalises():
    logits, y = make_logits(2.0, n=300, seed=4)
    ts = TemperatureScaler().fit(logits, y)
    p = ts.transform(logits)
    assert p.shape == logits.shape
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_array_equal(p.argmax(axis=1), logits.argmax(axis=1))
    np.testing.assert_allclose(ts.fit_transform(logits, y), p)


def test_deterministic():
    logits, y = make_logits(2.0, n=300, seed=5)
    a = TemperatureScaler().fit(logits, y).temperature_
    b = TemperatureScaler().fit(logits.astype(np.float32), y).temperature_
    assert a == TemperatureScaler().fit(logits, y).temperature_
    assert a == pytest.approx(b, rel=1e-4)


def test_sample_weight_matches_duplication():
    logits, y = make_logits(2.0, n=200, seed=6)
    w = np.where(np.arange(200) % 3 == 0, 2, 1)
    dup = np.repeat(np.arange(200), w)
    t_w = TemperatureScaler().fit(logits, y, sample_weight=w).temperature_
    t_dup = TemperatureScaler().fit(logits[dup], y[dup]).temperature_
    assert t_w == pytest.approx(t_dup, rel=1e-4)


def test_separable_data_sharpens_within_bounds():
    logits = np.array([[10.0, 0.0], [0.0, 10.0]])
    ts = TemperatureScaler().fit(logits, [0, 1])
    assert TEMPERATURE_BOUNDS[0] <= ts.temperature_ < 0.2
    assert ts.nll_after_ < 1e-12


def test_float_integer_labels_accepted():
    logits, y = make_logits(1.5, n=100, seed=7)
    a = TemperatureScaler().fit(logits, y).temperature_
    assert TemperatureScaler().fit(logits, y.astype(float)).temperature_ == a


@pytest.mark.parametrize(
    "logits, y, match",
    [
        (np.zeros(3), [0, 1, 0], "2-D"),
        (np.zeros((3, 2)), [0, 2, 0], r"\[0, 1\]"),
        (np.zeros((3, 2)), [0, -1, 0], r"\[0, 1\]"),
        (np.zeros((3, 2)), ["a", "b", "a"], "integer column indices"),
        (np.zeros((3, 2)), [0.5, 1, 0], "integer column indices"),
        (np.zeros((3, 2)), [0, 1], "3 entries"),
        (np.array([[0.0, np.nan], [0, 0], [0, 0]]), [0, 1, 0], "NaN"),
        (np.zeros((0, 2)), [], "empty"),
    ],
)
def test_fit_validation(logits, y, match):
    with pytest.raises(ValueError, match=match):
        TemperatureScaler().fit(logits, y)


def test_bad_sample_weight_and_max_iter():
    logits, y = np.zeros((3, 2)), [0, 1, 0]
    with pytest.raises(ValueError, match="non-negative"):
        TemperatureScaler().fit(logits, y, sample_weight=[1, -1, 1])
    with pytest.raises(ValueError, match="positive sum"):
        TemperatureScaler().fit(logits, y, sample_weight=[0, 0, 0])
    with pytest.raises(ValueError, match="max_iter"):
        TemperatureScaler(max_iter=0).fit(logits, y)


def test_not_fitted():
    with pytest.raises(NotFittedError):
        TemperatureScaler().transform(np.zeros((2, 3)))


def test_state_round_trip():
    logits, y = make_logits(2.0, n=200, seed=8)
    ts = TemperatureScaler(max_iter=50).fit(logits, y)
    state = ts.get_state()
    json.dumps(state)
    assert set(state) == {"temperature_", "nll_before_", "nll_after_"}
    back = TemperatureScaler.from_state(ts.get_params(), state)
    np.testing.assert_array_equal(back.transform(logits), ts.transform(logits))
    assert back.get_params() == {"max_iter": 50}
