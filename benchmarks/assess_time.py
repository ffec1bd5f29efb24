"""Wall time of ``skuscale assess`` on the Grocery Store data, cold and warm cache, written as JSON.

Usage::

    python benchmarks/assess_time.py --bundle BUNDLE [--data ../shared/grocery-store]
        [--device shelf-camera] [--out out/bench_assess.json]

The cold run embeds every image into an empty cache folder; the warm run reuses it.
Target (issue 4): the report completes in under 10 minutes on a 2-core CPU (warm
cache allowed). Only train and val are read; the test split never is.
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

from skuscale.assess import load_context, run_assessment, write_report
from skuscale.assess.profiles import load_profile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=Path("../shared/grocery-store"))
    parser.add_argument("--device", default="shelf-camera")
    parser.add_argument("--out", type=Path, default=Path("out/bench_assess.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="skuscale-bench-assess-"))
    try:
        runs = {}
        for label in ("cold", "warm"):
            started = time.perf_counter()
            ctx = load_context(args.bundle, args.data / "train.csv", val=args.data / "val.csv",
                               device=load_profile(args.device), cache_dir=work / "cache")
            loaded = time.perf_counter() - started
            report = run_assessment(ctx)
            write_report(report, work / f"report-{label}")
            runs[label] = {
                "seconds_total": time.perf_counter() - started,
                "seconds_loading_and_embedding": loaded,
                "seconds_per_check": {c["check"]: c["seconds"] for c in report["checks"]},
                "statuses": {c["check"]: c["status"] for c in report["checks"]},
                "exit_code": report["exit_code"],
            }
        result = {
            "bundle": str(args.bundle),
            "data": str(args.data),
            "device": args.device,
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "runs": runs,
            "target_seconds": 600,
            "meets_target_warm": runs["warm"]["seconds_total"] < 600,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
