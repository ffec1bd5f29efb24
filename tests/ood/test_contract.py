"""Contract tests run over every detector of the registry."""

from __future__ import annotations

import json

import numpy as np
import pytest

from skuscale.exceptions import NotFittedError
from skuscale.ood import DETECTORS, BaseDetector, auroc, make_detector

from ._data import N_FEATURES, clusters

NAMES = sorted(DETECTORS)


@pytest.fixture(scope="module")
def data():
    return clusters()


@pytest.fixture(scope="module")
def fitted(data):
    X_train, y_train, *_ = data
    return {name: make_detector(name).fit(X_train, y_train) for name in NAMES}


def test_registry_names():
    assert {"msp", "energy", "mahalanobis", "knn", "prototype"} <= set(DETECTORS)
    for cls in DETECTORS.values():
        assert issubclass(cls, BaseDetector)


@pytest.mark.parametrize("name", NAMES)
def test_fit_returns_self(name, data):
    X_train, y_train, *_ = data
    det = make_detector(name)
    assert det.fit(X_train, y_train) is det
    assert det.is_fitted()


@pytest.mark.parametrize("name", NAMES)
def test_not_fitted_error(name, data):
    det = make_detector(name)
    with pytest.raises(NotFittedError):
        det.score_samples(data[2])
    with pytest.raises(NotFittedError):
        det.get_state()


@pytest.mark.parametrize("name", NAMES)
def test_constructor_only_stores_params(name):
    cls = DETECTORS[name]
    det = cls()
    assert not det.is_fitted()
    assert set(det.get_params()) == set(cls._param_names())
    assert repr(det).startswith(cls.__name__)


@pytest.mark.parametrize("name", NAMES)
def test_score_samples_shape_and_finite(name, data, fitted):
    X_test = data[2]
    scores = fitted[name].score_samples(X_test)
    assert isinstance(scores, np.ndarray)
    assert scores.shape == (X_test.shape[0],)
    assert np.issubdtype(scores.dtype, np.floating)
    assert np.isfinite(scores).all()


@pytest.mark.parametrize("name", NAMES)
def test_accepts_lists_and_float64(name, data, fitted):
    X_test = data[2]
    ref = fitted[name].score_samples(X_test)
    np.testing.assert_allclose(fitted[name].score_samples(X_test.astype(np.float64)), ref)
    np.testing.assert_allclose(fitted[name].score_samples(X_test[:2].tolist()), ref[:2])


@pytest.mark.parametrize("name", NAMES)
def test_far_cluster_scores_higher(name, data, fitted):
    _, _, X_test, _, X_far = data
    det = fitted[name]
    s_in, s_far = det.score_samples(X_test), det.score_samples(X_far)
    assert s_far.min() > s_in.max()
    assert auroc(s_in, s_far) == 1.0


@pytest.mark.parametrize("name", NAMES)
def test_state_round_trip(name, data, fitted):
    det = fitted[name]
    X = np.vstack([data[2], data[4]])
    state = det.get_state()
    for key, value in state.items():
        if key.endswith(".__params__"):
            json.dumps(value)
        elif not isinstance(value, np.ndarray):
            json.dumps(value)  # JSON-able scalar
    clone = type(det).from_state(det.get_params(), state)
    assert type(clone) is type(det)
    np.testing.assert_array_equal(clone.score_samples(X), det.score_samples(X))


@pytest.mark.parametrize("name", NAMES)
def test_state_round_trip_through_npz_and_json(name, data, fitted, tmp_path):
    """State survives the array/scalar split a bundle would use (no pickle)."""
    det = fitted[name]
    state = det.get_state()
    arrays = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
    scalars = {k: v for k, v in state.items() if not isinstance(v, np.ndarray)}
    np.savez(tmp_path / "state.npz", **arrays)
    with np.load(tmp_path / "state.npz", allow_pickle=False) as npz:
        restored = {k: npz[k] for k in npz.files}
    restored.update(json.loads(json.dumps(scalars)))
    params = json.loads(json.dumps(det.get_params()))
    clone = type(det).from_state(params, restored)
    np.testing.assert_array_equal(clone.score_samples(data[4]), det.score_samples(data[4]))


@pytest.mark.parametrize("name", NAMES)
def test_wrong_feature_count(name, data, fitted):
    X_bad = data[2][:, : N_FEATURES - 1]
    with pytest.raises(ValueError, match="features"):
        fitted[name].score_samples(X_bad)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "X",
    [np.zeros(5, dtype=np.float32), np.zeros((0, N_FEATURES), dtype=np.float32)],
    ids=["1d", "empty"],
)
def test_malformed_input(name, X, fitted):
    with pytest.raises(ValueError):
        fitted[name].score_samples(X)


@pytest.mark.parametrize("name", NAMES)
def test_nan_input(name, data, fitted):
    X = data[2].copy()
    X[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fitted[name].score_samples(X)


@pytest.mark.parametrize("name", NAMES)
def test_label_length_mismatch(name, data):
    X_train, y_train, *_ = data
    with pytest.raises(ValueError):
        make_detector(name).fit(X_train, y_train[:-1])


@pytest.mark.parametrize("name", NAMES)
def test_refit_replaces_state(name, data):
    X_train, y_train, *_ = data
    det = make_detector(name).fit(X_train, y_train)
    det.fit(X_train[:, :8], y_train)
    assert det.n_features_in_ == 8
    assert det.score_samples(X_train[:3, :8]).shape == (3,)


def test_make_detector_unknown_name():
    with pytest.raises(ValueError, match="valid names") as info:
        make_detector("odin")
    for name in DETECTORS:
        assert repr(name) in str(info.value)


def test_make_detector_unknown_param():
    with pytest.raises(ValueError, match="valid parameters"):
        make_detector("knn", kk=3)


def test_make_detector_passes_params():
    det = make_detector("knn", k=3, normalize=False)
    assert det.get_params() == {"k": 3, "normalize": False}
    det = make_detector("mahalanobis", shrinkage=0.1)
    assert det.get_params() == {"shrinkage": 0.1, "normalize": True}
