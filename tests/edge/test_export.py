"""The one-graph pipeline and the INT8 export on real Grocery Store images (small subset)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from skuscale.bundle import Bundle
from skuscale.cli.main import app
from skuscale.data import load_dataset
from skuscale.data.images import load_image
from skuscale.data.preprocess import preprocess_batch
from skuscale.edge.pipeline import PIPELINE_FILE, PipelineRunner, agreement, python_outputs
from skuscale.edge.quantize import quantization_section, raise_thresholds
from skuscale.routing import NEVER_ACCEPT

pytest.importorskip("onnx")
runner = CliRunner()


@pytest.fixture(scope="module")
def bundle_dir(small_real, cache_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("edge-bundles") / "fp32"
    result = runner.invoke(app, [
        "build", "--finetune-epochs", "0", "--train", str(small_real["train"]), "--val", str(small_real["val"]),
        "--reference", str(small_real["reference"]), "--out", str(out), "--cache-dir", str(cache_dir),
        "--device", "smart-cart",
    ])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def real_paths(small_real) -> list[Path]:
    """Every val image and every other train image of the six SKUs (48 images)."""
    val, train = load_dataset(small_real["val"]), load_dataset(small_real["train"])
    return list(val.paths) + list(train.paths[::2])


def _batch(bundle: Bundle, paths) -> np.ndarray:
    return preprocess_batch([load_image(p) for p in paths], bundle.preprocessing)


@pytest.fixture(scope="module")
def fp32_export(bundle_dir, small_real, cache_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("edge-bundles") / "edge32"
    result = runner.invoke(app, ["export", str(bundle_dir), "--out", str(out), "--eval", str(small_real["val"]),
                                 "--cache-dir", str(cache_dir)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def int8_export(bundle_dir, small_real, cache_dir, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("edge-bundles") / "edge8"
    report = out.parent / "export.json"
    result = runner.invoke(app, [
        "export", str(bundle_dir), "--int8", "--thresholds", "refit", "--calibration", str(small_real["train"]),
        "--calibration-per-sku", "3", "--eval", str(small_real["val"]), "--out", str(out), "--report", str(report),
        "--cache-dir", str(cache_dir),
    ])
    # exit 1 is allowed only for a failed threshold verification, which the report then records
    assert result.exit_code in (0, 1), result.output
    doc = json.loads(report.read_text())
    assert result.exit_code == (0 if doc["quantization"]["thresholds"]["passed"] else 1)
    return out, doc


def test_one_graph_agrees_with_python_on_real_images(fp32_export, real_paths):
    bundle = Bundle.load(fp32_export)
    paths = real_paths
    batch = _batch(bundle, paths)
    graph_out = PipelineRunner(fp32_export / PIPELINE_FILE).run(batch)
    report = agreement(graph_out, python_outputs(bundle.model, bundle.embedder().embed_batch(batch)))
    assert report["n"] == len(paths)
    assert report["band_agreement"] == 1.0
    assert report["sku_agreement"] == 1.0
    assert report["topk_agreement"] == 1.0
    assert report["max_confidence_diff"] <= 1e-4
    assert report["max_ood_score_diff"] <= 1e-4


def test_pipeline_metadata_names_the_catalogue(fp32_export, small_real):
    bundle = Bundle.load(fp32_export)
    pipe = PipelineRunner(fp32_export / PIPELINE_FILE)
    assert pipe.skus == bundle.skus
    assert pipe.categories == bundle.model.router.categories()
    doc = json.loads((fp32_export / "bundle.json").read_text())
    assert doc["edge"]["pipeline_check"]["band_agreement"] >= 0.99
    assert doc["edge"]["pipeline_check"]["manifest"] == str(small_real["val"])  # where the check images came from
    assert doc["backbone"].get("precision", "fp32") == "fp32"


def test_int8_export_keeps_band_agreement(int8_export, bundle_dir, real_paths):
    out, _ = int8_export
    edge = Bundle.load(out)  # checksums of the rewritten bundle verify
    fp32 = Bundle.load(bundle_dir)
    assert edge.backbone["precision"] == "int8"
    assert (out / "backbone.onnx").stat().st_size < 0.5 * (bundle_dir / "backbone.onnx").stat().st_size
    paths = real_paths
    batch = _batch(fp32, paths)
    graph8 = PipelineRunner(out / PIPELINE_FILE).run(batch)
    # the INT8 graph against fp32 embeddings under the same (re-fitted) thresholds: the backbone's cost alone
    py32 = python_outputs(edge.model, fp32.embedder().embed_batch(batch))
    report = agreement(graph8, py32)
    assert report["band_agreement"] >= 0.95, report
    assert report["sku_agreement"] >= 0.95, report
    # the graph routes with the re-fitted thresholds, exactly as the Python stack of the edge bundle does
    exact = agreement(graph8, python_outputs(edge.model, edge.embedder().embed_batch(batch)))
    assert exact["band_agreement"] == 1.0 and exact["max_confidence_diff"] <= 1e-4, exact


def test_int8_export_raises_thresholds_by_the_measured_margin(int8_export, bundle_dir):
    out, doc = int8_export
    th = doc["quantization"]["thresholds"]
    refit = th["refit"]
    assert th["method"] == "int8_margin"
    assert refit is not None, "export --int8 shipped the fp32 thresholds without re-fitting them"
    margin = refit["sku_margin"]["margin"]
    assert margin > 0  # INT8 moves the confidences of real images
    assert refit["n_images"] == 60  # 10 per SKU of the six-SKU calibration manifest
    fp32, edge = Bundle.load(bundle_dir).model.router, Bundle.load(out).model.router
    old, new = fp32.sku_threshold_vector(), edge.sku_threshold_vector()
    assert (new >= old).all()
    live = old < 1.0
    assert live.any() and (new[live] > old[live]).all()
    np.testing.assert_allclose(new, raise_thresholds(old, margin), rtol=0, atol=1e-12)
    assert refit["n_raised"] == int(live.sum())
    assert refit["sku_thresholds_int8"]["n_never_accept"] == int((old >= NEVER_ACCEPT).sum())
    assert (edge.category_threshold_vector() >= fp32.category_threshold_vector()).all()
    # fp32, INT8 with the fp32 thresholds, and the shipped INT8 (re-fitted) on the evaluation images
    ev = th["evaluation"]
    assert set(ev) == {"fp32", "int8_fp32_thresholds", "int8"}
    assert ev["int8"]["automation"] <= ev["int8_fp32_thresholds"]["automation"]
    assert ev["int8"]["top1"] == ev["int8_fp32_thresholds"]["top1"]  # thresholds do not change the argmax
    assert th["auto_precision_int8"] == ev["int8"]["auto_precision"]


def test_int8_export_can_keep_the_fp32_thresholds(bundle_dir, small_real, cache_dir, tmp_path):
    out = tmp_path / "kept"
    report = tmp_path / "kept.json"
    result = runner.invoke(app, [
        "export", str(bundle_dir), "--int8", "--keep-thresholds", "--calibration", str(small_real["train"]),
        "--calibration-per-sku", "3", "--eval", str(small_real["val"]), "--out", str(out), "--report", str(report),
        "--cache-dir", str(cache_dir),
    ])
    th = json.loads(report.read_text())["quantization"]["thresholds"]
    assert result.exit_code == (0 if th["passed"] else 1), result.output
    assert th["method"] == "kept" and th["refit"] is None and th["policy"] == "keep"
    assert th["evaluation"]["int8"] == th["evaluation"]["int8_fp32_thresholds"]
    np.testing.assert_array_equal(Bundle.load(out).model.router.sku_threshold_vector(),
                                  Bundle.load(bundle_dir).model.router.sku_threshold_vector())


def test_auto_policy_refits_only_when_the_fp32_thresholds_fail(bundle_dir, small_real, cache_dir, tmp_path):
    out = tmp_path / "auto"
    report = tmp_path / "auto.json"
    result = runner.invoke(app, [
        "export", str(bundle_dir), "--int8", "--calibration", str(small_real["train"]), "--calibration-per-sku", "3",
        "--eval", str(small_real["val"]), "--out", str(out), "--report", str(report), "--cache-dir", str(cache_dir),
    ])
    th = json.loads(report.read_text())["quantization"]["thresholds"]
    assert result.exit_code == (0 if th["passed"] else 1), result.output
    assert th["policy"] == "auto" and th["refit"] is not None
    fp32 = Bundle.load(bundle_dir).model.router.sku_threshold_vector()
    shipped = Bundle.load(out).model.router.sku_threshold_vector()
    ev = th["evaluation"]
    p8_kept, p32 = ev["int8_fp32_thresholds"]["auto_precision"], ev["fp32"]["auto_precision"]
    needed = min(th["target_precision"], th["target_precision"] if p32 is None else p32) - th["tolerance"]
    kept_passes = p8_kept is None or p8_kept >= needed
    if th["method"] == "kept":
        assert kept_passes and th["refit"]["applied"] is False
        np.testing.assert_array_equal(shipped, fp32)
    else:
        assert th["method"] == "int8_margin" and not kept_passes
        assert (shipped >= fp32).all() and (shipped > fp32).any()


def test_int8_export_leaves_out_the_excluded_sku_of_the_recorded_manifests(small_real, cache_dir, tmp_path):
    # The bundle records the full training and validation manifests; its build dropped one SKU of them.
    dropped = "Red-Beet"
    bundle = tmp_path / "excl"
    built = runner.invoke(app, [
        "build", "--finetune-epochs", "0", "--train", str(small_real["train"]), "--val", str(small_real["val"]),
        "--exclude-sku", dropped, "--out", str(bundle), "--cache-dir", str(cache_dir),
    ])
    assert built.exit_code == 0, built.output
    assert dropped not in Bundle.load(bundle).skus
    out, report = tmp_path / "excl8", tmp_path / "excl8.json"
    # No --calibration / --eval: both manifests are re-read from bundle.json.
    result = runner.invoke(app, ["export", str(bundle), "--int8", "--out", str(out), "--report", str(report),
                                 "--cache-dir", str(cache_dir)])
    q = json.loads(report.read_text())["quantization"]
    assert result.exit_code == (0 if q["thresholds"]["passed"] else 1), result.output
    kept = len(small_real["skus"]) - 1
    assert q["calibration"]["n_images"] == 2 * kept and q["calibration"]["skus_left_out"] == [dropped]
    assert q["thresholds"]["refit"]["n_images"] == 10 * kept  # --margin-per-sku 10 of the five SKUs' 10 photos
    assert q["evaluation"]["n_images"] == 3 * kept and q["evaluation"]["skus_left_out"] == [dropped]
    assert dropped not in {row["sku"] for row in q["impact"]["per_sku"]}
    # The progress lines say what `--thresholds auto` does: measure, then keep or re-fit.
    text = " ".join(result.output.split())
    assert f"quantising the backbone on {2 * kept} calibration images (left out, not in the bundle: {dropped})" in text
    assert "re-fitting the thresholds on the INT8 confidence movement" not in text
    assert "measuring whether the fp32 thresholds hold on INT8" in text
    if q["thresholds"]["method"] == "kept":
        assert "the fp32 thresholds hold on INT8" in text and "keeping them" in text
    else:
        assert "the fp32 thresholds fail on INT8" in text and "re-fitting them by" in text
    # The same manifests passed in again (as `build --device` does) are kept to the catalogue too.
    again = runner.invoke(app, ["export", str(bundle), "--int8", "--thresholds", "refit", "--out", str(out),
                                "--calibration", str(small_real["train"]), "--eval", str(small_real["val"]),
                                "--report", str(report), "--cache-dir", str(cache_dir)])
    q = json.loads(report.read_text())["quantization"]
    assert again.exit_code == (0 if q["thresholds"]["passed"] else 1), again.output
    assert (q["calibration"]["n_images"], q["evaluation"]["n_images"]) == (2 * kept, 3 * kept)
    text = " ".join(again.output.split())
    assert f"re-fitting the thresholds on the INT8 confidence movement of {10 * kept} calibration images" in text
    assert "measuring whether the fp32 thresholds hold" not in text


def test_int8_report_has_per_sku_table(int8_export, small_real, bundle_dir):
    _, doc = int8_export
    q = doc["quantization"]
    rows = q["impact"]["per_sku"]
    assert sorted(r["sku"] for r in rows) == sorted(small_real["skus"])
    for r in rows:
        assert {"top1_fp32", "top1_int8", "automation_fp32", "automation_int8", "auto_precision_fp32",
                "auto_precision_int8", "flagged", "train_count"} <= set(r)
    assert q["impact"]["deciles"]["bottom"]["skus"]
    assert q["thresholds"]["method"] == "int8_margin"
    assert q["calibration"]["n_images"] == 3 * len(small_real["skus"])
    section = quantization_section(Bundle.load(int8_export[0]))
    changes = [r["top1_change_points"] or 0.0 for r in section["per_sku"]]
    assert changes == sorted(changes)  # worst SKU first
    assert section["thresholds"] == q["thresholds"]
    assert quantization_section(Bundle.load(bundle_dir)) is None


def test_fp32_export_without_check_images_is_refused(bundle_dir, tmp_path):
    import shutil

    from skuscale.bundle import _manifest_digest

    # A bundle moved to another machine: the manifests recorded in bundle.json are not readable there.
    moved = tmp_path / "moved"
    shutil.copytree(bundle_dir, moved)
    doc = json.loads((moved / "bundle.json").read_text())
    doc["training"]["train"] = str(tmp_path / "gone" / "train.csv")
    doc["training"]["val"] = str(tmp_path / "gone" / "val.csv")
    doc["manifest_sha256"] = _manifest_digest(doc)
    (moved / "bundle.json").write_text(json.dumps(doc))
    out = tmp_path / "edge"
    result = runner.invoke(app, ["export", str(moved), "--out", str(out)])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "no images to check the exported pipeline" in text and "--eval MANIFEST" in text
    assert not out.exists()


def test_int8_export_refuses_an_unknown_exclude_node(bundle_dir, small_real, cache_dir, tmp_path):
    out = tmp_path / "edge8"
    result = runner.invoke(app, ["export", str(bundle_dir), "--int8", "--calibration", str(small_real["train"]),
                                 "--eval", str(small_real["val"]), "--exclude-node", "/_conv_stem/Conv",
                                 "--exclude-node", "/_conv_stem/static_padding/Pad", "--out", str(out),
                                 "--cache-dir", str(cache_dir)])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    # the Pad node exists in backbone.onnx, but ONNX Runtime's pre-processing folds it into the convolution
    assert "no node named '/_conv_stem/static_padding/Pad'" in text and "for example /_conv_stem/Conv" in text
    assert not out.exists()


def test_pipeline_file_is_verified_on_load(fp32_export, tmp_path):
    import shutil

    from skuscale.exceptions import BundleError

    copy = tmp_path / "copy"
    shutil.copytree(fp32_export, copy)
    with open(copy / PIPELINE_FILE, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BundleError, match=r"pipeline\.onnx has been modified"):
        Bundle.load(copy)


def test_export_refuses_same_folder(bundle_dir):
    result = runner.invoke(app, ["export", str(bundle_dir), "--out", str(bundle_dir)])
    assert result.exit_code == 1
    assert "must differ" in result.output


def test_export_library_refuses_to_replace_a_folder_that_is_not_a_bundle(bundle_dir, tmp_path):
    from skuscale.edge.export import export_bundle
    from skuscale.exceptions import SkuscaleError

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("important")
    with pytest.raises(SkuscaleError, match="neither empty nor a skuscale bundle"):
        export_bundle(bundle_dir, precious)
    assert (precious / "notes.txt").read_text() == "important"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_build_records_device_sizing(bundle_dir):
    sizing = json.loads((bundle_dir / "bundle.json").read_text())["device_sizing"]
    choice = sizing["choice"]
    assert sizing["profile"] == "smart-cart"
    # six SKUs fit the 64 MB cart tier with the fp32 backbone and dense fp32 tables
    assert (choice["backbone"], choice["int8"], choice["table_dim"], choice["table_precision"]) == (
        "efficientnet-lite0", False, None, "fp32")
    assert choice["headroom"] >= 0.20
    assert sizing["table_setting_applied"] is True
    assert choice["total_bytes"] == choice["weights_bytes"] + choice["activation_bytes"] + choice["table_bytes"]


def test_build_fails_early_when_nothing_fits(small_real, cache_dir, tmp_path):
    profile = tmp_path / "tag.yaml"
    profile.write_text("name: price-tag\ntiers:\n  - name: tag0\n    memory_mb: 4\n")
    out = tmp_path / "never"
    result = runner.invoke(app, ["build", "--finetune-epochs", "0",
                                 "--train", str(small_real["train"]), "--out", str(out),
                                 "--cache-dir", str(cache_dir), "--device", str(profile)])
    assert result.exit_code == 1
    assert "nothing fits price-tag/tag0" in result.output
    assert "int8" in result.output and "W " in result.output  # the arithmetic, INT8 included
    assert "embedding train" not in result.output  # it failed before embedding anything
    assert not out.exists()


def test_int8_bundle_footprint_and_check_4(int8_export):
    from skuscale.assess.footprint import bundle_footprint
    from skuscale.assess.memory_headroom import assess_headroom
    from skuscale.assess.profiles import parse_profile
    from skuscale.edge.footprint import measure_bundle

    out, _ = int8_export
    measured = measure_bundle(out, scale_points=(2000,))
    assert measured["precision"] == "int8"
    assert measured["weights_bytes"] < 5 * 2**20  # INT8 lite0 weights, about 3.4 MiB
    assert measured["session_rss"]["run_bytes"] > 0
    assert measured["scale"][0]["dense_fp32_table_bytes"] == int(measured["per_sku_bytes"] * 2000)
    footprint = bundle_footprint(Bundle.load(out))
    # Check 4 counts the INT8 graph ONNX Runtime runs, not the larger float activations of the QDQ file.
    assert footprint.total_bytes < 8 * 2**20
    roomy = parse_profile({"name": "roomy", "tiers": [{"name": "t", "memory_mb": 16}]}, "test")
    assert assess_headroom(footprint, roomy).status == "pass"
    tiny = parse_profile({"name": "tiny", "tiers": [{"name": "t", "memory_mb": 4}]}, "test")
    assert assess_headroom(footprint, tiny).status == "fail"
