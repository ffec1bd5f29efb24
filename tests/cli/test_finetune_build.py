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
        "--ood-sentinels", "0",
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
        "--ood-sentinels", "0",
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
    # 6 SKUs x 10 photos: one per SKU is held out, and by default 10% of the SKUs (here one)
    # are sentinels kept out of fine-tuning, so fine-tuning saw 5 x 9 photos.
    assert doc["training"]["n_images"] == {"train": 54, "val": 6}
    assert len(doc["training"]["ood_sentinels"]) == 1
    assert doc["training"]["ood_basis"] == "sentinels"
    assert doc["training"]["finetune"]["report"]["images"] == 45
    # by default the sentinel never joins fine-tuning
    assert doc["training"]["late_join"] is None and "pre_join_onnx" not in doc["backbone"]


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


def _check5(bundle_dir, small_real, cache):
    from skuscale.assess.context import load_context
    from skuscale.assess.ood_heldout import OodHeldoutCheck

    ctx = load_context(bundle_dir, small_real["train"], val=small_real["val"], cache_dir=cache)
    check = OodHeldoutCheck()
    return check, ctx


def test_without_sentinels_the_ood_estimate_is_marked_optimistic_and_check5_skips(tuned, small_real):
    doc = json.loads((tuned["bundle"] / "bundle.json").read_text())
    assert doc["training"]["ood_basis"] == "finetuned_on_heldout"
    assert doc["training"]["ood_sentinels"] == []
    assert "optimistic" in tuned["output"]
    check, ctx = _check5(tuned["bundle"], small_real, tuned["cache"])
    reason = check.missing_inputs(ctx)
    assert reason and "--ood-sentinels" in reason


def test_sentinel_skus_stay_out_of_fine_tuning_and_are_the_only_simulated_unknowns(small_real, tmp_path):
    out, cache = tmp_path / "b", tmp_path / "cache"
    result = runner.invoke(app, [
        "build", "--train", str(small_real["train"]), "--val", str(small_real["val"]),
        "--reference", str(small_real["reference"]), "--out", str(out), "--cache-dir", str(cache),
        "--ood-sentinels", "3", *FAST,
    ])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "bundle.json").read_text())
    sentinels = doc["training"]["ood_sentinels"]
    assert len(sentinels) == 3 and set(sentinels) <= set(small_real["skus"])
    assert doc["training"]["ood_basis"] == "sentinels"
    assert doc["training"]["late_join"] is None and "pre_join_onnx" not in doc["backbone"]
    # Fine-tuning saw the 3 other SKUs only: 10 photos + 1 reference shot each.
    assert doc["training"]["finetune"]["report"]["images"] == 33
    # ... but the catalogue keeps all six, and only sentinels were held out as unknowns.
    assert sorted(Bundle.load(out).skus) == sorted(small_real["skus"])
    held = {s for group in doc["build"]["ood_heldout_skus"] for s in group}
    assert held and held <= set(sentinels)
    assert "sentinel SKUs" in result.output
    check, ctx = _check5(out, small_real, cache)
    assert check.missing_inputs(ctx) is None
    verdict = check.run(ctx, {**check.defaults, "compare_detectors": False})
    assert set(verdict.details["detectors"][verdict.details["bundle_detector"]]["per_sku"]) <= set(sentinels)
    assert "sentinel SKUs never seen by fine-tuning" in verdict.summary


@pytest.mark.parametrize(("extra", "message"), [
    (["--ood-sentinels", "5"], "leaves fewer than two"),
    (["--ood-sentinels", "2", "--finetune-epochs", "0"], "needs fine-tuning"),
    (["--ood-sentinels", "0", "--late-join-epochs", "1"], "needs sentinel SKUs"),
])
def test_bad_sentinel_requests_fail_clearly(small_real, tmp_path, extra, message):
    args = ["build", "--train", str(small_real["train"]), "--val", str(small_real["val"]), "--out",
            str(tmp_path / "b"), "--cache-dir", str(tmp_path / "cache"), *FAST, *extra]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert not (tmp_path / "b").exists()
    # refused before any fine-tuning was spent on it
    assert not (tmp_path / "cache" / "finetuned").exists()


@pytest.fixture(scope="module")
def late_joined(small_real, tmp_path_factory):
    root = tmp_path_factory.mktemp("late_join")
    args = ["build", "--train", str(small_real["train"]), "--val", str(small_real["val"]),
            "--reference", str(small_real["reference"]), "--out", str(root / "b"), "--cache-dir", str(root / "cache"),
            "--ood-sentinels", "3", "--late-join-epochs", "1", *FAST]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return {"bundle": root / "b", "cache": root / "cache", "args": args, "output": result.output}


def test_late_join_fine_tunes_every_sku_and_keeps_the_pre_join_backbone(late_joined, small_real):
    out = late_joined["bundle"]
    doc = json.loads((out / "bundle.json").read_text())
    training = doc["training"]
    assert training["ood_basis"] == "sentinels_late_join"
    assert training["finetune"]["report"]["images"] == 33
    # the late join: every SKU, 10 photos + 1 reference shot each, at half the learning rate
    late = training["late_join"]
    assert late["report"]["images"] == 66 and late["config"]["epochs"] == 1
    assert late["config"]["lr"] == pytest.approx(training["finetune"]["config"]["lr"] / 2)
    assert late["pre_join_identity"] == training["finetune"]["identity"] != late["identity"]
    assert doc["backbone"]["identity"] == late["identity"]
    assert "sentinel SKUs join fine-tuning" in late_joined["output"]
    # the pre-join backbone ships (integrity-checked) and differs from the final one
    assert doc["backbone"]["pre_join_onnx"] in doc["files"]
    assert doc["backbone"]["pre_join_export_max_abs_diff"] <= 1e-4
    bundle = Bundle.load(out)
    batch = preprocess_batch([load_image(p) for p in load_dataset(small_real["val"]).paths[:4]], bundle.preprocessing)
    final, pre = bundle.embedder().embed_batch(batch), bundle.pre_join_embedder().embed_batch(batch)
    assert np.abs(final - pre).max() > 1e-3
    # unknowns were simulated with sentinels only, at the pre-join space's own temperature
    held = {s for group in doc["build"]["ood_heldout_skus"] for s in group}
    assert held and held <= set(training["ood_sentinels"])
    assert doc["build"]["ood_temperature"] > 0


def test_late_join_rebuild_comes_from_the_cache(late_joined, tmp_path):
    args = list(late_joined["args"])
    args[args.index("--out") + 1] = str(tmp_path / "again")
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "again" / "bundle.json").read_text())
    assert doc["training"]["finetune"]["from_cache"] and doc["training"]["late_join"]["from_cache"]
    first = json.loads((late_joined["bundle"] / "bundle.json").read_text())
    assert doc["backbone"]["identity"] == first["backbone"]["identity"]


def test_late_join_bundle_refuses_a_modified_pre_join_backbone(late_joined, tmp_path):
    import shutil

    from skuscale.bundle import BundleError

    copy = tmp_path / "b"
    shutil.copytree(late_joined["bundle"], copy)
    path = copy / "backbone_pre_join.onnx"
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(BundleError, match=r"backbone_pre_join\.onnx"):
        Bundle.load(copy)


def test_check5_on_a_late_join_bundle_uses_the_pre_join_backbone(late_joined, small_real):
    check, ctx = _check5(late_joined["bundle"], small_real, late_joined["cache"])
    assert check.missing_inputs(ctx) is None
    pre = ctx.pre_join_embeddings()
    assert pre["train"].shape == ctx.train_X.shape and pre["val"].shape == ctx.val_X.shape
    assert np.abs(pre["val"] - ctx.val_X).max() > 1e-3
    verdict = check.run(ctx, {**check.defaults, "compare_detectors": False})
    sentinels = Bundle.load(late_joined["bundle"]).metadata["training"]["ood_sentinels"]
    assert set(verdict.details["detectors"][verdict.details["bundle_detector"]]["per_sku"]) <= set(sentinels)
    assert "before they joined it" in verdict.summary
    # without the pre-join embeddings (an embedding-file context) the check cannot run honestly
    ctx.pre_join_embeddings = None
    assert "before its sentinel SKUs joined" in check.missing_inputs(ctx)


def test_edge_export_of_a_late_join_bundle_leaves_the_pre_join_backbone_behind(late_joined, small_real, tmp_path):
    from skuscale.assess.context import load_context
    from skuscale.assess.ood_heldout import OodHeldoutCheck
    from skuscale.edge.export import export_bundle

    edge = tmp_path / "edge"
    export_bundle(late_joined["bundle"], edge, evaluation=small_real["val"], cache_dir=late_joined["cache"])
    assert not (edge / "backbone_pre_join.onnx").exists()
    bundle = Bundle.load(edge)
    assert "pre_join_onnx" not in bundle.backbone and bundle.pre_join_embedder() is None
    assert bundle.metadata["edge"]["dropped"] == ["backbone_pre_join.onnx"]
    ctx = load_context(edge, small_real["train"], val=small_real["val"], cache_dir=late_joined["cache"])
    reason = OodHeldoutCheck().missing_inputs(ctx)
    assert "edge export" in reason and str(late_joined["bundle"]) in reason
