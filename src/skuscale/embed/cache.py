"""Content-addressed on-disk cache of embeddings."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

from skuscale.data.images import DEFAULT_MAX_BYTES, hash_image_file


def content_key(image_bytes: bytes, backbone_id: str, preprocessing_id: str) -> str:
    """sha256 over the image bytes, the backbone identity and the preprocessing settings."""
    return content_key_from_digest(hashlib.sha256(image_bytes).digest(), backbone_id, preprocessing_id)


def file_content_key(
    path: str | os.PathLike,
    backbone_id: str,
    preprocessing_id: str,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> str:
    """:func:`content_key` of an image file, hashed in chunks instead of read whole.

    The same key :func:`content_key` gives for the file's bytes; the file is checked
    and read as by :func:`skuscale.data.images.hash_image_file` (same errors).
    """
    return content_key_from_digest(hash_image_file(path, max_bytes=max_bytes), backbone_id, preprocessing_id)


def content_key_from_digest(image_sha256: bytes, backbone_id: str, preprocessing_id: str) -> str:
    """:func:`content_key` from the SHA-256 digest of the image bytes instead of the bytes.

    Parameters
    ----------
    image_sha256 : bytes
        ``hashlib.sha256(image_bytes).digest()``.
    backbone_id : str
        Identity of the backbone weights.
    preprocessing_id : str
        Fingerprint of the preprocessing settings.

    Returns
    -------
    str
        The hex key.
    """
    h = hashlib.sha256()
    h.update(image_sha256)
    h.update(b"\0" + backbone_id.encode() + b"\0" + preprocessing_id.encode())
    return h.hexdigest()


class EmbeddingCache:
    """Embeddings stored one ``.npy`` file per key, sharded by the key's first byte.

    Keys come from :func:`content_key`, so renaming or moving an image keeps its
    entry, and changing the backbone weights or the preprocessing never returns a
    stale vector. Writes are atomic (temporary file, then rename), so a build that
    is killed half-way leaves no torn entries.

    Parameters
    ----------
    root : path
        Cache folder; created on first write.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npy"

    def contains(self, key: str) -> bool:
        """Whether an entry exists (without reading it)."""
        return self._path(key).is_file()

    def get(self, key: str) -> np.ndarray | None:
        path = self._path(key)
        try:
            vec = np.load(path, allow_pickle=False)
        except (FileNotFoundError, ValueError, OSError):
            # A missing or unreadable entry is a miss; it will be recomputed and rewritten.
            self.misses += 1
            return None
        self.hits += 1
        return vec

    def put(self, key: str, vector: np.ndarray) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, np.asarray(vector, dtype=np.float32), allow_pickle=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
