"""build -> predict -> evaluate on real Grocery Store images, through the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from skuscale.bundle import Bundle
from skuscale.cli.main import app

runner = CliRunner()
UNKNOWN_SKU = "Banana"


@pytest.fixture(scope="module")
def bundle_dir(small_real, cache_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "b"
    result = runner.invoke(app, [
        "build", "--finetune-epochs", "0", "--train", str(small_real["train"]), "--val", str(small_real["val"]),
        "--reference", str(small_real["reference"]), "--exclude-sku", UNKNOWN_SKU,
        "--out", str(out), "--cache-dir", str(cache_dir),
    ])
    assert result.exit_code == 0, result.output
    return out


def _val_rows(small_real) -> list[dict]:
    with open(small_real["val"], newline="") as fh:
        return list(csv.DictReader(fh))


def test_bundle_contents(bundle_dir, small_real):
    doc = json.loads((bundle_dir / "bundle.json").read_text())
    assert set(doc["files"]) == {"backbone.onnx", "head.npz", "prototypes.npz", "detector.npz", "training_images.npz"}
    assert UNKNOWN_SKU not in doc["catalogue"]["skus"]
    assert sorted(doc["catalogue"]["skus"]) == sorted(s for s in small_real["skus"] if s != UNKNOWN_SKU)
    assert doc["backbone"]["export_max_abs_diff"] <= 1e-4
    assert doc["training"]["excluded_skus"] == [UNKNOWN_SKU]
    assert doc["ood"]["class"] in {"MaxSoftmaxDetector", "EnergyDetector", "MahalanobisDetector",
                                   "KNNCosineDetector", "PrototypeCosineDetector"}
    assert 0.0 <= doc["build"]["heldout_detection_rate"] <= 1.0
    assert doc["build"]["seconds"] > 0
    assert doc["calibration"]["temperature"] > 0
    assert not [p for p in bundle_dir.parent.iterdir() if p.name.endswith(".partial")]


def test_predict_json(bundle_dir, small_real):
    rows = _val_rows(small_real)
    images = [rows[0]["path"], rows[-1]["path"]]
    result = runner.invoke(app, ["predict", str(bundle_dir), *images, "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert len(lines) == 2
    for obj in lines:
        assert obj["band"] in {"accept", "verify", "unknown"}
        assert {"sku", "confidence", "ood_score", "candidates"} <= set(obj)
        assert len(obj["candidates"]) == 5
        scores = [c["score"] for c in obj["candidates"]]
        assert scores == sorted(scores, reverse=True)
        assert obj["candidates"][0]["sku"] == obj["sku"]
        assert abs(obj["candidates"][0]["score"] - obj["confidence"]) < 1e-6


def test_onnx_prediction_matches_model_on_torch_embeddings(bundle_dir, small_real, cache_dir):
    """Serving (ONNX Runtime) and build-time (torch) embeddings give the same decisions."""
    from skuscale.embed.backbone import TorchEmbedder, load_backbone
    from skuscale.embed.pipeline import embed_paths

    bundle = Bundle.load(bundle_dir)
    paths = [r["path"] for r in _val_rows(small_real)]
    torch_x = embed_paths(paths, TorchEmbedder(load_backbone()))
    onnx_x = bundle.embed_paths(paths)
    assert np.abs(torch_x - onnx_x).max() <= 1e-4
    a = [d.to_dict() for d in bundle.model.decide(torch_x)]
    b = [d.to_dict() for d in bundle.model.decide(onnx_x)]
    assert [(x["band"], x["sku"]) for x in a] == [(x["band"], x["sku"]) for x in b]


def test_evaluate_counts_excluded_sku_as_unknown(bundle_dir, small_real, tmp_path):
    out = tmp_path / "m.json"
    result = runner.invoke(app, ["evaluate", str(bundle_dir), "--data", str(small_real["val"]), "--json", str(out)])
    assert result.exit_code == 0, result.output
    m = json.loads(out.read_text())
    rows = _val_rows(small_real)
    assert m["n_items"] == len(rows)
    assert m["n_unknown"] == sum(r["sku"] == UNKNOWN_SKU for r in rows)
    assert m["n_known"] == m["n_items"] - m["n_unknown"]
    for key in ("top1", "coarse_top1", "automation_rate", "silent_error_rate", "unknown_flag_rate",
                "unknown_accept_rate", "ood_auroc", "ece", "per_class_top1_std_pp", "per_class_top1_min",
                "images_per_second"):
        assert m[key] is not None, key
    assert "auto_precision" in m
    assert sum(m["bands"].values()) == m["n_items"]
    assert set(m["per_class_top1"]) == {s for s in small_real["skus"] if s != UNKNOWN_SKU}
    # Real images of six clearly different SKUs: the head must beat chance (1/5) by far.
    assert m["top1"] >= 0.6


def test_rebuild_reads_every_embedding_from_the_cache(small_real, cache_dir, bundle_dir, tmp_path):
    from skuscale.build import build_bundle
    from skuscale.embed.finetune_config import FinetuneConfig

    result = build_bundle(
        small_real["train"], tmp_path / "again", val=small_real["val"], reference=small_real["reference"],
        exclude_skus=[UNKNOWN_SKU], cache_dir=cache_dir, finetune=FinetuneConfig(epochs=0),
    )
    assert result.cache_misses == 0
    assert result.cache_hits == sum(result.bundle.metadata["training"]["n_images"].values())


def test_tampered_bundle_is_refused(bundle_dir, small_real, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(bundle_dir, copy)
    with open(copy / "head.npz", "r+b") as fh:
        fh.seek(100)
        fh.write(b"\x00\x01\x02")
    result = runner.invoke(app, ["predict", str(copy), _val_rows(small_real)[0]["path"]])
    assert result.exit_code == 1
    assert "head.npz has been modified" in " ".join(result.output.split())


def test_predict_reports_bad_images_and_keeps_going(bundle_dir, small_real, tmp_path):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    good = _val_rows(small_real)[0]["path"]
    result = runner.invoke(app, ["predict", str(bundle_dir), str(corrupt), good, str(empty),
                                 str(tmp_path / "missing.jpg"), "--json"])
    assert result.exit_code == 1
    lines = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [("error" in x) for x in lines] == [True, False, True, True]
    assert lines[1]["band"] in {"accept", "verify", "unknown"}


def test_build_lists_every_bad_input(small_real, tmp_path, cache_dir):
    rows = _val_rows(small_real)[:4]
    truncated = tmp_path / "truncated.jpg"
    data = Path(rows[0]["path"]).read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"definitely not an image")
    bad = tmp_path / "bad.csv"
    with open(bad, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "sku", "category"])
        for r in rows:
            w.writerow([r["path"], r["sku"], r["category"]])
        w.writerow([str(truncated), "X", "Y"])
        w.writerow([str(empty), "X", "Y"])
        w.writerow([str(corrupt), "X", "Y"])
        w.writerow([str(tmp_path / "nope.jpg"), "X", "Y"])
        w.writerow([rows[1]["path"], "", "Y"])
    out = tmp_path / "never"
    result = runner.invoke(app, ["build", "--finetune-epochs", "0",
                                 "--train", str(bad), "--out", str(out), "--cache-dir", str(cache_dir)])
    assert result.exit_code == 1
    text = result.output.replace("\n", "")
    for needle in ("truncated.jpg", "empty.jpg", "corrupt.jpg", "nope.jpg"):
        assert needle in text, needle
    assert "problem" in text
    assert not out.exists()


def test_exclude_unknown_sku_is_a_clear_error(small_real, tmp_path, cache_dir):
    result = runner.invoke(app, ["build", "--finetune-epochs", "0",
                                 "--train", str(small_real["train"]), "--exclude-sku", "No-Such-SKU",
                                 "--out", str(tmp_path / "b"), "--cache-dir", str(cache_dir)])
    assert result.exit_code == 1
    assert "No-Such-SKU" in result.output.replace("\n", "")


def test_evaluate_counts_images_the_bundle_was_fitted_on(bundle_dir, small_real, tmp_path):
    out = tmp_path / "m.json"
    result = runner.invoke(app, ["evaluate", str(bundle_dir), "--data", str(small_real["train"]), "--json", str(out)])
    assert result.exit_code == 0, result.output
    m = json.loads(out.read_text())
    # Every training image of a SKU in the bundle is recognised as seen; the excluded SKU's are not.
    with open(small_real["train"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert m["n_seen_in_training"] == sum(r["sku"] != UNKNOWN_SKU for r in rows)
    assert "in-sample" in " ".join(result.output.split())


def test_no_train_on_val_keeps_validation_images_out_of_the_head(small_real, cache_dir, tmp_path):
    out = tmp_path / "b"
    result = runner.invoke(app, [
        "build", "--finetune-epochs", "0", "--train", str(small_real["train"]), "--val", str(small_real["val"]),
        "--out", str(out), "--cache-dir", str(cache_dir), "--no-train-on-val",
    ])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "bundle.json").read_text())["training"]["config"]["final_on_calibration"] is False
    metrics = tmp_path / "m.json"
    result = runner.invoke(app, ["evaluate", str(out), "--data", str(small_real["val"]), "--json", str(metrics)])
    assert result.exit_code == 0, result.output
    m = json.loads(metrics.read_text())
    assert m["n_seen_in_training"] == 0
    assert m["n_used_for_calibration"] == m["n_items"]
    assert "never trained on them" in " ".join(result.output.split())


def _write_rows(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "sku", "category"])
        writer.writeheader()
        writer.writerows({k: r[k] for k in ("path", "sku", "category")} for r in rows)
    return path


def _train_rows(small_real) -> list[dict]:
    with open(small_real["train"], newline="") as fh:
        return list(csv.DictReader(fh))


def _build_fails(small_real, cache_dir, out, train, val) -> str:
    result = runner.invoke(app, ["build", "--finetune-epochs", "0", "--train", str(train), "--val", str(val),
                                 "--reference", str(small_real["reference"]), "--out", str(out),
                                 "--cache-dir", str(cache_dir)])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert not out.exists() and not [p for p in out.parent.iterdir() if p.name.endswith(".partial")]
    return _squash(result.output)


def _squash(text: str) -> str:
    """Without whitespace: rich wraps long paths at hyphens, too."""
    return "".join(text.split())


def test_build_lists_the_problems_of_every_manifest_in_one_error(small_real, tmp_path, cache_dir):
    banana = next(r for r in _train_rows(small_real) if r["sku"] == "Banana")
    train = _write_rows(tmp_path / "train.csv", [*_train_rows(small_real), {
        **banana, "path": str(tmp_path / "missing-train.jpg")}])
    val = _write_rows(tmp_path / "val.csv", [*_val_rows(small_real), {
        **banana, "path": str(tmp_path / "missing-val.jpg")}])
    text = _build_fails(small_real, cache_dir, tmp_path / "b", train, val)
    assert "2problem(s)" in text
    assert _squash(f"--train {train}: line 62: file not found") in text
    assert _squash(f"--val {val}: line 20: file not found") in text


def test_build_rejects_images_in_both_train_and_val(small_real, tmp_path, cache_dir):
    train_rows = _train_rows(small_real)
    val = _write_rows(tmp_path / "val.csv", [*_val_rows(small_real), *train_rows[:2]])
    text = _build_fails(small_real, cache_dir, tmp_path / "b", small_real["train"], val)
    assert "2problem(s)" in text
    assert _squash(f"--val {val} line 20: image {train_rows[0]['path']} is also in --train "
                   f"({small_real['train']} line 2)") in text


def test_build_rejects_a_category_that_differs_between_train_and_val(small_real, tmp_path, cache_dir):
    rows = [{**r, "category": "Dairy"} if r["sku"] == "Red-Beet" else r for r in _val_rows(small_real)]
    val = _write_rows(tmp_path / "val.csv", rows)
    train_category = next(r["category"] for r in _train_rows(small_real) if r["sku"] == "Red-Beet")
    text = _build_fails(small_real, cache_dir, tmp_path / "b", small_real["train"], val)
    assert _squash(f"SKU 'Red-Beet' has different categories: '{train_category}' in --train {small_real['train']}; "
                   f"'Dairy' in --val {val}") in text


def test_build_rejects_val_skus_without_training_photos(small_real, tmp_path, cache_dir):
    # The head could never predict them; their photos would poison temperature and thresholds.
    rows = _val_rows(small_real)
    photo = tmp_path / "new-juice.jpg"
    photo.write_bytes(Path(rows[0]["path"]).read_bytes())
    val = _write_rows(tmp_path / "val.csv", [*rows, {**rows[0], "path": str(photo), "sku": "New-Juice"}])
    text = _build_fails(small_real, cache_dir, tmp_path / "b", small_real["train"], val)
    assert _squash("1 SKU(s) with no training photos: New-Juice") in text


def test_bundle_records_absolute_manifest_paths(small_real, cache_dir, bundle_dir, tmp_path, monkeypatch):
    """`skuscale export` reads the recorded manifests back, from whatever folder it runs in."""
    monkeypatch.chdir(small_real["root"])
    out = tmp_path / "b"
    result = runner.invoke(app, [
        "build", "--finetune-epochs", "0", "--train", "train.csv", "--val", "val.csv", "--reference",
        "reference.csv", "--exclude-sku", UNKNOWN_SKU, "--out", str(out), "--cache-dir", str(cache_dir),
    ])
    assert result.exit_code == 0, result.output
    training = json.loads((out / "bundle.json").read_text())["training"]
    for key in ("train", "val", "reference"):
        assert training[key] == str(small_real[key].resolve()), key


def _small_embeddings(path: Path, **params) -> Path:
    from skuscale.data.embeddings import save_embeddings
    from skuscale.simulate import SimulatorParams, simulate_catalogue

    save_embeddings(path, simulate_catalogue(SimulatorParams(n_skus=12, dim=8, max_train=6, min_train=6, **params)))
    return path


def test_a_folder_named_like_the_staging_folder_is_left_alone(tmp_path):
    sim = _small_embeddings(tmp_path / "sim.npz")
    mine = tmp_path / "b.partial"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    result = runner.invoke(app, ["build", "--embeddings", str(sim), "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    assert (mine / "notes.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "b.partial", "sim.npz"]


def test_embedding_build_refuses_val_skus_without_train_rows(tmp_path):
    from skuscale.data.embeddings import load_embeddings, save_embeddings

    data = load_embeddings(_small_embeddings(tmp_path / "sim.npz"))
    keep = ~((data.split == "train") & (data.sku == data.sku[0]))
    save_embeddings(tmp_path / "cut.npz", data.select(keep))
    result = runner.invoke(app, ["build", "--embeddings", str(tmp_path / "cut.npz"), "--out", str(tmp_path / "b")])
    assert result.exit_code == 1
    assert "have val rows but no train rows" in result.output and data.sku[0] in result.output
