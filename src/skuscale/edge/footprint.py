"""Footprint, measured, and device sizing before training.

The arithmetic is check 4's (:mod:`skuscale.assess.footprint`): ``footprint = W + A + T``
(backbone weights, peak activations at batch 1, class tables) against the memory of
the lowest tier of a device profile (:mod:`skuscale.assess.profiles`), with at least
20% headroom. This module adds what an edge deployment needs on top:

* ``W`` and ``A`` of the graph ONNX Runtime actually executes
  (:func:`runtime_weights_and_activations`): for an INT8 QDQ model the unoptimised graph
  holds every activation twice (uint8 and its fp32 dequantisation), the fused one
  (``QLinearConv``) does not;
* the ONNX Runtime session's resident-memory delta, measured in a fresh process
  (:func:`session_rss_delta`);
* class-table bytes for a table setting (dimension, fp16/int8, FAISS) and catalogue size
  (:func:`class_table_bytes_for`), and the same pipeline's footprint at 2k, 20k and 100k SKUs;
* :func:`size_for_device`: pick backbone, INT8, table dimension and precision so the
  footprint fits *before* training ("memory budgets before architecture selection"),
  or fail with the arithmetic.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from skuscale.assess.footprint import MIB, Footprint, onnx_weights_and_activations
from skuscale.assess.profiles import DeviceProfile, load_profile
from skuscale.edge.tables import table_bytes
from skuscale.exceptions import SkuscaleError

__all__ = [
    "MIB",
    "BackboneCost",
    "DeviceProfile",
    "Footprint",
    "SizingChoice",
    "class_table_bytes_for",
    "load_profile",
    "measure_bundle",
    "runtime_weights_and_activations",
    "session_rss_delta",
    "size_for_device",
]

#: Catalogue sizes the footprint report extrapolates to.
SCALE_POINTS = (2000, 20000, 100000)
#: Table settings tried by :func:`size_for_device`, most accurate first (see docs/edge.md for the measured costs).
TABLE_SETTINGS = (
    (None, "fp32"), (None, "fp16"), (None, "int8"), (512, "int8"), (256, "int8"), (128, "int8"), (64, "int8"),
)


def runtime_weights_and_activations(path: str | os.PathLike, *, batch: int = 1) -> tuple[int, int]:
    """``(W, A)`` of the graph ONNX Runtime executes (extended optimisations applied, as saved by ORT)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as work:
        optimised = Path(work) / "optimised.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(optimised)
        options.log_severity_level = 3
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return onnx_weights_and_activations(optimised, batch=batch)


_RSS_SCRIPT = r"""
import json, sys
import numpy as np
import onnxruntime as ort

def rss():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
path, batch, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
before = rss()
opts = ort.SessionOptions()
opts.intra_op_num_threads = threads
opts.log_severity_level = 3
s = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
after_load = rss()
inp = s.get_inputs()[0]
shape = [d if isinstance(d, int) else batch for d in inp.shape]
s.run(None, {inp.name: np.zeros(shape, np.float32)})
after_run = rss()
print(json.dumps({"before": before, "after_load": after_load, "after_run": after_run}))
"""


def session_rss_delta(path: str | os.PathLike, *, batch: int = 1, threads: int = 1) -> dict[str, int]:
    """Resident-memory growth of a fresh process when it loads ``path`` in ORT and runs one batch.

    Returns ``load_bytes`` (session creation) and ``run_bytes`` (creation plus one run), read
    from ``/proc/self/status`` (Linux only).
    """
    if not Path("/proc/self/status").is_file():
        raise SkuscaleError("measuring resident memory needs Linux /proc")
    proc = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(path), str(batch), str(threads)],
                          capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        raise SkuscaleError(f"measuring {path} failed: {proc.stderr.strip()[-500:]}")
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"load_bytes": doc["after_load"] - doc["before"], "run_bytes": doc["after_run"] - doc["before"]}


def class_table_bytes_for(n_skus: int, embedding_dim: int, *, dim: int | None = None, precision: str = "fp32",
                          prototype_table: bool = True, approximate_above: int = 10000) -> int:
    """Bytes of the class tables of an ``n_skus`` catalogue under one table setting.

    A head table, a prototype table when the OOD detector keeps one, float32 per-SKU
    thresholds, and the PCA basis (``embedding_dim x dim`` float32 plus the mean) when
    ``dim`` is set. Above ``approximate_above`` SKUs the FAISS index replaces the rows.
    """
    width = embedding_dim if dim is None else dim
    approximate = n_skus > approximate_above
    nlist = max(1, int(4 * n_skus ** 0.5)) if approximate else 0
    one = table_bytes(n_skus, width, precision, approximate=approximate, nlist=nlist)
    basis = 0 if dim is None else (embedding_dim * dim + embedding_dim) * 4
    return int(one * (2 if prototype_table else 1) + 4 * n_skus + basis)


@dataclass(frozen=True)
class BackboneCost:
    """Measured ``W`` and ``A`` of a backbone variant, fp32 and INT8 (bytes)."""

    name: str
    weights_fp32: int
    activations_fp32: int
    weights_int8: int | None = None
    activations_int8: int | None = None
    embedding_dim: int = 1280


@dataclass(frozen=True)
class SizingChoice:
    """What :func:`size_for_device` picked, with its arithmetic."""

    backbone: str
    int8: bool
    table_dim: int | None
    table_precision: str
    n_skus: int
    weights_bytes: int
    activation_bytes: int
    table_bytes: int
    budget_bytes: float
    tier: str
    min_headroom: float

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.activation_bytes + self.table_bytes

    @property
    def headroom(self) -> float:
        return (self.budget_bytes - self.total_bytes) / self.budget_bytes

    def arithmetic(self) -> str:
        dim = "full" if self.table_dim is None else str(self.table_dim)
        return (f"{self.backbone} {'int8' if self.int8 else 'fp32'}, table {dim}-d {self.table_precision}: "
                f"W {self.weights_bytes / MIB:.2f} + A {self.activation_bytes / MIB:.2f} + "
                f"T {self.table_bytes / MIB:.2f} = {self.total_bytes / MIB:.2f} MiB of "
                f"{self.budget_bytes / MIB:.0f} MiB ({self.tier}): headroom {self.headroom:.1%}"
                f" {'>=' if self.headroom >= self.min_headroom else '<'} {self.min_headroom:.0%}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_bytes": self.total_bytes, "headroom": self.headroom,
                "arithmetic": self.arithmetic()}


def size_for_device(
    profile: DeviceProfile,
    n_skus: int,
    backbones: Sequence[BackboneCost],
    *,
    min_headroom: float = 0.20,
    prototype_table: bool = True,
    approximate_above: int = 10000,
    table_settings: Sequence[tuple[int | None, str]] = TABLE_SETTINGS,
) -> tuple[SizingChoice, list[SizingChoice]]:
    """The most accurate configuration whose footprint leaves ``min_headroom`` on the lowest tier.

    Candidates are tried in order: ``backbones`` as given (most accurate first), then
    for each the fp32 backbone before INT8, and the table settings in ``table_settings``
    order (full-width fp32, fp16, int8, then PCA-reduced int8 tables) within each.

    Returns
    -------
    choice : SizingChoice
    tried : list of SizingChoice
        Every candidate evaluated up to and including the choice.

    Raises
    ------
    SkuscaleError
        When nothing fits; the message prints the arithmetic of every candidate.
    """
    if not 0.0 <= min_headroom < 1.0:
        raise ValueError(f"min_headroom must be in [0, 1), got {min_headroom!r}")
    tier = profile.lowest_tier
    tried: list[SizingChoice] = []
    for cost in backbones:
        variants = [(False, cost.weights_fp32, cost.activations_fp32)]
        if cost.weights_int8 is not None and cost.activations_int8 is not None:
            variants.append((True, cost.weights_int8, cost.activations_int8))
        for int8, weights, activations in variants:
            for dim, precision in table_settings:
                if dim is not None and dim >= cost.embedding_dim:
                    continue
                choice = SizingChoice(
                    backbone=cost.name, int8=int8, table_dim=dim, table_precision=precision, n_skus=n_skus,
                    weights_bytes=int(weights), activation_bytes=int(activations),
                    table_bytes=class_table_bytes_for(n_skus, cost.embedding_dim, dim=dim, precision=precision,
                                                      prototype_table=prototype_table,
                                                      approximate_above=approximate_above),
                    budget_bytes=tier.memory_bytes, tier=f"{profile.name}/{tier.name}", min_headroom=min_headroom,
                )
                tried.append(choice)
                if choice.headroom >= min_headroom:
                    return choice, tried
    lines = "\n  ".join(c.arithmetic() for c in tried)
    raise SkuscaleError(
        f"nothing fits {profile.name}/{tier.name} ({tier.memory_mb:g} MB for the model) with {min_headroom:.0%} "
        f"headroom for {n_skus} SKUs:\n  {lines}"
    )


def measure_bundle(root: str | os.PathLike, *, scale_points: Sequence[int] = SCALE_POINTS,
                   measure_rss: bool = True, profiles: Mapping[str, DeviceProfile] | None = None) -> dict[str, Any]:
    """Footprint of a bundle folder, measured: file sizes, ``W``/``A``, RSS delta, class tables, scaling.

    ``profiles`` (name -> profile) adds the headroom on each profile's lowest tier.
    """
    from skuscale.assess.footprint import class_table_bytes
    from skuscale.bundle import Bundle
    from skuscale.edge.pipeline import PIPELINE_FILE

    bundle = Bundle.load(root)
    root = Path(root)
    backbone_path = root / bundle.backbone["onnx"]
    weights, activations = runtime_weights_and_activations(backbone_path)
    parts, per_sku = class_table_bytes(bundle.model)
    tables = sum(parts.values())
    n = len(bundle.skus)
    dim = int(bundle.backbone.get("dim", 1280))
    prototype_table = type(bundle.model.detector).__name__ == "PrototypeCosineDetector"
    report: dict[str, Any] = {
        "bundle": str(root),
        "precision": bundle.backbone.get("precision", "fp32"),
        "files": {p.name: p.stat().st_size for p in sorted(root.iterdir()) if p.is_file()},
        "weights_bytes": weights,
        "activation_peak_bytes": activations,
        "class_table_bytes": tables,
        "class_table_parts": parts,
        "per_sku_bytes": per_sku,
        "n_skus": n,
        "total_bytes": weights + activations + tables,
    }
    if measure_rss:
        target = root / PIPELINE_FILE if (root / PIPELINE_FILE).is_file() else backbone_path
        report["session_rss"] = {"model": target.name, **session_rss_delta(target)}
    scale = []
    for k in scale_points:
        row = {"n_skus": k, "dense_fp32_table_bytes": int(per_sku * k)}
        row["dense_fp32_total_bytes"] = weights + activations + row["dense_fp32_table_bytes"]
        for tdim, precision in ((None, "int8"), (256, "int8"), (128, "int8")):
            key = f"table_{tdim or dim}d_{precision}"
            row[f"{key}_bytes"] = class_table_bytes_for(k, dim, dim=tdim, precision=precision,
                                                        prototype_table=prototype_table)
            row[f"{key}_total_bytes"] = weights + activations + row[f"{key}_bytes"]
        scale.append(row)
    report["scale"] = scale
    if profiles:
        report["profiles"] = {
            name: {"tier": p.lowest_tier.name, "memory_mb": p.lowest_tier.memory_mb,
                   "headroom": (p.lowest_tier.memory_bytes - report["total_bytes"]) / p.lowest_tier.memory_bytes}
            for name, p in profiles.items()
        }
    return report
