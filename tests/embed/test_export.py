"""The ONNX export is proven numerically on real images, and never changes eager features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from skuscale.data.images import load_image
from skuscale.data.preprocess import preprocess_batch
from skuscale.embed.backbone import TorchEmbedder, load_backbone
from skuscale.embed.export import export_onnx, verify_export
from skuscale.embed.onnx_embedder import OnnxEmbedder
from skuscale.exceptions import SkuscaleError


@pytest.fixture(scope="module")
def net():
    return load_backbone("efficientnet-lite0")


@pytest.fixture(scope="module")
def batch(net, real_images):
    return preprocess_batch([load_image(p) for p in real_images], net.spec.default_preprocessing())


def test_embedding_shape_and_relu6_kept(net, batch):
    emb = TorchEmbedder(net).embed_batch(batch[:2])
    assert emb.shape == (2, 1280)
    assert emb.dtype == np.float32
    # ReLU6 activations followed by average pooling bound every feature to [0, 6].
    assert emb.min() >= 0.0 and emb.max() <= 6.0
    assert not any("Swish" in type(m).__name__ for m in net.modules())


def test_onnx_matches_torch_on_real_images(net, batch, tmp_path):
    path = export_onnx(net, tmp_path / "b.onnx", image_size=224)
    diff = verify_export(net, path, batch)
    assert diff <= 1e-4
    onnx_emb = OnnxEmbedder(path, net.spec.default_preprocessing()).embed_batch(batch)
    torch_emb = TorchEmbedder(net).embed_batch(batch)
    assert np.abs(onnx_emb - torch_emb).max() <= 1e-4


def test_export_leaves_eager_features_unchanged(net, batch, tmp_path):
    before = TorchEmbedder(net).embed_batch(batch)
    export_onnx(net, tmp_path / "b.onnx", image_size=224)
    after = TorchEmbedder(net).embed_batch(batch)
    np.testing.assert_array_equal(before, after)
    assert not net.training


def test_export_from_training_wrapper_restores_every_mode(net, batch, tmp_path):
    """A wrapper left in training mode must not leave BatchNorm in training mode afterwards."""
    net.train()
    try:
        modes = {n: m.training for n, m in net.named_modules()}
        export_onnx(net, tmp_path / "w.onnx", image_size=224)
        assert {n: m.training for n, m in net.named_modules()} == modes
        # The exported graph is still the eval-mode network.
        assert verify_export(net, tmp_path / "w.onnx", batch) <= 1e-4
    finally:
        net.eval()


def test_verify_export_refuses_a_different_network(net, batch, tmp_path):
    path = export_onnx(net, tmp_path / "b.onnx", image_size=224)
    other = load_backbone("efficientnet-lite0")
    with torch.no_grad():
        other.net._conv_head.weight.mul_(1.5)
    with pytest.raises(SkuscaleError, match="differs from torch"):
        verify_export(other, path, batch)
