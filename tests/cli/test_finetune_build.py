"""`skuscale build --finetune-epochs`: a fine-tuned backbone ships in the bundle, cached for rebuilds."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from skuscale.build import carve_calibration
from skuscale.bundle import Bundle
from skuscale.cli.main import app
from skuscale.data import load_dataset
from skuscale.data.images import load_image
from skuscale.data.preprocess import preprocess_batch
from skuscale.embed.onnx_embedder import OnnxEmbedder

runner = CliRunner()
FAST = ["--finetune-epochs", "1", "--finetune-batch-size", "8", "--finetune-device", "cpu"]


@pytest.fixture(scope="module")
def tuned(small_real, tmp_path_factory):
    root = tmp_path_factory.mktemp("finetuned")
    cache = root / "cache"
    result = runner.invoke(app, [
        "build", "--train", str(small_real["train"]), "--val", str(small_real["val"]),
        "--reference", str(small_real["reference"]), "--out", str(root / "b"), "--cache-dir", str(cache), *FAST,
    ])
    assert result.exit_code == 0, result.output
    return {"root": root, "cache": cache, "bundle": root / "b", "output": result.output}


def test_bundle_ships_the_fine_tuned_backbone(tuned, small_real, cache_dir, tmp_path):
    doc = json.loads((tuned["bundle"] / "bundle.json").read_text())
    ft = doc["training"]["finetune"]
    assert ft["config"]["epochs"] == 1 and ft["from_cache"] is False
    assert ft["report"]["steps"] == (60 + 6) // 8
    assert "-ft-" in doc["backbone"]["identity"] and doc["backbone"]["finetuned"] is True
    assert doc["backbone"]["export_max_abs_diff"] <= 1e-4
    assert "fine-tuned backbone" in tuned["output"]
    # The shipped graph is not the ImageNet backbone: its features differ on the same photos.
    frozen = tmp_path / "frozen"
    result = runner.invoke(app, ["build", "--finetune-epochs", "0", "--train", str(small_real["train"]),
                                 "--val", str(small_real["val"]), "--out", str(frozen), "--cache-dir", str(cache_dir)])
    assert result.exit_code == 0, result.output
    paths = load_dataset(small_real["val"]).paths[:4]
    bundle, base = Bundle.load(tuned["bundle"]), Bundle.load(frozen)
    batch = preprocess_batch([load_image(p) for p in paths], bundle.preprocessing)
    a = OnnxEmbedder(tuned["bundle"] / bundle.backbone["onnx"], bundle.preprocessing).embed_batch(batch)
    b = OnnxEmbedder(frozen / base.backbone["onnx"], base.preprocessing).embed_batch(batch)
    assert np.abs(a - b).max() > 1e-3


def test_rebuild_reuses_the_fine_tuned_weights(tuned, small_real):
    out = tuned["root"] / "again"
    result = runner.invoke(app, [
        "build", "--train", str(small_real["train"]), "--val", str(small_real["val"]),
        "--reference", str(small_real["reference"]), "--out", str(out), "--cache-dir", str(tuned["cache"]), *FAST,
    ])
    assert result.exit_code == 0, result.output
    first = json.loads((tuned["bundle"] / "bundle.json").read_text())
    again = json.loads((out / "bundle.json").read_text())
    assert again["training"]["finetune"]["from_cache"] is True
    assert again["backbone"]["identity"] == first["backbone"]["identity"]
    assert "cache hits / misses" in result.output


def test_without_val_calibration_photos_are_held_out_of_fine_tuning(small_real, tmp_path):
    out = tmp_path / "b"
    result = runner.invoke(app, ["build", "--train", str(small_real["train"]), "--out", str(out),
                                 "--cache-dir", str(tmp_path / "cache"), *FAST])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "bundle.json").read_text())
    assert doc["training"]["calibration_carved_from_train"] is True
    # 6 SKUs x 10 photos: one per SKU is held out, so fine-tuning saw 54.
    assert doc["training"]["n_images"] == {"train": 54, "val": 6}
    assert doc["training"]["finetune"]["report"]["images"] == 54


def test_carve_calibration_takes_the_last_photos_of_each_sku(small_real):
    ds = load_dataset(small_real["train"])
    rest, carved = carve_calibration(ds, fraction=0.2, min_images=5)
    assert len(rest) + len(carved) == len(ds)
    for sku in ds.skus:
        rows = [str(p) for p in np.asarray(ds.paths)[ds.labels == sku]]
        assert [str(p) for p in np.asarray(carved.paths)[carved.labels == sku]] == rows[-2:]
    assert carve_calibration(ds, min_images=11) == (ds, None)


def test_finetune_flags_are_checked(small_real, tmp_path):
    result = runner.invoke(app, ["build", "--train", str(small_real["train"]), "--out", str(tmp_path / "b"),
                                 "--finetune-loss", "arcface"])
    assert result.exit_code == 2
    assert "loss" in result.output
    result = runner.invoke(app, ["build", "--embeddings", str(tmp_path / "e.npz"), "--out", str(tmp_path / "b"),
                                 "--finetune-epochs", "2"])
    assert result.exit_code == 2
    assert "--embeddings" in result.output
