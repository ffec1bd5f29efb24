"""Shared fixtures: the real Grocery Store images in ../shared, kept to small subsets."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

GROCERY = Path(__file__).resolve().parents[1].parent / "shared" / "grocery-store"


def _rows(name: str) -> list[dict]:
    with open(GROCERY / name, newline="") as fh:
        return list(csv.DictReader(fh))


def write_manifest(path: Path, rows: list[dict]) -> Path:
    """A manifest with absolute image paths, so it can live anywhere."""
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "sku", "category"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "path": str(GROCERY / row["path"])})
    return path


@pytest.fixture(scope="session")
def grocery() -> Path:
    if not (GROCERY / "train.csv").is_file():
        pytest.skip(f"real images not found at {GROCERY}")
    return GROCERY


@pytest.fixture(scope="session")
def small_real(grocery, tmp_path_factory) -> dict[str, Path]:
    """Six SKUs (two near-duplicate families) x 10 train / 3 val images, plus reference shots."""
    skus = [
        "Arla-Standard-Milk", "Arla-Medium-Fat-Milk", "Granny-Smith", "Pink-Lady", "Banana", "Red-Beet",
    ]
    root = tmp_path_factory.mktemp("small_real")
    out = {}
    for split, n in (("train", 10), ("val", 3), ("reference", 1)):
        rows = [r for sku in skus for r in [r for r in _rows(f"{split}.csv") if r["sku"] == sku][:n]]
        out[split] = write_manifest(root / f"{split}.csv", rows)
    out["root"] = root
    out["skus"] = skus
    return out


@pytest.fixture(scope="session")
def real_images(grocery) -> list[Path]:
    """Eight real photos of different SKUs."""
    seen, paths = set(), []
    for row in _rows("val.csv"):
        if row["sku"] not in seen:
            seen.add(row["sku"])
            paths.append(grocery / row["path"])
        if len(paths) == 8:
            break
    return paths


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One embedding cache for every test module that builds a bundle on the real subsets."""
    return tmp_path_factory.mktemp("embedding-cache")
