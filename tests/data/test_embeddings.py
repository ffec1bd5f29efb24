"""Embedding files: the format build/evaluate --embeddings read."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from skuscale.cli.main import app
from skuscale.data.embeddings import EmbeddingDataset, load_embeddings, save_embeddings
from skuscale.exceptions import ManifestError

runner = CliRunner()


def clusters(n_skus=8, per_sku=30, dim=16, seed=0) -> EmbeddingDataset:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_skus, dim)) * 3
    sku = np.repeat([f"sku{i}" for i in range(n_skus)], per_sku)
    X = centres.repeat(per_sku, axis=0) + rng.standard_normal((n_skus * per_sku, dim))
    split = np.tile(np.array(["train"] * 20 + ["val"] * 5 + ["test"] * 5), n_skus)
    category = np.array([f"cat{int(s[3:]) % 3}" for s in sku])
    return EmbeddingDataset(X=X.astype(np.float32), sku=sku, category=category, split=split,
                            meta={"simulated": True, "seed": seed})


def test_round_trip(tmp_path):
    data = clusters()
    loaded = load_embeddings(save_embeddings(tmp_path / "e.npz", data))
    np.testing.assert_array_equal(loaded.X, data.X)
    assert loaded.sku.tolist() == data.sku.tolist()
    assert loaded.split.tolist() == data.split.tolist()
    assert loaded.simulated and loaded.meta["seed"] == 0
    assert loaded.categories()["sku4"] == "cat1"
    assert len(loaded.part("test")) == 8 * 5


def test_bad_files_list_every_problem(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, X=np.array([[1.0, np.nan]]), sku=np.array(["", "b"]), split=np.array(["training", "val"]))
    with pytest.raises(ManifestError) as err:
        load_embeddings(bad)
    text = str(err.value)
    assert "finite" in text and "shape (1,)" in text and "split" in text
    np.savez(tmp_path / "nosku.npz", X=np.zeros((2, 3)))
    with pytest.raises(ManifestError, match="missing array 'sku'"):
        load_embeddings(tmp_path / "nosku.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ManifestError, match="not a readable"):
        load_embeddings(tmp_path / "junk.npz")


def _truncated_zip(path):
    np.savez(path, X=np.zeros((2, 3)), sku=np.array(["a", "b"]))
    path.write_bytes(path.read_bytes()[:40])


def _object_array(path):
    np.savez(path, X=np.array([[1.0, "x"]], dtype=object), sku=np.array(["a"]))


def _meta_not_json(path):
    np.savez(path, X=np.zeros((2, 3)), sku=np.array(["a", "b"]), meta=np.array("{simulated: true}"))


def _meta_not_a_single_text(path):
    np.savez(path, X=np.zeros((2, 3)), sku=np.array(["a", "b"]), meta=np.array(["{}", "{}"]))


def _damaged_member(path):
    save_embeddings(path, clusters(n_skus=2, per_sku=5))
    data = bytearray(path.read_bytes())
    # Past the first local header, inside X's compressed data: the archive still opens.
    data[60:70] = b"\xff" * 10
    path.write_bytes(bytes(data))


def _plain_npy(path):
    with path.open("wb") as fh:
        np.save(fh, np.zeros((2, 3)))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_truncated_zip, "not a readable .npz embedding file"),
        (_object_array, "array 'X' cannot be read: Object arrays"),
        (_meta_not_json, "meta is not valid JSON"),
        (_meta_not_a_single_text, "meta must be a single JSON text"),
        (_damaged_member, "array 'X' cannot be read"),
        (_plain_npy, "not an .npz embedding file"),
    ],
)
def test_malformed_files_raise_a_clear_error_naming_the_file(tmp_path, make, message):
    path = tmp_path / "emb.npz"
    make(path)

    with pytest.raises(ManifestError, match=re.escape(message)) as err:
        load_embeddings(path)
    assert err.value.source == str(path)


def test_build_and_evaluate_accept_embedding_files(tmp_path):
    path = save_embeddings(tmp_path / "e.npz", clusters())
    bundle = tmp_path / "b"
    result = runner.invoke(app, ["build", "--embeddings", str(path), "--exclude-sku", "sku7", "--out", str(bundle)])
    assert result.exit_code == 0, result.output
    assert "SIMULATED" in result.output
    doc = json.loads((bundle / "bundle.json").read_text())
    assert doc["backbone"]["onnx"] is None and doc["training"]["simulated"] is True
    assert "sku7" not in doc["catalogue"]["skus"]
    assert doc["build"]["seconds"] > 0
    out = tmp_path / "m.json"
    result = runner.invoke(app, ["evaluate", str(bundle), "--embeddings", str(path), "--json", str(out)])
    assert result.exit_code == 0, result.output
    m = json.loads(out.read_text())
    assert m["split"] == "test" and m["simulated"] is True
    assert m["n_items"] == 40 and m["n_unknown"] == 5
    assert m["top1"] > 0.9  # well-separated clusters


def test_embedding_bundle_refuses_images_with_a_clear_error(tmp_path, real_images):
    path = save_embeddings(tmp_path / "e.npz", clusters())
    bundle = tmp_path / "b"
    assert runner.invoke(app, ["build", "--embeddings", str(path), "--out", str(bundle)]).exit_code == 0
    result = runner.invoke(app, ["predict", str(bundle), str(real_images[0])])
    assert result.exit_code == 1
    assert "no image backbone" in " ".join(result.output.split())


def test_build_needs_exactly_one_input(tmp_path):
    result = runner.invoke(app, ["build", "--out", str(tmp_path / "b")])
    assert result.exit_code == 2
