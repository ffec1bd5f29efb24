"""Embeddings through ONNX Runtime: the serving path, no torch needed."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from skuscale.data.preprocess import Preprocessing


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def make_session(path: str | os.PathLike, *, threads: int | None = None):
    """An ONNX Runtime CPU session with a bounded thread pool."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


class OnnxEmbedder:
    """Runs an exported backbone (``image`` (n, 3, H, W) -> ``embedding`` (n, d)).

    Parameters
    ----------
    path : path
        The ``.onnx`` file written by :func:`skuscale.embed.export.export_onnx`.
    preprocessing : Preprocessing
        The settings the backbone was exported with.
    threads : int, optional
        ONNX Runtime intra-op threads (default: its own choice).
    """

    def __init__(self, path: str | os.PathLike, preprocessing: Preprocessing, *, threads: int | None = None):
        self.path = Path(path)
        self.preprocessing = preprocessing
        self.session = make_session(self.path, threads=threads)
        self.input_name = self.session.get_inputs()[0].name
        self.identity = f"onnx-{file_sha256(self.path)[:16]}"
        self.dim = int(self.session.get_outputs()[0].shape[1])

    def embed_batch(self, batch: np.ndarray) -> np.ndarray:
        """Embeddings (n, d) float32 of a preprocessed batch (n, 3, H, W)."""
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]
        return out.astype(np.float32, copy=False)
