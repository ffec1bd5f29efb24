"""Compact class tables: known answers on tiny arrays, and agreement with the dense stack."""

from __future__ import annotations

import numpy as np
import pytest

from skuscale.edge.tables import ClassTable, ScalableDecisionStage, pca_basis

from .test_decision_graph import _model


def test_int8_rows_round_trip_within_half_a_step():
    W = np.array([[1.0, -0.5, 0.25], [0.0, 2.0, -2.0]], np.float32)
    t = ClassTable(precision="int8").fit(W, np.array([0.5, -1.0], np.float32))
    assert t.rows_.dtype == np.int8
    np.testing.assert_allclose(t.scales_, [1.0 / 127, 2.0 / 127], rtol=1e-6)
    np.testing.assert_array_equal(t.rows_, [[127, -64, 32], [0, 127, -127]])  # -63.5 rounds to even
    q = np.array([[1.0, 0.0, 0.0]], np.float32)  # already unit norm
    np.testing.assert_allclose(t.scores(t.project(q)), [[1.0 + 0.5, -1.0]], atol=1e-6)
    assert t.nbytes() == 2 * 3 + 2 * 4 + 2 * 4  # rows, bias, scales


def test_fp16_storage_halves_the_rows():
    W = np.random.default_rng(0).normal(size=(10, 8)).astype(np.float32)
    t16, t32 = ClassTable(precision="fp16").fit(W), ClassTable(precision="fp32").fit(W)
    assert t16.rows_.dtype == np.float16
    assert t16.rows_.nbytes * 2 == t32.rows_.nbytes
    q = np.eye(8, dtype=np.float32)[:3]
    np.testing.assert_allclose(t16.scores(q), t32.scores(q), atol=5e-3)


def test_pca_is_exact_for_embeddings_in_the_kept_subspace():
    rng = np.random.default_rng(1)
    W, b = rng.normal(size=(4, 6)).astype(np.float32), rng.normal(size=4).astype(np.float32)
    exact = ClassTable().fit(W, b)
    # Embeddings in a 5-d linear subspace stay there when normalised and centred: 5 axes lose nothing.
    X5 = np.hstack([rng.normal(size=(50, 5)), np.zeros((50, 1))]).astype(np.float32)
    reduced = ClassTable(dim=5).fit(W, b, basis=pca_basis(X5, 5))
    assert reduced.rows_.shape == (4, 5)
    np.testing.assert_allclose(reduced.scores(reduced.project(X5)), exact.scores(exact.project(X5)), atol=1e-4)
    # ...and a query off the subspace does lose its sixth coordinate.
    off = np.array([[0, 0, 0, 0, 0, 1]], np.float32)
    assert not np.allclose(reduced.scores(reduced.project(off)), exact.scores(exact.project(off)), atol=1e-3)


def test_reduced_dim_needs_a_basis():
    with pytest.raises(ValueError, match="basis"):
        ClassTable(dim=2).fit(np.ones((3, 4), np.float32))


def test_faiss_search_with_all_lists_probed_is_exact():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(2)
    W = rng.normal(size=(500, 16)).astype(np.float32)
    b = rng.normal(size=500).astype(np.float32) * 0.1
    approx = ClassTable(precision="fp32", approximate_above=100, nlist=8, nprobe=8).fit(W, b)
    exact = ClassTable(precision="fp32").fit(W, b)
    assert approx.approximate and not exact.approximate
    Q = rng.normal(size=(20, 16)).astype(np.float32)
    s_a, i_a = approx.topk(approx.project(Q), 5)
    s_e, i_e = exact.topk(exact.project(Q), 5)
    np.testing.assert_array_equal(i_a, i_e)
    np.testing.assert_allclose(s_a, s_e, atol=1e-4)


def test_dense_fp32_stage_matches_the_model():
    model, X = _model("prototype")
    stage = ScalableDecisionStage.from_model(model)
    d = stage.decide(X)
    ref = model.decide_arrays(X)
    np.testing.assert_array_equal(d["band"], ref["band"])
    np.testing.assert_array_equal(d["sku_index"], ref["sku_index"])
    np.testing.assert_allclose(d["confidence"], ref["confidence"], atol=1e-5)
    np.testing.assert_allclose(d["ood_score"], model.ood_scores(X), atol=1e-5)
    np.testing.assert_array_equal(d["topk_index"], ref["topk_index"])


def test_stage_counts_a_shared_pca_basis_once():
    model, X = _model("prototype")
    dim = 4
    stage = ScalableDecisionStage.from_model(model, dim=dim, precision="int8", basis_embeddings=X)
    d, k = X.shape[1], len(model.skus)
    basis = (d * dim + d) * 4
    rows = k * (dim + 4 + 4)  # int8 rows, float32 bias and scale per row
    assert stage.nbytes() == 2 * rows + basis + 4 * k
    assert stage.head.basis_nbytes() == stage.prototypes.basis_nbytes() == basis


@pytest.mark.parametrize("detector", ["msp", "energy"])
def test_stage_scores_logit_detectors_at_their_own_temperature(detector):
    # The detector's temperature (1.3) differs from the model's (1.7): the router's OOD cut-off was fitted on
    # the detector's scores, so the stage must compute those, not -confidence.
    model, X = _model(detector)
    assert model.detector.temperature != model.temperature
    stage = ScalableDecisionStage.from_model(model)
    d, ref = stage.decide(X), model.decide_arrays(X)
    np.testing.assert_array_equal(d["band"], ref["band"])
    assert set(np.unique(ref["band"])) == {0, 1, 2}
    np.testing.assert_allclose(d["ood_score"], model.ood_scores(X), rtol=1e-5, atol=1e-5)
    assert (stage.ood_detector, stage.ood_temperature) == (detector, model.detector.temperature)


@pytest.mark.parametrize("detector", ["mahalanobis", "knn"])
def test_stage_refuses_a_detector_it_cannot_compute(detector):
    from skuscale.exceptions import SkuscaleError

    model, _ = _model(detector)
    name = type(model.detector).__name__
    with pytest.raises(SkuscaleError, match=rf"computes the prototype, msp, energy OOD scores; the model uses {name}"):
        ScalableDecisionStage.from_model(model)


def test_stage_refuses_a_logit_detector_over_another_head():
    import dataclasses

    from skuscale.exceptions import SkuscaleError
    from skuscale.head.linear import LinearHead
    from skuscale.ood import DETECTORS

    model, X = _model("msp")
    other = LinearHead(C=0.01).fit(X, np.asarray(model.skus)[model.decide_arrays(X)["sku_index"]])
    model = dataclasses.replace(model, detector=DETECTORS["msp"].from_head(other, temperature=1.3))
    with pytest.raises(SkuscaleError, match="head other than the model's own"):
        ScalableDecisionStage.from_model(model)
