"""Agreement of the one-graph ONNX pipeline with the Python stack over whole manifests, written as JSON.

Usage::

    python benchmarks/pipeline_agreement.py --bundle BUNDLE [--data ../shared/grocery-store]
        [--splits val train] [--out out/bench_agreement.json]

The pipeline graph is exported from ``BUNDLE`` (its own backbone, fp32 or INT8) and run
on every image; the Python stack (:meth:`RecognitionModel.decide_arrays`) runs on the
same backbone's embeddings of the same preprocessed images (through the embedding
cache). Target (issue 6): >= 99.9% of band and SKU decisions equal, confidences within 1e-4.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from skuscale.build import default_cache_dir
from skuscale.bundle import Bundle
from skuscale.data import load_dataset
from skuscale.data.images import load_image
from skuscale.data.preprocess import preprocess_batch
from skuscale.edge.pipeline import PIPELINE_FILE, PipelineRunner, agreement, export_pipeline, python_outputs
from skuscale.embed.cache import EmbeddingCache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=Path("../shared/grocery-store"))
    parser.add_argument("--splits", nargs="+", default=["val", "train"])
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("out/bench_agreement.json"))
    args = parser.parse_args()
    bundle = Bundle.load(args.bundle)
    cache = EmbeddingCache(args.cache_dir or default_cache_dir())
    with tempfile.TemporaryDirectory() as work:
        pipeline = export_pipeline(bundle, Path(work) / PIPELINE_FILE)
        runner = PipelineRunner(pipeline)
        report = {"bundle": str(args.bundle), "precision": bundle.backbone.get("precision", "fp32"), "splits": {}}
        graph_parts, py_parts = [], []
        for split in args.splits:
            ds = load_dataset(args.data / f"{split}.csv")
            started = time.perf_counter()
            outs = []
            for s in range(0, len(ds), args.batch_size):
                batch = preprocess_batch([load_image(p) for p in ds.paths[s : s + args.batch_size]],
                                         bundle.preprocessing)
                outs.append(runner.run(batch))
            graph = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
            py = python_outputs(bundle.model, bundle.embed_paths(ds.paths, cache=cache))
            report["splits"][split] = {**agreement(graph, py), "seconds": time.perf_counter() - started}
            graph_parts.append(graph)
            py_parts.append(py)
            print(split, json.dumps(report["splits"][split]), flush=True)
        merge = lambda parts: {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}  # noqa: E731
        report["all"] = agreement(merge(graph_parts), merge(py_parts))
    report["meets_target"] = bool(report["all"]["band_agreement"] >= 0.999 and report["all"]["sku_agreement"] >= 0.999
                                  and report["all"]["max_confidence_diff"] <= 1e-4)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report["all"], indent=2), "\nmeets target:", report["meets_target"])


if __name__ == "__main__":
    main()
