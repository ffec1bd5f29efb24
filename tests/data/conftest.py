"""Fixtures for the skuscale.data tests: generated images and a few real dataset files."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

GROCERY_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "grocery-store"


@pytest.fixture(scope="session")
def grocery_root() -> Path:
    """Root of the real Grocery Store dataset; skips the test when it is absent."""
    if not (GROCERY_ROOT / "train.csv").is_file():
        pytest.skip(f"real Grocery Store dataset not found at {GROCERY_ROOT}")
    return GROCERY_ROOT


@pytest.fixture(scope="session")
def real_rows(grocery_root: Path) -> list[dict[str, str]]:
    """Four rows of train.csv from two SKUs, with absolute image paths."""
    with (grocery_root / "train.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    by_sku: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_sku.setdefault(row["sku"], []).append(row)
    chosen = [row for sku in sorted(by_sku)[:2] for row in by_sku[sku][:2]]
    return [{**row, "path": str(grocery_root / row["path"])} for row in chosen]


@pytest.fixture(scope="session")
def real_jpeg_bytes(real_rows: list[dict[str, str]]) -> bytes:
    """Bytes of one real JPEG from the dataset."""
    return Path(real_rows[0]["path"]).read_bytes()


@pytest.fixture
def encode() -> Callable[..., bytes]:
    """Encode a PIL image to bytes in the given format."""

    def _encode(img: Image.Image, fmt: str = "PNG", **save_args) -> bytes:
        buffer = io.BytesIO()
        img.save(buffer, format=fmt, **save_args)
        return buffer.getvalue()

    return _encode


@pytest.fixture
def write_csv() -> Callable[[Path, list[list[str]]], Path]:
    """Write rows (header first) as a CSV file and return its path."""

    def _write(path: Path, rows: list[list[str]]) -> Path:
        with path.open("w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows(rows)
        return path

    return _write
