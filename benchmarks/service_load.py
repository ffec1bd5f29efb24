"""Bounded load on the recognition service (loopback only) and a kill -9 durability run, as JSON.

Usage::

    python benchmarks/service_load.py --bundle BUNDLE [--data ../shared/grocery-store]
        [--out out/bench_service.json] [--requests 120] [--levels 1 4 16] [--db URL] [--workers 1]

1. Starts ``skuscale serve`` in a subprocess on 127.0.0.1 (a fresh SQLite data dir, or
   ``--db``), and sends ``--requests`` single-image ``POST /v1/recognize`` calls at each
   concurrency level (validation images, cycled). Reports requests per second, p50/p99
   latency and the error count (any non-200 or transport error; the target is 0). With
   ``--workers N`` the server runs N worker processes. Afterwards ``/metrics`` is scraped
   three times, each on a new connection (so any worker may answer): every scrape must count
   exactly the recognitions that were answered 200.
2. Durability: fills the review queue, then resolves items and enrols SKUs from several
   clients while others keep recognising, sends SIGKILL to the server half-way, restarts
   it and checks that every resolution and enrolment answered 200 is still there.
   ``records_lost`` must be 0.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from skuscale.serve.drill import kill_under_load, wait_until_ready
from skuscale.serve.settings import hash_token

DEVICE, REVIEWER = "bench-device-token-0123456789", "bench-reviewer-token-0123456789"
TOKENS = {hash_token(DEVICE): "device", hash_token(REVIEWER): "reviewer"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(bundle: Path, data_dir: Path, port: int, db: str | None, workers: int = 1) -> subprocess.Popen:
    env = {**os.environ, "SKUSCALE_TOKENS": json.dumps(TOKENS), "SKUSCALE_WEBHOOK_WORKERS": "false"}
    cmd = [sys.executable, "-m", "skuscale.cli.main", "serve", str(bundle), "--host", "127.0.0.1",
           "--port", str(port), "--data-dir", str(data_dir), "--log-level", "warning", "--workers", str(workers)]
    if db:
        cmd += ["--db", db]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return wait_until_ready(proc, f"http://127.0.0.1:{port}", timeout=120)


def load_level(url: str, blobs: list[bytes], concurrency: int, n_requests: int) -> dict:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    counter = iter(range(n_requests))

    def worker():
        nonlocal errors
        with httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {DEVICE}"}) as c:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                try:
                    ok = c.post("/v1/recognize", files={"file": ("x.jpg", blobs[i % len(blobs)])}).status_code == 200
                except httpx.HTTPError:
                    ok = False
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)
                    errors += not ok

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    return {
        "concurrency": concurrency,
        "answered": len(latencies) - int(errors),
        "requests": len(latencies),
        "seconds": round(wall, 3),
        "requests_per_second": round(len(latencies) / wall, 2),
        "p50_ms": round(float(np.percentile(lat, 50)), 1),
        "p99_ms": round(float(np.percentile(lat, 99)), 1),
        "errors": int(errors),
    }


def scraped_recognitions(url: str) -> float:
    """``skuscale_recognitions_total`` summed over its series, from one scrape on a new connection."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=30).text
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == "skuscale_recognitions_total")


def durability(bundle: Path, data_dir: Path, port: int, db: str | None, blobs: list[bytes]) -> dict:
    url = f"http://127.0.0.1:{port}"
    rev = {"Authorization": f"Bearer {REVIEWER}"}
    dev = {"Authorization": f"Bearer {DEVICE}"}
    proc = start_server(bundle, data_dir, port, db)
    with httpx.Client(base_url=url, timeout=60, headers=dev) as c:
        pending = []
        for s in range(0, 64, 16):
            r = c.post("/v1/recognize/batch", files=[("files", ("x.jpg", b)) for b in blobs[s : s + 16]])
            pending += [e for e in r.json()["events"] if e["status"] == "pending"]
    drill = kill_under_load(
        proc, url, events=pending, resolve_sku=pending[0]["candidates"][0]["sku"], enrol_blobs=blobs,
        recognize_blob=blobs[0], reviewer_headers=rev, device_headers=dev, resolvers=4, recognizers=2,
        max_enrolments=1000, enrol_prefix="Bench-New-", min_enrolments=2, request_timeout=60, deadline=120,
        poll=0.005,
    )
    answered_res, answered_enr = drill.resolved, drill.enrolled
    proc = start_server(bundle, data_dir, port, db)
    try:
        with httpx.Client(base_url=url, timeout=60, headers=rev) as c:
            lost_res = sum(
                1 for eid, sku in answered_res.items()
                if (ev := c.get(f"/v1/events/{eid}").json()).get("status") != "final" or ev.get("final_sku") != sku
            )
            cat = {s["sku"]: s["enrolled"] for s in c.get("/v1/catalogue").json()["skus"]}
            lost_enr = sum(1 for sku in answered_enr if cat.get(sku) is not True)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    return {
        "review_items": len(pending),
        "answered_resolutions": len(answered_res),
        "answered_enrolments": len(answered_enr),
        "killed_mid_load": len(answered_res) < len(pending),
        "lost_resolutions": lost_res,
        "lost_enrolments": lost_enr,
        "records_lost": lost_res + lost_enr,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=Path("../shared/grocery-store"))
    parser.add_argument("--out", type=Path, default=Path("out/bench_service.json"))
    parser.add_argument("--requests", type=int, default=120, help="Requests per concurrency level.")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--db", default=None, help="Database URL (default: SQLite in a temporary data dir).")
    parser.add_argument("--workers", type=int, default=1, help="Server worker processes for the load part.")
    args = parser.parse_args()
    with open(args.data / "val.csv", newline="") as fh:
        paths = [args.data / r["path"] for r in csv.DictReader(fh)]
    blobs = [p.read_bytes() for p in paths[:: max(1, len(paths) // 64)]][:64]

    with tempfile.TemporaryDirectory(prefix="skuscale-bench-") as tmp:
        port = free_port()
        proc = start_server(args.bundle, Path(tmp) / "load", port, args.db, args.workers)
        try:
            url = f"http://127.0.0.1:{port}"
            warm = load_level(url, blobs, 1, 5)
            levels = [load_level(url, blobs, c, args.requests) for c in args.levels]
            answered = warm["answered"] + sum(level["answered"] for level in levels)
            scraped = [scraped_recognitions(url) for _ in range(3)]
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        durable = durability(args.bundle, Path(tmp) / "durability", free_port(), args.db, blobs)

    report = {
        "benchmark": "service_load",
        "bundle": str(args.bundle),
        "database": "sqlite" if not args.db else args.db.split(":", 1)[0],
        "endpoint": "POST /v1/recognize (one image, multipart)",
        "workers": args.workers,
        "levels": levels,
        "errors": sum(level["errors"] for level in levels),
        "metrics": {"answered": answered, "scraped_recognitions_total": scraped,
                    "consistent": all(s == answered for s in scraped)},
        "durability": durable,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    if report["errors"] or durable["records_lost"] or not report["metrics"]["consistent"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
