"""The estimator base: params, fitted checks, pickle-free state, validation and maths helpers."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest

from skuscale._base import (
    BaseEstimator,
    check_X,
    check_X_y,
    l2_normalize,
    logsumexp,
    softmax,
)
from skuscale.exceptions import NotFittedError, SkuscaleError
from skuscale.head.linear import LinearHead
from skuscale.head.prototypes import PrototypeHead
from skuscale.ood import MaxSoftmaxDetector


def _clusters(seed: int = 0, d: int = 6, n: int = 12):
    rng = np.random.default_rng(seed)
    centres = 3.0 * np.eye(d)[:3]
    X = np.vstack([c + 0.3 * rng.standard_normal((n, d)) for c in centres]).astype(np.float32)
    y = np.repeat(np.array(["a", "b", "c"]), n)
    return X, y


def _through_npz(state: dict) -> dict:
    """What a bundle does to a state: arrays into an .npz, scalars as 0-d arrays back."""
    arrays = {k: np.asarray(v) for k, v in state.items() if not isinstance(v, dict | str)}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as npz:
        out = {k: npz[k] for k in npz.files}
    out.update({k: v for k, v in state.items() if isinstance(v, dict | str)})
    return out


# -- params and fitted state ---------------------------------------------------------


def test_get_params_returns_constructor_arguments_unchanged():
    head = LinearHead(C=2.5, long_tail="none", tau=0.25, max_iter=17)
    assert head.get_params() == {"C": 2.5, "long_tail": "none", "tau": 0.25, "max_iter": 17}
    assert PrototypeHead(scale=3.0).get_params() == {"scale": 3.0}
    assert repr(PrototypeHead(scale=3.0)) == "PrototypeHead(scale=3.0)"


def test_get_params_defaults():
    assert LinearHead().get_params() == {
        "C": 10.0, "long_tail": "logit_adjust", "tau": 1.0, "max_iter": 300,
    }


def test_unfitted_estimator_raises_not_fitted_error():
    head = LinearHead()
    assert not head.is_fitted()
    with pytest.raises(NotFittedError, match=r"LinearHead is not fitted yet"):
        head.get_state()
    with pytest.raises(NotFittedError):
        head.decision_function(np.ones((1, 3)))
    # NotFittedError is both a skuscale error and a ValueError (sklearn convention)
    assert issubclass(NotFittedError, ValueError)
    assert issubclass(NotFittedError, SkuscaleError)


def test_is_fitted_after_fit():
    X, y = _clusters()
    assert LinearHead().fit(X, y).is_fitted()


# -- state round trips ----------------------------------------------------------------


def test_state_holds_only_learned_attributes():
    X, y = _clusters()
    head = LinearHead(C=3.0).fit(X, y)
    state = head.get_state()
    assert {"classes_", "coef_", "intercept_", "log_prior_", "n_features_in_"} <= set(state)
    assert all(key.endswith("_") for key in state)
    assert not set(state) & set(head.get_params())
    assert state["n_features_in_"] == X.shape[1]
    for value in state.values():
        assert isinstance(value, np.ndarray | int | float | str)


def test_round_trip_reproduces_linear_head():
    X, y = _clusters()
    head = LinearHead(C=3.0, tau=0.5).fit(X, y)
    again = LinearHead.from_state(head.get_params(), head.get_state())
    assert again.get_params() == head.get_params()
    np.testing.assert_array_equal(again.classes_, head.classes_)
    np.testing.assert_array_equal(again.decision_function(X), head.decision_function(X))


def test_round_trip_through_npz_restores_python_scalars():
    X, y = _clusters()
    head = LinearHead().fit(X, y)
    state = _through_npz(head.get_state())
    assert isinstance(state["n_features_in_"], np.ndarray)
    assert state["n_features_in_"].ndim == 0
    again = LinearHead.from_state(head.get_params(), state)
    # 0-d arrays come back as Python scalars
    assert type(again.n_features_in_) is int
    assert again.n_features_in_ == X.shape[1]
    np.testing.assert_array_equal(again.predict(X), head.predict(X))


def test_nested_estimator_is_flattened_in_state():
    X, y = _clusters()
    det = MaxSoftmaxDetector(temperature=2.0, head_C=4.0).fit(X, y)
    state = det.get_state()
    assert state["head_.__class__"] == "LinearHead"
    assert state["head_.__params__"] == det.head_.get_params()
    assert state["head_.__params__"]["C"] == 4.0
    np.testing.assert_array_equal(state["head_.coef_"], det.head_.coef_)
    assert "head_" not in state


def test_nested_estimator_round_trip():
    X, y = _clusters()
    rng = np.random.default_rng(1)
    queries = rng.standard_normal((7, X.shape[1])).astype(np.float32)
    det = MaxSoftmaxDetector(temperature=2.0, head_C=4.0).fit(X, y)
    again = MaxSoftmaxDetector.from_state(det.get_params(), det.get_state())
    assert isinstance(again.head_, LinearHead)
    assert again.head_ is not det.head_
    assert again.head_.get_params() == det.head_.get_params()
    assert again.temperature == 2.0
    np.testing.assert_array_equal(again.score_samples(queries), det.score_samples(queries))


def test_nested_round_trip_from_head_through_npz():
    X, y = _clusters()
    head = LinearHead(C=5.0, long_tail="none").fit(X, y)
    det = MaxSoftmaxDetector.from_head(head, temperature=0.7)
    state = _through_npz(det.get_state())
    again = MaxSoftmaxDetector.from_state(det.get_params(), state)
    assert again.head_.long_tail == "none"
    assert again.head_.n_features_in_ == X.shape[1]
    np.testing.assert_array_equal(again.score_samples(X), det.score_samples(X))


def test_unknown_nested_class_is_rejected():
    X, y = _clusters()
    state = MaxSoftmaxDetector().fit(X, y).get_state()
    state["head_.__class__"] = "NoSuchEstimator"
    with pytest.raises(ValueError, match="NoSuchEstimator"):
        MaxSoftmaxDetector.from_state(MaxSoftmaxDetector().get_params(), state)


def test_from_state_with_subclass_defined_here():
    class _Toy(BaseEstimator):
        def __init__(self, *, a: int = 1):
            self.a = a

    toy = _Toy(a=4)
    toy.w_ = np.arange(3.0)
    toy.n_ = 2
    again = _Toy.from_state(toy.get_params(), toy.get_state())
    assert again.a == 4
    assert again.n_ == 2
    np.testing.assert_array_equal(again.w_, np.arange(3.0))


# -- input validation ------------------------------------------------------------------


def test_check_X_returns_float32_copy_of_valid_input():
    out = check_X([[1, 2], [3, 4]])
    assert out.dtype == np.float32
    assert out.shape == (2, 2)
    np.testing.assert_array_equal(out, [[1, 2], [3, 4]])


@pytest.mark.parametrize(
    ("X", "match"),
    [
        (np.ones(3), "2-D"),
        (np.ones((2, 2, 2)), "2-D"),
        (np.ones((0, 4)), "no rows"),
        (np.array([[1.0, np.nan]]), "NaN"),
        (np.array([[1.0, np.inf]]), "infinite"),
        (np.array([["a", "b"]]), "numeric"),
        (np.array([[True, False]]), "numeric"),
    ],
)
def test_check_X_errors(X, match):
    with pytest.raises(ValueError, match=match):
        check_X(X)


def test_check_X_wrong_feature_count():
    with pytest.raises(ValueError, match=r"has 3 features, the estimator was fitted on 4"):
        check_X(np.ones((2, 3)), n_features=4)
    assert check_X(np.ones((2, 4)), n_features=4).shape == (2, 4)


def test_check_X_uses_the_given_name():
    with pytest.raises(ValueError, match=r"^queries must be"):
        check_X(np.ones(3), name="queries")


def test_check_X_y_length_mismatch():
    with pytest.raises(ValueError, match="y must be 1-D with 3 labels"):
        check_X_y(np.ones((3, 2)), ["a", "b"])
    with pytest.raises(ValueError, match="y must be 1-D"):
        check_X_y(np.ones((2, 2)), [["a"], ["b"]])


def test_estimators_check_feature_count():
    X, y = _clusters()
    head = LinearHead().fit(X, y)
    with pytest.raises(ValueError, match="features"):
        head.decision_function(np.ones((2, X.shape[1] + 1)))


# -- maths helpers ------------------------------------------------------------------------


def test_softmax_known_answer():
    p = softmax(np.log(np.array([[1.0, 2.0, 3.0]])))
    np.testing.assert_allclose(p, [[1 / 6, 2 / 6, 3 / 6]], rtol=1e-12)
    np.testing.assert_allclose(softmax(np.zeros((2, 4))), np.full((2, 4), 0.25))


def test_softmax_is_stable_with_large_logits():
    p = softmax(np.array([[1000.0, 1000.0], [1000.0, 0.0], [-1000.0, -1000.0]]))
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p, [[0.5, 0.5], [1.0, 0.0], [0.5, 0.5]], atol=1e-300)
    # shift invariance
    z = np.array([[0.1, -2.0, 3.0]])
    np.testing.assert_allclose(softmax(z + 5000.0), softmax(z), rtol=1e-10)


def test_softmax_axis():
    z = np.array([[0.0, 5.0], [np.log(3.0), 5.0]])
    p = softmax(z, axis=0)
    np.testing.assert_allclose(p[:, 0], [0.25, 0.75])
    np.testing.assert_allclose(p[:, 1], [0.5, 0.5])


def test_logsumexp_known_answers():
    assert logsumexp(np.array([0.0, 0.0])) == pytest.approx(math.log(2.0))
    z = np.array([[0.5, -1.0, 2.0], [3.0, 3.0, 3.0]])
    np.testing.assert_allclose(logsumexp(z), np.log(np.exp(z).sum(axis=1)), rtol=1e-12)
    np.testing.assert_allclose(logsumexp(z, axis=0), np.log(np.exp(z).sum(axis=0)), rtol=1e-12)
    assert logsumexp(z).shape == (2,)
    assert logsumexp(z, axis=0).shape == (3,)


def test_logsumexp_is_stable_with_large_logits():
    out = logsumexp(np.array([[1000.0, 1000.0], [-1000.0, -1000.0], [1000.0, 0.0]]))
    np.testing.assert_allclose(out, [1000.0 + math.log(2.0), -1000.0 + math.log(2.0), 1000.0])


def test_l2_normalize_known_answer():
    out = l2_normalize(np.array([[3.0, 4.0], [0.0, -2.0]]))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, -1.0]], rtol=1e-6)


def test_l2_normalize_unit_norms_and_zero_rows():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((5, 7)) * rng.uniform(0.01, 100.0, size=(5, 1))
    out = l2_normalize(X)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)
    zero = l2_normalize(np.zeros((1, 3)))
    assert np.isfinite(zero).all()
    np.testing.assert_array_equal(zero, 0.0)
