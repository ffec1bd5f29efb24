"""Batched, cached embedding of image files and decoded images."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from skuscale.data.images import decode_image
from skuscale.data.preprocess import Preprocessing, preprocess_image
from skuscale.embed.cache import EmbeddingCache, content_key

ProgressCallback = Callable[[int], None]


class Embedder(Protocol):
    """Anything that turns a preprocessed batch into embeddings."""

    identity: str
    preprocessing: Preprocessing

    def embed_batch(self, batch: np.ndarray) -> np.ndarray: ...


def _decode_and_preprocess(data: bytes, prep: Preprocessing) -> np.ndarray:
    return preprocess_image(decode_image(data), prep)


def embed_paths(
    paths: Sequence[str | Path],
    embedder: Embedder,
    *,
    cache: EmbeddingCache | None = None,
    batch_size: int = 32,
    progress: ProgressCallback | None = None,
    decode_workers: int = 2,
) -> np.ndarray:
    """Embed image files, reading each from the cache when its content was seen before.

    Parameters
    ----------
    paths : sequence of path
        Image files; they should have been validated (see
        :func:`skuscale.data.validate_dataset`), since a bad file raises here.
    embedder : Embedder
        A torch or ONNX Runtime backbone.
    cache : EmbeddingCache, optional
        Content-addressed store keyed by image bytes, backbone and preprocessing.
    batch_size : int
        Images per forward pass.
    progress : callable, optional
        Called with the number of images finished after every batch (cache hits
        count at once).
    decode_workers : int
        Threads decoding JPEGs while the backbone runs (PIL releases the GIL).

    Returns
    -------
    ndarray of float32, shape (len(paths), d)
    """
    blobs = [Path(p).read_bytes() for p in paths]
    prep_id = embedder.preprocessing.fingerprint()
    keys = [content_key(b, embedder.identity, prep_id) for b in blobs]
    out: list[np.ndarray | None] = [None] * len(paths)
    todo: list[int] = []
    for i, key in enumerate(keys):
        vec = cache.get(key) if cache is not None else None
        if vec is None:
            todo.append(i)
        else:
            out[i] = vec
    if progress is not None and len(paths) - len(todo):
        progress(len(paths) - len(todo))

    batches = [todo[s : s + batch_size] for s in range(0, len(todo), batch_size)]
    prep = embedder.preprocessing
    with ThreadPoolExecutor(max_workers=max(1, decode_workers)) as pool:

        def load(batch: list[int]):
            return pool.map(lambda i: _decode_and_preprocess(blobs[i], prep), batch)

        pending = load(batches[0]) if batches else None
        for b, batch in enumerate(batches):
            arrays = np.stack(list(pending))
            # Decode the next batch while the backbone runs on this one.
            pending = load(batches[b + 1]) if b + 1 < len(batches) else None
            vectors = embedder.embed_batch(arrays)
            for i, vec in zip(batch, vectors, strict=True):
                out[i] = vec
                if cache is not None:
                    cache.put(keys[i], vec)
            if progress is not None:
                progress(len(batch))
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack(out).astype(np.float32, copy=False)


def embed_images(
    images: Sequence[Image.Image], embedder: Embedder, *, batch_size: int = 32, flip: bool = False
) -> np.ndarray:
    """Embed already-decoded RGB images (no cache: there are no bytes to key on)."""
    prep = embedder.preprocessing
    chunks = []
    for s in range(0, len(images), batch_size):
        batch = np.stack([preprocess_image(im, prep, flip=flip) for im in images[s : s + batch_size]])
        chunks.append(embedder.embed_batch(batch))
    return np.concatenate(chunks).astype(np.float32, copy=False)
