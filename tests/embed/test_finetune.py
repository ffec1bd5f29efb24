"""Fine-tuning changes the backbone, is reproducible, and still exports to ONNX exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from skuscale.data import load_dataset
from skuscale.data.images import load_image
from skuscale.data.preprocess import preprocess_batch
from skuscale.embed.backbone import TorchEmbedder, load_backbone
from skuscale.embed.export import export_onnx, verify_export
from skuscale.embed.finetune import FinetuneConfig, finetune_backbone, finetune_key, state_digest
from skuscale.embed.onnx_embedder import OnnxEmbedder
from skuscale.exceptions import SkuscaleError

FAST = {"epochs": 1, "batch_size": 4, "image_size": 96, "device": "cpu"}


@pytest.fixture(scope="module")
def handful(small_real):
    ds = load_dataset(small_real["train"])
    rows = np.concatenate([np.flatnonzero(ds.labels == s)[:3] for s in ds.skus[:3]])
    return [load_image(ds.paths[i]) for i in rows], ds.labels[rows], [ds.paths[i] for i in rows]


def test_one_epoch_changes_weights_and_exports_within_tolerance(handful, tmp_path):
    images, labels, paths = handful
    net = load_backbone()
    prep = net.spec.default_preprocessing()
    batch = preprocess_batch([load_image(p) for p in paths[:4]], prep)
    before_digest = state_digest(net)
    before = TorchEmbedder(net).embed_batch(batch)
    net, report = finetune_backbone(net, images, labels, config=FinetuneConfig(**FAST))
    assert state_digest(net) != before_digest
    after = TorchEmbedder(net).embed_batch(batch)
    assert np.abs(after - before).max() > 1e-3
    assert report.steps == len(labels) // 4 and len(report.epoch_loss) == 1 and np.isfinite(report.epoch_loss[0])
    assert not net.training and next(net.parameters()).device.type == "cpu"
    path = export_onnx(net, tmp_path / "ft.onnx", image_size=prep.image_size)
    assert verify_export(net, path, batch) <= 1e-4
    onnx_emb = OnnxEmbedder(path, prep).embed_batch(batch)
    assert np.abs(onnx_emb - after).max() <= 1e-4


def test_same_seed_same_weights(handful):
    images, labels, _ = handful
    torch.set_num_threads(torch.get_num_threads())
    a, _ = finetune_backbone(load_backbone(), images, labels, config=FinetuneConfig(**FAST, seed=3))
    b, _ = finetune_backbone(load_backbone(), images, labels, config=FinetuneConfig(**FAST, seed=3))
    assert state_digest(a) == state_digest(b)


@pytest.mark.parametrize("loss,sampler", [("cosface", "balanced"), ("logit_adjust", "uniform")])
def test_other_losses_and_samplers_train(handful, loss, sampler):
    images, labels, _ = handful
    net, report = finetune_backbone(load_backbone(), images, labels,
                                    config=FinetuneConfig(**FAST, loss=loss, sampler=sampler))
    assert np.isfinite(report.epoch_loss[0])
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_probe_initialisation_is_used(handful):
    images, labels, _ = handful
    classes = np.unique(labels)
    with pytest.raises(ValueError, match="init_weight"):
        finetune_backbone(load_backbone(), images, labels, config=FinetuneConfig(**FAST),
                          init_weight=np.zeros((classes.size, 7)), classes=classes)


def test_cache_key_tracks_data_settings_and_base():
    base = ("lite0-abc", FinetuneConfig(epochs=2), ["d1", "d2"], ["a", "b"], [1.0, 1.0])
    key = finetune_key(*base)
    assert key == finetune_key(*base)
    assert key == finetune_key("lite0-abc", FinetuneConfig(epochs=2, workers=3), ["d2", "d1"], ["b", "a"], [1.0, 1.0])
    assert key != finetune_key("lite0-xyz", *base[1:])
    assert key != finetune_key("lite0-abc", FinetuneConfig(epochs=3), *base[2:])
    assert key != finetune_key(*base[:2], ["d1", "d3"], *base[3:])
    assert key != finetune_key(*base[:3], ["a", "a"], base[4])
    assert key != finetune_key(*base[:4], [1.0, 4.0])


@pytest.mark.parametrize("bad", [
    {"epochs": -1}, {"batch_size": 1}, {"loss": "arc"}, {"sampler": "x"}, {"lr": 0.0}, {"label_smoothing": 1.0},
    {"device": "tpu"},
])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError):
        FinetuneConfig(**bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(SkuscaleError, match="no GPU"):
        FinetuneConfig(epochs=1, device="cuda").resolved_device()
    assert FinetuneConfig(epochs=1).resolved_device() == "cpu"
