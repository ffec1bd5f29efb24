"""Image embeddings: the torch backbone (build time) and its ONNX export (serving time).

This is the only package that imports torch, and only in :mod:`skuscale.embed.backbone`
and :mod:`skuscale.embed.export`; everything importable from here without torch is
listed below.
"""

from skuscale.embed.cache import EmbeddingCache
from skuscale.embed.onnx_embedder import OnnxEmbedder
from skuscale.embed.pipeline import Embedder, embed_images, embed_paths

__all__ = ["Embedder", "EmbeddingCache", "OnnxEmbedder", "embed_images", "embed_paths"]
