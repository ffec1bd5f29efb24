"""Batched, cached embedding of image files and decoded images."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from skuscale.data.images import DEFAULT_MAX_BYTES, check_image_file, decode_image, read_image_bytes
from skuscale.data.preprocess import Preprocessing, preprocess_image
from skuscale.embed.cache import EmbeddingCache, content_key_from_digest, file_content_key
from skuscale.exceptions import ImageError

ProgressCallback = Callable[[int], None]


class Embedder(Protocol):
    """Anything that turns a preprocessed batch into embeddings."""

    identity: str
    preprocessing: Preprocessing

    def embed_batch(self, batch: np.ndarray) -> np.ndarray: ...


def _read_and_preprocess(path: str | Path, prep: Preprocessing, max_bytes: int) -> tuple[bytes, np.ndarray]:
    data = read_image_bytes(path, max_bytes=max_bytes)
    try:
        img = decode_image(data, max_bytes=max_bytes)
    except ImageError as exc:
        raise type(exc)(f"{path}: {exc}") from exc
    return hashlib.sha256(data).digest(), preprocess_image(img, prep)


def embed_paths(
    paths: Sequence[str | Path],
    embedder: Embedder,
    *,
    cache: EmbeddingCache | None = None,
    batch_size: int = 32,
    progress: ProgressCallback | None = None,
    decode_workers: int = 2,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> np.ndarray:
    """Embed image files, reading each from the cache when its content was seen before.

    Files are hashed in chunks to look them up in the cache; only the cache misses
    are read whole, a batch at a time, so memory does not grow with ``len(paths)``.

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
    max_bytes : int, default DEFAULT_MAX_BYTES
        Largest accepted image file size in bytes.

    Returns
    -------
    ndarray of float32, shape (len(paths), d)

    Raises
    ------
    ImageError
        If a file is missing, unreadable or cannot be decoded (the message names
        it); files are checked before any image is embedded.
    ImageTooLargeError
        If a file or its pixel count is over its limit.
    """
    prep = embedder.preprocessing
    prep_id = prep.fingerprint()
    out: list[np.ndarray | None] = [None] * len(paths)
    todo: list[int] = []
    if cache is None:
        # Nothing to look up, so no need to hash; still fail before any work on a bad path.
        for p in paths:
            check_image_file(p, max_bytes=max_bytes)
        todo = list(range(len(paths)))
    else:
        for i, p in enumerate(paths):
            vec = cache.get(file_content_key(p, embedder.identity, prep_id, max_bytes=max_bytes))
            if vec is None:
                todo.append(i)
            else:
                out[i] = vec
    if progress is not None and len(paths) - len(todo):
        progress(len(paths) - len(todo))

    batches = [todo[s : s + batch_size] for s in range(0, len(todo), batch_size)]
    with ThreadPoolExecutor(max_workers=max(1, decode_workers)) as pool:

        def load(batch: list[int]):
            return pool.map(lambda i: _read_and_preprocess(paths[i], prep, max_bytes), batch)

        pending = load(batches[0]) if batches else None
        for b, batch in enumerate(batches):
            digests, arrays = zip(*pending, strict=True)
            # Decode the next batch while the backbone runs on this one.
            pending = load(batches[b + 1]) if b + 1 < len(batches) else None
            vectors = embedder.embed_batch(np.stack(arrays))
            for i, digest, vec in zip(batch, digests, vectors, strict=True):
                out[i] = vec
                if cache is not None:
                    # Keyed by the bytes actually embedded, in case the file changed
                    # since it was hashed for the lookup.
                    cache.put(content_key_from_digest(digest, embedder.identity, prep_id), vec)
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
