"""The ONNX decision graph against the numpy stack, on small synthetic embeddings (every detector)."""

from __future__ import annotations

import numpy as np
import pytest

from skuscale._base import softmax
from skuscale.edge.pipeline import agreement, build_decision_graph, python_outputs
from skuscale.exceptions import SkuscaleError
from skuscale.head.linear import LinearHead
from skuscale.head.prototypes import PrototypeHead
from skuscale.model import RecognitionModel
from skuscale.ood import DETECTORS, make_detector, threshold_at_flag_rate
from skuscale.routing import Router

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

SKUS = ["a", "b", "c", "d", "e", "f"]
CATEGORIES = {"a": "x", "b": "x", "c": "y", "d": "y", "e": "z"}  # "f" has no category


def _model(detector_name: str, *, seed: int = 0, d: int = 16) -> tuple[RecognitionModel, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(SKUS), d)) * 2
    y = np.repeat(SKUS, 30)
    X = (centres[np.searchsorted(SKUS, y)] + rng.normal(size=(y.size, d)) * 3.0).astype(np.float32)
    head = LinearHead(C=1.0).fit(X, y)
    temperature = 1.7
    klass = DETECTORS[detector_name]
    detector = klass.from_head(head, temperature=1.3) if hasattr(klass, "from_head") else make_detector(
        detector_name).fit(X, y)
    ood = detector.score_samples(X).astype(np.float32)
    router = Router.from_heldout(
        softmax(head.decision_function(X) / temperature), y, skus=list(head.classes_), sku_to_category=CATEGORIES,
        ood_scores=ood, ood_threshold=threshold_at_flag_rate(ood, 0.1), min_support=5, target_precision=0.95,
    )
    model = RecognitionModel(head=head, temperature=temperature, prototypes=PrototypeHead().fit(X, y),
                             detector=detector, router=router, sku_to_category=CATEGORIES)
    queries = np.concatenate([X[::3], rng.normal(size=(20, d)).astype(np.float32) * 3])
    return model, queries


def _run(model: RecognitionModel, X: np.ndarray) -> dict[str, np.ndarray]:
    graph = build_decision_graph(model, dim=X.shape[1])
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"embedding": X}), strict=True))


@pytest.mark.parametrize("detector", ["msp", "energy", "prototype", "mahalanobis", "knn"])
def test_graph_matches_numpy_stack(detector):
    model, X = _model(detector)
    graph_out = _run(model, X)
    py = python_outputs(model, X)
    report = agreement(graph_out, py)
    assert report["band_agreement"] == 1.0
    assert report["sku_agreement"] == 1.0
    assert report["topk_agreement"] == 1.0
    assert report["category_agreement"] == 1.0
    assert report["max_confidence_diff"] <= 1e-5
    assert report["max_ood_score_diff"] <= 1e-4
    # all three bands occur, so the routing really was exercised
    assert set(np.unique(py["band"])) == {0, 1, 2}
    np.testing.assert_allclose(graph_out["category_confidence"], py["category_confidence"], atol=1e-5)


def test_unsupported_detector_is_refused():
    model, X = _model("prototype")
    model.detector = make_detector("knn", normalize=False).fit(X[:12])
    with pytest.raises(SkuscaleError, match="normalize=True"):
        build_decision_graph(model, dim=X.shape[1])


def test_dimension_mismatch_is_refused():
    model, _ = _model("msp")
    with pytest.raises(SkuscaleError, match="16-d"):
        build_decision_graph(model, dim=32)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_pipeline_runner_refuses_non_finite_input(tmp_path, bad):
    import onnx

    from skuscale.edge.pipeline import PipelineRunner

    model, X = _model("msp")
    path = tmp_path / "decision.onnx"
    onnx.save(build_decision_graph(model, dim=X.shape[1]), str(path))
    runner = PipelineRunner(path)
    assert runner.run(X[:4])["band"].shape == (4,)
    X = X[:4].copy()
    X[2, 5] = bad
    with pytest.raises(ValueError, match=r"NaN or infinite values \(in 1 of 4 images"):
        runner.run(X)
    with pytest.raises(ValueError, match="numeric"):
        runner.run(np.full((1, X.shape[1]), "x"))
