"""Fine-tuning changes the backbone, is reproducible, and still exports to ONNX exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from skuscale.data import load_dataset
from skuscale.data.images import load_image
from skuscale.data.preprocess import preprocess_batch
from skuscale.embed import finetune as finetune_module
from skuscale.embed.backbone import TorchEmbedder, load_backbone
from skuscale.embed.export import export_onnx, verify_export
from skuscale.embed.finetune import (
    FinetuneConfig,
    finetune_backbone,
    finetune_key,
    mixup_batch,
    state_digest,
    supcon_loss,
)
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


@pytest.mark.parametrize("loss,sampler", [("cosface", "balanced"), ("logit_adjust", "uniform"), ("supcon", "balanced")])
def test_other_losses_and_samplers_train(handful, loss, sampler):
    images, labels, _ = handful
    net, report = finetune_backbone(load_backbone(), images, labels,
                                    config=FinetuneConfig(**FAST, loss=loss, sampler=sampler,
                                                          views_per_class=2))
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
    assert key == finetune_key("lite0-abc", FinetuneConfig(epochs=2, workers=3), *base[2:])
    # Another order trains other weights (the sampler draws row indices).
    assert key != finetune_key("lite0-abc", FinetuneConfig(epochs=2), ["d2", "d1"], ["b", "a"], [1.0, 1.0])
    # So does another starting head.
    probe = {"C": 10.0, "long_tail": "logit_adjust", "tau": 1.0}
    assert finetune_key(*base, probe=probe) != key
    assert finetune_key(*base, probe=probe) != finetune_key(*base, probe={**probe, "C": 1.0})
    assert key != finetune_key("lite0-xyz", *base[1:])
    assert key != finetune_key("lite0-abc", FinetuneConfig(epochs=3), *base[2:])
    assert key != finetune_key(*base[:2], ["d1", "d3"], *base[3:])
    assert key != finetune_key(*base[:3], ["a", "a"], base[4])
    assert key != finetune_key(*base[:4], [1.0, 4.0])
    # Contrastive settings only count for the contrastive loss.
    assert key == finetune_key("lite0-abc", FinetuneConfig(epochs=2, supcon_weight=2.0), *base[2:])
    supcon = finetune_key("lite0-abc", FinetuneConfig(epochs=2, loss="supcon"), *base[2:])
    assert supcon != key
    assert supcon != finetune_key("lite0-abc", FinetuneConfig(epochs=2, loss="supcon", supcon_weight=2.0), *base[2:])
    # Mixup counts only when it is on, so keys from before the setting existed still hold.
    assert key == finetune_key("lite0-abc", FinetuneConfig(epochs=2, mixup_alpha=0.0), *base[2:])
    mixed = finetune_key("lite0-abc", FinetuneConfig(epochs=2, mixup_alpha=0.2), *base[2:])
    assert mixed != key
    assert mixed != finetune_key("lite0-abc", FinetuneConfig(epochs=2, mixup_alpha=0.4), *base[2:])
    # The same for random erasing.
    assert key == finetune_key("lite0-abc", FinetuneConfig(epochs=2, random_erase=0.0), *base[2:])
    erased = finetune_key("lite0-abc", FinetuneConfig(epochs=2, random_erase=0.25), *base[2:])
    assert erased not in (key, mixed)


@pytest.mark.parametrize("bad", [
    {"epochs": -1}, {"batch_size": 1}, {"loss": "arc"}, {"sampler": "x"}, {"lr": 0.0}, {"label_smoothing": 1.0},
    {"device": "tpu"}, {"loss": "supcon", "sampler": "uniform"}, {"loss": "supcon", "views_per_class": 3},
    {"loss": "supcon", "views_per_class": 1}, {"loss": "supcon", "batch_size": 4, "views_per_class": 4},
    {"loss": "supcon", "supcon_temperature": 0.0}, {"supcon_weight": -1.0},
    {"mixup_alpha": -0.1}, {"mixup_alpha": 0.2, "loss": "cosface"}, {"mixup_alpha": 0.2, "loss": "supcon"},
    {"random_erase": 1.5}, {"random_erase": -0.1},
    {"region": 0.0}, {"region": 3.0}, {"region": -0.5}, {"region": float("nan")}, {"epochs": 1.0},
    {"batch_size": 2.0}, {"image_size": 96.0}, {"image_size": 8}, {"mixup_alpha": float("inf")},
    {"lr": float("inf")}, {"loss": "logit_adjust"},  # logit adjustment on balanced draws adjusts twice
])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError):
        FinetuneConfig(**bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(SkuscaleError, match="no GPU"):
        FinetuneConfig(epochs=1, device="cuda").resolved_device()
    assert FinetuneConfig(epochs=1).resolved_device() == "cpu"


def test_supcon_loss_known_answer():
    # Rows 0 and 1 share a class; row 2 is alone, so only rows 0 and 1 are anchors.
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    y = torch.tensor([0, 0, 1])
    t = 0.5
    # Anchor 0: sims to rows 1, 2 are 0 and -1; anchor 1: 0 and 0.
    a0 = -(0.0 - np.log(np.exp(0.0) + np.exp(-1.0 / t)))
    a1 = -(0.0 - np.log(2.0))
    got = float(supcon_loss(f, y, temperature=t))
    assert got == pytest.approx((a0 + a1) / 2, rel=1e-6)
    # Pulling the positive pair together lowers the loss.
    closer = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.2], [-1.0, 0.0]]), dim=1)
    assert float(supcon_loss(closer, y, temperature=t)) < got
    assert float(supcon_loss(f, torch.tensor([0, 1, 2]), temperature=t)) == 0.0


def test_supcon_batches_group_views_of_one_sku(handful, monkeypatch):
    images, labels, _ = handful
    seen = []
    real = supcon_loss

    def spy(features, target, *, temperature):
        seen.append(target.tolist())
        return real(features, target, temperature=temperature)

    monkeypatch.setattr("skuscale.embed.finetune.supcon_loss", spy)
    finetune_backbone(load_backbone(), images, labels,
                      config=FinetuneConfig(**{**FAST, "batch_size": 4}, loss="supcon", views_per_class=2))
    assert seen and all(t[0] == t[1] and t[2] == t[3] for t in seen)


def test_mixup_batch_known_answer():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [4.0, 4.0]])
    perm = torch.tensor([2, 0, 1])
    got = mixup_batch(x, 0.75, perm)
    expected = torch.tensor([[1.75, 1.0], [0.25, 1.5], [3.0, 3.5]])
    assert torch.allclose(got, expected)
    assert torch.equal(mixup_batch(x, 1.0, perm), x)


def test_mixup_trains_on_blended_inputs_with_blended_loss(handful, monkeypatch):
    images, labels, _ = handful
    calls = []
    real = torch.nn.functional.cross_entropy

    def spy(logits, target, **kwargs):
        calls.append(target.clone())
        return real(logits, target, **kwargs)

    monkeypatch.setattr("skuscale.embed.finetune.F.cross_entropy", spy)
    plain, _ = finetune_backbone(load_backbone(), images, labels, config=FinetuneConfig(**FAST, seed=5))
    n_plain = len(calls)
    calls.clear()
    mixed, report = finetune_backbone(load_backbone(), images, labels,
                                      config=FinetuneConfig(**FAST, seed=5, mixup_alpha=0.4))
    # Two cross-entropies per step (the labels and the shuffled labels), over the same targets.
    assert len(calls) == 2 * n_plain == 2 * report.steps
    for first, second in zip(calls[::2], calls[1::2], strict=True):
        assert sorted(first.tolist()) == sorted(second.tolist())
    assert any(not torch.equal(a, b) for a, b in zip(calls[::2], calls[1::2], strict=True))
    assert np.isfinite(report.epoch_loss[0])
    assert state_digest(mixed) != state_digest(plain)
    again, _ = finetune_backbone(load_backbone(), images, labels,
                                 config=FinetuneConfig(**FAST, seed=5, mixup_alpha=0.4))
    assert state_digest(again) == state_digest(mixed)


def test_random_erase_reaches_the_training_views(handful, monkeypatch):
    images, labels, _ = handful
    seen = []
    real = finetune_module.ShelfAugment

    def spy(**kwargs):
        seen.append(kwargs.get("erase", 0.0))
        return real(**kwargs)

    monkeypatch.setattr(finetune_module, "ShelfAugment", spy)
    plain, _ = finetune_backbone(load_backbone(), images, labels, config=FinetuneConfig(**FAST, seed=5))
    erased, report = finetune_backbone(load_backbone(), images, labels,
                                       config=FinetuneConfig(**FAST, seed=5, random_erase=1.0))
    assert seen == [0.0, 1.0]
    assert np.isfinite(report.epoch_loss[0])
    assert state_digest(erased) != state_digest(plain)


def test_cosface_logits_are_cosines_in_training_mode():
    torch.manual_seed(0)

    class Stub(torch.nn.Module):
        def forward(self, x):
            return x

    clf = finetune_module._Classifier(Stub(), torch.randn(3, 16), torch.zeros(3), cosine=True, dropout=0.5)
    clf.train()
    logits, _ = clf(torch.randn(64, 16))
    assert logits.abs().max() <= 1.0 + 1e-5


def test_logit_adjustment_prior_follows_the_sampling_weights():
    """Pack shots drawn 4x as often count 4x in the prior that logit adjustment corrects."""
    y = np.array([0, 0, 1, 2])
    prior = finetune_module.sampling_log_prior(y, np.array([1.0, 4.0, 1.0, 1.0]), 3)
    np.testing.assert_allclose(np.exp(prior), [5 / 7, 1 / 7, 1 / 7])
