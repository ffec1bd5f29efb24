"""Throughput of the recognition pipeline: PyTorch eager fp32, ORT fp32 and ORT INT8, one run, JSON + table.

Usage::

    python benchmarks/throughput.py --bundle BUNDLE [--int8-bundle EDGE_INT8_BUNDLE]
        [--data ../shared/grocery-store] [--images 128] [--out out/bench_throughput.json]
        [--cache-dir BUILD_CACHE]

``torch-fp32`` runs a fine-tuned bundle's own weights when they are in the build cache
(else the ImageNet weights of the same architecture: same cost, other outputs); the JSON
says which (``torch_fp32_weights``).

Every case runs on the same real validation images, at batch 1 and 32 and with 1 and 2
threads (torch intra-op threads, ONNX Runtime intra-op threads, and the decode pool):

* ``torch-fp32``: eager EfficientNet-Lite embeddings, then the numpy decision stack;
* ``ort-fp32``: the one-graph pipeline (backbone to bands) exported from ``--bundle``;
* ``ort-int8``: the one-graph pipeline of ``--int8-bundle`` (``skuscale export --int8``).

For each: images per second and per-image latency p50/p99 end to end (read bytes in
memory -> decode -> resize/crop -> model -> bands), and the same for the decode stage and
the model stage alone. At batch 32 an image's latency is its batch's wall time.
``images_per_second_overlapped`` decodes the next batch while the model runs (as
``embed_paths`` does in production; the decode pool needs a thread of its own, so
this overlaps only where a core is free). The acceptance ratio is ``ort-int8`` over
``torch-fp32`` images/s at batch 32, 2 threads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from skuscale.bundle import Bundle
from skuscale.data import load_dataset
from skuscale.data.images import decode_image
from skuscale.data.preprocess import preprocess_image
from skuscale.edge.pipeline import PIPELINE_FILE, PipelineRunner, export_pipeline


def _percentiles(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values) * 1e3
    return {"p50_ms": float(np.percentile(arr, 50)), "p99_ms": float(np.percentile(arr, 99))}


def run_case(name, model_fn, blobs, prep, batch: int, threads: int) -> dict:
    """Time decode, model and both over ``blobs`` in batches of ``batch``."""
    batches = [blobs[s : s + batch] for s in range(0, len(blobs) - batch + 1, batch)]
    with ThreadPoolExecutor(max_workers=threads) as pool, ThreadPoolExecutor(max_workers=1) as prefetch:
        decode = lambda chunk: np.stack(list(pool.map(lambda b: preprocess_image(decode_image(b), prep), chunk)))  # noqa: E731
        model_fn(decode(batches[0]))  # warm-up
        e2e, dec, mod = [], [], []
        started = time.perf_counter()
        for chunk in batches:
            t0 = time.perf_counter()
            arrays = decode(chunk)
            t1 = time.perf_counter()
            model_fn(arrays)
            t2 = time.perf_counter()
            e2e.append(t2 - t0)
            dec.append(t1 - t0)
            mod.append(t2 - t1)
        total = time.perf_counter() - started
        # As in skuscale.embed.pipeline.embed_paths: decode the next batch while the model runs on this one.
        started = time.perf_counter()
        pending = prefetch.submit(decode, batches[0])
        for i in range(len(batches)):
            arrays = pending.result()
            if i + 1 < len(batches):
                pending = prefetch.submit(decode, batches[i + 1])
            model_fn(arrays)
        overlapped = time.perf_counter() - started
    n = len(batches) * batch
    return {
        "case": name, "batch": batch, "threads": threads, "n_images": n,
        "images_per_second": n / total,
        "images_per_second_overlapped": n / overlapped,
        "latency": _percentiles(e2e),
        "decode": {"images_per_second": n / sum(dec), **_percentiles(dec)},
        "model": {"images_per_second": n / sum(mod), **_percentiles(mod)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True, help="fp32 bundle (its backbone feeds torch and ORT)")
    parser.add_argument("--int8-bundle", type=Path, default=None, help="output of skuscale export --int8")
    parser.add_argument("--data", type=Path, default=Path("../shared/grocery-store"))
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=Path("out/bench_throughput.json"))
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="the build's cache folder (default $SKUSCALE_CACHE or "
                        "~/.cache/skuscale/embeddings): a fine-tuned bundle's torch weights are read from it")
    args = parser.parse_args()

    import torch

    from skuscale.embed.backbone import load_backbone

    bundle = Bundle.load(args.bundle)
    prep = bundle.preprocessing
    val = load_dataset(args.data / "val.csv")
    paths = val.paths[:: max(1, len(val) // args.images)][: args.images]
    blobs = [Path(p).read_bytes() for p in paths]
    net = load_backbone(bundle.backbone["name"]).eval()
    eager_weights = eager_weights_for(net, bundle, args.cache_dir)
    work = Path(tempfile.mkdtemp(prefix="skuscale-throughput-"))
    fp32_pipeline = export_pipeline(bundle, work / PIPELINE_FILE)

    def torch_fn(arrays):
        with torch.inference_mode():
            X = net(torch.from_numpy(arrays)).numpy()
        return bundle.model.decide_arrays(X)

    results = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        runners: dict[str, PipelineRunner] = {"ort-fp32": PipelineRunner(fp32_pipeline, threads=threads)}
        if args.int8_bundle:
            runners["ort-int8"] = PipelineRunner(args.int8_bundle / PIPELINE_FILE, threads=threads)
        cases = {"torch-fp32": torch_fn, **{k: r.run for k, r in runners.items()}}
        for batch in args.batches:
            for name, fn in cases.items():
                results.append(run_case(name, fn, blobs, prep, batch, threads))
                r = results[-1]
                print(f"{name:>10} b{batch:<3} t{threads}  {r['images_per_second']:7.1f} img/s "
                      f"({r['images_per_second_overlapped']:6.1f} overlapped)  "
                      f"p50 {r['latency']['p50_ms']:8.1f} ms  p99 {r['latency']['p99_ms']:8.1f} ms  "
                      f"(decode {r['decode']['images_per_second']:6.1f} img/s, model "
                      f"{r['model']['images_per_second']:6.1f} img/s)", flush=True)

    def ips(case, batch, threads):
        for r in results:
            if (r["case"], r["batch"], r["threads"]) == (case, batch, threads):
                return r["images_per_second"]
        return None

    top_batch, top_threads = max(args.batches), max(args.threads)
    base = ips("torch-fp32", top_batch, top_threads)
    summary = {f"{case}_over_torch_fp32_b{top_batch}_t{top_threads}": (ips(case, top_batch, top_threads) or 0) / base
               for case in ("ort-fp32", "ort-int8") if ips(case, top_batch, top_threads)}
    report = {
        "bundle": str(args.bundle), "int8_bundle": str(args.int8_bundle) if args.int8_bundle else None,
        "n_images": len(blobs), "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "load_average_at_end": list(os.getloadavg()), "torch_version": torch.__version__,
        "torch_fp32_weights": eager_weights, "results": results, "ratios": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(summary, indent=2))


def eager_weights_for(net, bundle: Bundle, cache_dir: Path | None) -> str:
    """Load a fine-tuned bundle's weights into ``net`` from the build cache; say which weights it has.

    The bundle ships only the ONNX backbone. Eager timing does not depend on the weights
    (same architecture), but its outputs do, so the report records which were used.
    """
    import torch

    from skuscale.build import finetuned_weights_path

    training = bundle.metadata.get("training", {})
    # A late-join bundle's backbone is the one after the late join.
    ft = training.get("late_join") or training.get("finetune")
    if not ft:
        return "imagenet"
    stored = finetuned_weights_path(cache_dir, ft["key"])
    if not stored.is_file():
        return f"imagenet (the bundle is fine-tuned; {stored} not found, same architecture and cost)"
    net.load_state_dict(torch.load(stored, map_location="cpu", weights_only=True))
    return f"fine-tuned ({stored.name[:12]})"


if __name__ == "__main__":
    main()
