"""Cold versus warm-cache build time of a bundle, written as JSON.

Usage::

    python benchmarks/build_cache.py [--data ../shared/grocery-store] [--finetune-epochs 12]
                                     [--out out/bench_build.json]

The cold build uses an empty cache folder; the warm rebuild reuses it (embeddings and the
fine-tuned weights). The target (README, issue 2) is warm < cold / 5. Measured with the
default 12-epoch fine-tuning on 2 CPU cores: cold 32 min 05 s, warm 13 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from skuscale.build import build_bundle
from skuscale.embed.finetune_config import DEFAULT_FINETUNE_EPOCHS, FinetuneConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/grocery-store"))
    parser.add_argument("--out", type=Path, default=Path("out/bench_build.json"))
    parser.add_argument("--finetune-epochs", type=int, default=DEFAULT_FINETUNE_EPOCHS)
    args = parser.parse_args()
    val = args.data / "val.csv"
    reference = args.data / "reference.csv"
    work = Path(tempfile.mkdtemp(prefix="skuscale-bench-"))
    try:
        runs = {}
        for label in ("cold", "warm"):
            started = time.perf_counter()
            result = build_bundle(
                args.data / "train.csv", work / "bundle",
                val=val if val.is_file() else None,
                reference=reference if reference.is_file() else None,
                cache_dir=work / "cache", finetune=FinetuneConfig(epochs=args.finetune_epochs),
            )
            runs[label] = {
                "seconds": time.perf_counter() - started,
                "cache_hits": result.cache_hits,
                "cache_misses": result.cache_misses,
            }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {
        "data": str(args.data),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "finetune_epochs": args.finetune_epochs,
        **runs,
        "warm_over_cold": runs["warm"]["seconds"] / runs["cold"]["seconds"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
