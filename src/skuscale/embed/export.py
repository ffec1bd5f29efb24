"""Export the torch backbone to ONNX and prove the export numerically (torch)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch

from skuscale.embed.backbone import EmbeddingNet
from skuscale.exceptions import SkuscaleError

ONNX_OPSET = 17
DEFAULT_TOLERANCE = 1e-4


def export_onnx(model: EmbeddingNet, path: str | os.PathLike, *, image_size: int) -> Path:
    """Write ``model`` as an ONNX graph ``image (n,3,H,W) -> embedding (n,d)``.

    ``torch.onnx.export`` restores each module's training flag after it runs, so the
    model is put in eval mode for the export and every module's flag is restored
    explicitly afterwards: an export must never change eager features.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    modes = {name: m.training for name, m in model.named_modules()}
    model.eval()
    dummy = torch.zeros(1, 3, image_size, image_size)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (dummy,),
                str(path),
                input_names=["image"],
                output_names=["embedding"],
                dynamic_axes={"image": {0: "batch"}, "embedding": {0: "batch"}},
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
    finally:
        for name, m in model.named_modules():
            m.training = modes[name]
    return path


def verify_export(
    model: EmbeddingNet,
    onnx_path: str | os.PathLike,
    batch: np.ndarray,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
) -> float:
    """Max absolute difference between eager (eval) and ONNX Runtime embeddings.

    Raises
    ------
    SkuscaleError
        When the difference exceeds ``tolerance``.
    """
    from skuscale.embed.onnx_embedder import make_session

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            eager = model(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).numpy()
    finally:
        model.train(was_training)
    session = make_session(onnx_path)
    onnx_out = session.run(None, {session.get_inputs()[0].name: batch.astype(np.float32)})[0]
    diff = float(np.abs(eager - onnx_out).max())
    if not diff <= tolerance:
        raise SkuscaleError(
            f"ONNX export differs from torch by {diff:.3g} (tolerance {tolerance:g}); refusing the bundle"
        )
    return diff
