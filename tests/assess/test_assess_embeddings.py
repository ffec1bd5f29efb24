"""``skuscale assess --embeddings``: the readiness report on an embedding file (simulated catalogues)."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from skuscale.cli.main import app
from skuscale.data.embeddings import EmbeddingDataset, save_embeddings

runner = CliRunner()


def _catalogue(tmp_path):
    rng = np.random.default_rng(1)
    n_skus, per_sku, dim = 12, 30, 24
    centres = rng.standard_normal((n_skus, dim)) * 2
    sku = np.repeat([f"sku{i:02d}" for i in range(n_skus)], per_sku)
    X = centres.repeat(per_sku, axis=0) + rng.standard_normal((n_skus * per_sku, dim))
    split = np.tile(np.array(["train"] * 22 + ["val"] * 8), n_skus)
    data = EmbeddingDataset(X=X.astype(np.float32), sku=sku, split=split,
                            category=np.array([f"c{int(s[3:]) % 4}" for s in sku]), meta={"simulated": True})
    return save_embeddings(tmp_path / "sim.npz", data)


def test_assess_accepts_an_embedding_file(tmp_path):
    emb = _catalogue(tmp_path)
    bundle = tmp_path / "b"
    assert runner.invoke(app, ["build", "--embeddings", str(emb), "--out", str(bundle)]).exit_code == 0
    out = tmp_path / "report"
    result = runner.invoke(app, ["assess", str(bundle), "--embeddings", str(emb), "--out", str(out)])
    assert result.exit_code in (0, 1), result.output
    report = json.loads((out / "report.json").read_text())
    assert any("SIMULATED" in note for note in report["notes"])
    statuses = {c["check"]: c["status"] for c in report["checks"]}
    assert statuses["sample_balance"] in ("pass", "fail")
    assert (out / "report.html").is_file()


def test_assess_needs_exactly_one_data_source(tmp_path):
    emb = _catalogue(tmp_path)
    result = runner.invoke(app, ["assess", str(tmp_path / "b"), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    result = runner.invoke(app, ["assess", str(tmp_path / "b"), "--embeddings", str(emb), "--train", str(emb),
                                 "--out", str(tmp_path / "r")])
    assert result.exit_code == 2


def _well_separated(tmp_path, n_single: int):
    rng = np.random.default_rng(0)
    k, d = 40, 32
    centres = rng.standard_normal((k, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    X, sku = [], []
    for i in range(k):
        n = 1 if i < n_single else 15
        X.append(centres[i] + 0.12 * rng.standard_normal((n, d)))
        sku += [f"s{i:02d}"] * n
    data = EmbeddingDataset(X=np.concatenate(X).astype(np.float32), sku=np.array(sku),
                            split=np.array(["train"] * len(sku)))
    return save_embeddings(tmp_path / f"few{n_single}.npz", data)


def test_a_single_image_sku_does_not_wreck_the_held_out_calibration(tmp_path):
    """Cross-validated over the training images, a one-image SKU is absent from its fold's head."""
    ece = {}
    for n_single in (0, 1):
        emb = _well_separated(tmp_path, n_single)
        bundle, out = tmp_path / f"b{n_single}", tmp_path / f"r{n_single}"
        assert runner.invoke(app, ["build", "--embeddings", str(emb), "--out", str(bundle)]).exit_code == 0
        runner.invoke(app, ["assess", str(bundle), "--embeddings", str(emb), "--out", str(out)])
        report = json.loads((out / "report.json").read_text())
        check = {c["check"]: c for c in report["checks"]}["calibration"]
        ece[n_single] = check["value"]
    # Before the fix the one-image SKU's rows pinned the temperature at 100 (ECE about 0.8).
    assert ece[1] < 0.05 and ece[0] < 0.05, ece
