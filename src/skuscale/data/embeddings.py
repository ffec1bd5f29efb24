"""Embedding datasets on disk: what ``build``/``evaluate --embeddings`` read.

Format: one ``.npz`` file (loaded with ``allow_pickle=False``) holding

* ``X``: float32 ``(n, d)`` embeddings;
* ``sku``: ``(n,)`` unicode SKU labels;
* ``category``: optional ``(n,)`` unicode categories (empty string for none);
* ``split``: optional ``(n,)`` unicode, ``"train"``, ``"val"`` or ``"test"``;
* ``meta``: optional 0-d unicode JSON object, e.g. ``{"simulated": true, ...}``.

Simulated catalogues (``skuscale simulate``) are written in this format and say
so in ``meta``, so every report built on them can label itself as simulated.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from skuscale.exceptions import ManifestError

SPLITS = ("train", "val", "test")


@dataclass
class EmbeddingDataset:
    """Embeddings with labels, as stored by :func:`save_embeddings`."""

    X: np.ndarray
    sku: np.ndarray
    category: np.ndarray | None = None
    split: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    source: str = "<memory>"

    @property
    def simulated(self) -> bool:
        return bool(self.meta.get("simulated", False))

    def __len__(self) -> int:
        return int(self.X.shape[0])

    def categories(self) -> dict[str, str]:
        """SKU -> category for rows that have one."""
        if self.category is None:
            return {}
        return {str(s): str(c) for s, c in zip(self.sku, self.category, strict=True) if c}

    def select(self, mask: np.ndarray) -> EmbeddingDataset:
        mask = np.asarray(mask)
        return EmbeddingDataset(
            X=self.X[mask], sku=self.sku[mask],
            category=None if self.category is None else self.category[mask],
            split=None if self.split is None else self.split[mask],
            meta=dict(self.meta), source=self.source,
        )

    def part(self, split: str) -> EmbeddingDataset:
        """Rows of one split (all rows when the file has no ``split`` column and split is "train")."""
        if self.split is None:
            return self if split == "train" else self.select(np.zeros(len(self), bool))
        return self.select(self.split == split)


def save_embeddings(path: str | os.PathLike, data: EmbeddingDataset) -> Path:
    """Write ``data`` as an ``.npz`` embedding file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {
        "X": np.asarray(data.X, dtype=np.float32),
        "sku": np.asarray(data.sku, dtype=str),
        "meta": np.array(json.dumps(data.meta)),
    }
    if data.category is not None:
        arrays["category"] = np.asarray(data.category, dtype=str)
    if data.split is not None:
        arrays["split"] = np.asarray(data.split, dtype=str)
    with open(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    return path


def load_embeddings(path: str | os.PathLike) -> EmbeddingDataset:
    """Read and validate an embedding file written by :func:`save_embeddings`.

    Parameters
    ----------
    path : str or path-like
        The ``.npz`` file.

    Returns
    -------
    EmbeddingDataset
        The embeddings (as float32) with their labels, ``source`` set to ``path``.

    Raises
    ------
    ManifestError
        If the file is missing, is not a readable ``.npz`` archive, or its arrays
        are unreadable or malformed; every problem found is listed in one error.
    """
    path = Path(path)
    source = str(path)
    try:
        npz = np.load(path, allow_pickle=False)
    except FileNotFoundError as exc:
        raise ManifestError(source, ["file not found"]) from exc
    except MemoryError:
        raise
    except Exception as exc:
        # np.load and zipfile fail in many ways on a damaged file (BadZipFile, EOFError, ...).
        raise ManifestError(source, [f"not a readable .npz embedding file: {_describe(exc)}"]) from exc
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ManifestError(source, ["not an .npz embedding file: it holds a single array, not named arrays"])
    with npz:
        files = set(npz.files)
        problems = [f"missing array {name!r}" for name in ("X", "sku") if name not in files]
        if problems:
            raise ManifestError(source, problems)
        arrays = {}
        for name in ("X", "sku", "category", "split", "meta"):
            if name not in files:
                continue
            try:
                arrays[name] = npz[name]
            except MemoryError:
                raise
            except Exception as exc:
                # A damaged member fails only when read: zlib.error, BadZipFile (bad CRC),
                # ValueError (object arrays, bad .npy header), NotImplementedError, ...
                problems.append(f"array {name!r} cannot be read: {_describe(exc)}")
    if problems:
        raise ManifestError(source, problems)

    X = arrays["X"]
    sku = _as_text(arrays["sku"], "sku", problems)
    category = _as_text(arrays["category"], "category", problems) if "category" in arrays else None
    split = _as_text(arrays["split"], "split", problems) if "split" in arrays else None
    meta = _parse_meta(arrays["meta"], problems) if "meta" in arrays else {}
    if X.ndim != 2 or X.shape[0] == 0:
        problems.append(f"X must be a non-empty (n, d) array, got shape {X.shape}")
    elif not np.issubdtype(X.dtype, np.floating) or not np.isfinite(X).all():
        problems.append("X must hold finite floats")
    n = X.shape[0] if X.ndim else 0
    for name, arr in (("sku", sku), ("category", category), ("split", split)):
        if arr is not None and arr.shape != (n,):
            problems.append(f"{name} must have shape ({n},), got {arr.shape}")
    if sku is not None and sku.shape == (n,) and (sku == "").any():
        problems.append(f"{int((sku == '').sum())} row(s) have an empty SKU")
    if split is not None and split.shape == (n,):
        bad = sorted(set(split.tolist()) - set(SPLITS))
        if bad:
            problems.append(f"unknown split value(s) {bad}; expected {list(SPLITS)}")
    if problems:
        raise ManifestError(source, problems)
    return EmbeddingDataset(
        X=X.astype(np.float32), sku=sku, category=category, split=split, meta=meta, source=source
    )


def _as_text(arr: np.ndarray, name: str, problems: list[str]) -> np.ndarray | None:
    try:
        return arr.astype(str)
    except (ValueError, TypeError) as exc:
        # Non-ASCII bytes or a structured dtype cannot become labels.
        problems.append(f"{name} must hold text, got dtype {arr.dtype}: {_describe(exc)}")
        return None


def _parse_meta(arr: np.ndarray, problems: list[str]) -> dict[str, Any]:
    if arr.ndim != 0 or arr.dtype.kind not in "US":
        problems.append(f"meta must be a single JSON text, got dtype {arr.dtype} and shape {arr.shape}")
        return {}
    try:
        meta = json.loads(str(arr))
    except (ValueError, RecursionError) as exc:
        problems.append(f"meta is not valid JSON: {_describe(exc)}")
        return {}
    if not isinstance(meta, dict):
        problems.append("meta must be a JSON object")
        return {}
    return meta


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
