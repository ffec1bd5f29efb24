"""Regenerate src/skuscale/sample/: a small slice of the Grocery Store Dataset (MIT licence).

Usage: python scripts/make_sample.py ../shared/grocery-store
"""

from __future__ import annotations

import csv
import shutil
import sys
from collections import defaultdict
from pathlib import Path

from PIL import Image, ImageOps

N_SKUS, N_TRAIN, N_VAL, SHORTER = 12, 12, 4, 256


def read(path: Path) -> dict[str, list[dict]]:
    by_sku: dict[str, list[dict]] = defaultdict(list)
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            by_sku[row["sku"]].append(row)
    return by_sku


def copy(src: Path, dst: Path) -> None:
    im = ImageOps.exif_transpose(Image.open(src)).convert("RGB")
    scale = SHORTER / min(im.size)
    if scale < 1:
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.BILINEAR)
    dst.parent.mkdir(parents=True, exist_ok=True)
    im.save(dst, quality=85)


def main(root: Path) -> None:
    out = Path(__file__).resolve().parents[1] / "src" / "skuscale" / "sample"
    shutil.rmtree(out, ignore_errors=True)
    train, val, ref = read(root / "train.csv"), read(root / "val.csv"), read(root / "reference.csv")
    skus = sorted(s for s in train if len(val.get(s, [])) >= N_VAL)
    # Spread over categories so the sample has both near-duplicates and distinct products.
    skus = skus[:: max(1, len(skus) // N_SKUS)][:N_SKUS]
    for split, rows_by_sku, n in (("train", train, N_TRAIN), ("val", val, N_VAL), ("reference", ref, 1)):
        rows = []
        for sku in skus:
            for i, row in enumerate(rows_by_sku[sku][:n]):
                rel = f"{split}/{sku}/{sku}_{i:02d}.jpg"
                copy(root / row["path"], out / rel)
                rows.append({"path": rel, "sku": sku, "category": row["category"]})
        with open(out / f"{split}.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["path", "sku", "category"])
            writer.writeheader()
            writer.writerows(rows)
    shutil.copy(root / "LICENSE", out / "LICENSE")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
