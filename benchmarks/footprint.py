"""Measured footprint of edge bundles, at their size and at 2k / 20k / 100k SKUs, against the shipped profiles.

Usage::

    python benchmarks/footprint.py BUNDLE [BUNDLE ...] [--out out/bench_footprint.json]

For each bundle (fp32 or ``skuscale export --int8`` output): file sizes, ``W`` and ``A`` of
the graph ONNX Runtime executes, the resident-memory growth of a fresh process that loads
the pipeline (or backbone) and runs one image, class-table bytes, and ``W + A + T`` with
the dense fp32 tables and with int8 tables at full, 256 and 128 dimensions.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from skuscale.assess.profiles import load_profile, shipped_profiles
from skuscale.edge.footprint import MIB, measure_bundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundles", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, default=Path("out/bench_footprint.json"))
    args = parser.parse_args()
    profiles = {name: load_profile(name) for name in shipped_profiles()}
    reports = [measure_bundle(b, profiles=profiles) for b in args.bundles]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(reports, indent=2))
    for r in reports:
        rss = r.get("session_rss", {})
        print(f"\n{r['bundle']} ({r['precision']}, {r['n_skus']} SKUs): W {r['weights_bytes'] / MIB:.2f} MiB, "
              f"A {r['activation_peak_bytes'] / MIB:.2f} MiB, T {r['class_table_bytes'] / MIB:.2f} MiB, "
              f"total {r['total_bytes'] / MIB:.2f} MiB; ORT RSS +{rss.get('run_bytes', 0) / MIB:.1f} MiB "
              f"({rss.get('model', '-')}, load + one image)")
        for name, p in r.get("profiles", {}).items():
            print(f"  {name}/{p['tier']} ({p['memory_mb']:g} MiB): headroom {p['headroom']:.1%}")
        print(f"  {'SKUs':>7} {'dense fp32':>11} {'int8 full':>10} {'int8 256':>9} {'int8 128':>9}  (W + A + T, MiB)")
        for s in r["scale"]:
            keys = [k for k in s if k.startswith("table_") and k.endswith("_total_bytes")]
            values = "".join(f" {s[k] / MIB:>9.1f}" for k in keys)
            print(f"  {s['n_skus']:>7} {s['dense_fp32_total_bytes'] / MIB:>11.1f}{values}")


if __name__ == "__main__":
    main()
