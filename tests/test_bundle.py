"""Bundle save / load without torch: exact round trip and refusal of tampered bundles."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from skuscale._base import softmax
from skuscale.bundle import FORMAT_VERSION, MANIFEST, Bundle
from skuscale.data.preprocess import Preprocessing
from skuscale.exceptions import BundleError
from skuscale.head.linear import LinearHead
from skuscale.head.prototypes import PrototypeHead
from skuscale.model import RecognitionModel
from skuscale.ood import DETECTORS, make_detector, threshold_at_flag_rate
from skuscale.routing import Router, fit_thresholds

D = 6
SKUS = ["apple", "bread", "milk", "soap"]
CATS = {"apple": "fresh", "bread": "fresh", "milk": "dairy", "soap": "home"}
TEMPERATURE = 1.7


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    X = np.vstack(
        [2.0 * np.eye(D)[i] + 0.8 * rng.standard_normal((15, D)) for i in range(len(SKUS))]
    ).astype(np.float32)
    y = np.repeat(np.array(SKUS), 15)
    return X, y


def _queries(seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    near = np.vstack([2.0 * np.eye(D)[i] + 0.9 * rng.standard_normal((4, D)) for i in range(4)])
    far = 2.0 * np.eye(D)[5] + 0.3 * rng.standard_normal((4, D))
    return np.vstack([near, far]).astype(np.float32)


def build_model(detector: str = "msp") -> RecognitionModel:
    X, y = _data()
    head = LinearHead(C=5.0).fit(X, y)
    prototypes = PrototypeHead(scale=12.0).fit(X, y)
    klass = DETECTORS[detector]
    if hasattr(klass, "from_head"):
        det = klass.from_head(head, temperature=TEMPERATURE)
    elif detector == "knn":
        det = make_detector("knn", k=3).fit(X, y)
    else:
        det = make_detector(detector).fit(X, y)
    probs = softmax(head.decision_function(X) / TEMPERATURE)
    pred = head.classes_[probs.argmax(axis=1)]
    conf = probs.max(axis=1)
    skus = list(head.classes_)
    sku_table = fit_thresholds(
        conf, pred, pred == y, skus=skus, sku_to_category=CATS, target_precision=0.9,
        min_support=5,
    )
    cat_names = sorted(set(CATS.values()))
    M = np.array([[CATS[s] == c for c in cat_names] for s in skus], dtype=float)
    cat_probs = probs @ M
    cat_pred = np.array(cat_names)[cat_probs.argmax(axis=1)]
    cat_true = np.array([CATS[s] for s in y])
    cat_table = fit_thresholds(
        np.minimum(cat_probs.max(axis=1), 1.0), cat_pred, cat_pred == cat_true,
        skus=cat_names, sku_to_category={}, target_precision=0.9, min_support=5,
    )
    router = Router(
        skus=skus,
        sku_to_category=CATS,
        sku_thresholds=sku_table,
        category_thresholds=cat_table,
        ood_threshold=threshold_at_flag_rate(det.score_samples(X), 0.1),
    )
    return RecognitionModel(
        head=head, temperature=TEMPERATURE, prototypes=prototypes, detector=det, router=router,
        sku_to_category=dict(CATS),
    )


def make_bundle(model: RecognitionModel | None = None) -> Bundle:
    return Bundle(
        model=model or build_model(),
        preprocessing=Preprocessing(image_size=32, resize_shorter=40),
        backbone={"name": "x", "onnx": "backbone.onnx", "dim": D},
        metadata={"training": {"n_images": 60, "targets": (0.9, 0.99)}, "note": "test"},
    )


def save(tmp_path: Path, model: RecognitionModel | None = None) -> Path:
    root = tmp_path / "bundle"
    root.mkdir()
    (root / "backbone.onnx").write_bytes(b"not really onnx \x00\x01\x02")
    make_bundle(model).save(root)
    return root


@pytest.fixture
def saved(tmp_path) -> Path:
    return save(tmp_path)


# -- round trip ------------------------------------------------------------------------


@pytest.mark.parametrize("detector", sorted(DETECTORS))
def test_round_trip_reproduces_decisions_exactly(tmp_path, detector):
    model = build_model(detector)
    root = save(tmp_path, model)
    loaded = Bundle.load(root)
    Xq = _queries()
    expected = model.decide(Xq)
    got = loaded.model.decide(Xq)
    assert got == expected
    # the check is not vacuous: more than one band occurs
    assert len({d.band for d in expected}) >= 2
    assert type(loaded.model.detector) is type(model.detector)
    np.testing.assert_array_equal(loaded.model.ood_scores(Xq), model.ood_scores(Xq))
    np.testing.assert_array_equal(loaded.model.predict_proba(Xq), model.predict_proba(Xq))
    for key, value in model.decide_arrays(Xq).items():
        np.testing.assert_array_equal(loaded.model.decide_arrays(Xq)[key], value, err_msg=key)


def test_round_trip_restores_every_part(saved):
    original = make_bundle()
    loaded = Bundle.load(saved)
    assert loaded.root == saved
    assert loaded.skus == SKUS
    assert loaded.backbone == {"name": "x", "onnx": "backbone.onnx", "dim": D}
    assert loaded.preprocessing == original.preprocessing
    assert loaded.model.temperature == TEMPERATURE
    assert loaded.model.sku_to_category == CATS
    assert loaded.model.router.to_dict() == original.model.router.to_dict()
    assert loaded.model.head.get_params() == original.model.head.get_params()
    assert loaded.model.prototypes.scale == 12.0
    np.testing.assert_array_equal(
        loaded.model.prototypes.prototypes_, original.model.prototypes.prototypes_
    )
    # metadata is JSON (tuples become lists) and gains the package version
    assert loaded.metadata["training"] == {"n_images": 60, "targets": [0.9, 0.99]}
    assert loaded.metadata["note"] == "test"
    assert "package_version" in loaded.metadata


def test_bundle_json_lists_the_checked_files(saved):
    doc = json.loads((saved / MANIFEST).read_text())
    assert doc["format"] == "skuscale-bundle"
    assert doc["format_version"] == FORMAT_VERSION
    assert set(doc["files"]) == {"head.npz", "prototypes.npz", "detector.npz", "backbone.onnx"}
    assert all(len(h) == 64 for h in doc["files"].values())
    assert not (saved / (MANIFEST + ".tmp")).exists()


def test_npz_files_load_without_pickle(saved):
    for name in ("head.npz", "prototypes.npz", "detector.npz"):
        with np.load(saved / name, allow_pickle=False) as npz:
            assert npz.files
            for key in npz.files:
                assert npz[key].dtype != object


def test_loaded_bundle_can_be_saved_again(saved, tmp_path):
    loaded = Bundle.load(saved)
    again = tmp_path / "again"
    again.mkdir()
    (again / "backbone.onnx").write_bytes((saved / "backbone.onnx").read_bytes())
    loaded.save(again)
    Xq = _queries(seed=5)
    assert Bundle.load(again).model.decide(Xq) == loaded.model.decide(Xq)


def test_router_without_ood_cutoff_saves_and_loads(tmp_path):
    """The Router's default cut-off is +inf (flag nothing); bundle.json must still be valid JSON."""
    model = build_model()
    model.router = dataclasses.replace(model.router, ood_threshold=math.inf)
    root = save(tmp_path, model)
    assert Bundle.load(root).model.router.ood_threshold == math.inf


def test_metadata_may_not_overwrite_the_bundle_sections(tmp_path):
    bundle = make_bundle()
    bundle.metadata["calibration"] = {"method": "temperature", "temperature": 99.0}
    root = tmp_path / "b"
    with pytest.raises(BundleError, match="calibration"):
        bundle.save(root)
    assert not root.exists()  # refused before anything was written


def test_resaving_a_loaded_bundle_writes_new_stamps(saved, tmp_path):
    doc = json.loads((saved / MANIFEST).read_text())
    doc["created"] = "2000-01-01T00:00:00+00:00"
    (saved / MANIFEST).write_text(json.dumps(_resign(doc)))
    loaded = Bundle.load(saved)
    assert loaded.metadata["created"] == "2000-01-01T00:00:00+00:00"
    again = tmp_path / "again"
    again.mkdir()
    (again / "backbone.onnx").write_bytes((saved / "backbone.onnx").read_bytes())
    loaded.save(again)
    assert json.loads((again / MANIFEST).read_text())["created"] != "2000-01-01T00:00:00+00:00"


def test_save_without_backbone_file_raises(tmp_path):
    with pytest.raises(BundleError, match=r"backbone\.onnx is missing"):
        make_bundle().save(tmp_path / "empty")
    assert not (tmp_path / "empty" / MANIFEST).exists()


# -- refusals ----------------------------------------------------------------------------


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["head.npz", "detector.npz", "prototypes.npz", "backbone.onnx"])
def test_tampered_file_is_refused(saved, name):
    _flip_last_byte(saved / name)
    with pytest.raises(BundleError, match=rf"{name} has been modified"):
        Bundle.load(saved)


def test_appended_bytes_are_refused(saved):
    with open(saved / "backbone.onnx", "ab") as fh:
        fh.write(b"\x00")
    with pytest.raises(BundleError, match="modified"):
        Bundle.load(saved)


@pytest.mark.parametrize("name", ["head.npz", "detector.npz", "backbone.onnx"])
def test_missing_file_is_refused(saved, name):
    (saved / name).unlink()
    with pytest.raises(BundleError, match=rf"{name} is missing"):
        Bundle.load(saved)


def test_all_problems_are_reported_together(saved):
    (saved / "head.npz").unlink()
    _flip_last_byte(saved / "detector.npz")
    with pytest.raises(BundleError) as info:
        Bundle.load(saved)
    message = str(info.value)
    assert "head.npz is missing" in message
    assert "detector.npz has been modified" in message
    assert "refusing bundle" in message


def _edit_manifest(root: Path, **changes) -> None:
    doc = json.loads((root / MANIFEST).read_text())
    doc.update(changes)
    (root / MANIFEST).write_text(json.dumps(doc))


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, 0, "1", None])
def test_wrong_format_version_is_refused(saved, version):
    _edit_manifest(saved, format_version=version)
    with pytest.raises(BundleError, match="format version") as info:
        Bundle.load(saved)
    assert "rebuild the bundle" in str(info.value)


def test_wrong_format_is_refused(saved):
    _edit_manifest(saved, format="something-else")
    with pytest.raises(BundleError, match="not a skuscale bundle"):
        Bundle.load(saved)


def _resign(doc: dict) -> dict:
    from skuscale.bundle import _manifest_digest

    doc["manifest_sha256"] = _manifest_digest(doc)
    return doc


def test_edited_manifest_is_refused(saved):
    doc = json.loads((saved / MANIFEST).read_text())
    doc["routing"]["ood_threshold"] = 1e9
    (saved / MANIFEST).write_text(json.dumps(doc))
    with pytest.raises(BundleError, match=r"bundle\.json has been modified"):
        Bundle.load(saved)


def test_empty_file_list_is_refused(saved):
    doc = json.loads((saved / MANIFEST).read_text())
    doc["files"] = {}
    (saved / MANIFEST).write_text(json.dumps(_resign(doc)))
    with pytest.raises(BundleError, match=r"does not list head\.npz"):
        Bundle.load(saved)


@pytest.mark.parametrize("text", ["{not json", "", "\x00\x01binary"])
def test_non_json_manifest_is_refused(saved, text):
    (saved / MANIFEST).write_text(text)
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle.load(saved)


def test_missing_manifest_is_refused(saved):
    (saved / MANIFEST).unlink()
    with pytest.raises(BundleError, match=r"no bundle\.json"):
        Bundle.load(saved)


def test_missing_folder_is_refused(tmp_path):
    with pytest.raises(BundleError, match="not a skuscale bundle"):
        Bundle.load(tmp_path / "nowhere")


def test_unknown_estimator_class_is_refused(saved):
    doc = json.loads((saved / MANIFEST).read_text())
    doc["ood"]["class"] = "PickleDetector"
    (saved / MANIFEST).write_text(json.dumps(_resign(doc)))
    with pytest.raises(BundleError, match="PickleDetector"):
        Bundle.load(saved)


def test_broken_routing_section_is_refused(saved):
    doc = json.loads((saved / MANIFEST).read_text())
    del doc["routing"]["sku_thresholds"]
    (saved / MANIFEST).write_text(json.dumps(_resign(doc)))
    with pytest.raises(BundleError, match="incomplete or inconsistent"):
        Bundle.load(saved)


def test_manifest_that_is_not_an_object_is_refused(saved):
    (saved / MANIFEST).write_text("[1, 2, 3]")
    with pytest.raises(BundleError):
        Bundle.load(saved)


@pytest.mark.parametrize("section", ["calibration", "catalogue"])
def test_missing_calibration_or_catalogue_is_refused(saved, section):
    doc = json.loads((saved / MANIFEST).read_text())
    del doc[section]
    (saved / MANIFEST).write_text(json.dumps(doc))
    with pytest.raises(BundleError):
        Bundle.load(saved)


def test_binary_manifest_is_refused(saved):
    (saved / MANIFEST).write_bytes(b"\xff\xfe\x00 not text")
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle.load(saved)


# -- the edge export's one-graph pipeline --------------------------------------------------


def _save_edge(tmp_path: Path) -> Path:
    """A bundle whose bundle.json names pipeline.onnx under ``edge``, as ``skuscale export`` writes it."""
    import hashlib

    root = tmp_path / "edge"
    root.mkdir()
    (root / "backbone.onnx").write_bytes(b"not really onnx \x00\x01\x02")
    (root / "pipeline.onnx").write_bytes(b"not really a pipeline \x00\x01")
    bundle = make_bundle()
    bundle.metadata["edge"] = {"pipeline": "pipeline.onnx",
                               "pipeline_sha256": hashlib.sha256((root / "pipeline.onnx").read_bytes()).hexdigest()}
    bundle.save(root)
    return root


def test_edge_pipeline_is_checked_like_the_other_files(tmp_path):
    root = _save_edge(tmp_path)
    assert Bundle.load(root).metadata["edge"]["pipeline"] == "pipeline.onnx"
    _flip_last_byte(root / "pipeline.onnx")
    with pytest.raises(BundleError, match=r"pipeline\.onnx has been modified"):
        Bundle.load(root)
    (root / "pipeline.onnx").unlink()
    with pytest.raises(BundleError, match=r"pipeline\.onnx is missing"):
        Bundle.load(root)


@pytest.mark.parametrize(("edge", "needle"), [
    ({"pipeline": "pipeline.onnx"}, "records no pipeline_sha256"),
    ({"pipeline": "../pipeline.onnx", "pipeline_sha256": "0" * 64}, "not a file name"),
    ("pipeline.onnx", "edge is not an object"),
])
def test_malformed_edge_record_is_refused(tmp_path, edge, needle):
    root = _save_edge(tmp_path)
    doc = json.loads((root / MANIFEST).read_text())
    doc["edge"] = edge
    (root / MANIFEST).write_text(json.dumps(_resign(doc)))
    with pytest.raises(BundleError, match=needle):
        Bundle.load(root)
