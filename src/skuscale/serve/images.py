"""Content-addressed image store: ``<root>/<aa>/<sha256>``; the database keeps the references."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


class ImageStore:
    """Stores image bytes under their sha256, written atomically (temp file, fsync, rename).

    Parameters
    ----------
    root : path
        Folder of the store (created if missing).
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def digest(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    def relative_path(self, sha256: str) -> str:
        return f"{sha256[:2]}/{sha256}"

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError("not a sha256 hex digest")
        return self.root / self.relative_path(sha256)

    def put(self, data: bytes) -> str:
        """Store ``data`` (idempotent) and return its sha256."""
        sha = self.digest(data)
        target = self.path(sha)
        if target.is_file() and target.stat().st_size == len(data):
            return sha
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return sha

    def get(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()
